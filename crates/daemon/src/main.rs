//! `daytona-daemon`: the toolbox server inside a sandbox.
//!
//! Usage: `daytona-daemon [--init] [--port N]`. As PID 1 (or with `--init`) it forks a
//! supervisor and serves as the sandbox user; otherwise it serves as the current user.

use std::{process::ExitCode, str::FromStr};

use daytona_daemon::{DaemonConfig, Server, init, users::UserDb};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: daytona-daemon [--init] [--port N]";

#[derive(Debug, Default)]
struct Options {
    init: bool,
    port: Option<u16>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Self::default();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--init" => options.init = true,
                "--port" => {
                    let value = args.next().ok_or("--port needs a value")?;
                    options.port = Some(parse_port(&value)?);
                }
                _ if arg.starts_with("--port=") => {
                    options.port = Some(parse_port(&arg["--port=".len()..])?);
                }
                "--version" => {
                    println!("daytona-daemon {}", env!("CARGO_PKG_VERSION"));
                    std::process::exit(0);
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(options)
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    u16::from_str(value).map_err(|_| format!("not a port number: {value:?}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("daytona-daemon: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let port = match options
        .port
        .map(Ok)
        .unwrap_or_else(DaemonConfig::port_from_env)
    {
        Ok(port) => port,
        Err(e) => {
            eprintln!("daytona-daemon: {e}");
            return ExitCode::from(2);
        }
    };
    let users = UserDb::load().unwrap_or_else(|e| {
        tracing::warn!("cannot read /etc/passwd or /etc/group: {e}");
        UserDb::default()
    });

    // Still single-threaded here: fork and the environment edits below rely on it.
    if options.init || std::process::id() == 1 {
        let dropped = init::fork_supervisor()
            .and_then(|()| init::sandbox_account(&users))
            .and_then(|account| init::become_user(&users, &account).map(|()| account));
        match dropped {
            Ok(account) => {
                tracing::info!(user = %account.name, uid = account.uid, "serving as sandbox user")
            }
            Err(e) => {
                tracing::error!("init failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let config = DaemonConfig::from_env(port, &users);
    if let Err(e) = std::fs::create_dir_all(&config.work_dir)
        .and_then(|()| std::env::set_current_dir(&config.work_dir))
    {
        tracing::warn!("cannot enter work dir {}: {e}", config.work_dir.display());
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: DaemonConfig) -> std::io::Result<()> {
    let work_dir = config.work_dir.clone();
    let server = Server::bind(config).await?;
    let address = server.local_addr()?;
    tracing::info!(%address, work_dir = %work_dir.display(), "daytona-daemon listening");
    println!("daytona-daemon listening on {address}");
    server.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM/SIGINT; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}
