//! Sandboxes: DTOs, the state machine service and the HTTP routes.

pub mod dto;
pub mod routes;
pub mod service;

pub use service::{SandboxService, SandboxSettings};
