//! cgroup v1: one directory per controller hierarchy, `<root>/<controller>/<parent>/<id>`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    CPU_PERIOD_US, Cgroups, Limits, kill_until_empty, read_pids, remove_dir, sigkill, write_file,
};

/// Controllers a sandbox joins: the three we limit, plus the freezer so a kill cannot race
/// with forks.
const CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "freezer"];

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

    fn freeze(dir: &Path, state: &str) -> io::Result<()> {
        write_file(&dir.join("freezer.state"), state)?;
        if state == "FROZEN" {
            // Freezing is asynchronous: FREEZING until every task has stopped.
            let deadline = Instant::now() + Duration::from_secs(1);
            while std::fs::read_to_string(dir.join("freezer.state"))?.trim() != "FROZEN"
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(2));
            }
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

    fn procs_files(&self, id: &str) -> Vec<PathBuf> {
        self.dirs(id)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn dirs(&self, id: &str) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|(_, p)| p.join(id)).collect()
    }

    fn kill_all(&self, id: &str, timeout: Duration) -> io::Result<()> {
        let Some(any) = self.hierarchies.first().map(|(_, p)| p.join(id)) else {
            return Ok(());
        };
        let freezer = self.dir("freezer", id).filter(|d| d.exists());
        if let Some(dir) = &freezer {
            Self::freeze(dir, "FROZEN")?;
        }
        // Frozen tasks cannot fork; SIGKILL is queued and acts when they thaw.
        let procs = freezer.as_ref().unwrap_or(&any).join("cgroup.procs");
        sigkill(&read_pids(&procs)?);
        if let Some(dir) = &freezer {
            Self::freeze(dir, "THAWED")?;
        }
        kill_until_empty(&procs, timeout)
    }

    fn remove(&self, id: &str) -> io::Result<()> {
        for dir in self.dirs(id) {
            remove_dir(&dir)?;
        }
        Ok(())
    }
}
