//! Pushes images of the store to a registry (the internal registry every runner pulls
//! snapshots from).
//!
//! The image is pushed as the OCI layout the store keeps for it: a build's or a snapshot's
//! committed layout as it is; an image pulled from a registry or imported from an archive is
//! first written as a committed layout (its unpacked layers written back as blobs, once per
//! layer, see `commit.rs`). Blobs the repository has are skipped; a blob this store pushed to
//! another repository of the same registry is mounted from there (`pushed/` remembers where);
//! the rest are uploaded in chunks. The manifest goes last, so a pull never sees a partial image.
//! Afterwards the pushed reference resolves locally without a download.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use super::build::BuildLog;
use super::error::{ImageError, IoContext};
use super::reference::{self, ImageReference, Transport};
use super::registry::{BlobPush, Remote};
use super::source::{Manifest, sha256_hex_of};
use super::{ImageStore, blocking, lock_for, read_json};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image pushed by [`ImageStore::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// The registry reference it was pushed as; the store resolves it without a download.
    pub reference: String,
    /// `sha256:<hex>` of the pushed manifest.
    pub digest: String,
    /// Blobs (layers and config) uploaded, and their bytes.
    pub blobs_uploaded: usize,
    pub bytes_uploaded: u64,
    /// Blobs the registry had (in the repository, or mounted from another one).
    pub blobs_reused: usize,
}

/// `pushed/<sha256 of the registry>/<blob hex>.json`: a repository of that registry the store
/// pushed the blob to.
#[derive(Debug, Serialize, Deserialize)]
struct PushedBlob {
    repository: String,
}

/// A committed OCI layout: its directory and the hex of its one manifest.
struct Layout {
    dir: PathBuf,
    manifest_hex: String,
}

impl ImageStore {
    /// Pushes the image `reference` names (any reference the store resolves) to the registry
    /// reference `target(manifest hex)` returns, logging each blob to `log`.
    pub async fn push(
        &self,
        reference: &str,
        target: impl FnOnce(&str) -> String,
        log: &dyn BuildLog,
    ) -> Result<PushedImage, ImageError> {
        // One push of an image at a time: a second one finds every blob there.
        let lock = lock_for(&self.inner.pull_locks, &format!("push {reference}"));
        let _one_at_a_time = lock.lock().await;
        let started = Instant::now();
        let layout = self.layout_of(reference).await?;
        let target = target(&layout.manifest_hex);
        let ImageReference::Registry(target_ref) = reference::parse(&target)? else {
            return Err(ImageError::InvalidReference {
                reference: target,
                reason: "a push needs a registry reference".to_owned(),
            });
        };
        let blobs = layout.dir.join("blobs").join("sha256");
        let manifest_path = blobs.join(&layout.manifest_hex);
        let manifest_bytes = tokio::fs::read(&manifest_path)
            .await
            .ctx(|| format!("read {}", manifest_path.display()))?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
            ImageError::malformed(format!("manifest sha256:{}", layout.manifest_hex), e)
        })?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&manifest_bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
            .unwrap_or_else(|| MANIFEST.to_owned());

        let remote = Remote::new(&self.inner.registries, target_ref.clone(), None);
        let registry = target_ref.registry().to_owned();
        let repository = target_ref.repository().to_owned();
        log.line(&format!("Pushing {target}"));
        remote.authenticate_push().await?;
        let mut pushed = PushedImage {
            reference: target_ref.whole(),
            digest: format!("sha256:{}", layout.manifest_hex),
            blobs_uploaded: 0,
            bytes_uploaded: 0,
            blobs_reused: 0,
        };
        let count = manifest.layers.len();
        let all = manifest
            .layers
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("layer {}/{count}", i + 1), d));
        for (what, desc) in all.chain([("config".to_owned(), &manifest.config)]) {
            let hex = sha256_hex_of(&desc.digest)?;
            let record = self.pushed_blob_path(&registry, &hex);
            let known = read_json::<PushedBlob>(&record)?
                .map(|r| r.repository)
                .filter(|r| *r != repository);
            let blob_started = Instant::now();
            let short = &hex[..12.min(hex.len())];
            match remote
                .push_blob(desc, &blobs.join(&hex), known.as_deref())
                .await?
            {
                BlobPush::Present => {
                    pushed.blobs_reused += 1;
                    log.line(&format!("Pushing {what} {short}: already in the registry"));
                }
                BlobPush::Mounted => {
                    pushed.blobs_reused += 1;
                    log.line(&format!(
                        "Pushing {what} {short}: mounted from {}",
                        known.as_deref().unwrap_or_default()
                    ));
                }
                BlobPush::Uploaded(bytes) => {
                    pushed.blobs_uploaded += 1;
                    pushed.bytes_uploaded += bytes;
                    log.line(&format!(
                        "Pushing {what} {short}: {:.1} MB uploaded in {:.1}s",
                        bytes as f64 / 1e6,
                        blob_started.elapsed().as_secs_f64()
                    ));
                }
            }
            self.inner.write_json(
                &record,
                &PushedBlob {
                    repository: repository.clone(),
                },
            )?;
        }
        remote.push_manifest(manifest_bytes, &media_type).await?;
        // The pushed reference is this image: resolving it needs no download.
        self.resolve(&format!("oci:{}", layout.dir.display()))
            .await?;
        self.save_ref(&pushed.reference, &layout.manifest_hex)
            .await?;
        let elapsed = started.elapsed();
        log.line(&format!(
            "Pushed {} ({}): {} blobs uploaded ({:.1} MB), {} already there, in {:.1}s",
            pushed.reference,
            pushed.digest,
            pushed.blobs_uploaded,
            pushed.bytes_uploaded as f64 / 1e6,
            pushed.blobs_reused,
            elapsed.as_secs_f64()
        ));
        info!(
            reference = %pushed.reference, digest = %pushed.digest,
            blobs_uploaded = pushed.blobs_uploaded, bytes_uploaded = pushed.bytes_uploaded,
            blobs_reused = pushed.blobs_reused, push_ms = elapsed.as_millis() as u64,
            "image pushed"
        );
        Ok(pushed)
    }

    /// The committed layout of the image `reference` names: a committed image's own, else one
    /// written now from the image (no new layer, same config).
    async fn layout_of(&self, reference: &str) -> Result<Layout, ImageError> {
        let committed = self.inner.root.join("committed");
        if let ImageReference::Local(local) = reference::parse(reference)?
            && local.transport == Transport::OciDir
        {
            let located = local.locate()?;
            let inner_committed = committed.clone();
            let dir = located.path.clone();
            let found = blocking(move || committed_layout(&inner_committed, &dir)).await?;
            if let Some(layout) = found {
                return Ok(layout);
            }
        }
        let image = self.commit_with(reference, None, None).await?;
        let hex = sha256_hex_of(&image.digest)?;
        Ok(Layout {
            dir: committed.join(&hex),
            manifest_hex: hex,
        })
    }

    fn pushed_blob_path(&self, registry: &str, blob_hex: &str) -> PathBuf {
        let registry = hex::encode(Sha256::digest(registry.to_ascii_lowercase().as_bytes()));
        self.inner
            .root
            .join("pushed")
            .join(registry)
            .join(format!("{blob_hex}.json"))
    }
}

/// `dir` as a layout the store committed (under `committed/`, one manifest), else `None`.
fn committed_layout(committed: &Path, dir: &Path) -> Result<Option<Layout>, ImageError> {
    let (Ok(committed), Ok(dir)) = (committed.canonicalize(), dir.canonicalize()) else {
        return Ok(None);
    };
    if dir.parent() != Some(committed.as_path()) {
        return Ok(None);
    }
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    let manifest = dir.join("blobs").join("sha256").join(name);
    if name.len() != 64 || !manifest.is_file() {
        return Ok(None);
    }
    Ok(Some(Layout {
        manifest_hex: name.to_owned(),
        dir,
    }))
}
