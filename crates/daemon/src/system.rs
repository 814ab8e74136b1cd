//! Sandbox-wide information and settings: listening ports, `/init`, `/env`, `/system/metrics`.

use std::{collections::BTreeSet, fs, path::PathBuf, time::Duration};

use axum::{Json, extract::Path, extract::State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    environment::{EnvChanges, EnvUpdate},
    error::{AnyJson, ApiError},
    server::AppState,
};

/// TCP state `LISTEN` in `/proc/net/tcp*`.
const TCP_LISTEN: &str = "0A";

/// Ports with a listening TCP socket (IPv4 or IPv6) in the sandbox's network namespace.
pub fn listening_ports() -> BTreeSet<u16> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .flat_map(|text| parse_listening(&text))
        .collect()
}

/// Local ports of the `LISTEN` rows of a `/proc/net/tcp` table.
pub fn parse_listening(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let local = fields.get(1)?;
            if *fields.get(3)? != TCP_LISTEN {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

pub async fn ports() -> Json<Value> {
    let ports: Vec<u16> = listening_ports().into_iter().collect();
    Json(json!({ "ports": ports }))
}

pub async fn port_in_use(Path(port): Path<String>) -> Result<Json<Value>, ApiError> {
    let port: u16 =
        port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            ApiError::bad_request(format!("port: not a TCP port number: {port:?}"))
        })?;
    Ok(Json(
        json!({ "isInUse": listening_ports().contains(&port) }),
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct InitializeRequest {
    pub token: Option<String>,
}

/// The runner's hello. The token is for upstream's telemetry, which this daemon does not
/// send, so only its shape is checked.
pub async fn initialize(AnyJson(request): AnyJson<InitializeRequest>) -> Json<Value> {
    let message = if request.token.is_some_and(|t| !t.is_empty()) {
        "initialized (telemetry token ignored: this daemon sends no telemetry)"
    } else {
        "initialized"
    };
    Json(json!({ "message": message }))
}

pub async fn update_env(
    State(state): State<AppState>,
    AnyJson(update): AnyJson<EnvUpdate>,
) -> Result<Json<EnvChanges>, ApiError> {
    let changes = state.env().update(update)?;
    tracing::info!(set = ?changes.set, unset = ?changes.unset, "process environment updated");
    Ok(Json(changes))
}

/// `GET /system/metrics`: what the sandbox may use (its cgroup limits), not the host's totals.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemMetrics {
    pub cpu_count: u64,
    pub cpu_used_pct: f64,
    pub mem_total: u64,
    pub mem_used: u64,
    pub mem_cache: u64,
    pub disk_total: u64,
    pub disk_used: u64,
    pub disk_free: u64,
    pub timestamp: String,
    pub timestamp_unix: i64,
}

/// CPU usage is measured over this window.
const CPU_SAMPLE: Duration = Duration::from_millis(200);

pub async fn metrics() -> Result<Json<SystemMetrics>, ApiError> {
    let cgroup = Cgroup::detect();
    let first = cgroup.cpu_usage_ns();
    let started = std::time::Instant::now();
    tokio::time::sleep(CPU_SAMPLE).await;
    let second = cgroup.cpu_usage_ns();
    let elapsed_ns = started.elapsed().as_nanos() as f64;
    let cpu_count = cgroup.cpu_limit().unwrap_or_else(host_cpus);
    let cpu_used_pct = match (first, second) {
        (Some(a), Some(b)) if b >= a => {
            ((b - a) as f64 / (elapsed_ns * cpu_count as f64) * 100.0).min(100.0)
        }
        _ => 0.0,
    };
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let host_total = meminfo_kib(&meminfo, "MemTotal").map(|k| k * 1024);
    let host_available = meminfo_kib(&meminfo, "MemAvailable").map(|k| k * 1024);
    let mem_total = cgroup
        .memory_limit()
        .into_iter()
        .chain(host_total)
        .min()
        .unwrap_or(0);
    let mem_used = cgroup.memory_usage().unwrap_or_else(|| {
        host_total
            .zip(host_available)
            .map(|(t, a)| t.saturating_sub(a))
            .unwrap_or(0)
    });
    let mem_cache = cgroup
        .memory_cache()
        .or_else(|| meminfo_kib(&meminfo, "Cached").map(|k| k * 1024))
        .unwrap_or(0);
    let disk = nix::sys::statvfs::statvfs("/")
        .map_err(|e| ApiError::internal(format!("statvfs /: {e}")))?;
    let block = disk.fragment_size() as u64;
    let disk_total = disk.blocks() as u64 * block;
    let disk_free = disk.blocks_available() as u64 * block;
    let disk_used = disk_total.saturating_sub(disk.blocks_free() as u64 * block);
    let now = chrono::Utc::now();
    Ok(Json(SystemMetrics {
        cpu_count,
        cpu_used_pct,
        mem_total,
        mem_used,
        mem_cache,
        disk_total,
        disk_used,
        disk_free,
        timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        timestamp_unix: now.timestamp(),
    }))
}

fn host_cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The daemon's own cgroup (the sandbox's), v2 unified or v1 per-controller.
#[derive(Debug)]
enum Cgroup {
    V2(PathBuf),
    V1 {
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
    },
}

impl Cgroup {
    fn detect() -> Self {
        let membership = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::from_membership(&membership, &PathBuf::from("/sys/fs/cgroup"))
    }

    /// Picks the cgroup directories from `/proc/self/cgroup`; with a cgroup namespace the
    /// path is `/` and the mount root is the sandbox's own group.
    fn from_membership(membership: &str, mount: &std::path::Path) -> Self {
        let dir = |base: PathBuf, rel: &str| {
            let nested = base.join(rel.trim_start_matches('/'));
            if nested.is_dir() { nested } else { base }
        };
        let mut cpu = None;
        let mut memory = None;
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(rel)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let list: Vec<&str> = controllers.split(',').collect();
            if list.contains(&"cpuacct") {
                let name = if list.contains(&"cpu") {
                    "cpu,cpuacct"
                } else {
                    "cpuacct"
                };
                cpu = Some(dir(mount.join(name), rel));
            }
            if list.contains(&"memory") {
                memory = Some(dir(mount.join("memory"), rel));
            }
        }
        if cpu.is_none() && memory.is_none() && mount.join("cgroup.controllers").exists() {
            let rel = membership
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/");
            return Self::V2(dir(mount.to_path_buf(), rel));
        }
        Self::V1 { cpu, memory }
    }

    fn read(dir: Option<&PathBuf>, file: &str) -> Option<String> {
        fs::read_to_string(dir?.join(file))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    fn stat(dir: Option<&PathBuf>, file: &str, key: &str) -> Option<u64> {
        Self::read(dir, file)?.lines().find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }

    fn cpu_usage_ns(&self) -> Option<u64> {
        match self {
            Self::V2(dir) => Self::stat(Some(dir), "cpu.stat", "usage_usec").map(|u| u * 1000),
            Self::V1 { cpu, .. } => Self::read(cpu.as_ref(), "cpuacct.usage")?.parse().ok(),
        }
    }

    fn cpu_limit(&self) -> Option<u64> {
        let (quota, period) = match self {
            Self::V2(dir) => {
                let max = Self::read(Some(dir), "cpu.max")?;
                let mut parts = max.split_whitespace();
                (
                    parts.next()?.parse::<f64>().ok()?,
                    parts.next()?.parse::<f64>().ok()?,
                )
            }
            Self::V1 { cpu, .. } => (
                Self::read(cpu.as_ref(), "cpu.cfs_quota_us")?
                    .parse::<f64>()
                    .ok()?,
                Self::read(cpu.as_ref(), "cpu.cfs_period_us")?
                    .parse::<f64>()
                    .ok()?,
            ),
        };
        (quota > 0.0 && period > 0.0)
            .then(|| ((quota / period).ceil() as u64).clamp(1, host_cpus()))
    }

    /// No limit reads as `max` (v2) or a huge number (v1); both count as "none".
    fn memory_limit(&self) -> Option<u64> {
        let raw = match self {
            Self::V2(dir) => Self::read(Some(dir), "memory.max")?,
            Self::V1 { memory, .. } => Self::read(memory.as_ref(), "memory.limit_in_bytes")?,
        };
        raw.parse().ok().filter(|l| *l < (1u64 << 60))
    }

    fn memory_usage(&self) -> Option<u64> {
        match self {
            Self::V2(dir) => Self::read(Some(dir), "memory.current")?.parse().ok(),
            Self::V1 { memory, .. } => Self::read(memory.as_ref(), "memory.usage_in_bytes")?
                .parse()
                .ok(),
        }
    }

    fn memory_cache(&self) -> Option<u64> {
        match self {
            Self::V2(dir) => Self::stat(Some(dir), "memory.stat", "file"),
            Self::V1 { memory, .. } => Self::stat(memory.as_ref(), "memory.stat", "total_cache")
                .or_else(|| Self::stat(memory.as_ref(), "memory.stat", "cache")),
        }
    }
}

/// Toolbox areas that need a desktop (X server, VNC, ffmpeg) this server does not provide.
pub fn unsupported_feature(path: &str) -> Option<&'static str> {
    if path.starts_with("/computeruse/recordings") {
        Some("screen recording")
    } else if path.starts_with("/computeruse") {
        Some("computer use")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_rows_are_picked() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
           0: 00000000:08E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000\n\
           1: 0100007F:1F90 0100007F:A2C4 01 00000000:00000000 00:00000000 00000000  1000\n\
           2: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(parse_listening(table), vec![2280, 80]);
    }

    #[test]
    fn meminfo_values_are_read() {
        let text = "MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\nCached: 12 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal"), Some(16_000_000));
        assert_eq!(meminfo_kib(text, "Cached"), Some(12));
        assert_eq!(meminfo_kib(text, "Mem"), None);
    }

    #[test]
    fn v1_limits_are_read_from_the_own_group() {
        let mount = tempfile::tempdir().unwrap();
        let cpu = mount.path().join("cpu,cpuacct/sbx");
        let memory = mount.path().join("memory/sbx");
        fs::create_dir_all(&cpu).unwrap();
        fs::create_dir_all(&memory).unwrap();
        fs::write(cpu.join("cpu.cfs_quota_us"), "100000\n").unwrap();
        fs::write(cpu.join("cpu.cfs_period_us"), "100000\n").unwrap();
        fs::write(cpu.join("cpuacct.usage"), "5000\n").unwrap();
        fs::write(memory.join("memory.limit_in_bytes"), "1073741824\n").unwrap();
        fs::write(memory.join("memory.usage_in_bytes"), "1000\n").unwrap();
        fs::write(memory.join("memory.stat"), "cache 7\ntotal_cache 9\n").unwrap();
        let group =
            Cgroup::from_membership("4:cpu,cpuacct:/sbx\n3:memory:/sbx\n0::/sbx\n", mount.path());
        assert_eq!(group.cpu_limit(), Some(1));
        assert_eq!(group.cpu_usage_ns(), Some(5000));
        assert_eq!(group.memory_limit(), Some(1 << 30));
        assert_eq!(group.memory_usage(), Some(1000));
        assert_eq!(group.memory_cache(), Some(9));
    }

    #[test]
    fn v2_unlimited_memory_is_none() {
        let mount = tempfile::tempdir().unwrap();
        fs::write(mount.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        fs::write(mount.path().join("memory.max"), "max\n").unwrap();
        fs::write(mount.path().join("cpu.max"), "200000 100000\n").unwrap();
        let group = Cgroup::from_membership("0::/\n", mount.path());
        assert_eq!(group.memory_limit(), None);
        assert_eq!(group.cpu_limit(), Some(2.min(host_cpus())));
    }
}
