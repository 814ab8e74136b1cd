//! The `daytona` command. `daytona server` runs every service in one process.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod server;

#[derive(Debug, Parser)]
#[command(
    name = "daytona",
    version,
    about = "Sandboxes for AI-generated code, compatible with the Daytona SDKs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the platform: API, proxy and a runner in one process, configured from the environment.
    Server,
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Server => server::main(),
    }
}
