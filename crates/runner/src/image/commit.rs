//! New images from a base image plus one layer of changes (a sandbox snapshot), written as OCI
//! image layouts that the store resolves like any `oci:` reference.
//!
//! Layout: `<root>/committed/blobs/sha256/<hex>` holds the blobs of every committed image (base
//! layers are copied there once, however many snapshots share them); each image is a directory
//! `<root>/committed/<manifest hex>/` with `oci-layout`, `index.json` and `blobs` → `../blobs`.
//! Blobs and image directories appear under their final names only when complete.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::error::{ImageError, IoContext};
use super::reference;
use super::source::{self, Compression, LayerPlan};

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// zstd level for new layers: fast, and still much smaller than gzip -6.
const ZSTD_LEVEL: i32 = 3;

/// An image made by [`super::ImageStore::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedImage {
    /// `oci:<dir>`: resolvable by the store, usable as a snapshot's image.
    pub reference: String,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Compressed size of the new layer.
    pub layer_bytes: u64,
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
        let tmp = self.temp("new-layer");
        let file = File::create(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        let written = (|| {
            let compressed = HashingWriter::new(io::BufWriter::new(file));
            let encoder = zstd::Encoder::new(compressed, ZSTD_LEVEL)?;
            let mut uncompressed = HashingWriter::new(encoder);
            io::copy(&mut io::BufReader::new(changes), &mut uncompressed)?;
            let (encoder, diff_id, _) = uncompressed.finish();
            let (out, digest, size) = encoder.finish()?.finish();
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok::<_, io::Error>((diff_id, digest, size))
        })();
        let (diff_id, digest, size) = match written {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(ImageError::io("write the new layer", e));
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

/// Writes the image `base` plus the layer `changes` under `root` (see the module docs).
pub(crate) fn commit(
    root: &Path,
    base: &str,
    changes: impl Read,
) -> Result<CommittedImage, ImageError> {
    let mut located = match reference::parse(base)? {
        reference::ImageReference::Local(local) => local.locate()?,
        // Registry images are kept only as unpacked layers, not as blobs to copy.
        reference::ImageReference::Registry(_) => {
            return Err(ImageError::UnsupportedFormat {
                what: "snapshot base (only oci-archive:, oci: and docker-archive: images can be committed so far)",
                value: base.to_owned(),
            });
        }
    };
    located.path =
        fs::canonicalize(&located.path).ctx(|| format!("resolve {}", located.path.display()))?;
    let plan = source::plan(&located)?;
    let committed = root.join("committed");
    let blobs = Blobs {
        dir: committed.join("blobs").join("sha256"),
    };
    fs::create_dir_all(&blobs.dir).ctx(|| format!("create {}", blobs.dir.display()))?;

    // The changes first: a sandbox stays frozen until its changes are read to the end.
    let new_layer = blobs.write_layer(changes)?;
    let layer_bytes = new_layer.size;
    let mut layers = plan
        .layers
        .iter()
        .map(|l| blobs.import_layer(l))
        .collect::<Result<Vec<_>, _>>()?;
    layers.push(new_layer);

    let run = &plan.config;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": run.env,
            "Entrypoint": run.entrypoint,
            "Cmd": run.cmd,
            "WorkingDir": run.working_dir,
            "User": run.user,
        },
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
