//! Results: one table per section on stdout, everything (raw samples too) as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;

/// One measured quantity and its raw samples.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub metric: String,
    pub unit: String,
    #[serde(flatten)]
    pub summary: Option<Summary>,
    pub samples: Vec<f64>,
}

impl Metric {
    pub fn new(metric: impl Into<String>, unit: impl Into<String>, samples: Vec<f64>) -> Metric {
        Metric {
            metric: metric.into(),
            unit: unit.into(),
            summary: Summary::of(&samples),
            samples,
        }
    }
}

/// A section's results: its metrics plus free-form notes (context, failures, targets).
#[derive(Debug, Clone, Serialize)]
pub struct SectionReport {
    pub section: String,
    pub title: String,
    pub metrics: Vec<Metric>,
    pub notes: Vec<String>,
}

impl SectionReport {
    pub fn new(section: &str, title: impl Into<String>) -> SectionReport {
        SectionReport {
            section: section.to_string(),
            title: title.into(),
            metrics: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn metric(&mut self, metric: impl Into<String>, unit: &str, samples: Vec<f64>) {
        self.metrics.push(Metric::new(metric, unit, samples));
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The median of a metric recorded earlier in this section.
    pub fn median_of(&self, metric: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.metric == metric)
            .and_then(|m| m.summary)
            .map(|s| s.median)
    }

    /// The table printed for humans.
    pub fn table(&self) -> String {
        let width = self
            .metrics
            .iter()
            .map(|m| m.metric.len())
            .max()
            .unwrap_or(0)
            .max("metric".len());
        let mut out = format!("\n== {} ({})\n", self.title, self.section);
        let _ = writeln!(
            out,
            "  {:<width$} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10}  unit",
            "metric", "n", "median", "p95", "p99", "min", "max"
        );
        for m in &self.metrics {
            match m.summary {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "  {:<width$} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10}  {}",
                        m.metric,
                        s.n,
                        num(s.median),
                        num(s.p95),
                        num(s.p99),
                        num(s.min),
                        num(s.max),
                        m.unit
                    );
                }
                None => {
                    let _ = writeln!(out, "  {:<width$} {:>5}  (no samples)", m.metric, 0);
                }
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        out
    }
}

/// Three significant digits without drowning small numbers in zeros.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The whole run, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub api_url: String,
    pub sections: Vec<SectionReport>,
}

/// Facts about the machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub memory_mib: u64,
    pub kernel: String,
    pub load_average: String,
}

impl Machine {
    pub fn current() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mib: crate::host::meminfo_kib("MemTotal").unwrap_or(0) / 1024,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_average: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_metric_and_note() {
        let mut s = SectionReport::new("exec", "exec round trip");
        s.metric("exec true", "ms", vec![2.0, 1.0, 3.0]);
        s.metric("nothing", "ms", vec![]);
        s.note("warm connection");
        let t = s.table();
        assert!(t.contains("exec round trip (exec)"), "{t}");
        let row = t.lines().find(|l| l.contains("exec true")).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &cols[2..],
            ["3", "2.00", "2.90", "2.98", "1.00", "3.00", "ms"],
            "{row}"
        );
        assert!(t.contains("nothing") && t.contains("(no samples)"), "{t}");
        assert!(t.contains("note: warm connection"), "{t}");
        assert_eq!(s.median_of("exec true"), Some(2.0));
    }

    #[test]
    fn json_has_summary_and_raw_samples() {
        let mut s = SectionReport::new("create", "create");
        s.metric("create-to-first-exec", "ms", vec![10.0, 30.0, 20.0]);
        let v = serde_json::to_value(&s).unwrap();
        let m = &v["metrics"][0];
        assert_eq!(m["median"], 20.0);
        assert_eq!(m["n"], 3);
        assert_eq!(m["samples"], serde_json::json!([10.0, 30.0, 20.0]));
        assert_eq!(m["unit"], "ms");
    }
}
