//! The runner's local image store. Images come from registries (`ubuntu:22.04`,
//! `host:port/repo:tag`, `repo@sha256:…`) or local archives (`oci-archive:`, `oci:`,
//! `docker-archive:`). Each layer is unpacked once, in overlayfs' own whiteout format, into a
//! content-addressed directory shared by every image that contains it; sandboxes stack an
//! image's layer directories as overlay lower dirs.
//!
//! On disk, under the store's root:
//! - `layers/<diff id hex>/`: an unpacked layer (appears only complete: temp dir + rename);
//! - `images/<manifest digest hex>.json`: an image's layer list and runtime config;
//! - `refs/<sha256 of the reference>.json`: which image a registry reference was last pulled as;
//! - `layer-aliases/<diff id hex>.json`: a layer whose files another layer directory already
//!   holds (a registry layer written back as a blob for a committed image has a diff id of its
//!   own; resolving that image reuses the directory it came from);
//! - `committed/`: images made by [`ImageStore::commit`] and by builds (see `commit.rs`);
//! - `pushed/<registry hash>/<blob hex>.json`: a repository the blob was pushed to (see `push.rs`);
//! - `build-cache/<key>.json`: the image each build step produced (see `build.rs`);
//! - `builds/<id>/`: scratch space of a build in progress;
//! - `tmp/`: downloads and unpacks in progress (emptied by [`ImageStore::gc`]);
//! - `rootfs/<digest hex>/`: flattened images of earlier versions, kept while sandboxes use them.

pub mod build;
mod commit;
pub mod dockerfile;
mod error;
mod push;
mod reference;
mod registry;
mod source;
mod unpack;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tracing::{debug, info, warn};

pub use commit::CommittedImage;
use commit::{Base, BaseLayer};
pub use error::ImageError;
use error::IoContext;
pub use push::PushedImage;
use reference::{ImageReference, LocalReference, Located, Transport};
pub use registry::{RegistryCredentials, RegistrySettings};
use registry::{Remote, RemoteManifest};
pub use source::RunConfig;
use source::{BlobLocation, LayerPlan, Plan};

/// A resolved image: its unpacked layers and the runtime part of its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// `sha256:<hex>` of the image manifest (of the config, for legacy docker archives).
    pub digest: String,
    /// Unpacked layers, bottom first; never modify them (sandboxes mount them as overlay
    /// lower dirs, and other images share them).
    pub layers: Vec<PathBuf>,
    /// `Env` of the image config, split at the first `=`.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

impl Image {
    fn new(record: &ImageRecord, layers: Vec<PathBuf>) -> Self {
        let config = &record.config;
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Image {
            digest: format!("sha256:{}", record.id),
            layers,
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

/// An image that garbage collection leaves alone while this value lives: hold it until the
/// sandbox made from it has been created (its spec then names the layers).
pub struct PinnedImage {
    pub image: Image,
    _lease: OwnedRwLockReadGuard<()>,
}

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub images: usize,
    pub layers: usize,
}

/// `images/<id>.json`: everything needed to use an image without its source.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    /// Manifest digest hex.
    id: String,
    /// Diff id hex of each layer, bottom first.
    layers: Vec<String>,
    config: RunConfig,
}

/// `layer-aliases/<diff id>.json`: the layer directory that holds this layer's files.
#[derive(Debug, Serialize, Deserialize)]
struct LayerAlias {
    layer: String,
}

/// `build-cache/<key>.json`: the image a build step produced (see `build.rs`).
#[derive(Debug, Serialize, Deserialize)]
struct BuildCacheEntry {
    reference: String,
}

/// `refs/<hash>.json`: the image a registry reference resolved to when last pulled.
#[derive(Debug, Serialize, Deserialize)]
struct RefRecord {
    reference: String,
    id: String,
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

/// What the blocking inspection of a local source found.
enum Inspection {
    Cached(Image),
    Planned {
        key: Located,
        stamp: SourceStamp,
        plan: Plan,
    },
}

/// A layer's bytes, ready to unpack; `download` is a temp file to delete afterwards.
struct FetchedLayer {
    plan: LayerPlan,
    download: Option<PathBuf>,
}

type LockMap = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// Local, content-addressed image store. Cheap to clone; clones share caches and locks.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    registries: RegistrySettings,
    resolutions: Mutex<HashMap<Located, (SourceStamp, Image)>>,
    /// One lock per diff id: concurrent pulls of images sharing a layer fetch it once.
    layer_locks: LockMap,
    /// One lock per registry reference: concurrent pulls of one image do the work once.
    pull_locks: LockMap,
    /// Read: resolving, pulling, or holding a [`PinnedImage`]; write: garbage collection.
    gc_lock: Arc<RwLock<()>>,
    layers_unpacked: AtomicU64,
    layers_converted: AtomicU64,
    blob_fetches: AtomicU64,
    bytes_downloaded: AtomicU64,
    temp_seq: AtomicU64,
}

fn lock_for(map: &LockMap, key: &str) -> Arc<tokio::sync::Mutex<()>> {
    map.lock()
        .expect("lock map poisoned")
        .entry(key.to_owned())
        .or_default()
        .clone()
}

impl ImageStore {
    /// A store keeping its files under `root` (created on first use), pulling anonymously.
    pub fn new(root: PathBuf) -> Self {
        Self::with_registries(root, RegistrySettings::default())
    }

    /// A store that reaches registries as `registries` says (plain HTTP hosts, credentials).
    pub fn with_registries(root: PathBuf, registries: RegistrySettings) -> Self {
        ImageStore {
            inner: Arc::new(Inner {
                root,
                registries,
                resolutions: Mutex::new(HashMap::new()),
                layer_locks: Mutex::default(),
                pull_locks: Mutex::default(),
                gc_lock: Arc::new(RwLock::new(())),
                layers_unpacked: AtomicU64::new(0),
                layers_converted: AtomicU64::new(0),
                blob_fetches: AtomicU64::new(0),
                bytes_downloaded: AtomicU64::new(0),
                temp_seq: AtomicU64::new(0),
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Layers this store has unpacked since it was created (cache misses on disk).
    pub fn layers_unpacked(&self) -> u64 {
        self.inner.layers_unpacked.load(Ordering::Relaxed)
    }

    /// Unpacked layers written back as blobs by [`ImageStore::commit`] since the store was
    /// created (bases pulled from registries; each layer once).
    pub fn layers_converted(&self) -> u64 {
        self.inner.layers_converted.load(Ordering::Relaxed)
    }

    /// Blobs (configs and layers) fetched from registries since the store was created.
    pub fn blob_fetches(&self) -> u64 {
        self.inner.blob_fetches.load(Ordering::Relaxed)
    }

    /// Layer bytes received from registries since the store was created.
    pub fn bytes_downloaded(&self) -> u64 {
        self.inner.bytes_downloaded.load(Ordering::Relaxed)
    }

    /// The image `reference` names, from the store when it has it: a registry reference is
    /// pulled only the first time (later tag moves need [`ImageStore::pull`]); a local
    /// archive is read again only when the file changed.
    pub async fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        Ok(self.resolve_pinned(reference).await?.image)
    }

    /// [`ImageStore::resolve`], keeping the image safe from garbage collection while the
    /// result lives.
    pub async fn resolve_pinned(&self, reference: &str) -> Result<PinnedImage, ImageError> {
        let parsed = reference::parse(reference)?;
        let lease = self.inner.gc_lock.clone().read_owned().await;
        let image = match parsed {
            ImageReference::Local(local) => self.resolve_local(local).await?,
            ImageReference::Registry(remote) => self.pull_remote(remote, None, false).await?,
        };
        Ok(PinnedImage {
            image,
            _lease: lease,
        })
    }

    /// Makes the image available, asking the registry what a tag names now (a digest
    /// reference already in the store needs no registry). `credentials` win over the
    /// configured ones for the reference's registry. Local archives resolve as in
    /// [`ImageStore::resolve`].
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<Image, ImageError> {
        let parsed = reference::parse(reference)?;
        let _lease = self.inner.gc_lock.read().await;
        match parsed {
            ImageReference::Local(local) => self.resolve_local(local).await,
            ImageReference::Registry(remote) => self.pull_remote(remote, credentials, true).await,
        }
    }

    /// Removes images whose digest is not in `keep` (`sha256:<hex>`), then every layer that
    /// no remaining image uses and that is not in `in_use` (layers of existing sandboxes,
    /// listed once the store is locked, so a sandbox created meanwhile cannot be missed).
    /// Images pulled while the collection waited for running pulls to finish are kept.
    pub async fn gc<F>(&self, keep: &[String], in_use: F) -> Result<GcReport, ImageError>
    where
        F: Future<Output = Result<Vec<PathBuf>, String>> + Send,
    {
        let called = SystemTime::now();
        let keep: HashSet<String> = keep
            .iter()
            .filter_map(|d| source::sha256_hex_of(d).ok())
            .collect();
        let _exclusive = self.inner.gc_lock.write().await;
        let in_use: HashSet<PathBuf> = in_use
            .await
            .map_err(ImageError::GcAborted)?
            .into_iter()
            .collect();
        let inner = self.inner.clone();
        let report = blocking(move || inner.collect(&keep, &in_use, called)).await?;
        if report != GcReport::default() {
            info!(
                images = report.images,
                layers = report.layers,
                "image store collected"
            );
        }
        Ok(report)
    }

    async fn resolve_local(&self, parsed: LocalReference) -> Result<Image, ImageError> {
        let inner = self.inner.clone();
        let (key, stamp, plan) = match blocking(move || inner.inspect(&parsed)).await? {
            Inspection::Cached(image) => {
                debug!(digest = %image.digest, "image resolved from cache");
                return Ok(image);
            }
            Inspection::Planned { key, stamp, plan } => (key, stamp, plan),
        };
        let image = match self.load_image(&plan.id).await? {
            Some(image) => image,
            None => {
                let count = plan.layers.len();
                let mut diff_ids = Vec::with_capacity(count);
                for (i, layer) in plan.layers.iter().enumerate() {
                    let fetched = FetchedLayer {
                        plan: layer.clone(),
                        download: None,
                    };
                    let what = format!("layer {}/{count}", i + 1);
                    let fetch = async { Ok(fetched) };
                    diff_ids.push(
                        self.ensure_layer(layer.diff_id.as_deref(), &what, fetch)
                            .await?,
                    );
                }
                self.save_image(ImageRecord {
                    id: plan.id.clone(),
                    layers: diff_ids,
                    config: plan.config.clone(),
                })
                .await?
            }
        };
        self.inner
            .resolutions
            .lock()
            .expect("resolution cache poisoned")
            .insert(key, (stamp, image.clone()));
        Ok(image)
    }

    /// A new image: the image `base` plus the layer `changes` (an uncompressed layer tar, e.g.
    /// a sandbox's changes), stored as an OCI layout in this store. Resolve its reference to
    /// unpack it. `base` is any reference the store resolves; a registry image it does not have
    /// is pulled first.
    pub async fn commit(
        &self,
        base: &str,
        changes: Box<dyn std::io::Read + Send>,
    ) -> Result<CommittedImage, ImageError> {
        self.commit_with(base, Some(changes), None).await
    }

    /// [`ImageStore::commit`] with an optional layer and, when given, `config` instead of the
    /// base's (a build step: `RUN`/`COPY` add a layer, `ENV` & co only change the config).
    pub async fn commit_with(
        &self,
        base: &str,
        changes: Option<Box<dyn std::io::Read + Send>>,
        config: Option<RunConfig>,
    ) -> Result<CommittedImage, ImageError> {
        let parsed = reference::parse(base)?;
        // Held to the end: the base's layer directories are read while converting them.
        let _lease = self.inner.gc_lock.read().await;
        let inner = self.inner.clone();
        let base = match parsed {
            ImageReference::Local(local) => blocking(move || inner.local_base(&local)).await?,
            ImageReference::Registry(remote) => {
                let image = self.pull_remote(remote, None, false).await?;
                blocking(move || inner.unpacked_base(&image)).await?
            }
        };
        let mut base = base;
        if let Some(config) = config {
            base.config = config;
        }
        let inner = self.inner.clone();
        blocking(move || commit::commit(&inner, base, changes)).await
    }

    /// The full runtime config of an image of the store (labels and ports included).
    pub async fn config_of(&self, image: &Image) -> Result<RunConfig, ImageError> {
        let inner = self.inner.clone();
        let digest = image.digest.clone();
        blocking(move || {
            let id = source::sha256_hex_of(&digest)?;
            let record = inner
                .read_record(&id)?
                .ok_or_else(|| ImageError::malformed(&digest, "the store has no record of it"))?;
            Ok(record.config)
        })
        .await
    }

    /// The image reference a build step with cache key `key` produced earlier, if any.
    pub async fn cached_step(&self, key: &str) -> Result<Option<String>, ImageError> {
        let path = self.inner.build_cache_path(key);
        blocking(move || Ok(read_json::<BuildCacheEntry>(&path)?.map(|e| e.reference))).await
    }

    /// Records that the build step with cache key `key` produced `reference`.
    pub async fn record_step(&self, key: &str, reference: &str) -> Result<(), ImageError> {
        let inner = self.inner.clone();
        let path = inner.build_cache_path(key);
        let entry = BuildCacheEntry {
            reference: reference.to_owned(),
        };
        blocking(move || inner.write_json(&path, &entry)).await
    }

    /// The scratch directory of build `id` (its context and layer tars), not under `tmp/`:
    /// garbage collection empties that while builds run. Builds remove theirs when done.
    pub fn build_scratch(&self, id: &str) -> PathBuf {
        self.inner.root.join("builds").join(id)
    }

    /// Pulls `reference` unless the store has it (`refresh`: a tag is looked up again).
    async fn pull_remote(
        &self,
        reference: oci_client::Reference,
        credentials: Option<&RegistryCredentials>,
        refresh: bool,
    ) -> Result<Image, ImageError> {
        let name = reference.whole();
        let lock = lock_for(&self.inner.pull_locks, &name);
        let _one_at_a_time = lock.lock().await;
        if let Some(digest) = reference.digest() {
            if let Some(image) = self.load_image(&source::sha256_hex_of(digest)?).await? {
                return Ok(image);
            }
        } else if !refresh && let Some(image) = self.load_ref(&name).await? {
            return Ok(image);
        }
        let started = Instant::now();
        let remote = Remote::new(&self.inner.registries, reference, credentials);
        info!(reference = %name, "pulling image");
        let RemoteManifest { id, manifest } = remote.manifest().await?;
        let image = match self.load_image(&id).await? {
            Some(image) => image,
            None => {
                self.inner.blob_fetches.fetch_add(1, Ordering::Relaxed);
                let config = remote.config(&manifest.config).await?;
                let count = manifest.layers.len();
                let diff_ids = source::diff_ids(&config, count)?;
                let mut layers = Vec::with_capacity(count);
                for (i, (desc, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
                    let diff_id = diff_id.ok_or_else(|| {
                        ImageError::malformed(
                            &manifest.config.digest,
                            "the config lists no diff_ids",
                        )
                    })?;
                    let what = format!("layer {}/{count}", i + 1);
                    let fetch = self.download_layer(&remote, desc, &what);
                    layers.push(self.ensure_layer(Some(&diff_id), &what, fetch).await?);
                }
                self.save_image(ImageRecord {
                    id: id.clone(),
                    layers,
                    config: config.config.unwrap_or_default(),
                })
                .await?
            }
        };
        self.save_ref(&name, &id).await?;
        info!(
            reference = %name, digest = %image.digest, layers = image.layers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64, "image pulled"
        );
        Ok(image)
    }

    /// Downloads one layer blob into the store's temp dir.
    async fn download_layer(
        &self,
        remote: &Remote,
        desc: &source::Descriptor,
        what: &str,
    ) -> Result<FetchedLayer, ImageError> {
        let media_type = desc
            .media_type
            .as_deref()
            .unwrap_or("application/vnd.oci.image.layer.v1.tar");
        let compression = source::compression_of(media_type)?;
        let digest = source::sha256_hex_of(&desc.digest)?;
        let file = self.inner.temp_path("blob");
        create_dir_all(file.parent().expect("temp paths have a parent"))?;
        self.inner.blob_fetches.fetch_add(1, Ordering::Relaxed);
        info!(reference = %remote.reference(), layer = what, bytes = desc.size, "downloading layer");
        if let Err(e) = remote
            .download(desc, &file, what, &self.inner.bytes_downloaded)
            .await
        {
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
        Ok(FetchedLayer {
            plan: LayerPlan {
                location: BlobLocation {
                    file: file.clone(),
                    offset: 0,
                    len: desc.size,
                },
                compression,
                digest: Some(digest),
                diff_id: None,
            },
            download: Some(file),
        })
    }

    /// The layer's directory name (its diff id hex), unpacking it unless the store has it.
    /// With a known diff id, concurrent callers wait for one fetch and unpack.
    async fn ensure_layer(
        &self,
        diff_id: Option<&str>,
        what: &str,
        fetch: impl Future<Output = Result<FetchedLayer, ImageError>>,
    ) -> Result<String, ImageError> {
        let _guard = match diff_id {
            Some(diff_id) => {
                let lock = lock_for(&self.inner.layer_locks, diff_id);
                let guard = lock.lock_owned().await;
                let inner = self.inner.clone();
                let wanted = diff_id.to_owned();
                if let Some(dir) = blocking(move || inner.existing_layer(&wanted)).await? {
                    debug!(layer = what, diff_id, dir, "layer already in the store");
                    return Ok(dir);
                }
                Some(guard)
            }
            None => None,
        };
        let mut fetched = fetch.await?;
        fetched.plan.diff_id = diff_id.map(str::to_owned);
        let inner = self.inner.clone();
        let what = what.to_owned();
        blocking(move || {
            let result = inner.unpack_layer(&fetched.plan, &what);
            if let Some(file) = &fetched.download
                && let Err(e) = std::fs::remove_file(file)
            {
                warn!(file = %file.display(), error = %e, "could not remove a downloaded blob");
            }
            result
        })
        .await
    }

    async fn load_image(&self, id: &str) -> Result<Option<Image>, ImageError> {
        let inner = self.inner.clone();
        let id = id.to_owned();
        blocking(move || inner.load_image(&id)).await
    }

    async fn load_ref(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let inner = self.inner.clone();
        let reference = reference.to_owned();
        blocking(move || {
            let path = inner.ref_path(&reference);
            let Some(record) = read_json::<RefRecord>(&path)? else {
                return Ok(None);
            };
            inner.load_image(&record.id)
        })
        .await
    }

    async fn save_image(&self, record: ImageRecord) -> Result<Image, ImageError> {
        let inner = self.inner.clone();
        blocking(move || {
            let path = inner
                .root
                .join("images")
                .join(format!("{}.json", record.id));
            inner.write_json(&path, &record)?;
            let layers = record.layers.iter().map(|l| inner.layer_dir(l)).collect();
            Ok(Image::new(&record, layers))
        })
        .await
    }

    async fn save_ref(&self, reference: &str, id: &str) -> Result<(), ImageError> {
        let inner = self.inner.clone();
        let record = RefRecord {
            reference: reference.to_owned(),
            id: id.to_owned(),
        };
        blocking(move || inner.write_json(&inner.ref_path(&record.reference), &record)).await
    }
}

impl Inner {
    fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(diff_id)
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        let hash = hex::encode(Sha256::digest(reference.as_bytes()));
        self.root.join("refs").join(format!("{hash}.json"))
    }

    /// A fresh name in `tmp/`; leftovers of a crash are removed by the next collection.
    fn temp_path(&self, kind: &str) -> PathBuf {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{kind}-{}-{seq}", std::process::id()))
    }

    fn build_cache_path(&self, key: &str) -> PathBuf {
        self.root.join("build-cache").join(format!("{key}.json"))
    }

    fn alias_path(&self, diff_id: &str) -> PathBuf {
        self.root
            .join("layer-aliases")
            .join(format!("{diff_id}.json"))
    }

    /// The directory name under `layers/` holding the files of layer `diff_id`: its own, or
    /// the one it is an alias of.
    fn existing_layer(&self, diff_id: &str) -> Result<Option<String>, ImageError> {
        if is_dir(&self.layer_dir(diff_id)) {
            return Ok(Some(diff_id.to_owned()));
        }
        Ok(read_json::<LayerAlias>(&self.alias_path(diff_id))?
            .map(|alias| alias.layer)
            .filter(|layer| is_dir(&self.layer_dir(layer))))
    }

    /// Records that layer `alias` unpacks to the files of the layer directory `layer`.
    fn record_alias(&self, alias: &str, layer: &str) -> Result<(), ImageError> {
        let record = LayerAlias {
            layer: layer.to_owned(),
        };
        self.write_json(&self.alias_path(alias), &record)
    }

    fn read_record(&self, id: &str) -> Result<Option<ImageRecord>, ImageError> {
        read_json(&self.root.join("images").join(format!("{id}.json")))
    }

    /// A local archive or layout as a commit base: its blobs are at hand.
    fn local_base(&self, local: &LocalReference) -> Result<Base, ImageError> {
        let mut located = local.locate()?;
        located.path = std::fs::canonicalize(&located.path)
            .ctx(|| format!("resolve {}", located.path.display()))?;
        let plan = source::plan(&located)?;
        Ok(Base {
            config: plan.config,
            layers: plan.layers.into_iter().map(BaseLayer::Blob).collect(),
        })
    }

    /// An image of the store known only by its unpacked layers (a registry pull) as a commit
    /// base.
    fn unpacked_base(&self, image: &Image) -> Result<Base, ImageError> {
        let id = source::sha256_hex_of(&image.digest)?;
        let record = self
            .read_record(&id)?
            .ok_or_else(|| ImageError::malformed(&image.digest, "the store has no record of it"))?;
        let layers = record
            .layers
            .into_iter()
            .map(|diff_id| BaseLayer::Unpacked {
                dir: self.layer_dir(&diff_id),
                diff_id,
            })
            .collect();
        Ok(Base {
            config: record.config,
            layers,
        })
    }

    /// The image, when its record and every layer are in the store.
    fn load_image(&self, id: &str) -> Result<Option<Image>, ImageError> {
        let Some(record) = self.read_record(id)? else {
            return Ok(None);
        };
        let layers: Vec<PathBuf> = record.layers.iter().map(|l| self.layer_dir(l)).collect();
        if !layers.iter().all(|l| is_dir(l)) {
            return Ok(None);
        }
        Ok(Some(Image::new(&record, layers)))
    }

    /// Writes `value` as JSON to a temp file and renames it into place.
    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), ImageError> {
        create_dir_all(path.parent().expect("store files have a parent"))?;
        let tmp = self.temp_path("record");
        create_dir_all(tmp.parent().expect("temp paths have a parent"))?;
        let bytes = serde_json::to_vec(value).expect("records serialize");
        std::fs::write(&tmp, bytes).ctx(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).ctx(|| format!("rename into {}", path.display()))
    }

    fn inspect(&self, parsed: &LocalReference) -> Result<Inspection, ImageError> {
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
            && image.layers.iter().all(|l| is_dir(l))
        {
            return Ok(Inspection::Cached(image));
        }
        let plan = source::plan(&key)?;
        Ok(Inspection::Planned { key, stamp, plan })
    }

    /// Unpacks into a private temp dir, then renames it to `layers/<diff id>`: a crash never
    /// leaves a partial layer there. Returns the diff id.
    fn unpack_layer(&self, plan: &LayerPlan, what: &str) -> Result<String, ImageError> {
        let started = Instant::now();
        create_dir_all(&self.root.join("layers"))?;
        let tmp = self.temp_path("layer");
        create_dir_all(tmp.parent().expect("temp paths have a parent"))?;
        std::fs::create_dir(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        let result = unpack::unpack_layer(plan, &tmp, what).and_then(|stats| {
            unpack::sync_filesystem(&tmp).ctx(|| format!("sync {}", tmp.display()))?;
            let dest = self.layer_dir(&stats.diff_id);
            match std::fs::rename(&tmp, &dest) {
                Ok(()) => {}
                // Another unpack of this layer (one without a known diff id) got there first.
                Err(_) if is_dir(&dest) => remove_tree(&tmp),
                Err(e) => return Err(ImageError::io(format!("rename into {}", dest.display()), e)),
            }
            Ok(stats)
        });
        match result {
            Ok(stats) => {
                self.layers_unpacked.fetch_add(1, Ordering::Relaxed);
                info!(
                    layer = what,
                    diff_id = %stats.diff_id,
                    compressed_bytes = stats.compressed_bytes,
                    bytes = stats.uncompressed_bytes,
                    entries = stats.entries,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "layer unpacked"
                );
                Ok(stats.diff_id)
            }
            Err(e) => {
                remove_tree(&tmp);
                Err(e)
            }
        }
    }

    /// The collection itself; the caller holds the store exclusively.
    fn collect(
        &self,
        keep: &HashSet<String>,
        in_use: &HashSet<PathBuf>,
        called: SystemTime,
    ) -> Result<GcReport, ImageError> {
        let mut report = GcReport::default();
        // Nothing is being pulled or unpacked now: whatever is in tmp/ is a leftover.
        for entry in list_dir(&self.root.join("tmp"))? {
            remove_tree(&entry);
        }
        let mut live_layers: HashSet<String> = HashSet::new();
        let mut live_images: HashSet<String> = HashSet::new();
        for path in list_dir(&self.root.join("images"))? {
            let Some(record) = read_json::<ImageRecord>(&path)? else {
                continue;
            };
            let recent = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= called);
            if keep.contains(&record.id) || recent {
                live_layers.extend(record.layers.iter().cloned());
                live_images.insert(record.id);
            } else {
                std::fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
                debug!(image = %record.id, "image removed");
                report.images += 1;
            }
        }
        for path in list_dir(&self.root.join("refs"))? {
            match read_json::<RefRecord>(&path)? {
                Some(record) if live_images.contains(&record.id) => {}
                _ => std::fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?,
            }
        }
        for dir in list_dir(&self.root.join("layers"))? {
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            if !live_layers.contains(name.as_ref()) && !in_use.contains(&dir) {
                self.discard(&dir)?;
                debug!(layer = %name, "layer removed");
                report.layers += 1;
            }
        }
        for path in list_dir(&self.root.join("layer-aliases"))? {
            match read_json::<LayerAlias>(&path)? {
                Some(alias) if is_dir(&self.layer_dir(&alias.layer)) => {}
                _ => std::fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?,
            }
        }
        // Flattened images of earlier versions: only their sandboxes still need them.
        for dir in list_dir(&self.root.join("rootfs"))? {
            if !in_use.contains(&dir) {
                self.discard(&dir)?;
            }
        }
        self.resolutions
            .lock()
            .expect("resolution cache poisoned")
            .retain(|_, (_, image)| {
                live_images.contains(image.digest.trim_start_matches("sha256:"))
            });
        Ok(report)
    }

    /// Moves a directory out of sight first, so that a crash mid-way never leaves a partial
    /// tree where a complete one is expected.
    fn discard(&self, dir: &Path) -> Result<(), ImageError> {
        let tmp = self.temp_path("discard");
        create_dir_all(tmp.parent().expect("temp paths have a parent"))?;
        std::fs::rename(dir, &tmp).ctx(|| format!("move {} away", dir.display()))?;
        remove_tree(&tmp);
        Ok(())
    }
}

fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

fn create_dir_all(dir: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))
}

/// Entries of `dir`, none when it does not exist.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().map(|e| e.path()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ImageError::io(format!("list {}", dir.display()), e)),
    }
}

fn remove_tree(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = result {
        warn!(path = %path.display(), error = %e, "could not remove");
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ImageError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ImageError::malformed(path.display().to_string(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ImageError::io(format!("read {}", path.display()), e)),
    }
}

/// Runs filesystem-heavy work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ImageError::Task(e.to_string()))?
}
