//! Native Linux backend (namespaces, cgroups, overlayfs, veth).
//!
//! A sandbox is: a directory `<state_dir>/sandboxes/<id>/` (state file, overlay upper/work),
//! cgroups named after the id, a named netns `dtn-<id>` with a veth pair on the bridge, and a
//! process tree whose PID 1 is the toolbox daemon. Sandboxes outlive the runtime's process;
//! everything needed to find them again is in the state file or derived from the id.
//!
//! Stop keeps the writable layer (the disk image) and the IP allocation (the address is released
//! only by destroy) but removes the netns, veth and cgroups, so a stopped sandbox costs nothing
//! but disk. Isolation (capabilities, seccomp, masked kernel files, devices) is described in
//! `security` and `rootfs`; the disk limit in `disk`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::{
    DAEMON_PORT, NetworkPolicy, Resize, Result, Runtime, RuntimeError, RuntimeState, SandboxSpec,
    SandboxStatus, SandboxUsage,
};

mod capture;
pub mod cgroup;
mod disk;
mod disk_pool;
mod firewall;
pub mod init;
pub mod layer;
mod netlink;
pub mod network;
mod process;
mod rootfs;
pub mod security;
pub mod sparse;
mod state;
mod timeline;
pub mod userns;

use cgroup::{Cgroups, Limits};
use disk_pool::DiskPool;
use firewall::Firewall;
pub use init::run_if_requested;
use init::{DiskConfig, INIT_ARG, InitConfig, MARKS_PREFIX, Marks};
use network::Network;
pub use network::{Ipv4Cidr, NetNames};
use process::ProcessIdentity;
use state::{SandboxPaths, SandboxState};
use timeline::Timeline;
pub use userns::{IdMap, IdRanges};

/// Cgroup (below each hierarchy's root) holding every sandbox's cgroup.
pub const CGROUP_PARENT: &str = "daytona";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long processes get to die after SIGKILL before the runtime reports an error.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Between attempts to connect to a starting daemon: a refused connect costs microseconds, and
/// every millisecond waited here is added to the create.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct NativeConfig {
    /// Root of the runtime's state; sandboxes live in `<state_dir>/sandboxes/<id>/`.
    pub state_dir: PathBuf,
    /// Host path of the static `daytona-daemon`, bind-mounted read-only into every sandbox.
    pub daemon_bin: PathBuf,
    /// Binary whose `main` calls [`run_if_requested`]; executed as the sandbox init.
    pub init_exe: PathBuf,
    pub bridge_name: String,
    /// Sandbox addresses; the first address is the gateway on the bridge.
    pub subnet: Ipv4Cidr,
    /// `DAEMON_START_TIMEOUT_SEC`: how long create/start wait for the daemon to accept connections.
    pub daemon_start_timeout: Duration,
    /// Grace period between SIGTERM and SIGKILL on stop.
    pub stop_timeout: Duration,
    /// Per-sandbox process limit (`pids.max`); 0 means unlimited.
    pub pids_max: u64,
    /// Set `no_new_privs` on every sandbox: setuid programs and file capabilities no longer
    /// grant privileges. Off by default, as in Docker: images (ours included) use `sudo`.
    pub no_new_privs: bool,
    /// `INTER_SANDBOX_NETWORK_ENABLED`: whether sandboxes may open connections to each other.
    pub inter_sandbox_network: bool,
    /// Resolver that sandboxes' DNS (sent to the gateway) is forwarded to; `None` refuses DNS at
    /// the gateway at once, so lookups of unknown names fail fast.
    pub dns_upstream: Option<Ipv4Addr>,
    /// `DAYTONA_SANDBOX_USERNS`: sandboxes created from now on run in a user namespace, root
    /// inside being one of these ranges of unprivileged host ids (see `userns`). A sandbox keeps
    /// the choice made at its create (its files' owners depend on it).
    pub user_namespaces: Option<IdRanges>,
}

impl NativeConfig {
    /// Defaults: init = this executable, bridge `daytona0`, subnet 100.100.0.0/16, daemon timeout
    /// 60 s, stop grace 10 s, 4096 processes, `no_new_privs` off, no inter-sandbox traffic, DNS
    /// forwarded to the host's first non-loopback resolver, no user namespaces.
    pub fn new(state_dir: impl Into<PathBuf>, daemon_bin: impl Into<PathBuf>) -> Self {
        NativeConfig {
            state_dir: state_dir.into(),
            daemon_bin: daemon_bin.into(),
            init_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            bridge_name: "daytona0".to_owned(),
            subnet: Ipv4Cidr::new(Ipv4Addr::new(100, 100, 0, 0), 16).expect("valid default subnet"),
            daemon_start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            pids_max: 4096,
            no_new_privs: false,
            inter_sandbox_network: false,
            dns_upstream: firewall::host_resolver(),
            user_namespaces: None,
        }
    }
}

pub struct NativeRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    config: NativeConfig,
    sandboxes_dir: PathBuf,
    network: Network,
    firewall: Firewall,
    cgroups: Box<dyn Cgroups>,
    /// One lock per sandbox id: lifecycle operations on a sandbox never interleave.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while choosing an address and saving it, so two creates cannot pick the same one.
    allocation: Mutex<()>,
    /// Held while the bridge and firewall are checked and set up.
    network_setup: Mutex<()>,
    bridge_ready: AtomicBool,
    /// Mounted disks made ahead for creates; `None` if the pool could not start.
    disks: Option<DiskPool>,
}

impl NativeRuntime {
    pub fn new(config: NativeConfig) -> Result<Self> {
        let private: [Ipv4Cidr; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
            .map(|c| c.parse().expect("valid CIDR"));
        if private.iter().any(|p| p.overlaps(&config.subnet)) {
            return Err(RuntimeError::InvalidSpec(format!(
                "sandbox subnet {} overlaps a private range (10/8, 172.16/12, 192.168/16)",
                config.subnet
            )));
        }
        if config.subnet.prefix_len() > 30 {
            return Err(RuntimeError::InvalidSpec(format!(
                "sandbox subnet {} is too small",
                config.subnet
            )));
        }
        if config.bridge_name.is_empty() || config.bridge_name.len() > 15 {
            return Err(RuntimeError::InvalidSpec(format!(
                "bad bridge name {:?}",
                config.bridge_name
            )));
        }
        check_overlay_path(&config.state_dir)?;
        let sandboxes_dir = config.state_dir.join("sandboxes");
        std::fs::create_dir_all(&sandboxes_dir)
            .map_err(|e| RuntimeError::io(format!("create {}", sandboxes_dir.display()), e))?;
        // Sandbox files and init configs (which carry the sandbox's environment) are root's only.
        std::fs::set_permissions(&sandboxes_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| RuntimeError::io(format!("chmod {}", sandboxes_dir.display()), e))?;
        let cgroups = cgroup::detect(Path::new(CGROUP_ROOT), CGROUP_PARENT);
        debug!(?cgroups, "native runtime cgroups");
        let disks = DiskPool::new(
            config.state_dir.join("disk-pool"),
            config.state_dir.join("disk-templates"),
        )
        .inspect_err(
            |e| warn!(error = %e, "sandbox disk pool unavailable; creates mount their own disks"),
        )
        .ok();
        Ok(NativeRuntime {
            inner: Arc::new(Inner {
                network: Network {
                    bridge: config.bridge_name.clone(),
                    subnet: config.subnet,
                    inter_sandbox: config.inter_sandbox_network,
                },
                firewall: Firewall {
                    bridge: config.bridge_name.clone(),
                    subnet: config.subnet,
                    inter_sandbox: config.inter_sandbox_network,
                    dns_upstream: config.dns_upstream,
                },
                config,
                sandboxes_dir,
                cgroups,
                locks: Mutex::default(),
                allocation: Mutex::default(),
                network_setup: Mutex::default(),
                bridge_ready: AtomicBool::new(false),
                disks,
            }),
        })
    }

    pub fn config(&self) -> &NativeConfig {
        &self.inner.config
    }

    /// Ids of every sandbox with state on disk (running or stopped).
    pub fn list(&self) -> Result<Vec<String>> {
        self.inner.list()
    }

    /// Host directories of a sandbox's cgroups (they exist while it runs).
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.inner.cgroups.dirs(id)
    }

    /// The sandbox's disk image (exists for sandboxes with a disk limit until destroy).
    pub fn disk_image(&self, id: &str) -> PathBuf {
        self.inner.paths(id).disk_image
    }

    /// Removes the bridge with its firewall rules and NAT (uninstall, tests); destroy the
    /// sandboxes first. Idempotent.
    pub fn remove_network(&self) -> Result<()> {
        self.inner
            .firewall
            .remove()
            .map_err(|e| RuntimeError::io("remove firewall rules", e))?;
        self.inner
            .network
            .remove_bridge()
            .map_err(|e| RuntimeError::io("remove bridge", e))?;
        self.inner.bridge_ready.store(false, Ordering::Release);
        Ok(())
    }

    /// The sandbox's directory under the state dir.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.inner.paths(id).dir
    }

    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .inner
            .locks
            .lock()
            .expect("lock map poisoned")
            .entry(id.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Runs blocking work (files, cgroups, `ip`, waiting for processes) off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| RuntimeError::Other(format!("runtime task failed: {e}")))?
    }

    /// Sets up cgroups and network, starts the init and waits for the daemon. On error the
    /// caller cleans up. `fresh`: the sandbox was just made, so no earlier run left anything.
    /// `mounted`: a detached mount of the sandbox's disk, made ahead (disk pool).
    async fn launch(
        &self,
        state: SandboxState,
        fresh: bool,
        mounted: Option<OwnedFd>,
        timeline: Timeline,
    ) -> Result<SandboxStatus> {
        let id = state.spec.id.clone();
        let mounted_fd = mounted.as_ref().map(|m| m.as_raw_fd());
        let (state, mut timeline) = self
            .blocking(move |inner| {
                let mut timeline = timeline;
                let state = inner.provision(state, fresh, mounted_fd, &mut timeline)?;
                Ok((state, timeline))
            })
            .await?;
        let paths = self.inner.paths(&id);
        let process = self
            .spawn_init(&id, &paths, mounted_fd, &mut timeline)
            .await?;
        // The init has its own copy (or failed, and the mount goes with ours).
        drop(mounted);
        let ip = state.ip;
        let saved = SandboxState {
            process: Some(process.clone()),
            ..state
        };
        paths
            .save(&saved)
            .map_err(|e| RuntimeError::io("save sandbox state", e))?;
        timeline.mark("save_state");
        self.wait_ready(&id, ip, &process, &paths.log, timeline.started())
            .await?;
        timeline.mark("daemon_ready");
        info!(
            sandbox = %id, %ip, pid = process.pid,
            total_ms = format!("{:.1}", timeline.total().as_secs_f64() * 1000.0),
            steps = %timeline,
            "sandbox running"
        );
        Ok(SandboxStatus {
            id,
            state: RuntimeState::Running,
            ip: Some(ip),
            pid: Some(process.pid),
            oom_kills: 0,
        })
    }

    /// Launches a sandbox that `prepare_create` just made; on failure it is removed again.
    async fn launch_new(
        &self,
        state: SandboxState,
        mounted: Option<OwnedFd>,
        timeline: Timeline,
    ) -> Result<SandboxStatus> {
        let id = state.spec.id.clone();
        match self.launch(state, true, mounted, timeline).await {
            Ok(status) => Ok(status),
            Err(e) => {
                warn!(sandbox = %id, error = %e, "create failed; removing the sandbox");
                let cleanup_id = id.clone();
                if let Err(cleanup) = self.blocking(move |inner| inner.destroy(&cleanup_id)).await {
                    warn!(sandbox = %id, error = %cleanup, "cleanup after failed create");
                }
                Err(e)
            }
        }
    }

    /// Executes the init and returns the sandbox's PID 1 once it has exec'd the daemon.
    async fn spawn_init(
        &self,
        id: &str,
        paths: &SandboxPaths,
        mounted_fd: Option<std::os::fd::RawFd>,
        timeline: &mut Timeline,
    ) -> Result<ProcessIdentity> {
        let config = &self.inner.config;
        let started = timeline.started();
        let spawned_ns = init::monotonic_ns();
        let mut command = tokio::process::Command::new(&config.init_exe);
        command
            .arg(INIT_ARG)
            .arg(&paths.init_config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(fd) = mounted_fd {
            // SAFETY: fcntl is async-signal-safe; it changes the child's copy of the descriptor
            // table only, so the mount reaches this init and no other child.
            unsafe {
                command.pre_exec(move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| RuntimeError::io(format!("run {}", config.init_exe.display()), e))?;
        let remaining = config
            .daemon_start_timeout
            .saturating_sub(started.elapsed());
        let timed_out = || RuntimeError::DaemonTimeout {
            id: id.to_owned(),
            secs: config.daemon_start_timeout.as_secs(),
            reason: "the sandbox init did not finish".to_owned(),
        };
        // The init prints `pid=` and, once PID 1 has exec'd the daemon, its marks: that line
        // means success, so the create goes on without waiting for the init to exit and be
        // reaped (which a busy host delays by milliseconds). Anything else: its exit status
        // and stderr tell.
        let mut stdout = String::new();
        let mut marks = None;
        if let Some(out) = child.stdout.take() {
            let mut lines = tokio::io::BufReader::new(out).lines();
            let read = async {
                while let Some(line) = lines.next_line().await? {
                    if let Some(m) = line.strip_prefix(MARKS_PREFIX) {
                        marks = Some(m.to_owned());
                        break;
                    }
                    stdout.push_str(&line);
                    stdout.push('\n');
                }
                Ok::<_, io::Error>(())
            };
            tokio::time::timeout(remaining, read)
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| RuntimeError::io("read the sandbox init's output", e))?;
        }
        let pid = stdout
            .lines()
            .find_map(|l| l.strip_prefix("pid="))
            .and_then(|p| p.trim().parse::<i32>().ok());
        let process = pid.and_then(ProcessIdentity::capture);
        let failure = |reason: String| RuntimeError::StartFailed {
            id: id.to_owned(),
            reason,
        };
        let Some(marks) = marks else {
            let output = tokio::time::timeout(remaining, child.wait_with_output())
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| RuntimeError::io(format!("run {}", config.init_exe.display()), e))?;
            if !output.status.success() {
                if let Some(p) = process {
                    // Setup failed in PID 1, which is exiting: collect it.
                    let _ = tokio::task::spawn_blocking(move || p.wait_exit(KILL_TIMEOUT)).await;
                }
                return Err(failure(format!(
                    "sandbox init ({}) failed: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            return process.ok_or_else(|| {
                failure(format!(
                    "sandbox init reported no live PID 1 (stdout {stdout:?})"
                ))
            });
        };
        // The init exits right after printing its marks; reap it in the background.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let process = process.ok_or_else(|| {
            failure(format!(
                "sandbox init reported no live PID 1 (stdout {stdout:?})"
            ))
        })?;
        let mut last = spawned_ns;
        for (step, at) in Marks::parse(&marks) {
            let took = Duration::from_nanos(at.saturating_sub(last));
            timeline.record(format!("init.{step}"), took);
            last = at;
        }
        timeline.mark("init");
        Ok(process)
    }

    /// Polls the daemon's TCP port until it accepts a connection.
    async fn wait_ready(
        &self,
        id: &str,
        ip: Ipv4Addr,
        process: &ProcessIdentity,
        log: &Path,
        started: Instant,
    ) -> Result<()> {
        let timeout = self.inner.config.daemon_start_timeout;
        let last_error = loop {
            let error = match tokio::time::timeout(
                Duration::from_millis(500),
                TcpStream::connect((ip, DAEMON_PORT)),
            )
            .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connect timed out".to_owned(),
            };
            if !process.is_alive() {
                return Err(RuntimeError::StartFailed {
                    id: id.to_owned(),
                    reason: format!(
                        "the daemon exited before accepting connections; its output: {}",
                        log_tail(log)
                    ),
                });
            }
            if started.elapsed() >= timeout {
                break error;
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        };
        Err(RuntimeError::DaemonTimeout {
            id: id.to_owned(),
            secs: timeout.as_secs(),
            reason: format!(
                "{ip}:{DAEMON_PORT}: {last_error}; daemon output: {}",
                log_tail(log)
            ),
        })
    }
}

#[async_trait::async_trait]
impl Runtime for NativeRuntime {
    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxStatus> {
        validate_spec(spec)?;
        let _guard = self.lock(&spec.id).await;
        let spec = spec.clone();
        let (state, mounted, timeline) = self
            .blocking(move |inner| {
                let mut timeline = Timeline::start();
                let gib = spec.disk_gib;
                let templates = inner.config.state_dir.join("disk-templates");
                let (state, mounted) = inner.prepare_create(spec, &mut timeline, |image| {
                    if let Some(pooled) = inner.disks.as_ref().and_then(|p| p.take(gib)) {
                        match pooled.install(image) {
                            Ok(mount) => return Ok(Some(mount)),
                            Err(e) => warn!(error = %e, "cannot use a pooled disk; making one"),
                        }
                    }
                    disk::create_image(image, gib, &templates)
                        .map(|()| None)
                        .map_err(|e| RuntimeError::io(format!("create a {gib} GiB disk image"), e))
                })?;
                Ok((state, mounted, timeline))
            })
            .await?;
        self.launch_new(state, mounted, timeline).await
    }

    async fn start(&self, id: &str) -> Result<SandboxStatus> {
        validate_id(id)?;
        let _guard = self.lock(id).await;
        let state = self
            .inner
            .load(id)?
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        if state.process.as_ref().is_some_and(|p| p.is_alive()) {
            // Already up; a paused sandbox is resumed (start means "make it run").
            let owned = id.to_owned();
            return self
                .blocking(move |inner| {
                    inner.thaw(&owned)?;
                    inner.status(&owned)?.ok_or(RuntimeError::NotFound(owned))
                })
                .await;
        }
        match self.launch(state, false, None, Timeline::start()).await {
            Ok(status) => Ok(status),
            Err(e) => {
                warn!(sandbox = %id, error = %e, "start failed; stopping the sandbox");
                let stop_id = id.to_owned();
                if let Err(cleanup) = self.blocking(move |inner| inner.stop(&stop_id, None)).await {
                    warn!(sandbox = %id, error = %cleanup, "cleanup after failed start");
                }
                Err(e)
            }
        }
    }

    async fn stop(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let _guard = self.lock(id).await;
        let id = id.to_owned();
        self.blocking(move |inner| {
            let grace = inner.config.stop_timeout;
            inner.stop(&id, Some(grace))
        })
        .await
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let guard = self.lock(id).await;
        let owned = id.to_owned();
        self.blocking(move |inner| inner.destroy(&owned)).await?;
        drop(guard);
        let mut locks = self.inner.locks.lock().expect("lock map poisoned");
        if locks.get(id).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(id);
        }
        Ok(())
    }

    async fn discard(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let _guard = self.lock(id).await;
        let owned = id.to_owned();
        self.blocking(move |inner| inner.discard(&owned)).await
    }

    async fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<()> {
        validate_id(id)?;
        policy.validate()?;
        let _guard = self.lock(id).await;
        let (id, policy) = (id.to_owned(), policy.clone());
        self.blocking(move |inner| inner.update_network(&id, policy))
            .await
    }

    async fn status(&self, id: &str) -> Result<Option<SandboxStatus>> {
        validate_id(id)?;
        self.inner.status(id)
    }

    async fn usage(&self, id: &str) -> Result<Option<SandboxUsage>> {
        validate_id(id)?;
        let id = id.to_owned();
        self.blocking(move |inner| inner.usage(&id)).await
    }

    async fn sandbox_specs(&self) -> Result<Vec<SandboxSpec>> {
        self.blocking(|inner| {
            // An unreadable state file fails the whole listing: callers use it to decide what
            // may be deleted, and a sandbox they cannot see would lose its image.
            let mut specs = Vec::new();
            for id in inner.list()? {
                if let Some(state) = inner.load(&id)? {
                    specs.push(state.spec);
                }
            }
            Ok(specs)
        })
        .await
    }

    async fn pause(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let _guard = self.lock(id).await;
        let id = id.to_owned();
        self.blocking(move |inner| {
            inner.running_state(&id, "pause")?;
            inner
                .cgroups
                .freeze(&id)
                .map_err(|e| RuntimeError::io(format!("freeze sandbox {id}"), e))
        })
        .await
    }

    async fn resume(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let _guard = self.lock(id).await;
        let id = id.to_owned();
        self.blocking(move |inner| {
            inner.running_state(&id, "resume")?;
            inner.thaw(&id)
        })
        .await
    }

    async fn resize(&self, id: &str, resize: &Resize) -> Result<()> {
        validate_id(id)?;
        let _guard = self.lock(id).await;
        let (id, resize) = (id.to_owned(), *resize);
        self.blocking(move |inner| inner.resize(&id, &resize)).await
    }

    fn backend(&self) -> &'static str {
        "native"
    }

    async fn export_changes(&self, id: &str) -> Result<Box<dyn std::io::Read + Send>> {
        validate_id(id)?;
        let guard = self.lock(id).await;
        let inner = self.inner.clone();
        let owned = id.to_owned();
        let produced = capture::Produced::spawn("export-changes", move |pipe| {
            let _guard = guard;
            inner
                .export_changes(&owned, pipe)
                .map_err(|e| io::Error::other(e.to_string()))
        })
        .map_err(|e| RuntimeError::io("start the export", e))?;
        Ok(Box::new(produced))
    }

    async fn fork(&self, source: &str, spec: &SandboxSpec) -> Result<SandboxStatus> {
        validate_id(source)?;
        validate_spec(spec)?;
        if source == spec.id {
            return Err(RuntimeError::InvalidSpec(format!(
                "a fork needs an id of its own, not its source's ({source})"
            )));
        }
        let source_guard = self.lock(source).await;
        let _guard = self.lock(&spec.id).await;
        let (source_id, spec) = (source.to_owned(), spec.clone());
        let (state, timeline) = self
            .blocking(move |inner| {
                let mut timeline = Timeline::start();
                let source = inner
                    .load(&source_id)?
                    .ok_or_else(|| RuntimeError::NotFound(source_id.clone()))?;
                // The copy is the source's disk, so it has the source's size.
                let spec = SandboxSpec {
                    disk_gib: source.spec.disk_gib,
                    ..spec
                };
                let (state, _) = inner.prepare_create(spec, &mut timeline, |image| {
                    inner.copy_disk(&source, image).map(|()| None)
                })?;
                Ok((state, timeline))
            })
            .await?;
        drop(source_guard);
        self.launch_new(state, None, timeline).await
    }

    async fn export_filesystem(&self, id: &str) -> Result<Box<dyn std::io::Read + Send>> {
        validate_id(id)?;
        let guard = self.lock(id).await;
        let owned = id.to_owned();
        let file = self
            .blocking(move |inner| inner.open_stopped_disk(&owned))
            .await?;
        let reader = sparse::SparseReader::new(file)
            .map_err(|e| RuntimeError::io("read the disk image", e))?;
        Ok(Box::new(capture::DiskExport {
            reader,
            _guard: guard,
        }))
    }

    async fn import_filesystem(
        &self,
        spec: &SandboxSpec,
        input: Box<dyn std::io::Read + Send>,
    ) -> Result<()> {
        validate_spec(spec)?;
        let _guard = self.lock(&spec.id).await;
        let spec = spec.clone();
        let id = spec.id.clone();
        let want = u64::from(spec.disk_gib) << 30;
        let imported = self
            .blocking(move |inner| {
                inner.prepare_create(spec, &mut Timeline::start(), move |image| {
                    let tmp = image.with_extension("img.tmp");
                    let len = sparse::restore(input, &tmp)
                        .map_err(|e| RuntimeError::io("write the imported disk image", e))?;
                    if len != want {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(RuntimeError::InvalidSpec(format!(
                            "the imported disk has {len} bytes, the sandbox's disk size is {want}"
                        )));
                    }
                    std::fs::rename(&tmp, image)
                        .map(|()| None)
                        .map_err(|e| RuntimeError::io("move the imported disk into place", e))
                })
            })
            .await;
        if let Err(e) = imported {
            let cleanup_id = id.clone();
            if let Err(cleanup) = self.blocking(move |inner| inner.destroy(&cleanup_id)).await {
                warn!(sandbox = %id, error = %cleanup, "cleanup after failed import");
            }
            return Err(e);
        }
        Ok(())
    }
}

impl Inner {
    fn paths(&self, id: &str) -> SandboxPaths {
        SandboxPaths::new(&self.sandboxes_dir, id)
    }

    fn load(&self, id: &str) -> Result<Option<SandboxState>> {
        self.paths(id)
            .load()
            .map_err(|e| RuntimeError::io(format!("load state of sandbox {id}"), e))
    }

    fn list(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.sandboxes_dir)
            .map_err(|e| RuntimeError::io(format!("list {}", self.sandboxes_dir.display()), e))?;
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|id| self.paths(id).state.exists())
            .collect())
    }

    /// Cgroup accounting plus the disk as the sandbox sees its root (overlayfs reports its
    /// upper layer's filesystem: the sandbox's disk).
    fn usage(&self, id: &str) -> Result<Option<SandboxUsage>> {
        let Some(pid) = self.status(id)?.and_then(|s| s.pid) else {
            return Ok(None);
        };
        let Some(mut usage) = self
            .cgroups
            .usage(id)
            .map_err(|e| RuntimeError::io("read cgroup usage", e))?
        else {
            return Ok(None);
        };
        // The sandbox may exit between the two reads; then it has no disk to report.
        if let Ok(fs) = nix::sys::statvfs::statvfs(&PathBuf::from(format!("/proc/{pid}/root"))) {
            let block = fs.fragment_size();
            usage.disk_total_bytes = fs.blocks() * block;
            usage.disk_used_bytes = usage
                .disk_total_bytes
                .saturating_sub(fs.blocks_free() * block);
        }
        Ok(Some(usage))
    }

    fn status(&self, id: &str) -> Result<Option<SandboxStatus>> {
        let Some(state) = self.load(id)? else {
            return Ok(None);
        };
        let running = state.process.as_ref().filter(|p| {
            let alive = p.is_alive();
            if !alive {
                p.reap();
            }
            alive
        });
        let frozen = running.is_some()
            && self
                .cgroups
                .is_frozen(id)
                .map_err(|e| RuntimeError::io("read freezer state", e))?;
        // The counter outlives a sandbox that died on its own: its cgroups stay until the
        // next stop, start or destroy.
        let oom_kills = self
            .cgroups
            .oom_kills(id)
            .map_err(|e| RuntimeError::io("read OOM kill count", e))?
            .unwrap_or(0);
        Ok(Some(SandboxStatus {
            id: id.to_owned(),
            state: match (running, frozen) {
                (None, _) => RuntimeState::Stopped,
                (Some(_), true) => RuntimeState::Paused,
                (Some(_), false) => RuntimeState::Running,
            },
            ip: Some(state.ip),
            pid: running.map(|p| p.pid),
            oom_kills,
        }))
    }

    /// The state of a sandbox whose PID 1 is alive, or why `operation` cannot proceed.
    fn running_state(&self, id: &str, operation: &str) -> Result<SandboxState> {
        let state = self
            .load(id)?
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        if !state.process.as_ref().is_some_and(|p| p.is_alive()) {
            return Err(RuntimeError::InvalidState {
                id: id.to_owned(),
                reason: format!("cannot {operation}: the sandbox is not running"),
            });
        }
        Ok(state)
    }

    fn thaw(&self, id: &str) -> Result<()> {
        self.cgroups
            .thaw(id)
            .map_err(|e| RuntimeError::io(format!("thaw sandbox {id}"), e))
    }

    fn resize(&self, id: &str, resize: &Resize) -> Result<()> {
        let paths = self.paths(id);
        let mut state = self
            .load(id)?
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let running = state.process.as_ref().is_some_and(|p| p.is_alive());
        if !running {
            self.finish_interrupted_resize(&mut state)?;
        }
        let invalid = |reason: String| RuntimeError::InvalidState {
            id: id.to_owned(),
            reason,
        };
        if let Some(gib) = resize.disk_gib.filter(|g| *g != state.spec.disk_gib) {
            if running {
                return Err(invalid(
                    "the disk can only be resized while the sandbox is stopped".to_owned(),
                ));
            }
            if !state.disk_image || gib == 0 {
                return Err(invalid(format!(
                    "cannot change the disk from {} GiB to {gib} GiB: only a sandbox created \
                     with a disk size can be resized, and not to unlimited (0)",
                    state.spec.disk_gib
                )));
            }
            self.resize_disk(&mut state, gib)?;
        }
        let cpu = resize.cpu.unwrap_or(state.spec.cpu);
        let memory_gib = resize.memory_gib.unwrap_or(state.spec.memory_gib);
        if running && (cpu, memory_gib) != (state.spec.cpu, state.spec.memory_gib) {
            let limits = Limits::new(cpu, memory_gib, self.config.pids_max);
            self.cgroups
                .set_limits(id, &limits)
                .map_err(|e| RuntimeError::io("change cgroup limits", e))?;
        }
        state.spec.cpu = cpu;
        state.spec.memory_gib = memory_gib;
        paths
            .save(&state)
            .map_err(|e| RuntimeError::io("save sandbox state", e))?;
        info!(sandbox = %id, cpu, memory_gib, disk_gib = state.spec.disk_gib, "sandbox resized");
        Ok(())
    }

    /// Resizes the stopped sandbox's disk image to `gib` and records it in the state. A marker
    /// file holds the target until the state does, so a resize a crash interrupted is finished
    /// (or reported) before the image is used again.
    fn resize_disk(&self, state: &mut SandboxState, gib: u32) -> Result<()> {
        let paths = self.paths(&state.spec.id);
        std::fs::write(&paths.disk_resize, gib.to_string())
            .map_err(|e| RuntimeError::io("write the disk resize marker", e))?;
        let resized = disk::wait_detached(&paths.disk_image, KILL_TIMEOUT)
            .and_then(|()| disk::resize_image(&paths.disk_image, gib));
        if let Err(e) = resized {
            // resize2fs refuses cleanly (e.g. the files do not fit): the image is as it was.
            let _ = std::fs::remove_file(&paths.disk_resize);
            return Err(RuntimeError::io(format!("resize the disk to {gib} GiB"), e));
        }
        state.spec.disk_gib = gib;
        paths
            .save(state)
            .map_err(|e| RuntimeError::io("save sandbox state", e))?;
        std::fs::remove_file(&paths.disk_resize)
            .map_err(|e| RuntimeError::io("remove the disk resize marker", e))
    }

    /// Completes a disk resize that a crash interrupted (resize2fs to the same size again is
    /// harmless; e2fsck repairs what it can first).
    fn finish_interrupted_resize(&self, state: &mut SandboxState) -> Result<()> {
        let marker = self.paths(&state.spec.id).disk_resize;
        let Ok(text) = std::fs::read_to_string(&marker) else {
            return Ok(());
        };
        let Ok(gib) = text.trim().parse::<u32>() else {
            // Torn write of the marker: the resize itself never started.
            let _ = std::fs::remove_file(&marker);
            return Ok(());
        };
        warn!(sandbox = %state.spec.id, gib, "finishing an interrupted disk resize");
        self.resize_disk(state, gib)
    }

    /// Creates the sandbox directory, its disk image (made at the given path by `make_disk`:
    /// fresh, copied or imported) and its state with a fresh address.
    fn prepare_create(
        &self,
        spec: SandboxSpec,
        timeline: &mut Timeline,
        make_disk: impl FnOnce(&Path) -> Result<Option<OwnedFd>>,
    ) -> Result<(SandboxState, Option<OwnedFd>)> {
        let paths = self.paths(&spec.id);
        if paths.state.exists() {
            return Err(RuntimeError::AlreadyExists(spec.id));
        }
        if paths.dir.exists() {
            // A create that crashed before writing its state: start from scratch.
            self.destroy(&spec.id)?;
        }
        let disk_image = spec.disk_gib > 0;
        let (upper, work) = paths.layer(disk_image);
        let dirs = if disk_image {
            vec![&paths.dir, &paths.disk_mount, &paths.rootfs]
        } else {
            vec![&paths.dir, &upper, &work, &paths.rootfs]
        };
        for dir in dirs {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::io(format!("create {}", dir.display()), e))?;
        }
        timeline.mark("dirs");
        let mut mounted = None;
        if disk_image {
            mounted = make_disk(&paths.disk_image)?;
            timeline.mark(if mounted.is_some() {
                "disk_image(pooled)"
            } else {
                "disk_image"
            });
        }
        let _allocation = self.allocation.lock().expect("allocation lock poisoned");
        let others: Vec<SandboxState> = self
            .list()?
            .iter()
            .filter_map(|id| self.paths(id).load().ok().flatten())
            .collect();
        let used: HashSet<Ipv4Addr> = others.iter().map(|s| s.ip).collect();
        let ip = self
            .config
            .subnet
            .sandbox_addresses()
            .find(|a| !used.contains(a))
            .ok_or_else(|| {
                RuntimeError::Other(format!("no free address left in {}", self.config.subnet))
            })?;
        let id_map = match &self.config.user_namespaces {
            None => None,
            Some(ranges) => {
                let used: Vec<u32> = others
                    .iter()
                    .filter_map(|s| s.id_map.map(|m| m.host_id))
                    .collect();
                Some(ranges.free(&used).ok_or_else(|| {
                    RuntimeError::Other(format!(
                        "no free user id range left ({} ranges from host id {})",
                        ranges.slots, ranges.first_host_id
                    ))
                })?)
            }
        };
        timeline.mark("allocate");
        let state = SandboxState {
            spec,
            ip,
            process: None,
            disk_image,
            id_map,
        };
        paths
            .save(&state)
            .map_err(|e| RuntimeError::io("save sandbox state", e))?;
        timeline.mark("save_state");
        Ok((state, mounted))
    }

    /// Brings up everything the init needs: cgroups with limits, the network, `init.json`.
    /// Leftovers of an interrupted run (processes, cgroups, veth) are removed first, unless
    /// the sandbox is `fresh` (`prepare_create` removed whatever an earlier sandbox of that id
    /// left, and nothing has run since).
    fn provision(
        &self,
        mut state: SandboxState,
        fresh: bool,
        mounted_fd: Option<std::os::fd::RawFd>,
        timeline: &mut Timeline,
    ) -> Result<SandboxState> {
        if !fresh {
            self.terminate(&state.spec.id, state.process.as_ref(), None)?;
            if state.disk_image {
                self.finish_interrupted_resize(&mut state)?;
            }
            // Fresh cgroups for every run, so counters such as OOM kills start from zero.
            self.cgroups
                .remove(&state.spec.id)
                .map_err(|e| RuntimeError::io("remove the previous run's cgroups", e))?;
            timeline.mark("leftovers");
        }
        let id = &state.spec.id;
        let paths = self.paths(id);
        let (upper, work) = paths.layer(state.disk_image);
        let dirs = if state.disk_image {
            vec![&paths.disk_mount, &paths.rootfs]
        } else {
            vec![&upper, &work, &paths.rootfs]
        };
        for dir in dirs {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::io(format!("create {}", dir.display()), e))?;
        }
        let disk = if state.disk_image {
            if !paths.disk_image.is_file() {
                return Err(RuntimeError::StartFailed {
                    id: id.clone(),
                    reason: format!("disk image {} is missing", paths.disk_image.display()),
                });
            }
            if !fresh {
                // The previous run's filesystem must be gone before the image is mounted again.
                disk::wait_detached(&paths.disk_image, KILL_TIMEOUT)
                    .map_err(|e| RuntimeError::io("wait for the previous run's disk", e))?;
                timeline.mark("disk_detached");
            }
            Some(DiskConfig {
                image: paths.disk_image.clone(),
                mountpoint: paths.disk_mount.clone(),
                mounted_fd,
            })
        } else {
            None
        };
        if !self.config.daemon_bin.is_file() {
            return Err(RuntimeError::Other(format!(
                "daemon binary {} not found",
                self.config.daemon_bin.display()
            )));
        }
        let limits = Limits::new(state.spec.cpu, state.spec.memory_gib, self.config.pids_max);
        self.cgroups
            .create(id, &limits)
            .map_err(|e| RuntimeError::io("create cgroups", e))?;
        timeline.mark("cgroups");
        self.ensure_network()?;
        let names = NetNames::for_sandbox(id);
        self.network
            .setup(&names, state.ip)
            .map_err(|e| RuntimeError::io("set up sandbox network", e))?;
        timeline.mark("network");
        // Before the init runs: the sandbox never sends a packet outside its policy.
        self.firewall
            .apply(&names, id, state.ip, &state.spec.network)
            .map_err(|e| RuntimeError::io("apply network policy", e))?;
        timeline.mark("firewall");

        let spec = &state.spec;
        let mut env: BTreeMap<String, String> = spec.env.clone();
        env.entry("PATH".to_owned())
            .or_insert_with(|| DEFAULT_PATH.to_owned());
        env.insert("DAYTONA_SANDBOX_ID".to_owned(), id.clone());
        env.insert("DAYTONA_SANDBOX_USER".to_owned(), spec.user.clone());
        if let Some(workdir) = &spec.workdir {
            env.insert("DAYTONA_WORK_DIR".to_owned(), workdir.clone());
        }
        let init = InitConfig {
            hostname: id.chars().take(63).collect(),
            lowers: spec.image_layers.clone(),
            upper,
            work,
            rootfs: paths.rootfs.clone(),
            daemon_bin: self.config.daemon_bin.clone(),
            log: paths.log.clone(),
            cgroup_join: self.cgroups.join_files(id),
            netns: names.netns_path(),
            ip: state.ip,
            gateway: self.config.subnet.gateway(),
            workdir: spec.workdir.clone(),
            env,
            disk,
            no_new_privs: self.config.no_new_privs,
            id_map: state.id_map,
            mounts: spec.mounts.clone(),
        };
        let json = serde_json::to_vec_pretty(&init)
            .map_err(|e| RuntimeError::Other(format!("encode init config: {e}")))?;
        std::fs::write(&paths.init_config, json)
            .map_err(|e| RuntimeError::io("write init config", e))?;
        timeline.mark("init_config");
        Ok(state)
    }

    /// The bridge and its firewall, checked once per process unless the bridge disappears.
    fn ensure_network(&self) -> Result<()> {
        let bridge_present = Path::new("/sys/class/net")
            .join(&self.network.bridge)
            .exists();
        if !(bridge_present && self.bridge_ready.load(Ordering::Acquire)) {
            // Concurrent first creates would race between checking and adding the address.
            let _one_at_a_time = self
                .network_setup
                .lock()
                .expect("network setup lock poisoned");
            // Concurrent first creates wait here for one setup rather than each doing it again.
            if bridge_present && self.bridge_ready.load(Ordering::Acquire) {
                return Ok(());
            }
            self.network
                .ensure_bridge()
                .map_err(|e| RuntimeError::io("set up bridge", e))?;
            self.firewall
                .ensure()
                .map_err(|e| RuntimeError::io("set up firewall", e))?;
            self.bridge_ready.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Persists the policy and, if the sandbox runs, applies it at once.
    fn update_network(&self, id: &str, policy: NetworkPolicy) -> Result<()> {
        let mut state = self
            .load(id)?
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        if state.process.as_ref().is_some_and(|p| p.is_alive()) {
            self.ensure_network()?;
            self.firewall
                .apply(&NetNames::for_sandbox(id), id, state.ip, &policy)
                .map_err(|e| RuntimeError::io("apply network policy", e))?;
        }
        state.spec.network = policy;
        self.paths(id)
            .save(&state)
            .map_err(|e| RuntimeError::io("save sandbox state", e))
    }

    /// Ends every process of the sandbox: SIGTERM to PID 1 and up to `grace` to exit (if
    /// given and PID 1 handles SIGTERM), then SIGKILL to the whole cgroup.
    fn terminate(
        &self,
        id: &str,
        process: Option<&ProcessIdentity>,
        grace: Option<Duration>,
    ) -> Result<()> {
        if let (Some(p), Some(grace)) = (process, grace)
            && p.is_alive()
            && p.catches(Signal::SIGTERM)
        {
            // A paused sandbox must run to shut down gracefully.
            self.thaw(id)?;
            p.signal(Signal::SIGTERM);
            if p.wait_exit(grace) {
                debug!(sandbox = %id, "PID 1 exited after SIGTERM");
            }
        }
        if let Some(p) = process {
            // PID 1's death takes its whole pid namespace with it.
            p.signal(Signal::SIGKILL);
        }
        self.cgroups
            .kill_all(id, KILL_TIMEOUT)
            .map_err(|e| RuntimeError::io("kill sandbox processes", e))?;
        if let Some(p) = process
            && !p.wait_exit(KILL_TIMEOUT)
        {
            return Err(RuntimeError::Other(format!(
                "PID {} of sandbox {id} survived SIGKILL",
                p.pid
            )));
        }
        Ok(())
    }

    /// Removes what only a running sandbox needs: network and cgroups.
    fn release(&self, id: &str) -> Result<()> {
        let names = NetNames::for_sandbox(id);
        self.firewall
            .clear(&names)
            .map_err(|e| RuntimeError::io("remove network policy", e))?;
        self.network
            .teardown(&names)
            .map_err(|e| RuntimeError::io("remove sandbox network", e))?;
        self.cgroups
            .remove(id)
            .map_err(|e| RuntimeError::io("remove cgroups", e))
    }

    fn stop(&self, id: &str, grace: Option<Duration>) -> Result<()> {
        let paths = self.paths(id);
        let mut state = self
            .load(id)?
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        self.terminate(id, state.process.as_ref(), grace)?;
        self.release(id)?;
        if state.process.take().is_some() {
            paths
                .save(&state)
                .map_err(|e| RuntimeError::io("save sandbox state", e))?;
        }
        Ok(())
    }

    /// A stopped sandbox's network and cgroups were released when it stopped: only its
    /// directory is left to remove. A running one is destroyed.
    fn discard(&self, id: &str) -> Result<()> {
        let paths = self.paths(id);
        let running = paths
            .load()
            .ok()
            .flatten()
            .and_then(|s| s.process)
            .is_some_and(|p| p.is_alive());
        if running {
            return self.destroy(id);
        }
        match std::fs::remove_dir_all(&paths.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(
                format!("remove {}", paths.dir.display()),
                e,
            )),
        }
    }

    /// Removes every trace of the sandbox, whatever state it is in; unknown ids are fine.
    fn destroy(&self, id: &str) -> Result<()> {
        let paths = self.paths(id);
        // An unreadable state file must not stop the cleanup: names are derived from the id.
        let process = paths.load().ok().flatten().and_then(|s| s.process);
        let t = Instant::now();
        self.terminate(id, process.as_ref(), None)?;
        let terminated = t.elapsed();
        self.release(id)?;
        let released = t.elapsed();
        let removed = std::fs::remove_dir_all(&paths.dir);
        debug!(
            sandbox = %id,
            terminate_ms = terminated.as_millis() as u64,
            release_ms = (released - terminated).as_millis() as u64,
            remove_ms = (t.elapsed() - released).as_millis() as u64,
            "sandbox destroyed"
        );
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(
                format!("remove {}", paths.dir.display()),
                e,
            )),
        }
    }
}

/// Ids name directories, cgroups, a netns and the hostname: keep them to a safe alphabet.
fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!(
            "invalid sandbox id {id:?}"
        )))
    }
}

/// Overlay options are comma-separated and `lowerdir` is colon-separated.
fn check_overlay_path(path: &Path) -> Result<()> {
    let s = path.to_string_lossy();
    if !path.is_absolute() || s.contains([',', ':', '\n']) {
        return Err(RuntimeError::InvalidSpec(format!(
            "path {s:?} must be absolute and free of ',' ':' and newlines"
        )));
    }
    Ok(())
}

fn validate_spec(spec: &SandboxSpec) -> Result<()> {
    validate_id(&spec.id)?;
    spec.network.validate()?;
    if spec.image_layers.is_empty() {
        return Err(RuntimeError::InvalidSpec(
            "the image has no layers".to_owned(),
        ));
    }
    for layer in &spec.image_layers {
        check_overlay_path(layer)?;
        if !layer.is_dir() {
            return Err(RuntimeError::InvalidSpec(format!(
                "image layer {} is not a directory",
                layer.display()
            )));
        }
    }
    for mount in &spec.mounts {
        mount.validate()?;
        if !mount.source.is_dir() {
            return Err(RuntimeError::InvalidSpec(format!(
                "mount source {} is not a directory",
                mount.source.display()
            )));
        }
    }
    if let Some((k, _)) = spec
        .env
        .iter()
        .find(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
    {
        return Err(RuntimeError::InvalidSpec(format!(
            "invalid environment variable {k:?}"
        )));
    }
    Ok(())
}

/// The end of the daemon's output, for error messages.
fn log_tail(log: &Path) -> String {
    const MAX: usize = 2000;
    match std::fs::read(log) {
        Ok(bytes) if bytes.is_empty() => "(none)".to_owned(),
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(MAX)..]);
            text.trim().to_owned()
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_restricted() {
        assert!(validate_id("2c9f8a8e-2b7d-4d3e-9a51-0f3b5c2f7e11").is_ok());
        for bad in ["", "-x", "a/b", "a b", "..", "a:b"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn private_subnets_are_refused() {
        let mut config = NativeConfig::new("/tmp/x", "/bin/true");
        config.subnet = "192.168.5.0/24".parse().unwrap();
        assert!(matches!(
            NativeRuntime::new(config),
            Err(RuntimeError::InvalidSpec(_))
        ));
    }
}
