//! The runner's sandbox lifecycle: resolve the image, build the runtime spec, drive the runtime.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use daytona_storage::{ObjectStorage, StorageError};

use daytona_runtime::{
    DAEMON_PORT, Mount, NetworkPolicy, Runtime, RuntimeError, RuntimeState, SandboxSpec,
    SandboxStatus,
};
pub use daytona_runtime::{Resize, SandboxUsage};
use serde::{Deserialize, Serialize};

use crate::image::build::{BuildError, BuildLog, BuildRequest, Builder};
use crate::image::{ImageError, ImageStore, PinnedImage};
use crate::volume::VolumeStore;
use daytona_egress::Egress;

/// What the control plane asks a runner to create.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRequest {
    pub id: String,
    /// Image reference, e.g. `ubuntu:22.04` or `oci-archive:/path/image.tar`.
    pub image: String,
    /// OS user; `None` = the image's user, else `daytona`.
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    pub cpu: u32,
    pub memory_gib: u32,
    pub disk_gib: u32,
    /// Egress policy (`networkBlockAll`, `networkAllowList`).
    #[serde(default)]
    pub network: NetworkPolicy,
    /// Volumes to mount, in order.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Organization secrets it mounts: variable → placeholder (the value stays outside; the
    /// runner's egress proxy puts it into requests to the secret's hosts).
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
}

/// A volume mounted into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub volume_id: String,
    /// Absolute path inside the sandbox.
    pub mount_path: String,
    /// Directory beneath the volume's root to mount instead of the root (created if missing).
    #[serde(default)]
    pub subpath: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("sandbox {0} is running but has no address")]
    NoAddress(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0} needs object storage, and this runner has none")]
    NoStorage(&'static str),
    #[error("{0} is not supported by this runner")]
    Unsupported(&'static str),
    #[error("volume {id}: {source}")]
    Volume {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("volume {0} has no files on this runner")]
    VolumeMissing(String),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot push the image to the internal registry {registry}: {source}")]
    Publish {
        registry: String,
        #[source]
        source: ImageError,
    },
    #[error("sandbox {id}: cannot update its environment: {reason}")]
    Environment { id: String, reason: String },
    /// No runner can take the work, or the one holding the sandbox stopped answering.
    #[error("{0}")]
    Unavailable(String),
    /// A remote runner ran the job and reported this failure.
    #[error("{0}")]
    Remote(String),
}

/// The image a sandbox's files became (`snapshot_sandbox`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapturedImage {
    /// Reference the runner resolves: `oci:<dir>`, or the internal registry's reference when
    /// the runner pushes there; what a snapshot records as its image.
    pub reference: String,
    pub image: PulledImage,
}

/// An image made ready on a runner (what a snapshot records).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PulledImage {
    /// `sha256:<hex>` of the image manifest.
    pub digest: String,
    /// Bytes of the unpacked layers.
    pub size_bytes: u64,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// Where every runner finds the image when it is not the reference pulled: the internal
    /// registry the runner pushed it to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
}

/// The registry where runners publish the images they pull, build and capture
/// (`INTERNAL_REGISTRY_*`), so that every runner can start them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalRegistry {
    /// `host[:port]`.
    pub registry: String,
    /// Path under which images go (`INTERNAL_REGISTRY_PROJECT_ID`).
    pub project: String,
}

impl InternalRegistry {
    /// Content-addressed, as upstream names them: `<registry>/<project>/daytona-<hex>:daytona`.
    fn reference_for(&self, manifest_hex: &str) -> String {
        format!(
            "{}/{}/daytona-{manifest_hex}:daytona",
            self.registry, self.project
        )
    }

    /// Whether `reference` names one of this registry's content-addressed images (pulled, never
    /// pushed again). Other repositories of the project, such as users' pushes to the transient
    /// registry under `{project}/{organization}/`, can be overwritten by their owners: they are
    /// copied to the content-addressed name.
    fn holds(&self, reference: &str) -> bool {
        let prefix = format!("{}/{}/daytona-", self.registry, self.project);
        reference
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(&prefix))
    }
}

/// Push progress of pulls and sandbox snapshots, which have no build log: the runner's log.
struct TracingLog<'a>(&'a str);

impl BuildLog for TracingLog<'_> {
    fn line(&self, line: &str) {
        tracing::info!(image = self.0, "{line}");
    }
}

/// The operations a control plane needs from a runner. The embedded runner implements it
/// in-process; remote runners implement it over the network.
/// Where a runner process serves its sandboxes' traffic, and the key of the credentials it
/// accepts (hex SHA-256 of its token; see `daytona_proxy::route`).
#[derive(Clone, PartialEq, Eq)]
pub struct TrafficEndpoint {
    pub url: String,
    pub key_digest: String,
}

impl std::fmt::Debug for TrafficEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficEndpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
pub trait SandboxRunner: Send + Sync + 'static {
    fn id(&self) -> &str;
    /// Chooses the runner a new (or archived, restoring) sandbox in `region` goes to and
    /// returns its id, recorded as the sandbox's `runnerId`; later calls for the sandbox go to
    /// that runner.
    async fn place(&self, sandbox_id: &str, region: &str) -> Result<String, RunnerError> {
        let _ = (sandbox_id, region);
        Ok(self.id().to_owned())
    }
    /// Why the runner holding `sandbox_id` should not start it now (gone, taken out of
    /// placement, or scoring under the start threshold), or `None` when it can. A sandbox
    /// with a completed backup then starts elsewhere.
    async fn unfit_to_start(&self, sandbox_id: &str) -> Result<Option<String>, RunnerError> {
        let _ = sandbox_id;
        Ok(None)
    }
    /// Makes an image available on this runner (import or pull, then unpack); a tag is looked
    /// up in its registry again.
    async fn pull_image(&self, reference: &str) -> Result<PulledImage, RunnerError>;
    /// Removes images whose digest is not in `keep_images` and the layers that neither a
    /// remaining image nor any sandbox of this runner (running or stopped) uses.
    async fn collect_garbage(&self, keep_images: &[String]) -> Result<(), RunnerError>;
    /// Creates and starts a sandbox; returns its daemon's address once the daemon is ready.
    async fn create_sandbox(&self, req: &SandboxRequest) -> Result<SocketAddr, RunnerError>;
    async fn start_sandbox(&self, id: &str) -> Result<SocketAddr, RunnerError>;
    async fn stop_sandbox(&self, id: &str) -> Result<(), RunnerError>;
    async fn destroy_sandbox(&self, id: &str) -> Result<(), RunnerError>;
    /// Removes this runner's stale copy of a sandbox that now lives on another runner (see
    /// `Runtime::discard`).
    async fn discard_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        self.destroy_sandbox(id).await
    }
    /// The daemon address of a running sandbox, `None` when it is not running.
    async fn daemon_address(&self, id: &str) -> Result<Option<SocketAddr>, RunnerError>;
    /// The runner process that serves the sandbox's traffic when that is not this process
    /// (the proxy and SSH gateway then go through it); `None`: its address is dialled directly.
    async fn traffic_endpoint(&self, id: &str) -> Result<Option<TrafficEndpoint>, RunnerError> {
        let _ = id;
        Ok(None)
    }
    /// Processes the out-of-memory killer has killed in the sandbox since it last started.
    async fn oom_kills(&self, id: &str) -> Result<u64, RunnerError>;
    /// What a running sandbox uses now (CPU time counter, memory, disk); `None` when it does
    /// not run.
    async fn usage(&self, id: &str) -> Result<Option<SandboxUsage>, RunnerError> {
        let _ = id;
        Err(RunnerError::Unsupported("usage metrics"))
    }
    /// Freezes a running sandbox (processes and memory kept).
    async fn pause_sandbox(&self, id: &str) -> Result<(), RunnerError>;
    /// Thaws a paused sandbox.
    async fn resume_sandbox(&self, id: &str) -> Result<(), RunnerError>;
    /// Changes resources: cpu and memory live, disk only while stopped.
    async fn resize_sandbox(&self, id: &str, resize: &Resize) -> Result<(), RunnerError>;
    /// Replaces the sandbox's egress policy: at once if it runs, else from its next start.
    async fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<(), RunnerError>;
    /// Commits the sandbox's filesystem changes on top of its image `base_image` as a new image
    /// on this runner. A running sandbox keeps running.
    async fn snapshot_sandbox(
        &self,
        id: &str,
        base_image: &str,
    ) -> Result<CapturedImage, RunnerError> {
        let _ = (id, base_image);
        Err(RunnerError::Unsupported("snapshotting sandboxes"))
    }
    /// Creates and starts the sandbox `fork` (a request for the source's image) with a copy of
    /// sandbox `source`'s files; returns the fork's daemon address.
    async fn fork_sandbox(
        &self,
        source: &str,
        fork: &SandboxRequest,
    ) -> Result<SocketAddr, RunnerError> {
        let _ = (source, fork);
        Err(RunnerError::Unsupported("forking sandboxes"))
    }
    /// Builds the image `req` describes (a Dockerfile and its uploaded context), logging to
    /// `log` as it goes.
    async fn build_image(
        &self,
        req: &BuildRequest,
        log: Arc<dyn BuildLog>,
    ) -> Result<CapturedImage, RunnerError> {
        let _ = (req, log);
        Err(RunnerError::Unsupported("building images"))
    }
    /// Moves a stopped sandbox's files to object storage under `key` and removes the sandbox
    /// from this runner; returns the archive's size in bytes.
    async fn archive_sandbox(&self, id: &str, key: &str) -> Result<u64, RunnerError> {
        let _ = (id, key);
        Err(RunnerError::Unsupported("archiving sandboxes"))
    }
    /// Copies a stopped sandbox's files to object storage under `key` and keeps them on this
    /// runner too (a backup); returns the copy's size in bytes.
    async fn backup_sandbox(&self, id: &str, key: &str) -> Result<u64, RunnerError> {
        let _ = (id, key);
        Err(RunnerError::Unsupported("backing up sandboxes"))
    }
    /// Recreates an archived (or backed-up) sandbox from the copy at `key` and starts it.
    async fn restore_sandbox(
        &self,
        req: &SandboxRequest,
        key: &str,
    ) -> Result<SocketAddr, RunnerError> {
        let _ = (req, key);
        Err(RunnerError::Unsupported("restoring sandboxes"))
    }
    /// Replaces the secret variables (variable → placeholder) that a running sandbox's later
    /// processes get, with the egress proxy settings they need; stale placeholders go.
    async fn update_secret_env(
        &self,
        id: &str,
        secret_env: &BTreeMap<String, String>,
    ) -> Result<(), RunnerError> {
        let _ = (id, secret_env);
        Err(RunnerError::Unsupported("secrets"))
    }
    /// Deletes an archive (a missing one is fine).
    async fn delete_archive(&self, key: &str) -> Result<(), RunnerError> {
        let _ = key;
        Err(RunnerError::Unsupported("archives"))
    }
    /// Whether the archive at `key` exists (uploads are atomic: then it is complete).
    async fn archive_exists(&self, key: &str) -> Result<bool, RunnerError> {
        let _ = key;
        Err(RunnerError::Unsupported("archives"))
    }
    /// Makes the (empty) storage of volume `id`; an existing one is kept.
    async fn create_volume(&self, id: &str) -> Result<(), RunnerError> {
        let _ = id;
        Err(RunnerError::Unsupported("volumes"))
    }
    /// Removes volume `id` and its files (a missing one is fine). The caller makes sure no
    /// sandbox mounts it.
    async fn delete_volume(&self, id: &str) -> Result<(), RunnerError> {
        let _ = id;
        Err(RunnerError::Unsupported("volumes"))
    }
}

/// A runner's sandboxes (spec and status; `None` when the runtime lost its state) and image count.
pub struct Inventory {
    pub sandboxes: Vec<(SandboxSpec, Option<SandboxStatus>)>,
    pub images: usize,
}

/// A runner on this host: an image store plus a runtime backend.
pub struct Runner {
    id: String,
    images: ImageStore,
    runtime: Arc<dyn Runtime>,
    /// Where archived sandboxes go.
    storage: Option<ObjectStorage>,
    /// Where volumes live.
    volumes: Option<VolumeStore>,
    /// The egress proxy that puts secret values into sandboxes' requests.
    egress: Option<Arc<Egress>>,
    /// Where pulled, built and captured images are pushed.
    internal_registry: Option<InternalRegistry>,
}

/// zstd level of sandbox archives: fast; the zeros of a sparse disk compress away at any level.
const ARCHIVE_ZSTD_LEVEL: i32 = 3;

fn daemon_address_of(status: &SandboxStatus) -> Result<SocketAddr, RunnerError> {
    let ip = status
        .ip
        .ok_or_else(|| RunnerError::NoAddress(status.id.clone()))?;
    Ok(SocketAddr::from((ip, DAEMON_PORT)))
}

impl Runner {
    pub fn new(id: impl Into<String>, images: ImageStore, runtime: Arc<dyn Runtime>) -> Self {
        Runner {
            id: id.into(),
            images,
            runtime,
            storage: None,
            volumes: None,
            egress: None,
            internal_registry: None,
        }
    }

    /// Images this runner pulls, builds or captures are pushed to `registry`, and what it
    /// reports is the pushed reference.
    pub fn with_internal_registry(mut self, registry: InternalRegistry) -> Self {
        self.internal_registry = Some(registry);
        self
    }

    /// The image made available, as a snapshot records it.
    async fn ready_image(&self, reference: &str) -> Result<PulledImage, RunnerError> {
        let image = self.images.pull(reference, None).await?;
        let layers = image.layers.clone();
        let size_bytes =
            tokio::task::spawn_blocking(move || layers.iter().map(|l| tree_size(l)).sum())
                .await
                .unwrap_or(0);
        Ok(PulledImage {
            digest: image.digest,
            size_bytes,
            entrypoint: image.entrypoint,
            cmd: image.cmd,
            published: None,
        })
    }

    /// Pushes the image `reference` to the internal registry, when there is one and the image
    /// is not already from there; returns the reference to use from then on.
    async fn publish(&self, reference: &str, log: &dyn BuildLog) -> Result<String, RunnerError> {
        let Some(internal) = &self.internal_registry else {
            return Ok(reference.to_owned());
        };
        if internal.holds(reference) {
            return Ok(reference.to_owned());
        }
        let pushed = self
            .images
            .push(reference, |hex| internal.reference_for(hex), log)
            .await
            .map_err(|e| RunnerError::Publish {
                registry: internal.registry.clone(),
                source: e,
            })?;
        Ok(pushed.reference)
    }

    /// Sandboxes use `egress` (mounted CA trust; proxy settings when they mount secrets).
    pub fn with_egress(mut self, egress: Arc<Egress>) -> Self {
        self.egress = Some(egress);
        self
    }

    /// The variables of a sandbox that mounts `secret_env` (nothing when it mounts none).
    fn secret_variables(
        &self,
        id: &str,
        secret_env: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, RunnerError> {
        if secret_env.is_empty() {
            return Ok(BTreeMap::new());
        }
        let egress = self
            .egress
            .as_ref()
            .ok_or(RunnerError::Unsupported("secrets without an egress proxy"))?;
        let mut env = egress.sandbox_env(id);
        env.extend(secret_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(env)
    }

    /// What this runner holds now: each sandbox with its status, and the number of images.
    pub async fn inventory(&self) -> Result<Inventory, RunnerError> {
        let mut sandboxes = Vec::new();
        for spec in self.runtime.sandbox_specs().await? {
            let status = self.runtime.status(&spec.id).await?;
            sandboxes.push((spec, status));
        }
        let images_dir = self.images.root().join("images");
        let images = tokio::task::spawn_blocking(move || {
            std::fs::read_dir(images_dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
        })
        .await
        .unwrap_or(0);
        Ok(Inventory { sandboxes, images })
    }

    /// Keeps volumes in `volumes`.
    pub fn with_volumes(mut self, volumes: VolumeStore) -> Self {
        self.volumes = Some(volumes);
        self
    }

    fn volume_store(&self) -> Result<&VolumeStore, RunnerError> {
        self.volumes
            .as_ref()
            .ok_or(RunnerError::NoStorage("volumes"))
    }

    /// Runtime mounts of the request's volumes; each volume must exist here (in S3: is
    /// mounted now, so a mount failure fails the sandbox naming the volume).
    async fn mounts_for(&self, volumes: &[VolumeMount]) -> Result<Vec<Mount>, RunnerError> {
        let mut mounts = Vec::with_capacity(volumes.len());
        for v in volumes {
            let source = self
                .prepared_volume(&v.volume_id)
                .await?
                .ok_or_else(|| RunnerError::VolumeMissing(v.volume_id.clone()))?;
            mounts.push(Mount {
                source,
                subpath: v.subpath.clone().filter(|s| !s.is_empty()),
                target: v.mount_path.clone(),
                read_only: false,
            });
        }
        Ok(mounts)
    }

    /// The directory of volume `id` ready to bind-mount (see [`VolumeStore::prepare`]).
    async fn prepared_volume(&self, id: &str) -> Result<Option<PathBuf>, RunnerError> {
        let store = self.volume_store()?.clone();
        let owned = id.to_owned();
        blocking_volume(id, move || store.prepare(&owned)).await
    }

    /// Before an existing sandbox starts again: its S3 volumes are mounted on this runner
    /// (after a runner restart they are not yet).
    async fn prepare_volumes_of(&self, id: &str) -> Result<(), RunnerError> {
        let Some(store) = &self.volumes else {
            return Ok(());
        };
        let specs = self.runtime.sandbox_specs().await?;
        let Some(spec) = specs.into_iter().find(|s| s.id == id) else {
            return Ok(());
        };
        for mount in &spec.mounts {
            if mount.source.parent() != Some(store.root()) {
                continue;
            }
            if let Some(volume_id) = mount.source.file_name().and_then(|n| n.to_str()) {
                self.prepared_volume(volume_id).await?;
            }
        }
        Ok(())
    }

    /// Archives sandboxes to `storage`.
    /// Uploads a stopped sandbox's disk, zstd-compressed, to `key` (an archive or a backup:
    /// the upload is atomic, so an existing object is a whole copy).
    async fn upload_disk(
        &self,
        id: &str,
        key: &str,
        operation: &'static str,
    ) -> Result<u64, RunnerError> {
        let storage = self.storage(operation)?;
        let mut disk = self.runtime.export_filesystem(id).await?;
        Ok(storage
            .put_from_writer(key, move |out| {
                let mut encoder = zstd::Encoder::new(out, ARCHIVE_ZSTD_LEVEL)?;
                std::io::copy(&mut disk, &mut encoder)?;
                encoder.finish()?;
                Ok(())
            })
            .await?)
    }

    pub fn with_storage(mut self, storage: ObjectStorage) -> Self {
        self.storage = Some(storage);
        self
    }

    fn storage(&self, operation: &'static str) -> Result<&ObjectStorage, RunnerError> {
        self.storage
            .as_ref()
            .ok_or(RunnerError::NoStorage(operation))
    }

    /// The runtime spec for a request: image resolved, image env under the request's.
    /// The runtime spec of `req`, with its image pinned: garbage collection leaves the image's
    /// layers alone until the pin is dropped, after the runtime has recorded the sandbox.
    async fn spec_for(
        &self,
        req: &SandboxRequest,
    ) -> Result<(PinnedImage, SandboxSpec), RunnerError> {
        let mut mounts = self.mounts_for(&req.volumes).await?;
        if let Some(egress) = &self.egress {
            // Always, so secrets mounted later find the CA trust in place.
            mounts.push(Mount {
                source: egress.trust_dir().to_path_buf(),
                subpath: None,
                target: daytona_egress::TRUST_MOUNT_TARGET.to_owned(),
                read_only: true,
            });
        }
        let secret_vars = self.secret_variables(&req.id, &req.secret_env)?;
        let pinned = self.images.resolve_pinned(&req.image).await?;
        let image = &pinned.image;
        // Image env first, so the request's variables win.
        let mut env: BTreeMap<String, String> = image.env.iter().cloned().collect();
        env.extend(req.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(secret_vars);
        let user = req
            .user
            .clone()
            .or_else(|| {
                image
                    .user
                    .clone()
                    .filter(|u| !u.is_empty() && u != "root" && u != "0")
            })
            .unwrap_or_else(|| "daytona".to_string());
        let spec = SandboxSpec {
            id: req.id.clone(),
            image_layers: image.layers.clone(),
            user,
            env,
            workdir: image.workdir.clone().filter(|w| !w.is_empty() && w != "/"),
            cpu: req.cpu,
            memory_gib: req.memory_gib,
            disk_gib: req.disk_gib,
            network: req.network.clone(),
            mounts,
        };
        Ok((pinned, spec))
    }
}

#[async_trait::async_trait]
impl SandboxRunner for Runner {
    fn id(&self) -> &str {
        &self.id
    }

    async fn pull_image(&self, reference: &str) -> Result<PulledImage, RunnerError> {
        let image = self.ready_image(reference).await?;
        let published = self.publish(reference, &TracingLog(reference)).await?;
        if published == reference {
            return Ok(image);
        }
        // Every runner uses the pushed image, so it is the one the snapshot records.
        Ok(PulledImage {
            published: Some(published.clone()),
            ..self.ready_image(&published).await?
        })
    }

    async fn collect_garbage(&self, keep_images: &[String]) -> Result<(), RunnerError> {
        let runtime = self.runtime.clone();
        let in_use = async move {
            let specs = runtime
                .sandbox_specs()
                .await
                .map_err(|e| format!("cannot list sandboxes: {e}"))?;
            Ok(specs.into_iter().flat_map(|s| s.image_layers).collect())
        };
        self.images.gc(keep_images, in_use).await?;
        Ok(())
    }

    async fn create_sandbox(&self, req: &SandboxRequest) -> Result<SocketAddr, RunnerError> {
        let (pinned, spec) = self.spec_for(req).await?;
        let status = self.runtime.create(&spec).await?;
        drop(pinned);
        daemon_address_of(&status)
    }

    async fn start_sandbox(&self, id: &str) -> Result<SocketAddr, RunnerError> {
        self.prepare_volumes_of(id).await?;
        let status = self.runtime.start(id).await?;
        daemon_address_of(&status)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        Ok(self.runtime.stop(id).await?)
    }

    async fn destroy_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        Ok(self.runtime.destroy(id).await?)
    }

    async fn discard_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        Ok(self.runtime.discard(id).await?)
    }

    async fn oom_kills(&self, id: &str) -> Result<u64, RunnerError> {
        Ok(self.runtime.status(id).await?.map_or(0, |s| s.oom_kills))
    }

    async fn usage(&self, id: &str) -> Result<Option<SandboxUsage>, RunnerError> {
        Ok(self.runtime.usage(id).await?)
    }

    async fn pause_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        Ok(self.runtime.pause(id).await?)
    }

    async fn resume_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        Ok(self.runtime.resume(id).await?)
    }

    async fn resize_sandbox(&self, id: &str, resize: &Resize) -> Result<(), RunnerError> {
        Ok(self.runtime.resize(id, resize).await?)
    }

    async fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<(), RunnerError> {
        Ok(self.runtime.update_network(id, policy).await?)
    }

    async fn snapshot_sandbox(
        &self,
        id: &str,
        base_image: &str,
    ) -> Result<CapturedImage, RunnerError> {
        let started = Instant::now();
        let changes = self.runtime.export_changes(id).await?;
        let committed = self.images.commit(base_image, changes).await?;
        tracing::info!(
            sandbox = %id, digest = %committed.digest, layer_bytes = committed.layer_bytes,
            commit_ms = started.elapsed().as_millis() as u64, "sandbox committed as an image"
        );
        let reference = self
            .publish(&committed.reference, &TracingLog(&committed.reference))
            .await?;
        let image = self.ready_image(&reference).await?;
        Ok(CapturedImage { reference, image })
    }

    async fn fork_sandbox(
        &self,
        source: &str,
        fork: &SandboxRequest,
    ) -> Result<SocketAddr, RunnerError> {
        let (pinned, spec) = self.spec_for(fork).await?;
        let status = self.runtime.fork(source, &spec).await?;
        drop(pinned);
        daemon_address_of(&status)
    }

    async fn build_image(
        &self,
        req: &BuildRequest,
        log: Arc<dyn BuildLog>,
    ) -> Result<CapturedImage, RunnerError> {
        let builder = Builder::new(
            self.images.clone(),
            self.runtime.clone(),
            self.storage.clone(),
        );
        let built = builder.build(req, log.as_ref()).await?;
        let reference = self.publish(&built.reference, log.as_ref()).await?;
        let image = self.ready_image(&reference).await?;
        Ok(CapturedImage { reference, image })
    }

    async fn archive_sandbox(&self, id: &str, key: &str) -> Result<u64, RunnerError> {
        let started = Instant::now();
        let size = self.upload_disk(id, key, "archiving").await?;
        // The archive is complete: only now may the local copy go.
        self.runtime.destroy(id).await?;
        tracing::info!(
            sandbox = %id, key, bytes = size, archive_ms = started.elapsed().as_millis() as u64,
            "sandbox archived"
        );
        Ok(size)
    }

    async fn backup_sandbox(&self, id: &str, key: &str) -> Result<u64, RunnerError> {
        let started = Instant::now();
        let size = self.upload_disk(id, key, "backing up").await?;
        tracing::info!(
            sandbox = %id, key, bytes = size, backup_ms = started.elapsed().as_millis() as u64,
            "sandbox backed up"
        );
        Ok(size)
    }

    async fn restore_sandbox(
        &self,
        req: &SandboxRequest,
        key: &str,
    ) -> Result<SocketAddr, RunnerError> {
        let storage = self.storage("restoring")?;
        let started = Instant::now();
        let (pinned, spec) = self.spec_for(req).await?;
        let archive = storage.reader(key).await?;
        // A restore that a crash interrupted may have left a partial copy.
        self.runtime.destroy(&req.id).await?;
        let disk: Box<dyn Read + Send> = Box::new(
            zstd::Decoder::new(archive)
                .map_err(|e| RuntimeError::io(format!("read archive {key}"), e))?,
        );
        self.runtime.import_filesystem(&spec, disk).await?;
        drop(pinned);
        let status = self.runtime.start(&req.id).await?;
        tracing::info!(
            sandbox = %req.id, key, restore_ms = started.elapsed().as_millis() as u64,
            "sandbox restored"
        );
        daemon_address_of(&status)
    }

    async fn delete_archive(&self, key: &str) -> Result<(), RunnerError> {
        Ok(self.storage("deleting archives")?.delete(key).await?)
    }

    async fn archive_exists(&self, key: &str) -> Result<bool, RunnerError> {
        Ok(self
            .storage("looking up archives")?
            .head(key)
            .await?
            .is_some())
    }

    async fn create_volume(&self, id: &str) -> Result<(), RunnerError> {
        let store = self.volume_store()?.clone();
        let owned = id.to_owned();
        blocking_volume(id, move || store.create(&owned)).await
    }

    async fn delete_volume(&self, id: &str) -> Result<(), RunnerError> {
        let store = self.volume_store()?.clone();
        let owned = id.to_owned();
        blocking_volume(id, move || store.remove(&owned)).await
    }

    async fn update_secret_env(
        &self,
        id: &str,
        secret_env: &BTreeMap<String, String>,
    ) -> Result<(), RunnerError> {
        let failed = |reason: String| RunnerError::Environment {
            id: id.to_owned(),
            reason,
        };
        let set = self.secret_variables(id, secret_env)?;
        let Some(address) = self.daemon_address(id).await? else {
            return Err(failed("it is not running".into()));
        };
        // Only placeholders are dropped: the proxy settings stay (harmless without secrets,
        // and they may be the user's own).
        let body = serde_json::json!({
            "set": set,
            "unsetValuePrefix": daytona_egress::PLACEHOLDER_PREFIX,
        });
        // The daemon is on this host's bridge: never through an outbound proxy.
        let client = daytona_outbound::Outbound::local_client_builder()
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let response = client
            .post(format!("http://{address}/env"))
            .json(&body)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(failed(format!("daemon answered {status}: {text}")));
        }
        Ok(())
    }

    async fn daemon_address(&self, id: &str) -> Result<Option<SocketAddr>, RunnerError> {
        match self.runtime.status(id).await? {
            Some(status) if status.state == RuntimeState::Running => {
                daemon_address_of(&status).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// Runs a volume's file work off the async threads.
async fn blocking_volume<T: Send + 'static>(
    id: &str,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, RunnerError> {
    let volume_error = |source| RunnerError::Volume {
        id: id.to_owned(),
        source,
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| volume_error(std::io::Error::other(e)))?
        .map_err(volume_error)
}

/// Bytes in regular files under `dir` (symlinks not followed; unreadable entries skipped).
fn tree_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::InternalRegistry;

    #[test]
    fn internal_registry_names_images_by_digest_and_knows_its_own() {
        let internal = InternalRegistry {
            registry: "registry:6000".into(),
            project: "daytona".into(),
        };
        let pushed = internal.reference_for("abc123");
        assert_eq!(pushed, "registry:6000/daytona/daytona-abc123:daytona");
        assert!(internal.holds(&pushed));
        assert!(internal.holds("Registry:6000/daytona/daytona-def:daytona"));
        for foreign in [
            "registry:6000/daytona/other:1",
            "registry:6000/daytona/org-1/app:v1",
            "registry:6000/other/daytona-abc123:daytona",
            "registry:6001/daytona/daytona-abc123:daytona",
            "ubuntu:22.04",
            "oci:/var/lib/daytona/images/committed/abc123",
            "registry:6000/daytona",
        ] {
            assert!(!internal.holds(foreign), "{foreign}");
        }
    }
}
