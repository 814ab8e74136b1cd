//! New images from a base image plus one layer of changes (a sandbox snapshot), written as OCI
//! image layouts that the store resolves like any `oci:` reference.
//!
//! Layout: `<root>/committed/blobs/sha256/<hex>` holds the blobs of every committed image (base
//! layers are copied there once, however many snapshots share them); each image is a directory
//! `<root>/committed/<manifest hex>/` with `oci-layout`, `index.json` and `blobs` → `../blobs`.
//! Blobs and image directories appear under their final names only when complete.
//!
//! A base pulled from a registry has no blobs at hand, only its unpacked layer directories: each
//! is written back as a layer (overlay whiteouts → OCI whiteouts, by the runtime's own layer
//! writer), once per diff id — `<root>/committed/converted/<diff id>.json` names the blob. The new
//! tar is not byte for byte the one the registry served, so it has a diff id of its own; the
//! store records that it unpacks to the layer directory it came from (a layer alias), and
//! resolving the committed image reuses that directory instead of unpacking the blob again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use daytona_runtime::native::layer::{self, LayerStats};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::info;

use super::error::{ImageError, IoContext};
use super::source::{Compression, LayerPlan, RunConfig};
use super::{Inner, read_json};

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// zstd level for new layers: fast, and still much smaller than gzip -6.
const ZSTD_LEVEL: i32 = 3;

/// An image made by [`super::ImageStore::commit`] (or a build step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedImage {
    /// `oci:<dir>`: resolvable by the store, usable as a snapshot's image.
    pub reference: String,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Compressed size of the new layer (0 when only the config changed).
    pub layer_bytes: u64,
}

/// The image a commit builds on.
pub(crate) struct Base {
    pub config: RunConfig,
    /// Bottom first.
    pub layers: Vec<BaseLayer>,
}

pub(crate) enum BaseLayer {
    /// A blob of a local archive or layout, copied as it is.
    Blob(LayerPlan),
    /// Only the unpacked directory exists (a registry pull): it is written back as a blob.
    Unpacked { diff_id: String, dir: PathBuf },
}

/// `committed/converted/<diff id>.json`: the blob an unpacked layer was written back as.
#[derive(Debug, Serialize, Deserialize)]
struct Converted {
    /// sha256 hex of the zstd blob.
    digest: String,
    /// sha256 hex of its uncompressed tar.
    diff_id: String,
}

/// A layer as the manifest and config describe it.
struct LayerDescriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
    diff_id: String,
}

/// Counts and hashes the bytes written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    fn path(&self, hex: &str) -> PathBuf {
        self.dir.join(hex)
    }

    /// A temp file in the blob dir, unique to this process and thread.
    fn temp(&self, what: &str) -> PathBuf {
        self.dir.join(format!(
            ".{what}.{}.{:?}.tmp",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    /// Moves a finished temp file to its digest's name (an existing blob is the same bytes).
    fn publish(&self, tmp: &Path, hex: &str) -> Result<(), ImageError> {
        let dest = self.path(hex);
        if dest.exists() {
            fs::remove_file(tmp).ctx(|| format!("remove {}", tmp.display()))?;
            return Ok(());
        }
        fs::rename(tmp, &dest).ctx(|| format!("rename into {}", dest.display()))
    }

    fn write_json(&self, value: &serde_json::Value) -> Result<(String, u64), ImageError> {
        let bytes = serde_json::to_vec(value).expect("JSON values serialize");
        let hex = hex::encode(Sha256::digest(&bytes));
        let dest = self.path(&hex);
        if !dest.exists() {
            let tmp = self.temp("json");
            fs::write(&tmp, &bytes).ctx(|| format!("write {}", tmp.display()))?;
            self.publish(&tmp, &hex)?;
        }
        Ok((hex, bytes.len() as u64))
    }

    /// Copies a base image layer into the blob dir (once) and describes it.
    fn import_layer(&self, layer: &LayerPlan) -> Result<LayerDescriptor, ImageError> {
        let media_type = match layer.compression {
            Compression::None => LAYER_TAR,
            Compression::Gzip => LAYER_GZIP,
            Compression::Zstd => LAYER_ZSTD,
        };
        let known = layer.digest.as_ref().filter(|hex| self.path(hex).is_file());
        let hex = match known {
            Some(hex) => hex.clone(),
            None => {
                let tmp = self.temp("layer");
                let file = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
                let mut writer = HashingWriter::new(io::BufWriter::new(file));
                io::copy(&mut layer.location.open()?, &mut writer)
                    .ctx(|| format!("copy a layer of {}", layer.location.file.display()))?;
                let (out, hex, _) = writer.finish();
                out.into_inner()
                    .map_err(|e| ImageError::io("flush a layer copy", e.into_error()))?;
                if let Some(expected) = &layer.digest
                    && *expected != hex
                {
                    let _ = fs::remove_file(&tmp);
                    return Err(ImageError::DigestMismatch {
                        what: format!("layer of {}", layer.location.file.display()),
                        expected: format!("sha256:{expected}"),
                        actual: format!("sha256:{hex}"),
                    });
                }
                self.publish(&tmp, &hex)?;
                hex
            }
        };
        let path = self.path(&hex);
        let size = fs::metadata(&path)
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        let diff_id = match &layer.diff_id {
            Some(d) => d.clone(),
            None => uncompressed_digest(&path, layer.compression)?,
        };
        Ok(LayerDescriptor {
            media_type,
            digest: hex,
            size,
            diff_id,
        })
    }

    /// Compresses `changes` (an uncompressed layer tar) into a new zstd blob.
    fn write_layer(&self, changes: impl Read) -> Result<LayerDescriptor, ImageError> {
        let mut changes = io::BufReader::new(changes);
        self.compress("new-layer", "write the new layer", |out| {
            io::copy(&mut changes, out).map(drop)
        })
    }

    /// Compresses the tar that `fill` writes into a new zstd blob; `doing` names the work in
    /// errors.
    fn compress(
        &self,
        what: &str,
        doing: &str,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<LayerDescriptor, ImageError> {
        let tmp = self.temp(what);
        let written = (|| {
            let file = File::create(&tmp)?;
            let compressed = HashingWriter::new(io::BufWriter::new(file));
            let encoder = zstd::Encoder::new(compressed, ZSTD_LEVEL)?;
            let mut uncompressed = HashingWriter::new(encoder);
            fill(&mut uncompressed)?;
            let (encoder, diff_id, _) = uncompressed.finish();
            let (out, digest, size) = encoder.finish()?.finish();
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok::<_, io::Error>((diff_id, digest, size))
        })();
        let (diff_id, digest, size) = match written {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(ImageError::io(doing, e));
            }
        };
        self.publish(&tmp, &digest)?;
        Ok(LayerDescriptor {
            media_type: LAYER_ZSTD,
            digest,
            size,
            diff_id,
        })
    }
}

/// sha256 hex of a layer blob's uncompressed tar.
fn uncompressed_digest(path: &Path, compression: Compression) -> Result<String, ImageError> {
    let file = io::BufReader::new(File::open(path).ctx(|| format!("open {}", path.display()))?);
    let mut reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => {
            Box::new(zstd::Decoder::with_buffer(file).ctx(|| format!("zstd {}", path.display()))?)
        }
    };
    let mut hasher = HashingWriter::new(io::sink());
    io::copy(&mut reader, &mut hasher).ctx(|| format!("decompress {}", path.display()))?;
    Ok(hasher.finish().1)
}

/// Writes an unpacked layer back as a zstd blob (once per diff id: later commits find it in
/// `committed/converted/`) and records that the blob unpacks to `dir`.
fn convert_layer(
    inner: &Inner,
    blobs: &Blobs,
    diff_id: &str,
    dir: &Path,
) -> Result<LayerDescriptor, ImageError> {
    let index = inner
        .root
        .join("committed")
        .join("converted")
        .join(format!("{diff_id}.json"));
    let converted = match read_json::<Converted>(&index)? {
        Some(known) if blobs.path(&known.digest).is_file() => known,
        _ => {
            let started = Instant::now();
            let mut stats = LayerStats::default();
            let doing = format!("write layer {diff_id} back as a blob");
            let layer = blobs.compress("converted", &doing, |out| {
                stats = layer::write_layer(dir, out)?;
                Ok(())
            })?;
            inner.layers_converted.fetch_add(1, Ordering::Relaxed);
            info!(
                diff_id, blob = %layer.digest, new_diff_id = %layer.diff_id, bytes = layer.size,
                entries = stats.entries, whiteouts = stats.whiteouts, opaque_dirs = stats.opaque_dirs,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "unpacked layer written back as a blob"
            );
            let converted = Converted {
                digest: layer.digest,
                diff_id: layer.diff_id,
            };
            inner.write_json(&index, &converted)?;
            converted
        }
    };
    if converted.diff_id != diff_id {
        inner.record_alias(&converted.diff_id, diff_id)?;
    }
    let path = blobs.path(&converted.digest);
    let size = fs::metadata(&path)
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    Ok(LayerDescriptor {
        media_type: LAYER_ZSTD,
        digest: converted.digest,
        size,
        diff_id: converted.diff_id,
    })
}

/// Writes the image `base` plus the layer `changes` (none: a new config only) into the store
/// (see the module docs).
pub(crate) fn commit(
    inner: &Inner,
    base: Base,
    changes: Option<impl Read>,
) -> Result<CommittedImage, ImageError> {
    let committed = inner.root.join("committed");
    let blobs = Blobs {
        dir: committed.join("blobs").join("sha256"),
    };
    fs::create_dir_all(&blobs.dir).ctx(|| format!("create {}", blobs.dir.display()))?;

    // The changes first: a sandbox stays frozen until its changes are read to the end.
    let new_layer = changes.map(|c| blobs.write_layer(c)).transpose()?;
    let layer_bytes = new_layer.as_ref().map_or(0, |l| l.size);
    let mut layers = base
        .layers
        .iter()
        .map(|layer| match layer {
            BaseLayer::Blob(plan) => blobs.import_layer(plan),
            BaseLayer::Unpacked { diff_id, dir } => convert_layer(inner, &blobs, diff_id, dir),
        })
        .collect::<Result<Vec<_>, _>>()?;
    layers.extend(new_layer);

    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": base.config,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| format!("sha256:{}", l.diff_id)).collect::<Vec<_>>(),
        },
    });
    let (config_hex, config_size) = blobs.write_json(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": format!("sha256:{config_hex}"), "size": config_size},
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": format!("sha256:{}", l.digest),
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let (manifest_hex, manifest_size) = blobs.write_json(&manifest)?;

    let dir = committed.join(&manifest_hex);
    if !dir.join("index.json").is_file() {
        let tmp = committed.join(format!(".{manifest_hex}.{}.tmp", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": MANIFEST,
                "digest": format!("sha256:{manifest_hex}"),
                "size": manifest_size,
            }],
        });
        let written = fs::write(tmp.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .and_then(|()| fs::write(tmp.join("index.json"), index.to_string()))
            .and_then(|()| std::os::unix::fs::symlink("../blobs", tmp.join("blobs")))
            .and_then(|()| fs::rename(&tmp, &dir));
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&tmp);
            // Another commit of the same image won the race: theirs is as good.
            if !dir.join("index.json").is_file() {
                return Err(ImageError::io(format!("write {}", dir.display()), e));
            }
        }
    }
    Ok(CommittedImage {
        reference: format!("oci:{}", dir.display()),
        digest: format!("sha256:{manifest_hex}"),
        layer_bytes,
    })
}
