//! The `daytona` command. `daytona server` runs every service in one process.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod runner_role;
mod runner_traffic;
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
    /// Run the platform: API, proxy, SSH gateway and a runner in one process, configured from the
    /// environment; `--roles` (or `DAYTONA_ROLES`) runs a subset, e.g. `proxy` on its own.
    Server {
        /// Comma-separated roles (api, proxy, runner, ssh-gateway); overrides DAYTONA_ROLES.
        #[arg(long, value_name = "ROLES")]
        roles: Option<String>,
    },
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Server { roles } => server::main(roles),
    }
}
