//! Host-side memory accounting: /proc and the sandboxes' cgroups. Only meaningful when the
//! benchmark runs on the server's machine (as root, to read other processes' smaps).

use std::path::{Path, PathBuf};

use crate::error::{BenchError, Result};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup below each hierarchy that holds every sandbox (the native runtime's layout).
const CGROUP_PARENT: &str = "daytona";

/// A `key: value kB` or `key value` line's number.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?;
        let rest = rest.strip_prefix(':').unwrap_or(rest);
        if !rest.starts_with(char::is_whitespace) {
            return None; // a longer key with the same prefix
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| BenchError::io(format!("read {}", path.display()), e))
}

/// A `/proc/meminfo` field in KiB.
pub fn meminfo_kib(key: &str) -> Option<u64> {
    field(&std::fs::read_to_string("/proc/meminfo").ok()?, key)
}

/// Host memory in use: `MemTotal - MemAvailable` (KiB).
pub fn host_used_kib() -> Option<u64> {
    Some(meminfo_kib("MemTotal")?.saturating_sub(meminfo_kib("MemAvailable")?))
}

/// Host kernel memory that no cgroup may be charged for (loop devices, mounts, kernel threads
/// all land here): `Slab + KernelStack + PageTables` (KiB).
pub fn host_kernel_kib() -> Option<u64> {
    Some(meminfo_kib("Slab")? + meminfo_kib("KernelStack")? + meminfo_kib("PageTables")?)
}

/// Resident set of a process (KiB).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    field(&read(&path)?, "VmRSS")
        .ok_or_else(|| BenchError::Host(format!("no VmRSS in {}", path.display())))
}

/// Proportional set size of a process (KiB): shared pages split between their users, so a
/// sum over processes counts each page once.
pub fn pss_kib(pid: u32) -> Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
    field(&read(&path)?, "Pss")
        .ok_or_else(|| BenchError::Host(format!("no Pss in {}", path.display())))
}

/// What a sandbox's memory cgroup holds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SandboxMemory {
    pub processes: usize,
    /// Sum of the processes' PSS.
    pub pss_kib: u64,
    /// Sum of the processes' RSS (shared pages counted in full: what one sandbox alone costs).
    pub rss_kib: u64,
    /// Kernel memory charged to the cgroup (slab, stacks, page tables, sockets).
    pub kernel_kib: u64,
    /// Page cache charged to the cgroup (files read or written; shared image files are charged
    /// to whichever sandbox touched them first).
    pub file_kib: u64,
}

/// The memory cgroup directory of a sandbox (v2 unified, else the v1 memory hierarchy).
fn memory_cgroup(id: &str) -> PathBuf {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").exists() {
        root.join(CGROUP_PARENT).join(id)
    } else {
        root.join("memory").join(CGROUP_PARENT).join(id)
    }
}

pub fn sandbox_memory(id: &str) -> Result<SandboxMemory> {
    let dir = memory_cgroup(id);
    if !dir.is_dir() {
        return Err(BenchError::Host(format!(
            "no memory cgroup {} for sandbox {id}: memory can only be measured on the server's machine",
            dir.display()
        )));
    }
    cgroup_memory(&dir)
}

/// The memory cgroup directory a process belongs to (from `/proc/<pid>/cgroup`).
pub fn memory_cgroup_of(pid: u32) -> Result<PathBuf> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = read(&path)?;
    let root = Path::new(CGROUP_ROOT);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, rel) = (parts.next(), parts.next(), parts.next());
        let rel = rel.unwrap_or_default().trim_start_matches('/');
        match controllers {
            Some(c) if c.split(',').any(|c| c == "memory") => {
                return Ok(root.join("memory").join(rel));
            }
            Some("") if root.join("cgroup.controllers").exists() => return Ok(root.join(rel)),
            _ => {}
        }
    }
    Err(BenchError::Host(format!(
        "no memory cgroup in {}",
        path.display()
    )))
}

/// Memory of the processes in a memory cgroup and what the cgroup charges beyond them.
pub fn cgroup_memory(dir: &Path) -> Result<SandboxMemory> {
    let procs: Vec<u32> = read(&dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    // A process may exit between listing and reading; it then holds no memory.
    let pss_kib = procs.iter().filter_map(|pid| pss_kib(*pid).ok()).sum();
    let rss_kib = procs.iter().filter_map(|pid| rss_kib(*pid).ok()).sum();
    let stat = read(&dir.join("memory.stat"))?;
    let (kernel_bytes, file_bytes) = if dir.join("memory.kmem.usage_in_bytes").exists() {
        let kmem = read(&dir.join("memory.kmem.usage_in_bytes"))?;
        (
            kmem.trim().parse().unwrap_or(0),
            field(&stat, "cache").unwrap_or(0),
        )
    } else {
        (v2_kernel_bytes(&stat), field(&stat, "file").unwrap_or(0))
    };
    Ok(SandboxMemory {
        processes: procs.len(),
        pss_kib,
        rss_kib,
        kernel_kib: kernel_bytes / 1024,
        file_kib: file_bytes / 1024,
    })
}

/// Pids of processes whose command name (`/proc/<pid>/comm`) starts with `prefix`.
pub fn pids_named(prefix: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(prefix))
        })
        .collect()
}

/// cgroup v2 `memory.stat`: the `kernel` total where the kernel reports it, else its parts.
fn v2_kernel_bytes(stat: &str) -> u64 {
    field(stat, "kernel").unwrap_or_else(|| {
        [
            "kernel_stack",
            "pagetables",
            "percpu",
            "sock",
            "slab",
            "vmalloc",
        ]
        .iter()
        .filter_map(|k| field(stat, k))
        .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_and_without_colon() {
        let status = "Name:\tdaytona\nVmRSSx: 1 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(field(status, "VmRSS"), Some(12345));
        let stat = "cache 4096\ntotal_cache 8192\nrss 1\n";
        assert_eq!(field(stat, "cache"), Some(4096));
        assert_eq!(field(stat, "missing"), None);
    }

    #[test]
    fn v2_kernel_total_or_parts() {
        assert_eq!(v2_kernel_bytes("anon 1\nkernel 700\nslab 300\n"), 700);
        assert_eq!(
            v2_kernel_bytes("anon 1\nkernel_stack 100\npagetables 20\nslab 300\n"),
            420
        );
    }

    #[test]
    fn own_process_has_rss_and_pss() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(pss_kib(pid).unwrap() > 0);
        assert!(host_used_kib().unwrap() > 0);
        assert!(host_kernel_kib().unwrap() > 0);
    }

    #[test]
    fn own_memory_cgroup_is_readable() {
        let dir = memory_cgroup_of(std::process::id()).unwrap();
        let m = cgroup_memory(&dir).unwrap();
        assert!(m.processes >= 1, "{m:?} in {}", dir.display());
        let me = pids_named("daytona_bench");
        assert!(me.contains(&std::process::id()), "{me:?}");
    }

    #[test]
    fn unknown_sandbox_is_a_clear_error() {
        let err = sandbox_memory("no-such-sandbox").unwrap_err().to_string();
        assert!(
            err.contains("no memory cgroup") && err.contains("no-such-sandbox"),
            "{err}"
        );
    }
}
