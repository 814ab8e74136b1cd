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
    /// Print the registry's `auth:` section for the API's registry token server
    /// (`DAYTONA_REGISTRY_TOKEN_*`), making the signing key and its certificate if missing.
    RegistryTokenConfig,
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Server { roles } => server::main(roles),
        Command::RegistryTokenConfig => registry_token_config(),
    }
}

/// `daytona registry-token-config`: the registry's `auth:` YAML on stdout.
fn registry_token_config() -> ExitCode {
    let result = (|| -> anyhow::Result<String> {
        let config = daytona_config::Config::from_env()?;
        let auth = config.registries.token_auth.as_ref().ok_or_else(|| {
            anyhow::anyhow!("DAYTONA_REGISTRY_TOKEN_REALM is not set: the token server is off")
        })?;
        let (key, cert) = daytona_api::registry_token::key_paths(auth, &config.server.data_dir);
        daytona_api::registry_token::SigningKey::load_or_create(&key, &cert)?;
        Ok(daytona_api::registry_token::registry_auth_config(
            auth, &cert,
        ))
    })();
    match result {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
