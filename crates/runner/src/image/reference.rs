//! Image references the store understands: local OCI layouts and archives, named by transport,
//! and registry references (`ubuntu`, `host:port/repo:tag`, `repo@sha256:…`, `docker://…`).

use std::path::{Path, PathBuf};

use super::error::ImageError;

/// How the image bytes are packaged on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    /// `oci-archive:` — a tar of an OCI image layout.
    OciArchive,
    /// `oci:` — an OCI image layout directory.
    OciDir,
    /// `docker-archive:` — `docker save` output (legacy `manifest.json`, or an OCI layout inside).
    DockerArchive,
}

/// A reference whose path has not been looked up yet: the tag boundary depends on what exists.
#[derive(Debug, Clone)]
pub(crate) struct LocalReference {
    pub transport: Transport,
    pub rest: String,
}

/// A reference resolved to an existing path and an optional tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Located {
    pub transport: Transport,
    pub path: PathBuf,
    pub tag: Option<String>,
}

const TRANSPORTS: [(&str, Transport); 3] = [
    ("oci-archive:", Transport::OciArchive),
    ("oci:", Transport::OciDir),
    ("docker-archive:", Transport::DockerArchive),
];

/// What a reference names: a local file or directory, or an image in a registry.
#[derive(Debug, Clone)]
pub(crate) enum ImageReference {
    Local(LocalReference),
    Registry(oci_client::Reference),
}

/// Splits off the transport; anything else must be a registry reference, normalised as Docker
/// does (`ubuntu` → `docker.io/library/ubuntu:latest`).
pub(crate) fn parse(reference: &str) -> Result<ImageReference, ImageError> {
    let invalid = |reason: &str| ImageError::InvalidReference {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = reference.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty reference"));
    }
    if let Some((transport, rest)) = TRANSPORTS
        .iter()
        .find_map(|(prefix, t)| trimmed.strip_prefix(prefix).map(|rest| (*t, rest)))
    {
        if rest.is_empty() {
            return Err(invalid("missing path after the transport"));
        }
        return Ok(ImageReference::Local(LocalReference {
            transport,
            rest: rest.to_owned(),
        }));
    }
    let name = trimmed.strip_prefix("docker://").unwrap_or(trimmed);
    if name.starts_with(['/', '.']) {
        return Err(invalid(
            "a path needs a transport: oci-archive:PATH[:TAG], oci:DIR[:TAG] or \
             docker-archive:PATH[:TAG]",
        ));
    }
    oci_client::Reference::try_from(name)
        .map(ImageReference::Registry)
        .map_err(|e| {
            invalid(&format!(
                "neither a registry reference ({e}) nor oci-archive:PATH[:TAG], oci:DIR[:TAG] \
                 or docker-archive:PATH[:TAG]"
            ))
        })
}

impl LocalReference {
    /// Finds where the path ends: the whole rest if it exists, else the shortest existing prefix
    /// before a `:` (the remainder is the tag, which may itself contain `:` and `/`).
    pub(crate) fn locate(&self) -> Result<Located, ImageError> {
        let rest = self.rest.as_str();
        let found = |path: &str, tag: Option<&str>| Located {
            transport: self.transport,
            path: PathBuf::from(path),
            tag: tag.map(str::to_owned),
        };
        if Path::new(rest).exists() {
            return Ok(found(rest, None));
        }
        for (i, _) in rest.match_indices(':') {
            let (path, tag) = (&rest[..i], &rest[i + 1..]);
            if !path.is_empty() && Path::new(path).exists() {
                if tag.is_empty() {
                    return Err(ImageError::InvalidReference {
                        reference: rest.to_owned(),
                        reason: "empty tag".to_owned(),
                    });
                }
                return Ok(found(path, Some(tag)));
            }
        }
        // Report the path as a user most likely meant it: up to the first `:` after the last `/`.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let end = rest[slash..].find(':').map_or(rest.len(), |i| slash + i);
        Err(ImageError::NotFound(PathBuf::from(&rest[..end])))
    }
}
