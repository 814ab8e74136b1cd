//! Daemon settings: where to listen, which directories commands and paths resolve against.

use std::{
    env,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use crate::users::UserDb;

/// Port the daemon listens on inside every sandbox.
pub const DEFAULT_PORT: u16 = 2280;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Address to bind; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Default cwd of commands and base of relative paths (`GET /work-dir`).
    pub work_dir: PathBuf,
    /// The sandbox user's home (`GET /user-home-dir`).
    pub home_dir: PathBuf,
    /// Daemon-owned scratch space (session logs, FIFOs); wiped at start.
    pub state_dir: PathBuf,
}

impl DaemonConfig {
    /// Settings for the current process user, from the environment the runtime passes:
    /// `DAYTONA_WORK_DIR` (default: home), `HOME` (default: the passwd entry of the euid).
    pub fn from_env(port: u16, users: &UserDb) -> Self {
        let uid = nix::unistd::geteuid().as_raw();
        let home_dir = env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| users.user_by_uid(uid).map(|a| a.home.clone()))
            .unwrap_or_else(|| PathBuf::from("/"));
        let work_dir = env::var_os("DAYTONA_WORK_DIR")
            .filter(|w| !w.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| home_dir.clone());
        Self {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            work_dir,
            home_dir,
            state_dir: PathBuf::from(format!("/tmp/.daytona-daemon-{uid}")),
        }
    }

    /// The port from `--port`, else `DAYTONA_DAEMON_PORT`, else 2280.
    pub fn port_from_env() -> Result<u16, String> {
        match env::var("DAYTONA_DAEMON_PORT") {
            Ok(p) if !p.is_empty() => p
                .parse()
                .map_err(|_| format!("DAYTONA_DAEMON_PORT is not a port number: {p:?}")),
            _ => Ok(DEFAULT_PORT),
        }
    }
}
