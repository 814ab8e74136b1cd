//! The runner: runs sandboxes on one host through a [`daytona_runtime::Runtime`] backend, with
//! images from its local content-addressed [`image::ImageStore`].

pub mod image;
mod sandbox;
pub mod volume;

pub use daytona_runtime::NetworkPolicy;
pub use sandbox::{
    CapturedImage, PulledImage, Resize, Runner, RunnerError, SandboxRequest, SandboxRunner,
    SandboxUsage, VolumeMount,
};
