//! Order statistics of a sample set.

use serde::Serialize;

/// Summary of samples: count and order statistics (percentiles interpolate linearly between
/// the closest ranks, like numpy's default, so a median of an even count is the midpoint).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p95: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty sample set; NaNs are ignored.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            n: sorted.len(),
            median: percentile(&sorted, 0.50),
            p95: percentile(&sorted, 0.95),
            p99: percentile(&sorted, 0.99),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// The `q`-quantile (0..=1) of sorted, non-empty samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
    }

    #[test]
    fn single_sample_is_every_statistic() {
        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!(
            (s.n, s.median, s.p95, s.p99, s.min, s.max),
            (1, 7.0, 7.0, 7.0, 7.0, 7.0)
        );
    }

    #[test]
    fn order_statistics_of_unsorted_input() {
        // 1..=100 shuffled: the median is 50.5, p95 interpolates between 95 and 96.
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        v.reverse();
        v.swap(3, 70);
        let s = Summary::of(&v).unwrap();
        assert_eq!(s.n, 100);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 100.0);
        assert!((s.median - 50.5).abs() < 1e-9, "{}", s.median);
        assert!((s.p95 - 95.05).abs() < 1e-9, "{}", s.p95);
        assert!((s.p99 - 99.01).abs() < 1e-9, "{}", s.p99);
    }

    #[test]
    fn even_count_median_is_midpoint() {
        assert_eq!(Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
    }
}
