//! Image references the store understands: local OCI layouts and archives, named by transport.

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

/// Splits off the transport. Registry-style references are refused with [`ImageError::Unsupported`].
pub(crate) fn parse(reference: &str) -> Result<LocalReference, ImageError> {
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
        return Ok(LocalReference {
            transport,
            rest: rest.to_owned(),
        });
    }
    if trimmed.starts_with("docker://") || looks_like_registry_reference(trimmed) {
        return Err(ImageError::Unsupported(reference.to_owned()));
    }
    Err(invalid(
        "expected oci-archive:PATH[:TAG], oci:DIR[:TAG] or docker-archive:PATH[:TAG]",
    ))
}

/// `name[:tag][@digest]` with a registry's character set; a bare path is not one.
fn looks_like_registry_reference(s: &str) -> bool {
    !s.starts_with('/')
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@+".contains(c))
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
