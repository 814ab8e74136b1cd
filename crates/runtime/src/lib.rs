//! Sandbox runtimes: the [`Runtime`] trait and its backends.
//!
//! The runner owns sandbox *records*; a runtime owns the *machinery* that makes a sandbox run
//! (root filesystem, namespaces, cgroups, network, the daemon process). Callers never know which
//! backend is live: today `native` (Linux namespaces + cgroups + overlayfs, no daemon needed);
//! a Docker backend (bollard) or microVMs later fit behind the same trait.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use daytona_config::Ipv4Cidr;
use serde::{Deserialize, Serialize};

pub mod native;

/// Port the toolbox daemon listens on inside every sandbox (upstream's value).
pub const DAEMON_PORT: u16 = 2280;

/// Everything a runtime needs to create a sandbox. Resources use the API's units.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Sandbox id (UUID string); also names cgroups, netns and directories.
    pub id: String,
    /// The image's unpacked layers, bottom first (the manifest's order), shared read-only
    /// between sandboxes: the overlay's lower dirs, the last one on top. State files written
    /// before layers were stored separately hold one flattened `image_rootfs` directory.
    #[serde(alias = "image_rootfs", deserialize_with = "one_or_many_paths")]
    pub image_layers: Vec<PathBuf>,
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
    /// Egress policy; absent in state files written before it existed (= unrestricted).
    #[serde(default)]
    pub network: NetworkPolicy,
    /// Host directories shared into the sandbox (volumes), mounted in this order.
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

/// A host directory made visible inside a sandbox (a volume): every sandbox that mounts it sees
/// the same files, live. Mounted `nosuid,nodev`; with a user namespace, idmapped so files keep
/// the same owners (uid 1000 inside is uid 1000 on the disk) whichever sandbox wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Host directory (a volume's root), absolute; it must exist.
    pub source: PathBuf,
    /// Directory beneath `source` to mount instead of its root: relative, without `.` or `..`,
    /// created (mode 0777) if missing. Resolved without following symlinks, because the
    /// sandboxes that share `source` control what is in it.
    #[serde(default)]
    pub subpath: Option<String>,
    /// Absolute path inside the sandbox; created if missing (symlinks there resolve inside the
    /// sandbox's own root).
    pub target: String,
    /// Mounted read-only (the runner's own files, such as the egress CA trust).
    #[serde(default)]
    pub read_only: bool,
}

impl Mount {
    /// Checks the shapes the runtime relies on; the API names the same problems to its callers.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(RuntimeError::InvalidSpec(what));
        if !self.source.is_absolute() {
            return bad(format!(
                "mount source {} is not absolute",
                self.source.display()
            ));
        }
        if let Err(reason) = check_mount_target(&self.target) {
            return bad(format!("mount target {:?} {reason}", self.target));
        }
        if let Some(sub) = &self.subpath
            && let Err(reason) = check_subpath(sub)
        {
            return bad(format!("mount subpath {sub:?} {reason}"));
        }
        Ok(())
    }

    /// The components of [`Mount::subpath`] (none for the volume's root).
    pub fn subpath_components(&self) -> Vec<&str> {
        self.subpath
            .as_deref()
            .map(|s| s.split('/').filter(|c| !c.is_empty()).collect())
            .unwrap_or_default()
    }
}

/// Directories a volume may not cover or sit under: the kernel's interfaces, which the runtime
/// mounts inside every sandbox.
const RESERVED_TARGETS: [&str; 3] = ["/proc", "/sys", "/dev"];
/// Directories a volume may sit under but not replace: the system's own files, and where the
/// runtime puts the daemon binary.
const SYSTEM_DIRS: [&str; 12] = [
    "/bin",
    "/boot",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/sbin",
    "/usr",
    "/usr/local",
    "/usr/local/bin",
    "/var",
];

/// Why `target` cannot be a mount path inside a sandbox, if it cannot: it must be absolute and
/// normalized (no `.`, `..`, empty components or trailing `/`), not `/`, outside `/proc`,
/// `/sys` and `/dev`, not a system directory itself, at most 4096 bytes and without NUL.
pub fn check_mount_target(target: &str) -> std::result::Result<(), String> {
    if !target.starts_with('/') {
        return Err("is not an absolute path".into());
    }
    if target == "/" {
        return Err("would cover the root directory".into());
    }
    if target.len() > 4096 || target.contains('\0') {
        return Err("is too long or contains NUL".into());
    }
    if target[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("must be normalized (no '.', '..', '//' or trailing '/')".into());
    }
    if let Some(reserved) = RESERVED_TARGETS
        .iter()
        .find(|r| target == **r || target.starts_with(&format!("{r}/")))
    {
        return Err(format!(
            "is inside {reserved}, which the sandbox's system mounts own"
        ));
    }
    if SYSTEM_DIRS.contains(&target) {
        return Err("would hide a system directory".into());
    }
    Ok(())
}

/// Why `subpath` cannot name a directory beneath a volume's root, if it cannot: relative, no
/// `.` or `..` components, at most 1024 bytes, no NUL. Empty components (`a//b`, a trailing
/// `/`) are ignored.
pub fn check_subpath(subpath: &str) -> std::result::Result<(), String> {
    if subpath.starts_with('/') {
        return Err("must be relative to the volume's root".into());
    }
    if subpath.len() > 1024 || subpath.contains('\0') {
        return Err("is too long or contains NUL".into());
    }
    if subpath.split('/').any(|c| c == "." || c == "..") {
        return Err("must not contain '.' or '..'".into());
    }
    Ok(())
}

/// A list of paths, or (older state files) a single path.
fn one_or_many_paths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(path) => vec![path],
        OneOrMany::Many(paths) => paths,
    })
}

/// Most CIDRs an allow list may hold (upstream's limit).
pub const MAX_ALLOW_LIST: usize = 10;

/// What a sandbox may open connections to. Replies to connections opened *towards* the sandbox
/// (the host talking to its daemon) always pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// No new connections out of the sandbox at all; wins over `allow_list`.
    #[serde(default)]
    pub block_all: bool,
    /// When non-empty, only these destinations (DNS through the gateway included).
    #[serde(default, with = "cidr_strings")]
    pub allow_list: Vec<Ipv4Cidr>,
}

impl NetworkPolicy {
    /// Parses upstream's `networkAllowList`: comma-separated IPv4 CIDRs with a prefix, at most
    /// [`MAX_ALLOW_LIST`]; blanks are ignored, so an empty string is an empty list.
    pub fn parse_allow_list(list: &str) -> Result<Vec<Ipv4Cidr>> {
        let cidrs = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse().map_err(|()| {
                    RuntimeError::InvalidSpec(format!(
                        "network allow list entry {s:?} is not an IPv4 CIDR with its prefix and \
                         no host bits set (such as 203.0.113.0/24)"
                    ))
                })
            })
            .collect::<Result<Vec<Ipv4Cidr>>>()?;
        if cidrs.len() > MAX_ALLOW_LIST {
            return Err(RuntimeError::InvalidSpec(format!(
                "network allow list has {} entries; at most {MAX_ALLOW_LIST} are allowed",
                cidrs.len()
            )));
        }
        Ok(cidrs)
    }

    /// Whether any rule restricts the sandbox.
    pub fn is_restricted(&self) -> bool {
        self.block_all || !self.allow_list.is_empty()
    }

    pub fn validate(&self) -> Result<()> {
        if self.allow_list.len() > MAX_ALLOW_LIST {
            return Err(RuntimeError::InvalidSpec(format!(
                "network allow list has {} entries; at most {MAX_ALLOW_LIST} are allowed",
                self.allow_list.len()
            )));
        }
        Ok(())
    }
}

/// `Ipv4Cidr` has no serde support of its own: stored as its text form.
mod cidr_strings {
    use super::Ipv4Cidr;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(cidrs: &[Ipv4Cidr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(cidrs.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Cidr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|()| D::Error::custom(format!("bad CIDR {s:?}")))
            })
            .collect()
    }
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

/// What a sandbox uses right now, as its cgroups and its disk account it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct SandboxUsage {
    /// CPU time used since the sandbox last started, in nanoseconds (a counter: rates come from
    /// two readings).
    pub cpu_ns: u64,
    /// CPU cores the sandbox may use; `None`: no limit.
    pub cpu_limit: Option<f64>,
    /// Memory charged to the sandbox, page cache included.
    pub memory_bytes: u64,
    /// The page-cache part of `memory_bytes`.
    pub memory_cache_bytes: u64,
    /// `None`: no limit.
    pub memory_limit_bytes: Option<u64>,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
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
    /// Remove a stale copy of a sandbox that now runs elsewhere: a stopped one loses only its
    /// files, leaving alone the host-wide names derived from its id (another runner on this
    /// host may run the sandbox under them now); a running one is destroyed.
    async fn discard(&self, id: &str) -> Result<()> {
        self.destroy(id).await
    }
    /// Current status, or `None` if the runtime has no such sandbox.
    async fn status(&self, id: &str) -> Result<Option<SandboxStatus>>;
    /// The specs of every sandbox the runtime holds, running or stopped (what their files
    /// depend on, e.g. the image layers garbage collection must keep).
    async fn sandbox_specs(&self) -> Result<Vec<SandboxSpec>>;
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
    /// What a running (or paused) sandbox uses; `None` when it does not run.
    async fn usage(&self, id: &str) -> Result<Option<SandboxUsage>> {
        let _ = id;
        Err(self.unsupported("usage"))
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
    /// Replaces the sandbox's network policy; a running sandbox gets it at once (new
    /// connections), a stopped one when it starts.
    async fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<()> {
        let _ = (id, policy);
        Err(self.unsupported("network policies"))
    }
    /// The sandbox's filesystem changes relative to its image, as an uncompressed OCI layer
    /// tar (deletions as `.wh.` entries): what committing a container as an image captures.
    /// A running sandbox keeps running; the backend makes the copy consistent.
    async fn export_changes(&self, id: &str) -> Result<Box<dyn Read + Send>> {
        let _ = id;
        Err(self.unsupported("exporting changes"))
    }
    /// Creates and starts the sandbox `spec` with a copy of sandbox `source`'s filesystem
    /// (`spec` names the same image); the source keeps its state.
    async fn fork(&self, source: &str, spec: &SandboxSpec) -> Result<SandboxStatus> {
        let _ = (source, spec);
        Err(self.unsupported("fork"))
    }
    /// A stopped sandbox's whole writable filesystem as a stream in the backend's own format,
    /// for [`Runtime::import_filesystem`]. The sandbox cannot start until the reader is dropped.
    async fn export_filesystem(&self, id: &str) -> Result<Box<dyn Read + Send>> {
        let _ = id;
        Err(self.unsupported("exporting filesystems"))
    }
    /// Creates the sandbox `spec`, stopped, with the filesystem `export_filesystem` produced.
    async fn import_filesystem(
        &self,
        spec: &SandboxSpec,
        input: Box<dyn Read + Send>,
    ) -> Result<()> {
        let _ = (spec, input);
        Err(self.unsupported("importing filesystems"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_are_validated() {
        let list = NetworkPolicy::parse_allow_list(" 203.0.113.0/24, ,198.51.100.7/32").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].to_string(), "198.51.100.7/32");
        assert!(NetworkPolicy::parse_allow_list("").unwrap().is_empty());
        for bad in [
            "8.8.8.8",
            "8.8.8.8/24",
            "8.8.8.0/33",
            "example.com/32",
            "::1/128",
        ] {
            let err = NetworkPolicy::parse_allow_list(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let eleven = ["203.0.113.0/32"; 11].join(",");
        let err = NetworkPolicy::parse_allow_list(&eleven).unwrap_err();
        assert!(err.to_string().contains("at most 10"), "{err}");
    }

    #[test]
    fn mount_targets_and_subpaths_are_checked() {
        for good in [
            "/data",
            "/home/daytona/volume",
            "/usr/local/share/x",
            "/tmp/v",
        ] {
            assert_eq!(check_mount_target(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("data", "absolute"),
            ("/", "root"),
            ("/data/", "normalized"),
            ("/a//b", "normalized"),
            ("/a/../etc", "normalized"),
            ("/proc", "/proc"),
            ("/proc/sys/x", "/proc"),
            ("/dev/shm", "/dev"),
            ("/sys", "/sys"),
            ("/etc", "system directory"),
            ("/usr/local/bin", "system directory"),
        ] {
            let err = check_mount_target(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert_eq!(check_subpath("a/b"), Ok(()));
        assert_eq!(check_subpath("a//b/"), Ok(()));
        for bad in ["/a", "..", "a/../b", "./a"] {
            assert!(check_subpath(bad).is_err(), "{bad}");
        }
        let mount = Mount {
            source: PathBuf::from("/v"),
            subpath: Some("a//b/".into()),
            target: "/data".into(),
            read_only: false,
        };
        assert_eq!(mount.subpath_components(), ["a", "b"]);
        assert!(mount.validate().is_ok());
        let relative = Mount {
            source: PathBuf::from("v"),
            ..mount
        };
        assert!(relative.validate().is_err());
    }

    #[test]
    fn specs_without_a_network_policy_still_load() {
        let old = r#"{"id":"x","image_rootfs":"/r","user":"root","env":{},"workdir":null,
            "cpu":1,"memory_gib":1,"disk_gib":3}"#;
        let spec: SandboxSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.image_layers, [PathBuf::from("/r")]);
        assert_eq!(spec.network, NetworkPolicy::default());
        assert!(spec.mounts.is_empty());
        assert!(!spec.network.is_restricted());

        let policy = NetworkPolicy {
            block_all: false,
            allow_list: NetworkPolicy::parse_allow_list("203.0.113.0/24").unwrap(),
        };
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            json,
            r#"{"block_all":false,"allow_list":["203.0.113.0/24"]}"#
        );
        assert_eq!(
            serde_json::from_str::<NetworkPolicy>(&json).unwrap(),
            policy
        );
        assert!(serde_json::from_str::<NetworkPolicy>(r#"{"allow_list":["1.2.3.4"]}"#).is_err());
    }
}
