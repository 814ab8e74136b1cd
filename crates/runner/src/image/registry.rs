//! Pulls from OCI distribution registries (Docker Hub, distribution, Harbor, ...) with
//! `oci-client`: the manifest (an index or manifest list resolved to this host's platform), the
//! config, and layer blobs streamed to files. Anonymous, bearer-token and basic auth. Pushes
//! blobs from files in chunked uploads (skipping those the repository has, mounting those another
//! repository of the registry has) and then the manifest.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use super::error::{ImageError, IoContext};
use super::source::{self, ConfigFile, Descriptor, Index, Manifest, sha256_hex_of};

/// An unreachable registry fails fast instead of hanging a snapshot in `pulling`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence while a response (or the next chunk of a blob) is awaited.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole manifest exchange, token requests included.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a long download logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Configs and manifests larger than this are refused rather than held in memory.
const MAX_JSON_BYTES: u64 = 16 << 20;

const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A username and password for a registry: sent as basic auth, or exchanged for a bearer
/// token when the registry asks for one.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the store reaches registries.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// `host[:port]` entries reached over plain HTTP; an entry without a port matches every
    /// port. Loopback registries always use plain HTTP (as Docker does).
    pub insecure: Vec<String>,
    /// Credentials by registry `host[:port]`, used when a pull brings none of its own.
    pub credentials: Vec<(String, RegistryCredentials)>,
    /// Proxies and extra trusted CAs.
    pub outbound: daytona_outbound::Outbound,
}

impl RegistrySettings {
    fn plain_http(&self, registry: &str) -> bool {
        let registry = registry.to_ascii_lowercase();
        let host = host_of(&registry);
        is_loopback(host)
            || self
                .insecure
                .iter()
                .any(|entry| *entry == registry || entry == host)
    }

    fn credentials_for(&self, registry: &str) -> Option<&RegistryCredentials> {
        self.credentials
            .iter()
            .find(|(host, _)| host.eq_ignore_ascii_case(registry))
            .map(|(_, credentials)| credentials)
    }
}

/// `host` of `host[:port]` (brackets of an IPv6 literal kept).
fn host_of(registry: &str) -> &str {
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// How a blob reached the registry in a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobPush {
    /// The repository had it already.
    Present,
    /// Another repository of the registry had it: mounted, nothing uploaded.
    Mounted,
    /// Uploaded, this many bytes.
    Uploaded(u64),
}

/// One image in one registry, with the client and credentials to fetch it.
pub(crate) struct Remote {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
}

/// The platform's image manifest of a reference.
pub(crate) struct RemoteManifest {
    /// sha256 hex of the image manifest (not of an index that led to it).
    pub id: String,
    pub manifest: Manifest,
}

impl Remote {
    /// `credentials` given with the pull win over the configured ones for the registry.
    pub(crate) fn new(
        settings: &RegistrySettings,
        reference: Reference,
        credentials: Option<&RegistryCredentials>,
    ) -> Self {
        let registry = reference.registry();
        let protocol = if settings.plain_http(registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let auth = match credentials.or_else(|| settings.credentials_for(registry)) {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let client = Client::new(settings.outbound.oci_config(ClientConfig {
            protocol,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            // The index is resolved here, with the same rule as local layouts.
            platform_resolver: None,
            ..ClientConfig::default()
        }));
        Remote {
            client,
            reference,
            auth,
        }
    }

    pub(crate) fn reference(&self) -> &Reference {
        &self.reference
    }

    fn registry(&self) -> String {
        self.reference.registry().to_owned()
    }

    /// Fetches the manifest, following an index or manifest list to this host's platform.
    pub(crate) async fn manifest(&self) -> Result<RemoteManifest, ImageError> {
        let work = async {
            let (bytes, digest) = self.raw_manifest(&self.reference).await?;
            let bytes = if is_index(&bytes) {
                let index: Index = parse_json(&digest, &bytes)?;
                let chosen = source::pick_platform(index.manifests).map_err(|n| {
                    ImageError::NoMatchingManifest {
                        source_name: self.reference.whole(),
                        wanted: match n {
                            0 => format!("linux/{}", source::host_architecture()),
                            n => format!(
                                "linux/{} unambiguously ({n} entries match)",
                                source::host_architecture()
                            ),
                        },
                    }
                })?;
                debug!(reference = %self.reference, digest = %chosen.digest, "index resolved");
                let by_digest = self.reference.clone_with_digest(chosen.digest.clone());
                let (bytes, digest) = self.raw_manifest(&by_digest).await?;
                if is_index(&bytes) {
                    return Err(ImageError::malformed(digest, "an index inside an index"));
                }
                bytes
            } else {
                bytes
            };
            let id = hex::encode(Sha256::digest(&bytes));
            let manifest: Manifest = parse_json(&format!("manifest sha256:{id}"), &bytes)?;
            Ok(RemoteManifest { id, manifest })
        };
        tokio::time::timeout(MANIFEST_TIMEOUT, work)
            .await
            .map_err(|_| self.timeout("fetching the manifest"))?
    }

    /// A manifest's bytes, checked against the digest asked for (or the one the registry
    /// announced) by `oci-client`.
    async fn raw_manifest(&self, reference: &Reference) -> Result<(Vec<u8>, String), ImageError> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &MANIFEST_TYPES)
            .await
            .map_err(|e| self.classify(e))?;
        if let Some(wanted) = reference.digest() {
            let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            if actual != wanted {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest of {reference}"),
                    expected: wanted.to_owned(),
                    actual,
                });
            }
        }
        Ok((bytes.to_vec(), digest))
    }

    /// Fetches and parses the image config; `oci-client` verifies its digest.
    pub(crate) async fn config(&self, desc: &Descriptor) -> Result<ConfigFile, ImageError> {
        if desc.size > MAX_JSON_BYTES {
            return Err(ImageError::malformed(
                &desc.digest,
                format!("a config of {} bytes is too large", desc.size),
            ));
        }
        let mut bytes = Vec::with_capacity(desc.size as usize);
        let fetch = self
            .client
            .pull_blob(&self.reference, desc.digest.as_str(), &mut bytes);
        tokio::time::timeout(MANIFEST_TIMEOUT, fetch)
            .await
            .map_err(|_| self.timeout("fetching the image config"))?
            .map_err(|e| self.classify(e))?;
        if bytes.len() as u64 != desc.size {
            return Err(ImageError::SizeMismatch {
                what: desc.digest.clone(),
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        parse_json(&desc.digest, &bytes)
    }

    /// Streams a blob into `dest` (created), logging progress; stops at the first byte past
    /// the descriptor's size. The unpacker verifies the digest.
    pub(crate) async fn download(
        &self,
        desc: &Descriptor,
        dest: &Path,
        what: &str,
        received: &AtomicU64,
    ) -> Result<(), ImageError> {
        sha256_hex_of(&desc.digest)?;
        let started = Instant::now();
        let mut stream = tokio::time::timeout(
            MANIFEST_TIMEOUT,
            self.client
                .pull_blob_stream(&self.reference, desc.digest.as_str()),
        )
        .await
        .map_err(|_| self.timeout("requesting a layer"))?
        .map_err(|e| self.classify(e))?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .ctx(|| format!("create {}", dest.display()))?;
        let mut bytes = 0u64;
        let mut last_report = Instant::now();
        loop {
            let chunk = tokio::time::timeout(READ_TIMEOUT, stream.next())
                .await
                .map_err(|_| self.timeout("downloading a layer"))?;
            let Some(chunk) = chunk else { break };
            let chunk = chunk.map_err(|e| ImageError::Registry {
                registry: self.registry(),
                reason: format!("{what}: download interrupted: {}", chain(&e)),
            })?;
            bytes += chunk.len() as u64;
            received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if bytes > desc.size {
                return Err(ImageError::SizeMismatch {
                    what: format!("{what} ({})", desc.digest),
                    expected: desc.size,
                    actual: bytes,
                });
            }
            file.write_all(&chunk)
                .await
                .ctx(|| format!("write {}", dest.display()))?;
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                info!(
                    reference = %self.reference, layer = what, bytes, total = desc.size,
                    percent = bytes * 100 / desc.size.max(1), "downloading layer"
                );
            }
        }
        file.flush()
            .await
            .ctx(|| format!("write {}", dest.display()))?;
        info!(
            reference = %self.reference, layer = what, bytes,
            elapsed_ms = started.elapsed().as_millis() as u64, "layer downloaded"
        );
        Ok(())
    }

    /// Authenticates for pushing (a bearer token is scoped to the operation).
    pub(crate) async fn authenticate_push(&self) -> Result<(), ImageError> {
        let work = self
            .client
            .auth(&self.reference, &self.auth, RegistryOperation::Push);
        tokio::time::timeout(MANIFEST_TIMEOUT, work)
            .await
            .map_err(|_| self.timeout("authenticating"))?
            .map_err(|e| self.classify(e))?;
        Ok(())
    }

    /// Makes blob `desc` (the file `path`) present in the repository: a HEAD first, then a
    /// mount from `mount_from` (a repository of the same registry said to hold it), then a
    /// chunked upload of the file.
    pub(crate) async fn push_blob(
        &self,
        desc: &Descriptor,
        path: &Path,
        mount_from: Option<&str>,
    ) -> Result<BlobPush, ImageError> {
        sha256_hex_of(&desc.digest)?;
        let exists = tokio::time::timeout(
            MANIFEST_TIMEOUT,
            self.client.blob_exists(&self.reference, &desc.digest),
        )
        .await
        .map_err(|_| self.timeout("looking up a blob"))?
        .map_err(|e| self.classify(e))?;
        if exists {
            return Ok(BlobPush::Present);
        }
        if let Some(repository) = mount_from {
            let source = Reference::with_tag(
                self.reference.registry().to_owned(),
                repository.to_owned(),
                "latest".to_owned(),
            );
            let mounted = tokio::time::timeout(
                MANIFEST_TIMEOUT,
                self.client
                    .mount_blob(&self.reference, &source, &desc.digest),
            )
            .await;
            match mounted {
                Ok(Ok(())) => return Ok(BlobPush::Mounted),
                // The source no longer holds it (or the registry does not mount): upload.
                Ok(Err(e)) => {
                    debug!(digest = %desc.digest, from = repository, error = %e, "mount refused")
                }
                Err(_) => debug!(digest = %desc.digest, from = repository, "mount timed out"),
            }
        }
        let file = tokio::fs::File::open(path)
            .await
            .ctx(|| format!("open {}", path.display()))?;
        let size = file
            .metadata()
            .await
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        if size != desc.size {
            return Err(ImageError::SizeMismatch {
                what: format!("blob {} ({})", desc.digest, path.display()),
                expected: desc.size,
                actual: size,
            });
        }
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map(|chunk| chunk.map_err(OciDistributionError::from));
        self.client
            .push_blob_stream(&self.reference, stream, &desc.digest, Some(size))
            .await
            .map_err(|e| self.classify(e))?;
        Ok(BlobPush::Uploaded(size))
    }

    /// Puts the manifest `bytes` (of media type `media_type`) under the reference's tag.
    pub(crate) async fn push_manifest(
        &self,
        bytes: Vec<u8>,
        media_type: &str,
    ) -> Result<(), ImageError> {
        let content_type = media_type
            .parse()
            .map_err(|_| ImageError::malformed("manifest", format!("media type {media_type:?}")))?;
        tokio::time::timeout(
            MANIFEST_TIMEOUT,
            self.client
                .push_manifest_raw(&self.reference, bytes, content_type),
        )
        .await
        .map_err(|_| self.timeout("pushing the manifest"))?
        .map_err(|e| self.classify(e))?;
        Ok(())
    }

    fn timeout(&self, doing: &str) -> ImageError {
        ImageError::RegistryTimeout {
            registry: self.registry(),
            secs: MANIFEST_TIMEOUT.as_secs(),
            doing: doing.to_owned(),
        }
    }

    /// Turns a client error into one that names the cause: unreachable, not found, refused.
    fn classify(&self, e: OciDistributionError) -> ImageError {
        let registry = self.registry();
        let reference = self.reference.whole();
        let not_found = |reason: String| ImageError::ImageNotFound {
            reference: reference.clone(),
            reason,
        };
        let refused = |reason: String| ImageError::RegistryAuth {
            registry: registry.clone(),
            reference: reference.clone(),
            reason,
        };
        match e {
            OciDistributionError::RegistryError { envelope, .. } => {
                let reason = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let has = |codes: &[OciErrorCode]| {
                    envelope.errors.iter().any(|e| codes.contains(&e.code))
                };
                if has(&[
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::BlobUnknown,
                ]) {
                    not_found(reason)
                } else if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                    refused(reason)
                } else {
                    ImageError::Registry { registry, reason }
                }
            }
            OciDistributionError::UnauthorizedError { .. } => {
                refused("authentication required, or the credentials were rejected".to_owned())
            }
            OciDistributionError::AuthenticationFailure(reason) => refused(reason),
            OciDistributionError::ServerError { code: 404, .. } => {
                not_found("the registry answered 404 Not Found".to_owned())
            }
            OciDistributionError::ServerError {
                code: code @ (401 | 403),
                message,
                ..
            } => refused(format!("HTTP {code}: {}", message.trim())),
            OciDistributionError::ServerError { code, message, .. } => ImageError::Registry {
                registry,
                reason: format!("HTTP {code}: {}", message.trim()),
            },
            OciDistributionError::ImageManifestNotFoundError(reason) => not_found(reason),
            // A HEAD (blob lookup) answers without a body: only its status says "refused".
            OciDistributionError::RequestError(e)
                if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) =>
            {
                let status = e.status().expect("matched a status");
                refused(format!(
                    "HTTP {status}: authentication required, or the credentials were rejected"
                ))
            }
            OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
                ImageError::RegistryUnreachable {
                    registry,
                    reason: chain(&e),
                }
            }
            other => ImageError::Registry {
                registry,
                reason: chain(&other),
            },
        }
    }
}

/// An error with its sources, which is where "connection refused" or a TLS problem is said.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

fn is_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .is_ok_and(|v| v.get("manifests").is_some_and(|m| m.is_array()))
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::malformed(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_registries_use_plain_http() {
        let settings = RegistrySettings {
            insecure: vec!["registry:6000".into(), "mirror.local".into()],
            credentials: Vec::new(),
            ..Default::default()
        };
        for plain in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "registry:6000",
            "mirror.local:443",
            "Mirror.Local",
        ] {
            assert!(settings.plain_http(plain), "{plain}");
        }
        for tls in ["docker.io", "registry:6001", "registry", "10.0.0.1:5000"] {
            assert!(!settings.plain_http(tls), "{tls}");
        }
    }

    #[test]
    fn credentials_match_the_registry_host() {
        let creds = RegistryCredentials {
            username: "admin".into(),
            password: "secret".into(),
        };
        let settings = RegistrySettings {
            insecure: Vec::new(),
            credentials: vec![("registry:6000".into(), creds.clone())],
            ..Default::default()
        };
        assert_eq!(settings.credentials_for("Registry:6000"), Some(&creds));
        assert_eq!(settings.credentials_for("registry:6001"), None);
        assert!(!format!("{creds:?}").contains("secret"));
    }
}
