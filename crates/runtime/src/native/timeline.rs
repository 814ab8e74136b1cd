//! Durations of the steps of one sandbox operation, logged with it so a slow create or start
//! shows where its time went (`DAYTONA_LOG=daytona_runtime=debug`).

use std::fmt;
use std::time::{Duration, Instant};

/// Steps in the order they ran, each with the time since the previous mark.
#[derive(Debug, Clone)]
pub struct Timeline {
    started: Instant,
    last: Instant,
    steps: Vec<(String, Duration)>,
}

impl Timeline {
    pub fn start() -> Self {
        let now = Instant::now();
        Timeline {
            started: now,
            last: now,
            steps: Vec::new(),
        }
    }

    /// Ends the current step, named `step`.
    pub fn mark(&mut self, step: impl Into<String>) {
        let now = Instant::now();
        self.steps.push((step.into(), now - self.last));
        self.last = now;
    }

    /// Records a step measured elsewhere (e.g. in the init process); not counted in `total`'s
    /// gaps, since it happened inside a step of this timeline.
    pub fn record(&mut self, step: impl Into<String>, took: Duration) {
        self.steps.push((step.into(), took));
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn total(&self) -> Duration {
        self.last - self.started
    }
}

/// `step=1.23ms step2=0.40ms …`
impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (step, took)) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{step}={:.2}ms", took.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_listed_in_order_with_their_durations() {
        let mut t = Timeline::start();
        t.mark("a");
        t.record("inner", Duration::from_micros(1500));
        t.mark("b");
        let text = t.to_string();
        let names: Vec<&str> = text
            .split(' ')
            .map(|s| s.split_once('=').unwrap().0)
            .collect();
        assert_eq!(names, ["a", "inner", "b"]);
        assert!(text.contains("inner=1.50ms"), "{text}");
        assert!(t.total() >= Duration::ZERO);
    }
}
