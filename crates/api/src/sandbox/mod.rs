//! Sandboxes: DTOs, the state machine service and the HTTP routes.

pub mod access;
pub mod backup;
mod capture;
pub mod dto;
pub mod lifecycle;
pub mod routes;
mod secrets;
pub mod service;
pub mod settings;
pub mod telemetry;

pub use service::{SandboxService, SandboxSettings};
