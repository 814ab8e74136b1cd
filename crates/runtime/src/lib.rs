//! Sandbox runtimes: the [`Runtime`] trait and its backends.
//!
//! The runner owns sandbox *records*; a runtime owns the *machinery* that makes a sandbox run
//! (root filesystem, namespaces, cgroups, network, the daemon process). Callers never know which
//! backend is live: today `native` (Linux namespaces + cgroups + overlayfs, no daemon needed);
//! a Docker backend (bollard) or microVMs later fit behind the same trait.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod native;

/// Port the toolbox daemon listens on inside every sandbox (upstream's value).
pub const DAEMON_PORT: u16 = 2280;

/// Everything a runtime needs to create a sandbox. Resources use the API's units.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Sandbox id (UUID string); also names cgroups, netns and directories.
    pub id: String,
    /// Unpacked image root filesystem, shared read-only between sandboxes (overlay lower dir).
    pub image_rootfs: PathBuf,
    /// OS user the daemon runs commands as (e.g. `daytona`); the daemon itself runs as root.
    pub user: String,
    /// Environment for processes in the sandbox (image env merged with the request's env).
    pub env: BTreeMap<String, String>,
    /// Working directory of the image, if it declares one.
    pub workdir: Option<String>,
    /// CPU cores (cgroup quota = cpu * period).
    pub cpu: u32,
    /// Memory in GiB.
    pub memory_gib: u32,
    /// Disk in GiB: the size of the sandbox's writable filesystem (0 = unlimited).
    pub disk_gib: u32,
}

/// A change of a sandbox's resources; `None` keeps the current value. CPU and memory change
/// live; disk only while the sandbox is stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    pub cpu: Option<u32>,
    pub memory_gib: Option<u32>,
    pub disk_gib: Option<u32>,
}

/// What the runtime knows about a sandbox it manages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxStatus {
    pub id: String,
    pub state: RuntimeState,
    /// Address of the sandbox on the runner's bridge; the daemon is at `ip:DAEMON_PORT`.
    pub ip: Option<Ipv4Addr>,
    /// Host PID of the sandbox's PID 1 while running (or paused).
    pub pid: Option<i32>,
    /// Processes the kernel's out-of-memory killer has killed in the sandbox since it last
    /// started. A command killed this way exits with 137 (SIGKILL); a rising count is how
    /// callers tell an OOM kill from any other SIGKILL.
    #[serde(default)]
    pub oom_kills: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeState {
    Running,
    /// Every process is frozen (memory kept); `resume` continues them.
    Paused,
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("sandbox {0} not found")]
    NotFound(String),
    #[error("sandbox {0} already exists")]
    AlreadyExists(String),
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// The operation does not apply to the sandbox in its current state (e.g. pausing a stopped
    /// sandbox, or resizing the disk of a running one).
    #[error("sandbox {id}: {reason}")]
    InvalidState { id: String, reason: String },
    /// The backend does not implement this operation.
    #[error("{operation} is not supported by the {backend} runtime")]
    Unsupported {
        operation: &'static str,
        backend: &'static str,
    },
    #[error("daemon in sandbox {id} did not become ready within {secs}s: {reason}")]
    DaemonTimeout {
        id: String,
        secs: u64,
        reason: String,
    },
    /// The sandbox could not be started (setup failed, or its daemon exited before it was ready).
    #[error("sandbox {id} failed to start: {reason}")]
    StartFailed { id: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// A sandbox backend. All methods are idempotent where that makes sense: `stop` of a stopped
/// sandbox and `destroy` of an unknown one succeed.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Create the sandbox's filesystem, cgroups and network, start it, and return once its
    /// daemon accepts connections.
    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxStatus>;
    /// Start a stopped sandbox with its files as they were; returns once the daemon is ready.
    async fn start(&self, id: &str) -> Result<SandboxStatus>;
    /// Stop every process (SIGTERM, then SIGKILL after a grace period); files are kept.
    async fn stop(&self, id: &str) -> Result<()>;
    /// Remove every trace: processes, mounts, cgroups, netns, veth, directories.
    async fn destroy(&self, id: &str) -> Result<()>;
    /// Current status, or `None` if the runtime has no such sandbox.
    async fn status(&self, id: &str) -> Result<Option<SandboxStatus>>;
    /// Freezes every process of a running sandbox; memory and state are kept.
    async fn pause(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(self.unsupported("pause"))
    }
    /// Continues a paused sandbox.
    async fn resume(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(self.unsupported("resume"))
    }
    /// Changes a sandbox's resources (see [`Resize`]); the new values persist across restarts.
    async fn resize(&self, id: &str, resize: &Resize) -> Result<()> {
        let _ = (id, resize);
        Err(self.unsupported("resize"))
    }
    /// Short name of the backend, for messages.
    fn backend(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
    fn unsupported(&self, operation: &'static str) -> RuntimeError {
        RuntimeError::Unsupported {
            operation,
            backend: self.backend(),
        }
    }
}
