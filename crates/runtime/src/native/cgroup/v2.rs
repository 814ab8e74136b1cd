//! cgroup v2: one unified directory `<root>/<parent>/<id>`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    CPU_PERIOD_US, Cgroups, FREEZE_TIMEOUT, Limits, SandboxUsage, cpu_cores, kill_until_empty,
    no_cgroup, read_counter, read_number, read_value, remove_dir, wait_until, write_file,
};

const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

#[derive(Debug)]
pub struct CgroupV2 {
    /// `<root>/<parent>`, the cgroup holding every sandbox.
    parent: PathBuf,
}

impl CgroupV2 {
    pub fn new(parent: PathBuf) -> Self {
        CgroupV2 { parent }
    }

    /// Delegates the controllers we limit from `dir`'s parent chain down to its children.
    fn enable_controllers(dir: &Path) -> io::Result<()> {
        let available = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
        for c in CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
        {
            // Each controller on its own so one the host refuses does not block the others.
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
        Ok(())
    }

    fn existing(&self, id: &str) -> io::Result<PathBuf> {
        let dir = self.parent.join(id);
        if dir.exists() {
            Ok(dir)
        } else {
            Err(no_cgroup(id))
        }
    }

    fn write_if_present(path: &Path, value: &str) -> io::Result<()> {
        if path.exists() {
            write_file(path, value)
        } else {
            Ok(())
        }
    }
}

impl Cgroups for CgroupV2 {
    fn create(&self, id: &str, limits: &Limits) -> io::Result<()> {
        if let Some(root) = self.parent.parent() {
            Self::enable_controllers(root)?;
        }
        std::fs::create_dir_all(&self.parent)?;
        Self::enable_controllers(&self.parent)?;
        let dir = self.parent.join(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", dir.display())))?;
        self.set_limits(id, limits)
    }

    fn set_limits(&self, id: &str, limits: &Limits) -> io::Result<()> {
        let dir = self.existing(id)?;
        let quota = limits
            .cpu_quota_us
            .map_or_else(|| "max".to_owned(), |q| q.to_string());
        Self::write_if_present(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
        let memory = limits
            .memory_bytes
            .map_or_else(|| "max".to_owned(), |b| b.to_string());
        Self::write_if_present(&dir.join("memory.max"), &memory)?;
        // No swap, as on v1 (memsw == limit).
        Self::write_if_present(&dir.join("memory.swap.max"), "0")?;
        let pids = limits
            .pids_max
            .map_or_else(|| "max".to_owned(), |m| m.to_string());
        Self::write_if_present(&dir.join("pids.max"), &pids)
    }

    fn join_files(&self, id: &str) -> Vec<PathBuf> {
        vec![self.parent.join(id).join("cgroup.procs")]
    }

    fn dirs(&self, id: &str) -> Vec<PathBuf> {
        vec![self.parent.join(id)]
    }

    fn kill_all(&self, id: &str, timeout: Duration) -> io::Result<()> {
        let dir = self.parent.join(id);
        if !dir.exists() {
            return Ok(());
        }
        // cgroup.kill (Linux 5.14+) kills atomically, forks included; older kernels get the loop.
        let kill = dir.join("cgroup.kill");
        if kill.exists() {
            write_file(&kill, "1")?;
        }
        kill_until_empty(&dir.join("cgroup.procs"), timeout)
    }

    fn remove(&self, id: &str) -> io::Result<()> {
        remove_dir(&self.parent.join(id))
    }

    fn oom_kills(&self, id: &str) -> io::Result<Option<u64>> {
        read_counter(&self.parent.join(id).join("memory.events"), "oom_kill")
    }

    fn usage(&self, id: &str) -> io::Result<Option<SandboxUsage>> {
        let dir = self.parent.join(id);
        if !dir.exists() {
            return Ok(None);
        }
        let cpu_max = read_value(&dir.join("cpu.max"))?.unwrap_or_default();
        let mut cpu_max = cpu_max.split_whitespace();
        Ok(Some(SandboxUsage {
            cpu_ns: read_counter(&dir.join("cpu.stat"), "usage_usec")?.unwrap_or(0) * 1000,
            cpu_limit: cpu_cores(cpu_max.next(), cpu_max.next()),
            memory_bytes: read_number(&dir.join("memory.current"))?.unwrap_or(0),
            memory_cache_bytes: read_counter(&dir.join("memory.stat"), "file")?.unwrap_or(0),
            memory_limit_bytes: read_number(&dir.join("memory.max"))?,
            ..SandboxUsage::default()
        }))
    }

    fn freeze(&self, id: &str) -> io::Result<()> {
        let dir = self.existing(id)?;
        write_file(&dir.join("cgroup.freeze"), "1")?;
        // `frozen 1` appears in cgroup.events once every task has stopped.
        wait_until("freezing", FREEZE_TIMEOUT, || self.is_frozen(id))
    }

    fn thaw(&self, id: &str) -> io::Result<()> {
        match self.existing(id) {
            Ok(dir) => write_file(&dir.join("cgroup.freeze"), "0"),
            Err(_) => Ok(()),
        }
    }

    fn is_frozen(&self, id: &str) -> io::Result<bool> {
        Ok(read_counter(&self.parent.join(id).join("cgroup.events"), "frozen")? == Some(1))
    }
}
