//! The runner: runs sandboxes on one host through a [`daytona_runtime::Runtime`] backend, with
//! images from its local content-addressed [`image::ImageStore`].

pub mod agent;
pub mod egress;
pub mod image;
pub mod jobs;
mod sandbox;
pub mod volume;

pub use daytona_runtime::NetworkPolicy;
pub use sandbox::{
    CapturedImage, InternalRegistry, Inventory, PulledImage, Resize, Runner, RunnerError,
    SandboxRequest, SandboxRunner, SandboxUsage, TrafficEndpoint, VolumeMount,
};
