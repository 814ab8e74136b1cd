//! The sandbox init: a fresh, single-threaded process that turns itself into a sandbox.
//!
//! Namespace and mount work is unsafe after `fork` in a multithreaded (tokio) process, so the
//! runtime executes `<init_exe> __sandbox-init <init.json>` instead; every binary that hosts the
//! runtime calls [`run_if_requested`] first thing in `main`.
//!
//! The init mounts the sandbox's disk image (detached), joins the sandbox's cgroups and network
//! namespace, unshares the other namespaces and clones the sandbox's PID 1 with `CLONE_PARENT`,
//! so PID 1 is a child of the runtime (which reaps it) rather than of this short-lived process.
//! PID 1 builds the root filesystem, drops privileges (see `security`) and execs the daemon. This process prints `pid=<host pid>` on stdout, waits until PID 1 has exec'd the
//! daemon (or reports its setup error on stderr) and exits; the sandbox does not depend on the
//! runtime's process staying alive. With a user namespace (`userns`), PID 1 does all of that as
//! host root and enters the namespace last, right before it drops capabilities.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{
    chdir, dup2_stderr, dup2_stdin, dup2_stdout, execve, pipe2, sethostname, setsid,
};
use serde::{Deserialize, Serialize};

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::disk;
use super::rootfs::{self, DAEMON_PATH, HostFiles, StepResult};
use super::security;
use super::userns::{self, IdMap};

/// `argv[1]` that selects the init entry point.
pub const INIT_ARG: &str = "__sandbox-init";

/// When the init's steps (and PID 1's) ended, on `CLOCK_MONOTONIC` (the clock of
/// `std::time::Instant`, shared by every process), so the runtime can log how long each took
/// from its own spawn time. Reported as `<step>:<ns>,…`: by the init on stdout after
/// [`MARKS_PREFIX`], by PID 1 through the error pipe before it execs the daemon.
#[derive(Debug, Default)]
pub struct Marks(String);

/// Stdout line prefix of the init's (and PID 1's) step marks.
pub const MARKS_PREFIX: &str = "marks=";

impl Marks {
    pub fn mark(&mut self, step: &str) {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        self.0.push_str(&format!("{step}:{}", monotonic_ns()));
    }

    fn append(&mut self, encoded: &str) {
        if !encoded.is_empty() {
            if !self.0.is_empty() {
                self.0.push(',');
            }
            self.0.push_str(encoded);
        }
    }

    /// Parses what [`Marks`] printed; malformed entries are skipped (marks are diagnostics).
    pub fn parse(encoded: &str) -> Vec<(&str, u64)> {
        encoded
            .split(',')
            .filter_map(|m| {
                let (step, ns) = m.split_once(':')?;
                Some((step, ns.parse().ok()?))
            })
            .collect()
    }
}

/// Now on `CLOCK_MONOTONIC`, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// PID 1 writes its marks into the error pipe as one line starting with this, before execve.
const PID1_MARKS: &str = "\u{1}marks ";

/// What the runtime tells the init (written to `init.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub hostname: String,
    /// Image layers, bottom first.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub rootfs: PathBuf,
    pub daemon_bin: PathBuf,
    pub log: PathBuf,
    /// Files the init writes `0` into to move itself (it is single-threaded) into the
    /// sandbox's cgroups.
    pub cgroup_join: Vec<PathBuf>,
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub workdir: Option<String>,
    /// Complete environment of the daemon.
    pub env: BTreeMap<String, String>,
    /// The sandbox's disk image, holding `upper` and `work`; `None` without a disk limit.
    #[serde(default)]
    pub disk: Option<DiskConfig>,
    /// Set `no_new_privs` on PID 1 (setuid programs such as `sudo` stop working).
    #[serde(default)]
    pub no_new_privs: bool,
    /// Run the sandbox in a user namespace with these ids (see `userns`); `None`: host ids.
    #[serde(default)]
    pub id_map: Option<IdMap>,
    /// Volumes to mount, in order.
    #[serde(default)]
    pub mounts: Vec<crate::Mount>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskConfig {
    /// ext4 image file.
    pub image: PathBuf,
    /// Where PID 1 mounts it (inside its own mount namespace only).
    pub mountpoint: PathBuf,
    /// Descriptor (inherited from the runtime) of a detached mount of `image`'s filesystem,
    /// made ahead by the disk pool; `None`: the init attaches and mounts `image` itself.
    #[serde(default)]
    pub mounted_fd: Option<RawFd>,
}

/// If this process was started as a sandbox init, performs it and exits; otherwise returns.
/// Call it first in `main`, before any thread (tokio included) is started.
pub fn run_if_requested() {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_none_or(|a| a != INIT_ARG) {
        return;
    }
    let code = match args.next() {
        Some(path) => match run(PathBuf::from(path)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        None => {
            eprintln!("usage: {INIT_ARG} <init.json>");
            2
        }
    };
    std::process::exit(code);
}

fn run(config_path: PathBuf) -> StepResult {
    let mut marks = Marks::default();
    marks.mark("exec");
    // Descriptors the runtime's process leaked to us (opened without O_CLOEXEC) must not reach
    // the sandbox: mark all of them close-on-exec.
    // SAFETY: plain syscall on descriptor numbers; nothing in this process relies on them.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } != 0
    {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    let step = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let bytes = std::fs::read(&config_path)
        .map_err(|e| step(&format!("read {}", config_path.display()), &e))?;
    let cfg: InitConfig =
        serde_json::from_slice(&bytes).map_err(|e| step("parse init config", &e))?;
    let log = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&cfg.log)
        .map_err(|e| step(&format!("open {}", cfg.log.display()), &e))?;
    marks.mark("config");

    // Before joining the cgroups: their device allow-list has no loop devices.
    let disk = cfg
        .disk
        .as_ref()
        .map(|d| match d.mounted_fd {
            // SAFETY: the runtime passed us this descriptor for this purpose and keeps no
            // claim on it in this process.
            Some(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            None => disk::mount_image(&d.image),
        })
        .transpose()
        .map_err(|e| step("mount the disk image", &e))?;
    marks.mark("disk");
    let seccomp = security::seccomp_program()?;
    marks.mark("seccomp");
    // Before the pid namespace is unshared: its first child would become the sandbox's PID 1.
    let user_ns = cfg
        .id_map
        .as_ref()
        .map(userns::create)
        .transpose()
        .map_err(|e| step("create the user namespace", &e))?;
    if user_ns.is_some() {
        marks.mark("userns");
    }

    // Cgroups before the cgroup namespace, which is rooted at the current cgroup.
    for join in &cfg.cgroup_join {
        std::fs::write(join, "0").map_err(|e| step(&format!("join {}", join.display()), &e))?;
    }
    marks.mark("cgroups");
    let netns =
        File::open(&cfg.netns).map_err(|e| step(&format!("open {}", cfg.netns.display()), &e))?;
    setns(&netns, CloneFlags::CLONE_NEWNET).map_err(|e| step("setns net", &e))?;
    drop(netns);
    tune_network(cfg.id_map.is_some())?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(|e| step("unshare", &e))?;
    marks.mark("namespaces");

    // PID 1 reports setup errors here; a successful exec closes the pipe (O_CLOEXEC) unwritten.
    let (errors_r, errors_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| step("pipe", &e))?;
    let pid = clone_parent().map_err(|e| step("clone", &e))?;
    if pid == 0 {
        drop(errors_r);
        let mut errors = File::from(errors_w);
        let user_ns = cfg.id_map.zip(user_ns.as_ref());
        let Err(e) = sandbox_pid1(&cfg, log, disk.as_ref(), user_ns, &seccomp, &mut errors);
        let _ = errors.write_all(e.as_bytes());
        // SAFETY: _exit in the child ends it without running the parent's exit handlers.
        unsafe { libc::_exit(1) };
    }
    drop(errors_w);
    // PID 1 has its own copies; ours must not keep the image mounted if PID 1 fails.
    drop(disk);
    drop(user_ns);
    let mut out = std::io::stdout().lock();
    writeln!(out, "pid={pid}")
        .and_then(|()| out.flush())
        .map_err(|e| step("report pid", &e))?;
    marks.mark("clone");
    let mut report = String::new();
    let _ = File::from(errors_r).read_to_string(&mut report);
    // PID 1's marks come first (when it got that far), then its error, if any.
    let error = match report.strip_prefix(PID1_MARKS) {
        Some(rest) => {
            let (pid1, error) = rest.split_once('\n').unwrap_or((rest, ""));
            marks.append(pid1);
            error
        }
        None => report.as_str(),
    };
    if !error.is_empty() {
        return Err(error.to_owned());
    }
    // Diagnostics only: a closed stdout here does not fail the sandbox.
    let _ = writeln!(out, "{MARKS_PREFIX}{}", marks.0).and_then(|()| out.flush());
    Ok(())
}

/// Settings of the sandbox's own network namespace, which this process has joined (the host's
/// `/proc/sys/net` shows the namespace of whoever opens it).
fn tune_network(user_namespace: bool) -> StepResult {
    let set = |key: &str, value: &str| {
        std::fs::write(format!("/proc/sys/net/ipv4/{key}"), value)
            .map_err(|e| format!("set net.ipv4.{key} to {value:?}: {e}"))
    };
    // ICMP echo through datagram sockets for every group: `ping` without CAP_NET_RAW, which
    // the sandbox lacks (2147483647 is the largest gid the setting takes).
    set("ping_group_range", "0 2147483647")?;
    if user_namespace {
        // Root in a user namespace holds no capability over this network namespace (the host
        // owns it), so low ports would be closed even to it; as in Docker, they are open to all.
        set("ip_unprivileged_port_start", "0")?;
    }
    Ok(())
}

/// `fork`, except that the child's parent is our parent (the runtime).
fn clone_parent() -> nix::Result<libc::pid_t> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a raw clone without CLONE_VM and without a new stack behaves like fork(2); this
    // process is single-threaded, so the child's copy of memory is consistent.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if ret < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(ret as libc::pid_t)
    }
}

/// PID 1 of the sandbox: builds the root filesystem, gives up privileges and becomes the daemon.
fn sandbox_pid1(
    cfg: &InitConfig,
    log: File,
    disk: Option<&OwnedFd>,
    user_ns: Option<(IdMap, &OwnedFd)>,
    seccomp: &seccompiler::BpfProgram,
    report: &mut File,
) -> StepResult<Infallible> {
    let mut marks = Marks::default();
    // Its own session: signals aimed at the runtime's process group must not reach the sandbox.
    setsid().map_err(|e| format!("setsid: {e}"))?;
    umask(Mode::from_bits_truncate(0o022));
    let host = HostFiles::open(&cfg.daemon_bin)?;
    if let Some((_, ns)) = user_ns {
        rootfs::make_private()?;
        for lower in &cfg.lowers {
            rootfs::idmap_over(lower, ns)?;
        }
    }
    // Opened while host paths are reachable; attached once the sandbox's root is in place and
    // before its system mounts, which then cover any volume a symlink led below /proc or /dev.
    let volumes = cfg
        .mounts
        .iter()
        .map(|m| rootfs::open_volume(m, user_ns.map(|(_, ns)| ns)).map(|tree| (m, tree)))
        .collect::<StepResult<Vec<_>>>()?;
    let disk = disk.zip(cfg.disk.as_ref().map(|d| d.mountpoint.as_path()));
    marks.mark("pid1_start");
    rootfs::enter_overlay(&cfg.lowers, &cfg.upper, &cfg.work, &cfg.rootfs, disk)?;
    marks.mark("overlay");
    rootfs::attach_volumes(&volumes, user_ns.map(|(map, _)| map.host(0)))?;
    drop(volumes);
    marks.mark("volumes");
    rootfs::mount_system(&host)?;
    drop(host);
    marks.mark("mounts");
    rootfs::write_etc(&cfg.hostname, cfg.ip, cfg.gateway)?;
    if let Some((map, _)) = user_ns {
        userns::give_to_root(&map)?;
    }
    sethostname(&cfg.hostname).map_err(|e| format!("sethostname: {e}"))?;
    let cwd = cfg
        .workdir
        .as_deref()
        .filter(|w| std::path::Path::new(w).is_dir())
        .unwrap_or("/");
    chdir(cwd).map_err(|e| format!("chdir {cwd}: {e}"))?;

    let cstr = |s: String| CString::new(s).map_err(|e| format!("bad string for exec: {e}"));
    let argv = [cstr(DAEMON_PATH.to_owned())?, cstr("--init".to_owned())?];
    let envp = cfg
        .env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}")))
        .collect::<StepResult<Vec<_>>>()?;
    let null = rootfs::dev_null().map_err(|e| format!("open /dev/null: {e}"))?;
    dup2_stdin(&null).map_err(|e| format!("dup2 stdin: {e}"))?;
    dup2_stdout(&log).map_err(|e| format!("dup2 stdout: {e}"))?;
    dup2_stderr(&log).map_err(|e| format!("dup2 stderr: {e}"))?;
    // Last, in this order: everything above needed host root; dropping capabilities needs
    // CAP_SETPCAP, and installing a filter without no_new_privs needs CAP_SYS_ADMIN (in the user
    // namespace, if any), which stays effective until the execve.
    if let Some((_, ns)) = user_ns {
        userns::enter(ns)?;
    }
    security::drop_capabilities()?;
    if cfg.no_new_privs {
        security::set_no_new_privs()?;
    }
    security::install_seccomp(seccomp)?;
    marks.mark("pid1_ready");
    // One write, so the line arrives whole; the pipe closes unwritten-to on exec.
    let _ = report.write_all(format!("{PID1_MARKS}{}\n", marks.0).as_bytes());
    let e = execve(&argv[0], &argv, &envp).unwrap_err();
    Err(format!("exec {DAEMON_PATH}: {e}"))
}
