//! The availability score of a runner (0–100, higher is freer), upstream's TOPSIS ranking: the
//! weighted distances of the runner's usage vector to an optimal and a critical vector, with
//! penalties once cpu, load, memory or disk pass their comfort limits.

/// What the score is computed from: usage reported by the runner, allocation from the API's
/// own placements (fresher than the runner's last report).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub disk_percent: f64,
    /// Load average divided by the number of cpus.
    pub load_per_cpu: f64,
    pub allocated_cpu_percent: f64,
    pub allocated_memory_percent: f64,
    pub allocated_disk_percent: f64,
    pub started_sandboxes: f64,
}

const WEIGHTS: [f64; 7] = [0.25, 0.4, 0.4, 0.03, 0.03, 0.03, 0.1];
const OPTIMAL: [f64; 7] = [0.0, 0.0, 0.0, 100.0, 100.0, 100.0, 0.0];
const CRITICAL: [f64; 7] = [100.0, 100.0, 100.0, 500.0, 500.0, 500.0, 100.0];

pub fn availability_score(u: &Usage) -> i64 {
    let values = [
        u.cpu_percent,
        u.memory_percent,
        u.disk_percent,
        u.allocated_cpu_percent,
        u.allocated_memory_percent,
        u.allocated_disk_percent,
        u.started_sandboxes,
    ];
    if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return 0;
    }
    let distance = |target: &[f64; 7]| {
        values
            .iter()
            .zip(target)
            .zip(WEIGHTS)
            .map(|((v, t), w)| w * ((v - t) / 100.0).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let (to_optimal, to_critical) = (distance(&OPTIMAL), distance(&CRITICAL));
    let mut score = if to_optimal + to_critical == 0.0 {
        1.0
    } else {
        to_critical / (to_optimal + to_critical)
    };
    let penalty = |value: f64, limit: f64, k: f64| {
        if value >= limit {
            (-k * (value - limit)).exp()
        } else {
            1.0
        }
    };
    score *= penalty(u.cpu_percent, 90.0, 0.15);
    score *= penalty(u.load_per_cpu, 0.7, 0.1);
    score *= penalty(u.memory_percent, 75.0, 0.15);
    score *= penalty(u.disk_percent, 75.0, 0.15);
    (score * 100.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_runner_scores_high_and_a_saturated_one_low() {
        let idle = availability_score(&Usage::default());
        let busy = availability_score(&Usage {
            cpu_percent: 95.0,
            memory_percent: 90.0,
            disk_percent: 80.0,
            load_per_cpu: 2.0,
            ..Usage::default()
        });
        assert!(idle >= 70, "idle runner scored {idle}");
        assert!(busy < 10, "saturated runner scored {busy}");
    }

    #[test]
    fn more_memory_pressure_never_raises_the_score() {
        let mut last = i64::MAX;
        for memory in [0.0, 30.0, 60.0, 75.0, 80.0, 95.0] {
            let score = availability_score(&Usage {
                memory_percent: memory,
                ..Usage::default()
            });
            assert!(score <= last, "memory {memory}% scored {score} > {last}");
            last = score;
        }
    }

    #[test]
    fn bad_inputs_score_zero() {
        let usage = Usage {
            cpu_percent: -1.0,
            ..Usage::default()
        };
        assert_eq!(availability_score(&usage), 0);
    }
}
