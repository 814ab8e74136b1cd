//! The toolbox daemon that runs inside every sandbox.
//!
//! It serves the toolbox HTTP API the Daytona SDKs call through the proxy (files, one-shot
//! commands, code runs, sessions) on port 2280. The binary (`src/main.rs`) is thin: as PID 1
//! it forks a supervisor ([`init`]), drops to the sandbox user and runs [`Server`].
//!
//! Architecture invariant: no NSS, no dynamic loading, no network besides the listener, so the
//! statically linked binary works in any image.

pub mod config;
pub mod environment;
pub mod error;
pub mod fs;
pub mod git;
mod ids;
pub mod init;
pub mod lsp;
pub mod process;
pub mod server;
pub mod system;
pub mod users;

pub use config::DaemonConfig;
pub use server::{AppState, Server, router};
