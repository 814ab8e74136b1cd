//! A small pool of sandbox disks made ahead of demand: fresh images (sparse copies of the
//! per-size template) already attached to a loop device and mounted as *detached* ext4 mounts.
//! Attaching and mounting take the kernel several milliseconds (RCU grace periods, the journal
//! thread), which a create that takes a pooled disk no longer waits for.
//!
//! Rules that keep it from leaking or sharing anything:
//! - an item is used by one sandbox only, never returned: a taken image is renamed into the
//!   sandbox's directory (the loop device follows the rename) and its mount handed to the
//!   sandbox's init; the pool makes a new one in the background;
//! - a pooled mount exists only as a descriptor of this process (attached nowhere), so the
//!   kernel unmounts it and clears its loop device when the process exits, however it exits;
//! - image files live in `<state_dir>/disk-pool/`; ones no loop device backs (left by a process
//!   that died) are removed when a pool starts, and a pool removes its own when dropped;
//! - sizes are learned from demand (a size is pooled once a sandbox asked for it), at most
//!   [`MAX_SIZES`] sizes with [`PER_SIZE`] disks each.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tracing::{debug, warn};

use super::disk;

/// Disks kept ready per size.
const PER_SIZE: usize = 2;
/// Sizes kept ready at once; a new size beyond them is not pooled.
const MAX_SIZES: usize = 4;

/// A mounted, empty sandbox disk.
pub struct PooledDisk {
    image: PathBuf,
    mount: OwnedFd,
}

impl PooledDisk {
    /// Moves the image to `target` (a sandbox's `disk.img`, on the same filesystem) and returns
    /// its detached mount.
    pub fn install(self, target: &Path) -> std::io::Result<OwnedFd> {
        match std::fs::rename(&self.image, target) {
            Ok(()) => Ok(self.mount),
            Err(e) => {
                let _ = std::fs::remove_file(&self.image);
                Err(e)
            }
        }
    }
}

#[derive(Default)]
struct State {
    ready: HashMap<u32, Vec<PooledDisk>>,
    closed: bool,
}

struct Shared {
    dir: PathBuf,
    templates: PathBuf,
    state: Mutex<State>,
    wake: Condvar,
    serial: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A size that has fewer disks than wanted, if any.
    fn wanted(state: &State) -> Option<u32> {
        state
            .ready
            .iter()
            .find(|(_, disks)| disks.len() < PER_SIZE)
            .map(|(gib, _)| *gib)
    }

    fn make(&self, gib: u32) -> std::io::Result<PooledDisk> {
        let image = self.dir.join(format!(
            "{}-{}-{gib}g.img",
            std::process::id(),
            self.serial.fetch_add(1, Ordering::Relaxed)
        ));
        disk::create_image(&image, gib, &self.templates)?;
        match disk::mount_image(&image) {
            Ok(mount) => Ok(PooledDisk { image, mount }),
            Err(e) => {
                let _ = std::fs::remove_file(&image);
                Err(e)
            }
        }
    }

    /// The background worker: tops sizes up until the pool closes.
    fn refill(&self) {
        let mut state = self.lock();
        loop {
            if state.closed {
                return;
            }
            let Some(gib) = Self::wanted(&state) else {
                state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            drop(state);
            let made = self.make(gib);
            state = self.lock();
            match made {
                Ok(disk) if !state.closed => {
                    state.ready.entry(gib).or_default().push(disk);
                }
                Ok(disk) => {
                    let _ = std::fs::remove_file(&disk.image);
                }
                Err(e) => {
                    // Creates fall back to making their own disk; stop pooling this size.
                    warn!(gib, error = %e, "cannot prepare a pooled sandbox disk; size no longer pooled");
                    state.ready.remove(&gib);
                }
            }
        }
    }
}

pub struct DiskPool {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl DiskPool {
    /// A pool keeping its images in `dir` and making them from the templates in `templates`.
    /// Removes images in `dir` that no loop device backs (left by a process that died).
    pub fn new(dir: PathBuf, templates: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if disk::attached_loops(&path).is_empty() {
                debug!(image = %path.display(), "removing an unused pooled disk");
                let _ = std::fs::remove_file(&path);
            }
        }
        let shared = Arc::new(Shared {
            dir,
            templates,
            state: Mutex::default(),
            wake: Condvar::new(),
            serial: AtomicU64::new(0),
        });
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("disk-pool".to_owned())
                .spawn(move || shared.refill())?
        };
        Ok(DiskPool {
            shared,
            worker: Some(worker),
        })
    }

    /// A ready disk of `gib` GiB, if there is one; either way the pool (re)fills that size.
    pub fn take(&self, gib: u32) -> Option<PooledDisk> {
        let mut state = self.shared.lock();
        let sizes = state.ready.len();
        let disk = match state.ready.get_mut(&gib) {
            Some(disks) => disks.pop(),
            None if sizes < MAX_SIZES => {
                state.ready.insert(gib, Vec::new());
                None
            }
            None => None,
        };
        self.shared.wake.notify_one();
        disk
    }
}

impl Drop for DiskPool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let disks: Vec<PooledDisk> = self
            .shared
            .lock()
            .ready
            .drain()
            .flat_map(|(_, d)| d)
            .collect();
        for disk in disks {
            // The mount goes with the descriptor, the loop device with the mount.
            let _ = std::fs::remove_file(&disk.image);
        }
    }
}
