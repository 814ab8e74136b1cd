//! Taking a sandbox's files elsewhere: its changes as an image layer (snapshot), a copy of its
//! disk for a new sandbox (fork), and its whole disk as a stream and back (archive/restore).
//!
//! The writable layer lives on the sandbox's ext4 image, mounted only inside the sandbox. To
//! read it from the host, the runtime makes a *detached* mount of the same filesystem
//! (`disk::mount_attached` shares the running sandbox's superblock; a stopped sandbox's image is
//! attached afresh), reachable only through its descriptor (`/proc/self/fd/N`), gone when the
//! descriptor closes. A running sandbox is frozen (cgroup freezer) while its files are read,
//! so the copy is consistent; a sandbox the user paused stays paused.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::OwnedMutexGuard;
use tracing::info;

use super::state::SandboxState;
use super::{Inner, KILL_TIMEOUT, disk, layer, sparse};
use crate::{Result, RuntimeError};

/// The sandbox's writable layer, reachable from the host while this value lives.
pub(super) enum WritableLayer {
    /// Sandboxes without a disk limit keep it in a host directory.
    Host(PathBuf),
    /// A detached mount of the disk image's filesystem.
    Mounted {
        mount: OwnedFd,
        _device: Option<File>,
    },
}

impl WritableLayer {
    /// The overlay upper directory.
    pub fn upper(&self) -> PathBuf {
        match self {
            WritableLayer::Host(upper) => upper.clone(),
            WritableLayer::Mounted { mount, .. } => {
                PathBuf::from(format!("/proc/self/fd/{}/upper", mount.as_raw_fd()))
            }
        }
    }

    /// Flushes the filesystem, so the image file holds everything written so far.
    pub fn sync(&self) -> io::Result<()> {
        let WritableLayer::Mounted { mount, .. } = self else {
            return Ok(());
        };
        // The mount descriptor is O_PATH, which syncfs refuses: open the mount's root.
        let root = File::open(format!("/proc/self/fd/{}", mount.as_raw_fd()))?;
        // SAFETY: syncfs on an owned descriptor.
        if unsafe { libc::syncfs(root.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Whether the sandbox's processes run (and whether the user paused them).
#[derive(Debug, Clone, Copy)]
struct Liveness {
    running: bool,
    paused: bool,
}

impl Inner {
    fn liveness(&self, state: &SandboxState) -> Result<Liveness> {
        let running = state.process.as_ref().is_some_and(|p| p.is_alive());
        let paused = running
            && self
                .cgroups
                .is_frozen(&state.spec.id)
                .map_err(|e| RuntimeError::io("read freezer state", e))?;
        Ok(Liveness { running, paused })
    }

    fn writable_layer(&self, state: &SandboxState, live: Liveness) -> Result<WritableLayer> {
        let paths = self.paths(&state.spec.id);
        if !state.disk_image {
            return Ok(WritableLayer::Host(paths.upper));
        }
        let mounted = if live.running {
            disk::mount_attached(&paths.disk_image).map(|(mount, device)| (mount, Some(device)))
        } else {
            disk::wait_detached(&paths.disk_image, KILL_TIMEOUT)
                .and_then(|()| disk::mount_image(&paths.disk_image))
                .map(|mount| (mount, None))
        };
        let (mount, device) = mounted.map_err(|e| {
            RuntimeError::io(format!("mount the disk of sandbox {}", state.spec.id), e)
        })?;
        Ok(WritableLayer::Mounted {
            mount,
            _device: device,
        })
    }

    /// Runs `work` with the sandbox's processes frozen (if they run and are not paused already).
    fn frozen<T>(&self, id: &str, live: Liveness, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let freeze = live.running && !live.paused;
        if freeze {
            self.cgroups
                .freeze(id)
                .map_err(|e| RuntimeError::io(format!("freeze sandbox {id}"), e))?;
        }
        let started = Instant::now();
        let result = work();
        if freeze {
            let thawed = self.thaw(id);
            info!(sandbox = %id, frozen_ms = started.elapsed().as_millis() as u64, "sandbox thawed");
            thawed?;
        }
        result
    }

    /// Writes the sandbox's changes as an uncompressed OCI layer tar to `out`.
    pub(super) fn export_changes(&self, id: &str, out: impl io::Write) -> Result<()> {
        let state = self
            .load(id)?
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let live = self.liveness(&state)?;
        let layer = self.writable_layer(&state, live)?;
        let stats = self.frozen(id, live, || {
            layer::write_layer(&layer.upper(), out)
                .map_err(|e| RuntimeError::io(format!("write the changes of sandbox {id}"), e))
        })?;
        info!(sandbox = %id, ?stats, "sandbox changes exported");
        Ok(())
    }

    /// Copies the disk image of `source` (frozen and flushed if it runs) to `dest`.
    pub(super) fn copy_disk(&self, source: &SandboxState, dest: &Path) -> Result<()> {
        let id = &source.spec.id;
        if !source.disk_image {
            return Err(RuntimeError::InvalidState {
                id: id.clone(),
                reason: "only sandboxes with a disk size can be copied".to_owned(),
            });
        }
        let live = self.liveness(source)?;
        let image = self.paths(id).disk_image;
        let started = Instant::now();
        let copied = if live.running {
            let layer = self.writable_layer(source, live)?;
            self.frozen(id, live, || {
                layer
                    .sync()
                    .and_then(|()| disk::copy_image(&image, dest))
                    .map_err(|e| RuntimeError::io(format!("copy the disk of sandbox {id}"), e))
            })
        } else {
            disk::wait_detached(&image, KILL_TIMEOUT)
                .and_then(|()| disk::copy_image(&image, dest))
                .map_err(|e| RuntimeError::io(format!("copy the disk of sandbox {id}"), e))
        };
        info!(sandbox = %id, running = live.running, copy_ms = started.elapsed().as_millis() as u64, "disk copied");
        copied
    }

    /// A stopped sandbox's disk image, opened for export.
    pub(super) fn open_stopped_disk(&self, id: &str) -> Result<File> {
        let state = self
            .load(id)?
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let invalid = |reason: &str| RuntimeError::InvalidState {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        if self.liveness(&state)?.running {
            return Err(invalid(
                "its filesystem can only be exported while it is stopped",
            ));
        }
        if !state.disk_image {
            return Err(invalid("only sandboxes with a disk size can be exported"));
        }
        let image = self.paths(id).disk_image;
        disk::wait_detached(&image, KILL_TIMEOUT)
            .and_then(|()| File::open(&image))
            .map_err(|e| RuntimeError::io(format!("open {}", image.display()), e))
    }
}

/// A disk image as the sparse stream; the sandbox's lock is held until the reader is dropped,
/// so it cannot start while being exported.
pub(super) struct DiskExport {
    pub reader: sparse::SparseReader,
    pub _guard: OwnedMutexGuard<()>,
}

impl Read for DiskExport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

/// Reads what a worker thread writes into a pipe; the worker's error (if any) is returned
/// where the data ends, so a failed export never looks like a short, complete one.
pub(super) struct Produced {
    pipe: Option<io::PipeReader>,
    worker: Option<JoinHandle<io::Result<()>>>,
}

impl Produced {
    pub fn spawn(
        name: &str,
        work: impl FnOnce(&mut io::PipeWriter) -> io::Result<()> + Send + 'static,
    ) -> io::Result<Self> {
        let (pipe, mut writer) = io::pipe()?;
        let worker = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || work(&mut writer))?;
        Ok(Produced {
            pipe: Some(pipe),
            worker: Some(worker),
        })
    }
}

impl Read for Produced {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(0);
        };
        let n = pipe.read(buf)?;
        if n == 0
            && let Some(worker) = self.worker.take()
        {
            worker
                .join()
                .map_err(|_| io::Error::other("the export worker panicked"))??;
        }
        Ok(n)
    }
}

impl Drop for Produced {
    fn drop(&mut self) {
        // Closing our end makes the worker's writes fail, so it ends (thawing the sandbox);
        // wait for that rather than leaving it detached.
        drop(self.pipe.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
