//! One module per benchmark section; each returns a [`crate::report::SectionReport`].

pub mod create;
pub mod exec;
pub mod idle;
pub mod proxy;
pub mod transfer;

use std::time::Instant;

/// Milliseconds since `t`.
pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
