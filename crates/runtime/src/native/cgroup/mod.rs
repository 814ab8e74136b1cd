//! Per-sandbox cgroups: resource limits and "kill everything". One [`Cgroups`] trait with a v1
//! (one hierarchy per controller) and a v2 (unified) implementation, chosen from the host's mode.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

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

pub trait Cgroups: Send + Sync + std::fmt::Debug {
    /// Creates the sandbox's cgroup(s) if missing and (re)applies `limits`.
    fn create(&self, id: &str, limits: &Limits) -> io::Result<()>;
    /// `cgroup.procs` files a process writes its PID into to join every hierarchy.
    fn procs_files(&self, id: &str) -> Vec<PathBuf>;
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
