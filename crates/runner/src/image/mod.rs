//! The runner's local image store: resolves `oci-archive:`, `oci:` and `docker-archive:`
//! references to root filesystems unpacked once into a content-addressed directory
//! (`<root>/rootfs/<manifest digest hex>`), shared read-only by every sandbox of that image.

mod commit;
mod error;
mod reference;
mod source;
mod unpack;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use commit::CommittedImage;
pub use error::ImageError;
use error::IoContext;
use reference::{Located, Transport};
use source::{Plan, RunConfig};

/// A resolved image: its unpacked root filesystem and the runtime part of its config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<hex>` of the image manifest (of the config, for legacy docker archives).
    pub digest: String,
    /// Unpacked root filesystem; never modify it (sandboxes mount it as an overlay lower dir).
    pub rootfs: PathBuf,
    /// `Env` of the image config, split at the first `=`.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

impl Image {
    fn new(plan_id: &str, rootfs: PathBuf, config: &RunConfig) -> Self {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Image {
            digest: format!("sha256:{plan_id}"),
            rootfs,
            env: config
                .env
                .iter()
                .flatten()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (kv.clone(), String::new()),
                })
                .collect(),
            workdir: non_empty(&config.working_dir),
            user: non_empty(&config.user),
            entrypoint: config.entrypoint.clone().unwrap_or_default(),
            cmd: config.cmd.clone().unwrap_or_default(),
        }
    }
}

/// Identity of a source file as of its last resolution; any change means read it again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceStamp {
    len: u64,
    mtime: Option<SystemTime>,
    dev: u64,
    ino: u64,
}

impl SourceStamp {
    /// Archives are stamped by the file itself; layout directories by their `index.json`
    /// (blobs are immutable by digest, so an unchanged index means an unchanged image).
    fn of(located: &Located) -> Result<Self, ImageError> {
        let file = match located.transport {
            Transport::OciDir => located.path.join("index.json"),
            Transport::OciArchive | Transport::DockerArchive => located.path.clone(),
        };
        let meta = match std::fs::metadata(&file) {
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && located.transport == Transport::OciDir =>
            {
                return Err(ImageError::malformed(
                    located.path.display().to_string(),
                    "no index.json: not an OCI image layout",
                ));
            }
            other => other.ctx(|| format!("stat {}", file.display()))?,
        };
        Ok(SourceStamp {
            len: meta.len(),
            mtime: meta.modified().ok(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// What the blocking inspection found: a still-valid earlier answer, or a plan to realise.
enum Inspection {
    Cached(Image),
    Planned {
        key: Located,
        stamp: SourceStamp,
        plan: Plan,
    },
}

/// Local, content-addressed image store. Cheap to clone; clones share caches and locks.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    resolutions: Mutex<HashMap<Located, (SourceStamp, Image)>>,
    /// One lock per image digest, so concurrent resolves of one image share a single unpack.
    unpack_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    unpacks: AtomicU64,
}

impl ImageStore {
    /// A store keeping its files under `root` (created on first unpack).
    pub fn new(root: PathBuf) -> Self {
        ImageStore {
            inner: Arc::new(Inner {
                root,
                resolutions: Mutex::new(HashMap::new()),
                unpack_locks: Mutex::new(HashMap::new()),
                unpacks: AtomicU64::new(0),
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// How many images this store has unpacked since it was created (cache misses on disk).
    pub fn unpack_count(&self) -> u64 {
        self.inner.unpacks.load(Ordering::Relaxed)
    }

    /// Resolves `oci-archive:PATH[:TAG]`, `oci:DIR[:TAG]` or `docker-archive:PATH[:TAG]` to an
    /// unpacked image, unpacking it first if this store has not yet. Registry references fail
    /// with [`ImageError::Unsupported`].
    pub async fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let parsed = reference::parse(reference)?;
        let inner = self.inner.clone();
        let inspection = blocking(move || inner.inspect(&parsed)).await?;
        let (key, stamp, plan) = match inspection {
            Inspection::Cached(image) => {
                debug!(reference, digest = %image.digest, "image resolved from cache");
                return Ok(image);
            }
            Inspection::Planned { key, stamp, plan } => (key, stamp, plan),
        };
        let rootfs = self.ensure_unpacked(&plan).await?;
        let image = Image::new(&plan.id, rootfs, &plan.config);
        self.inner
            .resolutions
            .lock()
            .expect("resolution cache poisoned")
            .insert(key, (stamp, image.clone()));
        Ok(image)
    }

    /// A new image: the image `base` plus the layer `changes` (an uncompressed layer tar, e.g.
    /// a sandbox's changes), stored as an OCI layout in this store. Resolve its reference to
    /// unpack it.
    pub async fn commit(
        &self,
        base: &str,
        changes: Box<dyn std::io::Read + Send>,
    ) -> Result<CommittedImage, ImageError> {
        let root = self.inner.root.clone();
        let base = base.to_owned();
        blocking(move || commit::commit(&root, &base, changes)).await
    }

    /// Unpacks `plan` unless its rootfs exists; concurrent callers for one digest wait for the first.
    async fn ensure_unpacked(&self, plan: &Plan) -> Result<PathBuf, ImageError> {
        let rootfs = self.inner.rootfs_dir(&plan.id);
        let lock = self
            .inner
            .unpack_locks
            .lock()
            .expect("unpack locks poisoned")
            .entry(plan.id.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        if is_dir(&rootfs) {
            return Ok(rootfs);
        }
        let inner = self.inner.clone();
        let plan = plan.clone();
        blocking(move || inner.unpack(&plan)).await
    }
}

impl Inner {
    fn rootfs_dir(&self, id: &str) -> PathBuf {
        self.root.join("rootfs").join(id)
    }

    fn inspect(&self, parsed: &reference::LocalReference) -> Result<Inspection, ImageError> {
        let mut key = parsed.locate()?;
        key.path =
            std::fs::canonicalize(&key.path).ctx(|| format!("resolve {}", key.path.display()))?;
        let stamp = SourceStamp::of(&key)?;
        let cached = self
            .resolutions
            .lock()
            .expect("resolution cache poisoned")
            .get(&key)
            .cloned();
        if let Some((cached_stamp, image)) = cached
            && cached_stamp == stamp
            && is_dir(&image.rootfs)
        {
            return Ok(Inspection::Cached(image));
        }
        let plan = source::plan(&key)?;
        Ok(Inspection::Planned { key, stamp, plan })
    }

    /// Unpacks into a private temp dir, then renames it into place: a crash never leaves a
    /// partial tree under `rootfs/`.
    fn unpack(&self, plan: &Plan) -> Result<PathBuf, ImageError> {
        let started = Instant::now();
        let final_dir = self.rootfs_dir(&plan.id);
        let tmp_root = self.root.join("tmp");
        for dir in [&tmp_root, &self.root.join("rootfs")] {
            std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        }
        self.remove_stale_temps(&tmp_root, &plan.id);
        let tmp = tmp_root.join(format!("{}.{}", plan.id, std::process::id()));
        std::fs::create_dir(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        info!(image = %plan.id, layers = plan.layers.len(), "unpacking image");
        let result = unpack::unpack(plan, &tmp).and_then(|stats| {
            unpack::sync_filesystem(&tmp).ctx(|| format!("sync {}", tmp.display()))?;
            std::fs::rename(&tmp, &final_dir)
                .ctx(|| format!("rename into {}", final_dir.display()))?;
            Ok(stats)
        });
        match result {
            Ok(stats) => {
                self.unpacks.fetch_add(1, Ordering::Relaxed);
                info!(
                    image = %plan.id,
                    layers = plan.layers.len(),
                    compressed_bytes = stats.compressed_bytes,
                    bytes = stats.uncompressed_bytes,
                    entries = stats.entries,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "image unpacked"
                );
                Ok(final_dir)
            }
            Err(e) => {
                if let Err(cleanup) = std::fs::remove_dir_all(&tmp) {
                    warn!(dir = %tmp.display(), error = %cleanup, "could not remove failed unpack");
                }
                Err(e)
            }
        }
    }

    /// Temp dirs of this digest left by a crashed unpack; the caller holds the digest's lock.
    fn remove_stale_temps(&self, tmp_root: &Path, id: &str) {
        let Ok(entries) = std::fs::read_dir(tmp_root) else {
            return;
        };
        let prefix = format!("{id}.");
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let path = entry.path();
                info!(dir = %path.display(), "removing interrupted unpack");
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    warn!(dir = %path.display(), error = %e, "could not remove interrupted unpack");
                }
            }
        }
    }
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

/// Runs filesystem-heavy work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
}
