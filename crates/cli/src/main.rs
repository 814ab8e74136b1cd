use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A sandbox's setup process is this same binary re-executed; it must run before anything
    // else (no threads, no runtime) and never returns.
    daytona_runtime::native::init::run_if_requested();
    daytona_cli::run(daytona_cli::Cli::parse())
}
