//! Reads an image's index, manifest and config out of an OCI layout (directory or tar) or a
//! `docker save` archive, and plans which blobs to unpack.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{ImageError, IoContext};
use super::reference::{Located, Transport};

/// JSON documents (index, manifest, config) larger than this are refused rather than read.
const MAX_JSON_BYTES: u64 = 16 << 20;
/// Nested indexes deeper than this are refused (a loop would otherwise never end).
const MAX_INDEX_DEPTH: usize = 4;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Where the bytes of one blob live: a byte range of a file.
#[derive(Debug, Clone)]
pub(crate) struct BlobLocation {
    pub file: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl BlobLocation {
    pub(crate) fn open(&self) -> Result<std::io::Take<File>, ImageError> {
        let mut file = File::open(&self.file).ctx(|| format!("open {}", self.file.display()))?;
        file.seek(SeekFrom::Start(self.offset))
            .ctx(|| format!("seek in {}", self.file.display()))?;
        Ok(file.take(self.len))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer to apply, with what its bytes must hash to.
#[derive(Debug, Clone)]
pub(crate) struct LayerPlan {
    pub location: BlobLocation,
    pub compression: Compression,
    /// sha256 hex of the blob as stored; absent for legacy docker-archive layers.
    pub digest: Option<String>,
    /// sha256 hex of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Option<String>,
}

/// Everything needed to unpack an image and describe it.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// sha256 hex naming the image: its manifest digest (config digest for legacy docker archives).
    pub id: String,
    pub config: RunConfig,
    pub layers: Vec<LayerPlan>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    architecture: String,
    os: String,
}

/// An OCI index or a Docker manifest list (same shape).
#[derive(Debug, Deserialize)]
pub(crate) struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

/// The runtime part of an image config (`config` in the OCI config JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// `LABEL`s; absent (not serialized) when there are none, so configs written before
    /// labels were kept hash the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// `EXPOSE`d ports as `{"8080/tcp": {}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// `docker save`'s legacy `manifest.json` entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The files of an image layout, either a directory or the members of a tar.
enum Container {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

impl Container {
    fn open(located: &Located) -> Result<Self, ImageError> {
        match located.transport {
            Transport::OciDir => Ok(Container::Dir(located.path.clone())),
            Transport::OciArchive | Transport::DockerArchive => Self::index_archive(&located.path),
        }
    }

    /// Records where each member's data starts, reading only headers (the reader seeks past data).
    fn index_archive(path: &Path) -> Result<Self, ImageError> {
        let file = File::open(path).ctx(|| format!("open {}", path.display()))?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let mut links = Vec::new();
        let entries = archive
            .entries_with_seek()
            .ctx(|| format!("read {}", path.display()))?;
        for entry in entries {
            let entry = entry.ctx(|| format!("read {}", path.display()))?;
            let name = member_name(&entry.path().ctx(|| format!("read {}", path.display()))?);
            let kind = entry.header().entry_type();
            if kind.is_file() || kind == tar::EntryType::Continuous {
                members.insert(name, (entry.raw_file_position(), entry.size()));
            } else if kind.is_hard_link()
                && let Ok(Some(target)) = entry.link_name()
            {
                links.push((name, member_name(&target)));
            }
        }
        for (name, target) in links {
            if let Some(&location) = members.get(&target) {
                members.insert(name, location);
            }
        }
        Ok(Container::Archive {
            path: path.to_owned(),
            members,
        })
    }

    fn describe(&self) -> String {
        match self {
            Container::Dir(path) | Container::Archive { path, .. } => path.display().to_string(),
        }
    }

    fn locate(&self, name: &str) -> Result<Option<BlobLocation>, ImageError> {
        match self {
            Container::Dir(dir) => {
                let file = dir.join(name);
                match std::fs::metadata(&file) {
                    Ok(meta) if meta.is_file() => Ok(Some(BlobLocation {
                        file,
                        offset: 0,
                        len: meta.len(),
                    })),
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(ImageError::io(format!("stat {}", file.display()), e)),
                }
            }
            Container::Archive { path, members } => {
                Ok(members.get(name).map(|&(offset, len)| BlobLocation {
                    file: path.clone(),
                    offset,
                    len,
                }))
            }
        }
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, ImageError> {
        let Some(location) = self.locate(name)? else {
            return Ok(None);
        };
        if location.len > MAX_JSON_BYTES {
            return Err(ImageError::malformed(
                name,
                format!("{} bytes is too large", location.len),
            ));
        }
        let mut bytes = Vec::with_capacity(location.len as usize);
        location
            .open()?
            .read_to_end(&mut bytes)
            .ctx(|| format!("read {name} from {}", self.describe()))?;
        Ok(Some(bytes))
    }

    fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ImageError> {
        self.read(name)?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(|e| ImageError::malformed(name, e)))
            .transpose()
    }

    /// Reads a JSON blob by descriptor, checking its size and digest before parsing.
    fn read_blob_json<T: DeserializeOwned>(&self, desc: &Descriptor) -> Result<T, ImageError> {
        let hex = sha256_hex_of(&desc.digest)?;
        let name = format!("blobs/sha256/{hex}");
        let bytes = self
            .read(&name)?
            .ok_or_else(|| ImageError::MissingBlob(desc.digest.clone()))?;
        if bytes.len() as u64 != desc.size {
            return Err(ImageError::SizeMismatch {
                what: desc.digest.clone(),
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != hex {
            return Err(ImageError::DigestMismatch {
                what: name,
                expected: desc.digest.clone(),
                actual: format!("sha256:{actual}"),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ImageError::malformed(&desc.digest, e))
    }

    fn blob_location(&self, digest: &str) -> Result<(String, BlobLocation), ImageError> {
        let hex = sha256_hex_of(digest)?;
        let location = self
            .locate(&format!("blobs/sha256/{hex}"))?
            .ok_or_else(|| ImageError::MissingBlob(digest.to_owned()))?;
        Ok((hex, location))
    }
}

/// Tar member names as layout-relative paths (`./index.json` → `index.json`).
fn member_name(path: &Path) -> String {
    let s = path.to_string_lossy();
    s.trim_start_matches("./")
        .trim_start_matches('/')
        .to_owned()
}

/// The hex part of a `sha256:` digest; other algorithms are not supported.
pub(crate) fn sha256_hex_of(digest: &str) -> Result<String, ImageError> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(hex.to_ascii_lowercase())
        }
        Some(("sha256", _)) | None => Err(ImageError::malformed(
            "digest",
            format!("{digest:?} is not sha256:<64 hex>"),
        )),
        Some((algorithm, _)) => Err(ImageError::UnsupportedFormat {
            what: "digest algorithm",
            value: algorithm.to_owned(),
        }),
    }
}

/// The OCI architecture name of this host.
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

pub(crate) fn compression_of(media_type: &str) -> Result<Compression, ImageError> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
        other => Err(ImageError::UnsupportedFormat {
            what: "layer media type",
            value: other.to_owned(),
        }),
    }
}

/// Legacy docker-archive layers carry no media type: recognise the compression by magic bytes.
fn sniff_compression(location: &BlobLocation) -> Result<Compression, ImageError> {
    let mut magic = [0u8; 4];
    let mut reader = location.open()?;
    let mut filled = 0;
    while filled < magic.len() {
        match reader
            .read(&mut magic[filled..])
            .ctx(|| format!("read {}", location.file.display()))?
        {
            0 => break,
            n => filled += n,
        }
    }
    Ok(match magic {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

/// Reads the image's metadata and decides which blobs make up its root filesystem.
pub(crate) fn plan(located: &Located) -> Result<Plan, ImageError> {
    let container = Container::open(located)?;
    if container.locate("index.json")?.is_some() {
        return plan_oci(&container, located.tag.as_deref());
    }
    if located.transport == Transport::DockerArchive {
        return plan_docker_archive(&container, located.tag.as_deref());
    }
    let reason = if container.locate("manifest.json")?.is_some() {
        "no index.json, but a manifest.json: use docker-archive:PATH for `docker save` output"
    } else {
        "no index.json: not an OCI image layout"
    };
    Err(ImageError::malformed(container.describe(), reason))
}

fn plan_oci(container: &Container, tag: Option<&str>) -> Result<Plan, ImageError> {
    let index: Index = container
        .read_json("index.json")?
        .expect("index.json was located");
    let manifest_desc = select_manifest(container, index, tag)?;
    let manifest: Manifest = container.read_blob_json(&manifest_desc)?;
    let config: ConfigFile = container.read_blob_json(&manifest.config)?;
    let diff_ids = diff_ids(&config, manifest.layers.len())?;
    let layers = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(desc, diff_id)| {
            let media_type = desc
                .media_type
                .as_deref()
                .unwrap_or("application/vnd.oci.image.layer.v1.tar");
            let (hex, location) = container.blob_location(&desc.digest)?;
            if location.len != desc.size {
                return Err(ImageError::SizeMismatch {
                    what: desc.digest.clone(),
                    expected: desc.size,
                    actual: location.len,
                });
            }
            Ok(LayerPlan {
                location,
                compression: compression_of(media_type)?,
                digest: Some(hex),
                diff_id,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        id: sha256_hex_of(&manifest_desc.digest)?,
        config: config.config.unwrap_or_default(),
        layers,
    })
}

/// The config's diff ids, one per layer (or none at all when the config lists none).
pub(crate) fn diff_ids(
    config: &ConfigFile,
    layers: usize,
) -> Result<Vec<Option<String>>, ImageError> {
    let listed = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.as_slice())
        .unwrap_or_default();
    if listed.is_empty() {
        return Ok(vec![None; layers]);
    }
    if listed.len() != layers {
        return Err(ImageError::malformed(
            "image config",
            format!("{} diff_ids for {layers} layers", listed.len()),
        ));
    }
    listed.iter().map(|d| sha256_hex_of(d).map(Some)).collect()
}

/// Picks the one manifest the reference means: by tag among the index's entries, then through
/// nested indexes / manifest lists to this host's platform.
fn select_manifest(
    container: &Container,
    index: Index,
    tag: Option<&str>,
) -> Result<Descriptor, ImageError> {
    let top: Vec<Descriptor> = match tag {
        Some(tag) => index
            .manifests
            .into_iter()
            .filter(|d| names_tag(d, tag))
            .collect(),
        None => index.manifests,
    };
    let mut found = Vec::new();
    for desc in top {
        collect_manifests(container, desc, 0, &mut found)?;
    }
    let wanted = || match tag {
        Some(tag) => format!("tag {tag:?} for linux/{}", host_architecture()),
        None => format!("linux/{}", host_architecture()),
    };
    match pick_platform(found) {
        Ok(desc) => Ok(desc),
        Err(0) => Err(ImageError::NoMatchingManifest {
            source_name: container.describe(),
            wanted: wanted(),
        }),
        Err(n) => Err(ImageError::NoMatchingManifest {
            source_name: container.describe(),
            wanted: format!("{} unambiguously ({n} images match; add :TAG)", wanted()),
        }),
    }
}

/// The one manifest for this host's platform (linux and its architecture) among `found`, or
/// the one without a platform when none names any; `Err(n)` when `n != 1` candidates remain.
pub(crate) fn pick_platform(found: Vec<Descriptor>) -> Result<Descriptor, usize> {
    let arch = host_architecture();
    let matches_host = |d: &Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    };
    let mut candidates: Vec<Descriptor> = if found.iter().any(matches_host) {
        found.into_iter().filter(matches_host).collect()
    } else {
        found.into_iter().filter(|d| d.platform.is_none()).collect()
    };
    candidates.dedup_by(|a, b| a.digest == b.digest);
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        n => Err(n),
    }
}

/// Whether an index entry carries `tag`, as an OCI ref name or a containerd image name.
fn names_tag(desc: &Descriptor, tag: &str) -> bool {
    desc.annotations.get(REF_NAME).is_some_and(|n| n == tag)
        || desc
            .annotations
            .get(CONTAINERD_NAME)
            .is_some_and(|n| n == tag || n.ends_with(&format!("/{tag}")))
}

/// Expands index entries into image manifests; a nested index is recognised by its content.
fn collect_manifests(
    container: &Container,
    desc: Descriptor,
    depth: usize,
    found: &mut Vec<Descriptor>,
) -> Result<(), ImageError> {
    let is_index = match desc.media_type.as_deref() {
        Some(
            "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json",
        ) => true,
        Some(
            "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v2+json",
        ) => false,
        _ => container
            .read_blob_json::<serde_json::Value>(&desc)?
            .get("manifests")
            .is_some(),
    };
    if !is_index {
        found.push(desc);
        return Ok(());
    }
    if depth >= MAX_INDEX_DEPTH {
        return Err(ImageError::malformed(
            &desc.digest,
            "image indexes nested too deeply",
        ));
    }
    let nested: Index = container.read_blob_json(&desc)?;
    for child in nested.manifests {
        collect_manifests(container, child, depth + 1, found)?;
    }
    Ok(())
}

fn plan_docker_archive(container: &Container, tag: Option<&str>) -> Result<Plan, ImageError> {
    let entries: Vec<DockerArchiveEntry> =
        container.read_json("manifest.json")?.ok_or_else(|| {
            ImageError::malformed(container.describe(), "neither index.json nor manifest.json")
        })?;
    let tagged = |e: &DockerArchiveEntry| {
        tag.is_none_or(|tag| {
            e.repo_tags.iter().flatten().any(|t| {
                t == tag || t.ends_with(&format!(":{tag}")) || *t == format!("{tag}:latest")
            })
        })
    };
    let mut matching: Vec<DockerArchiveEntry> = entries.into_iter().filter(tagged).collect();
    if matching.len() != 1 {
        return Err(ImageError::NoMatchingManifest {
            source_name: container.describe(),
            wanted: match (tag, matching.len()) {
                (Some(tag), 0) => format!("tag {tag:?}"),
                (_, n) => format!("a single image ({n} found; add :TAG)"),
            },
        });
    }
    let entry = matching.remove(0);
    let config_bytes = container
        .read(&entry.config)?
        .ok_or_else(|| ImageError::MissingBlob(entry.config.clone()))?;
    let id = hex::encode(Sha256::digest(&config_bytes));
    let config: ConfigFile = serde_json::from_slice(&config_bytes)
        .map_err(|e| ImageError::malformed(&entry.config, e))?;
    let diff_ids = diff_ids(&config, entry.layers.len())?;
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(name, diff_id)| {
            let location = container
                .locate(name)?
                .ok_or_else(|| ImageError::MissingBlob(name.clone()))?;
            Ok(LayerPlan {
                compression: sniff_compression(&location)?,
                location,
                digest: None,
                diff_id,
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    Ok(Plan {
        id,
        config: config.config.unwrap_or_default(),
        layers,
    })
}
