//! Per-sandbox cgroups: resource limits and "kill everything". One [`Cgroups`] trait with a v1
//! (one hierarchy per controller) and a v2 (unified) implementation, chosen from the host's mode.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::SandboxUsage;

mod v1;
mod v2;

pub use v1::CgroupV1;
pub use v2::CgroupV2;

/// CFS period used for CPU quotas: 100 ms, so `cpu` cores = `cpu * 100 ms` per period.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Limits for one sandbox; `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub cpu_quota_us: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids_max: Option<u64>,
}

impl Limits {
    /// From the API's units: whole cores and GiB; zero means unlimited.
    pub fn new(cpu: u32, memory_gib: u32, pids_max: u64) -> Self {
        Limits {
            cpu_quota_us: (cpu > 0).then(|| u64::from(cpu) * CPU_PERIOD_US),
            memory_bytes: (memory_gib > 0).then(|| u64::from(memory_gib) << 30),
            pids_max: (pids_max > 0).then_some(pids_max),
        }
    }
}

/// Devices a sandbox may open (cgroup v1 `devices.allow` syntax), as in Docker's default minus
/// `/dev/console` (sandboxes have none): creating any node is allowed (`m`), opening only null,
/// zero, full, random, urandom, tty, ptmx and the pty slaves.
///
/// On cgroup v2 the same list would need a BPF device program; there the sandbox relies on its
/// mounts alone: every filesystem it can write to is mounted `nodev`, so a node it creates
/// cannot be opened, and the only usable nodes are the ones bind-mounted into its `/dev`.
pub const ALLOWED_DEVICES: [&str; 10] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

pub trait Cgroups: Send + Sync + std::fmt::Debug {
    /// Creates the sandbox's cgroup(s) if missing and (re)applies `limits`.
    fn create(&self, id: &str, limits: &Limits) -> io::Result<()>;
    /// Changes the limits of existing cgroups (live resize). Lowering memory below what the
    /// sandbox uses fails with `EBUSY` on v1 after the kernel tried to reclaim.
    fn set_limits(&self, id: &str, limits: &Limits) -> io::Result<()>;
    /// How many processes the kernel's OOM killer has killed in the sandbox since its cgroups
    /// were created (i.e. since it last started); `None` if it has no cgroups.
    fn oom_kills(&self, id: &str) -> io::Result<Option<u64>>;
    /// CPU time and memory the sandbox's cgroups account, with their limits (disk fields
    /// zero); `None` if it has no cgroups.
    fn usage(&self, id: &str) -> io::Result<Option<SandboxUsage>>;
    /// Stops every process of the sandbox (the freezer); returns once all are frozen.
    fn freeze(&self, id: &str) -> io::Result<()>;
    /// Undoes [`Cgroups::freeze`]; a no-op for a sandbox that is not frozen or has no cgroups.
    fn thaw(&self, id: &str) -> io::Result<()>;
    /// Whether the sandbox's processes are frozen.
    fn is_frozen(&self, id: &str) -> io::Result<bool>;
    /// Files a single-threaded process writes `0` into to move itself into every hierarchy.
    fn join_files(&self, id: &str) -> Vec<PathBuf>;
    /// Directories that exist for the sandbox while it has cgroups (used by leak checks too).
    fn dirs(&self, id: &str) -> Vec<PathBuf>;
    /// SIGKILLs every process in the sandbox's cgroup and waits until it is empty.
    fn kill_all(&self, id: &str, timeout: Duration) -> io::Result<()>;
    /// Removes the sandbox's cgroup(s); missing ones are fine. Call after `kill_all`.
    fn remove(&self, id: &str) -> io::Result<()>;
}

/// Picks v2 when the host mounts the unified hierarchy at `root`, v1 otherwise.
/// `parent` is the cgroup (below each hierarchy's root) that holds all sandboxes.
pub fn detect(root: &Path, parent: &str) -> Box<dyn Cgroups> {
    if root.join("cgroup.controllers").exists() {
        Box::new(CgroupV2::new(root.join(parent)))
    } else {
        Box::new(CgroupV1::new(root, parent))
    }
}

/// PIDs listed in a `cgroup.procs` file; a missing cgroup has none.
fn read_pids(procs: &Path) -> io::Result<Vec<i32>> {
    match std::fs::read_to_string(procs) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// SIGKILLs whatever `procs` lists until it is empty. The pid namespace makes this nearly always
/// a single round (killing the sandbox's PID 1 takes its whole namespace down).
fn kill_until_empty(procs: &Path, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = read_pids(procs)?;
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} still lists {pids:?}", procs.display()),
            ));
        }
        sigkill(&pids);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sigkill(pids: &[i32]) {
    for pid in pids {
        // ESRCH: it exited meanwhile.
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
}

/// rmdir that tolerates a missing directory and retries briefly while the kernel still
/// accounts exiting tasks to the cgroup (EBUSY).
fn remove_dir(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("rmdir {}: {e}", dir.display()),
                ));
            }
        }
    }
}

/// Reads the counter `key` from a flat-keyed control file (`memory.events`,
/// `memory.oom_control`); a missing file means no cgroup.
/// The trimmed contents of a cgroup file; `None` if it does not exist.
fn read_value(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A number in a cgroup file; `None` if it does not exist or holds no number (`max`, `-1`).
fn read_number(path: &Path) -> io::Result<Option<u64>> {
    Ok(read_value(path)?.and_then(|v| v.parse().ok()))
}

/// Cores from a CFS quota and period in microseconds; no quota (`max`, `-1`) is no limit.
fn cpu_cores(quota: Option<&str>, period: Option<&str>) -> Option<f64> {
    let quota: f64 = quota?.parse().ok().filter(|q: &f64| *q > 0.0)?;
    let period: f64 = period?.parse().ok().filter(|p: &f64| *p > 0.0)?;
    Some(quota / period)
}

fn read_counter(path: &Path, key: &str) -> io::Result<Option<u64>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0),
    ))
}

/// Polls `done` every 2 ms until it holds or `timeout` passes.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> io::Result<bool>,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} did not happen within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn no_cgroup(id: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("sandbox {id} has no cgroup (not running)"),
    )
}

/// How long the freezer may take to stop every task.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes a control file, naming it in the error.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value:?} to {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_key() {
        let dir = std::env::temp_dir().join(format!("dt-counter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("memory.events");
        std::fs::write(&file, "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n").unwrap();
        assert_eq!(read_counter(&file, "oom_kill").unwrap(), Some(2));
        assert_eq!(read_counter(&file, "oom_group_kill").unwrap(), Some(0));
        assert_eq!(
            read_counter(&dir.join("missing"), "oom_kill").unwrap(),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn limits_from_api_units() {
        let l = Limits::new(2, 4, 4096);
        assert_eq!(l.cpu_quota_us, Some(200_000));
        assert_eq!(l.memory_bytes, Some(4 << 30));
        assert_eq!(l.pids_max, Some(4096));
        assert_eq!(
            Limits::new(0, 0, 0),
            Limits {
                cpu_quota_us: None,
                memory_bytes: None,
                pids_max: None
            }
        );
    }
}
