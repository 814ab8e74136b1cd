//! The toolbox daemon that runs inside every sandbox.
//!
//! It serves the toolbox HTTP API the Daytona SDKs call through the proxy on port 2280: files
//! (transfer, search, edit, permissions), one-shot commands and code runs, sessions, PTYs and
//! interpreter contexts over WebSockets, git (through the git CLI), LSP (proxied to a language
//! server installed in the image), ports, environment and metrics. Computer use is answered
//! with a clear 501: images here have no desktop. The binary (`src/main.rs`) is thin: as PID 1
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
