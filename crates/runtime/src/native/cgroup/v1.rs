//! cgroup v1: one directory per controller hierarchy, `<root>/<controller>/<parent>/<id>`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    ALLOWED_DEVICES, CPU_PERIOD_US, Cgroups, FREEZE_TIMEOUT, Limits, SandboxUsage, cpu_cores,
    kill_until_empty, no_cgroup, read_counter, read_number, read_pids, read_value, remove_dir,
    sigkill, wait_until, write_file,
};

/// Controllers a sandbox joins: the three we limit, the freezer (pause, and kills that cannot
/// race with forks), the device allow-list and CPU accounting (telemetry).
const CONTROLLERS: [&str; 6] = ["cpu", "memory", "pids", "freezer", "devices", "cpuacct"];

/// `memory.limit_in_bytes` of an unlimited cgroup is the page counter's maximum (about 2^63).
const UNLIMITED_MEMORY: u64 = 1 << 60;

#[derive(Debug)]
pub struct CgroupV1 {
    /// `(controller, <hierarchy>/<parent>)` for every controller the host mounts; co-mounted
    /// controllers (`cpu,cpuacct`) are listed once.
    hierarchies: Vec<(&'static str, PathBuf)>,
}

impl CgroupV1 {
    pub fn new(root: &Path, parent: &str) -> Self {
        let mut hierarchies: Vec<(&'static str, PathBuf)> = Vec::new();
        let mut seen = Vec::new();
        for controller in CONTROLLERS {
            let Ok(mount) = root.join(controller).canonicalize() else {
                continue;
            };
            if !seen.contains(&mount) {
                seen.push(mount.clone());
                hierarchies.push((controller, mount.join(parent)));
            }
        }
        CgroupV1 { hierarchies }
    }

    fn dir(&self, controller: &str, id: &str) -> Option<PathBuf> {
        self.hierarchies
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, p)| p.join(id))
    }

    fn set_memory(dir: &Path, bytes: Option<u64>) -> io::Result<()> {
        let value = bytes.map_or_else(|| "-1".to_owned(), |b| b.to_string());
        let limit = dir.join("memory.limit_in_bytes");
        // memsw (memory + swap) equal to the memory limit means no swap. The kernel requires
        // memsw >= limit at every step, so the order depends on the direction of the change.
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if write_file(&limit, &value).is_err() {
            write_file(&memsw, &value)?;
            write_file(&limit, &value)?;
        } else if memsw.exists() {
            write_file(&memsw, &value)?;
        }
        Ok(())
    }

    fn set_freezer(dir: &Path, state: &str) -> io::Result<()> {
        write_file(&dir.join("freezer.state"), state)?;
        if state == "FROZEN" {
            // Freezing is asynchronous: FREEZING until every task has stopped.
            wait_until("freezing", FREEZE_TIMEOUT, || {
                Ok(std::fs::read_to_string(dir.join("freezer.state"))?.trim() == "FROZEN")
            })?;
        }
        Ok(())
    }

    /// The sandbox's freezer cgroup, if the host has the controller and the sandbox runs.
    fn freezer(&self, id: &str) -> Option<PathBuf> {
        self.dir("freezer", id).filter(|d| d.exists())
    }

    /// Deny every device, then allow the list (a fresh cgroup inherits "allow all").
    fn restrict_devices(dir: &Path) -> io::Result<()> {
        write_file(&dir.join("devices.deny"), "a")?;
        for rule in ALLOWED_DEVICES {
            write_file(&dir.join("devices.allow"), rule)?;
        }
        Ok(())
    }
}

impl Cgroups for CgroupV1 {
    fn create(&self, id: &str, limits: &Limits) -> io::Result<()> {
        for (controller, parent) in &self.hierarchies {
            let dir = parent.join(id);
            std::fs::create_dir_all(&dir)
                .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", dir.display())))?;
            if *controller == "devices" {
                Self::restrict_devices(&dir)?;
            }
        }
        self.set_limits(id, limits)
    }

    fn set_limits(&self, id: &str, limits: &Limits) -> io::Result<()> {
        for (controller, parent) in &self.hierarchies {
            let dir = parent.join(id);
            if !dir.exists() {
                return Err(no_cgroup(id));
            }
            match *controller {
                "cpu" => {
                    write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    let quota = limits
                        .cpu_quota_us
                        .map_or_else(|| "-1".to_owned(), |q| q.to_string());
                    write_file(&dir.join("cpu.cfs_quota_us"), &quota)?;
                }
                "memory" => Self::set_memory(&dir, limits.memory_bytes)?,
                "pids" => {
                    let max = limits
                        .pids_max
                        .map_or_else(|| "max".to_owned(), |m| m.to_string());
                    write_file(&dir.join("pids.max"), &max)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `tasks`, not `cgroup.procs`: moving only the calling thread skips the kernel's global
    /// threadgroup lock (since Linux 6.0), whose write side waits for an RCU grace period
    /// (milliseconds) on every join. For a single-threaded process the result is the same.
    fn join_files(&self, id: &str) -> Vec<PathBuf> {
        self.dirs(id).into_iter().map(|d| d.join("tasks")).collect()
    }

    fn dirs(&self, id: &str) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|(_, p)| p.join(id)).collect()
    }

    fn kill_all(&self, id: &str, timeout: Duration) -> io::Result<()> {
        let Some(any) = self.hierarchies.first().map(|(_, p)| p.join(id)) else {
            return Ok(());
        };
        let freezer = self.freezer(id);
        if let Some(dir) = &freezer {
            Self::set_freezer(dir, "FROZEN")?;
        }
        // Frozen tasks cannot fork; SIGKILL is queued and acts when they thaw.
        let procs = freezer.as_ref().unwrap_or(&any).join("cgroup.procs");
        sigkill(&read_pids(&procs)?);
        if let Some(dir) = &freezer {
            Self::set_freezer(dir, "THAWED")?;
        }
        kill_until_empty(&procs, timeout)
    }

    fn oom_kills(&self, id: &str) -> io::Result<Option<u64>> {
        match self.dir("memory", id) {
            // `oom_kill` in memory.oom_control exists since Linux 4.13.
            Some(dir) => read_counter(&dir.join("memory.oom_control"), "oom_kill"),
            None => Ok(None),
        }
    }

    fn usage(&self, id: &str) -> io::Result<Option<SandboxUsage>> {
        let Some(memory) = self.dir("memory", id).filter(|d| d.exists()) else {
            return Ok(None);
        };
        let cpu = self.dir("cpu", id);
        // `cpuacct` is its own hierarchy here unless the host co-mounts it with `cpu`.
        let cpuacct = self.dir("cpuacct", id).or_else(|| cpu.clone());
        let cpu_ns = match &cpuacct {
            Some(dir) => read_number(&dir.join("cpuacct.usage"))?.unwrap_or(0),
            None => 0,
        };
        let cpu_limit = match &cpu {
            Some(dir) => cpu_cores(
                read_value(&dir.join("cpu.cfs_quota_us"))?.as_deref(),
                read_value(&dir.join("cpu.cfs_period_us"))?.as_deref(),
            ),
            None => None,
        };
        Ok(Some(SandboxUsage {
            cpu_ns,
            cpu_limit,
            memory_bytes: read_number(&memory.join("memory.usage_in_bytes"))?.unwrap_or(0),
            memory_cache_bytes: read_counter(&memory.join("memory.stat"), "cache")?.unwrap_or(0),
            memory_limit_bytes: read_number(&memory.join("memory.limit_in_bytes"))?
                .filter(|l| *l < UNLIMITED_MEMORY),
            ..SandboxUsage::default()
        }))
    }

    fn freeze(&self, id: &str) -> io::Result<()> {
        if self.dir("freezer", id).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the host has no cgroup v1 freezer controller",
            ));
        }
        let dir = self.freezer(id).ok_or_else(|| no_cgroup(id))?;
        Self::set_freezer(&dir, "FROZEN")
    }

    fn thaw(&self, id: &str) -> io::Result<()> {
        match self.freezer(id) {
            Some(dir) => Self::set_freezer(&dir, "THAWED"),
            None => Ok(()),
        }
    }

    fn is_frozen(&self, id: &str) -> io::Result<bool> {
        let Some(dir) = self.freezer(id) else {
            return Ok(false);
        };
        match std::fs::read_to_string(dir.join("freezer.state")) {
            Ok(state) => Ok(state.trim() != "THAWED"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn remove(&self, id: &str) -> io::Result<()> {
        for dir in self.dirs(id) {
            remove_dir(&dir)?;
        }
        Ok(())
    }
}
