//! Per-sandbox directory layout and the persisted state file.
//!
//! `<state_dir>/sandboxes/<id>/`: `state.json`; the writable layer, either `disk.img` (an ext4
//! image holding `upper/` and `work/`, mounted on `disk/` inside the sandbox's mount namespace
//! only) or, without a disk limit, `upper/` and `work/` directly; `rootfs/` (the overlay mount
//! point, mounted only inside the sandbox's mount namespace); `init.json` (what the init
//! process is told) and `daemon.log` (the daemon's stdout/stderr).

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::process::ProcessIdentity;
use super::userns::IdMap;
use crate::SandboxSpec;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxState {
    pub spec: SandboxSpec,
    /// Allocated at create and kept until destroy, so a restarted sandbox keeps its address.
    pub ip: Ipv4Addr,
    /// The sandbox's PID 1 while it runs.
    pub process: Option<ProcessIdentity>,
    /// The writable layer lives on `disk.img`. Sandboxes without a disk limit, and those
    /// created before disk limits existed, keep it in `upper/` on the host's filesystem.
    #[serde(default)]
    pub disk_image: bool,
    /// The sandbox's user namespace ids, chosen at create (its files are owned by them); `None`:
    /// it runs with host ids.
    #[serde(default)]
    pub id_map: Option<IdMap>,
}

#[derive(Debug, Clone)]
pub struct SandboxPaths {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub rootfs: PathBuf,
    pub init_config: PathBuf,
    pub log: PathBuf,
    /// ext4 image with the writable layer (sandboxes with a disk limit).
    pub disk_image: PathBuf,
    /// Where the sandbox's PID 1 mounts the image, inside its own mount namespace.
    pub disk_mount: PathBuf,
    /// Present while a disk resize is under way; holds the target size in GiB.
    pub disk_resize: PathBuf,
}

impl SandboxPaths {
    pub fn new(sandboxes_dir: &Path, id: &str) -> Self {
        let dir = sandboxes_dir.join(id);
        SandboxPaths {
            state: dir.join("state.json"),
            upper: dir.join("upper"),
            work: dir.join("work"),
            rootfs: dir.join("rootfs"),
            init_config: dir.join("init.json"),
            log: dir.join("daemon.log"),
            disk_image: dir.join("disk.img"),
            disk_mount: dir.join("disk"),
            disk_resize: dir.join("disk.resize"),
            dir,
        }
    }

    /// Overlay upper and work dirs: on the disk image's filesystem (paths valid only inside the
    /// sandbox's mount namespace), or on the host's.
    pub fn layer(&self, on_disk_image: bool) -> (PathBuf, PathBuf) {
        if on_disk_image {
            (self.disk_mount.join("upper"), self.disk_mount.join("work"))
        } else {
            (self.upper.clone(), self.work.clone())
        }
    }

    /// The state, or `None` if the sandbox has none (never created, or destroyed).
    pub fn load(&self) -> io::Result<Option<SandboxState>> {
        match std::fs::read(&self.state) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.state.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the state file atomically, so a crash leaves the old or the new state.
    pub fn save(&self, state: &SandboxState) -> io::Result<()> {
        let tmp = self.state.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
        std::fs::rename(&tmp, &self.state)
    }
}
