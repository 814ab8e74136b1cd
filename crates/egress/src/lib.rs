//! The runner's egress proxy: an HTTP(S) forward proxy on the sandbox bridge through which
//! sandboxes that mount organization secrets send their web traffic.
//!
//! A sandbox only ever holds a secret's opaque *placeholder* (an environment variable). When a
//! request leaves through this proxy for a host the secret allows, the placeholder is replaced
//! by the real value in the request's headers, its path and query, and a small body (at most
//! [`MAX_REWRITTEN_BODY`] bytes with a known length and no content encoding). A placeholder sent
//! to any other host goes out unchanged: the value never leaves for a host it is not meant for.
//!
//! * Plain HTTP (absolute-form requests) is rewritten and forwarded.
//! * `CONNECT host:port` is intercepted (TLS terminated with a leaf certificate minted for that
//!   host by the runner's own CA, [`ca::CertificateAuthority`]) only when one of the sandbox's
//!   secrets applies to `host`; the proxy then talks TLS to the real host, verifying its
//!   certificate against the host's trust store, the bundled web roots and any extra bundle
//!   (`DAYTONA_EGRESS_EXTRA_CA_FILE`). Every other `CONNECT` is tunnelled untouched.
//! * The sandbox authenticates with per-sandbox proxy credentials (`Proxy-Authorization: Basic`,
//!   user = sandbox id, password = an HMAC of it under the runner's key; [`Credentials`]) that
//!   its `HTTP_PROXY` URL carries, and the proxy asks an [`EgressDirectory`] (the API,
//!   in-process) for the sandbox's network policy and secrets on every request, so a secret's
//!   update or deletion applies to the next request.
//! * The proxy never widens what the sandbox could reach directly ([`policy::EgressRules`]):
//!   `networkBlockAll` refuses everything, an allow list limits destinations to its CIDRs, host
//!   loopback and (without inter-sandbox networking) other sandboxes are refused.

pub mod ca;
pub mod hosts;
pub mod policy;
mod proxy;
mod rewrite;
mod token;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use daytona_config::Ipv4Cidr;
pub use hosts::{HostPattern, InvalidHost};
pub use policy::{EgressPolicy, EgressRules};
pub use proxy::serve;
pub use token::Credentials;

/// Every secret placeholder starts with this (the daemon drops stale ones by this prefix).
pub const PLACEHOLDER_PREFIX: &str = "daytona-secret-";

/// Largest request body whose placeholders are replaced; larger or unsized bodies stream as is.
pub const MAX_REWRITTEN_BODY: usize = 1024 * 1024;

/// Where the CA trust files appear inside a sandbox (a read-only bind mount).
pub const TRUST_MOUNT_TARGET: &str = "/etc/daytona/egress";
/// The host's CA bundle plus the egress CA (inside [`TRUST_MOUNT_TARGET`]).
pub const TRUST_BUNDLE_FILE: &str = "ca-bundle.pem";
/// The egress CA certificate alone (inside [`TRUST_MOUNT_TARGET`]).
pub const TRUST_CA_FILE: &str = "egress-ca.pem";

/// A new opaque placeholder: the prefix and 128 random bits.
pub fn new_placeholder() -> String {
    use rand::RngExt;
    let bytes: [u8; 16] = rand::rng().random();
    format!("{PLACEHOLDER_PREFIX}{}", hex::encode(bytes))
}

/// One secret mounted in a sandbox, with its value.
#[derive(Clone)]
pub struct ResolvedSecret {
    pub placeholder: String,
    pub value: String,
    /// Where the value may go; empty means anywhere.
    pub hosts: Vec<HostPattern>,
}

impl std::fmt::Debug for ResolvedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedSecret")
            .field("placeholder", &self.placeholder)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl ResolvedSecret {
    /// Whether the value may be sent to `host`.
    pub fn applies_to(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|p| p.matches(host))
    }
}

/// What the proxy needs to know about one sandbox.
#[derive(Debug, Clone, Default)]
pub struct EgressGrant {
    pub policy: EgressPolicy,
    pub secrets: Vec<ResolvedSecret>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DirectoryError(pub String);

/// Where the proxy looks sandboxes up: the API in-process, or over HTTP for a remote runner.
#[async_trait::async_trait]
pub trait EgressDirectory: Send + Sync + 'static {
    /// The policy and secrets of a sandbox that exists (any state), `None` for an unknown one.
    async fn grant(&self, sandbox_id: &str) -> Result<Option<EgressGrant>, DirectoryError>;
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("egress CA: {0}")]
    Certificate(String),
    #[error("extra CA bundle {path}: {reason}")]
    ExtraCa { path: PathBuf, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> EgressError + '_ {
    move |source| EgressError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A runner's egress setup: where the proxy listens, its CA, its credential key and the trust
/// files mounted into sandboxes. Kept in `dir` (`<data>/egress`), so sandboxes keep working
/// across restarts.
pub struct Egress {
    listen: std::net::SocketAddrV4,
    ca: Arc<ca::CertificateAuthority>,
    credentials: Credentials,
    trust_dir: PathBuf,
    rules: EgressRules,
    upstream_tls: Arc<rustls::ClientConfig>,
}

impl Egress {
    /// Loads (or makes, the first time) the CA and the credential key in `dir`, writes the
    /// trust files and prepares upstream TLS with the host's roots, the bundled web roots and
    /// the certificates in `extra_ca_file`.
    pub fn open(
        dir: &Path,
        port: u16,
        rules: EgressRules,
        extra_ca_file: Option<&Path>,
    ) -> Result<Self, EgressError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        // Absolute: the trust directory is a mount source.
        let dir = &std::fs::canonicalize(dir).map_err(io_error(dir))?;
        let ca = Arc::new(ca::CertificateAuthority::load_or_create(dir)?);
        let credentials = Credentials::load_or_create(&dir.join("proxy-credentials.key"))?;
        let trust_dir = dir.join("trust");
        write_trust_files(&trust_dir, ca.certificate_pem())?;
        let upstream_tls = Arc::new(proxy::upstream_tls(extra_ca_file)?);
        Ok(Egress {
            listen: std::net::SocketAddrV4::new(rules.gateway(), port),
            ca,
            credentials,
            trust_dir,
            rules,
            upstream_tls,
        })
    }

    /// The proxy's address: the bridge's gateway address, which every sandbox routes through.
    pub fn listen_address(&self) -> std::net::SocketAddrV4 {
        self.listen
    }

    /// The host directory holding the trust files, mounted read-only at [`TRUST_MOUNT_TARGET`].
    pub fn trust_dir(&self) -> &Path {
        &self.trust_dir
    }

    pub fn ca(&self) -> &Arc<ca::CertificateAuthority> {
        &self.ca
    }

    /// The environment of a sandbox that mounts secrets: its proxy (with credentials) for every
    /// common spelling, loopback excluded, and the CA trust for OpenSSL, curl, git, Python
    /// requests and Node.
    pub fn sandbox_env(&self, sandbox_id: &str) -> BTreeMap<String, String> {
        let url = format!(
            "http://{sandbox_id}:{}@{}",
            self.credentials.token(sandbox_id),
            self.listen
        );
        let bundle = format!("{TRUST_MOUNT_TARGET}/{TRUST_BUNDLE_FILE}");
        let ca = format!("{TRUST_MOUNT_TARGET}/{TRUST_CA_FILE}");
        let no_proxy = "localhost,127.0.0.1,::1";
        let mut env = BTreeMap::new();
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env.insert(name.to_owned(), url.clone());
        }
        for name in ["NO_PROXY", "no_proxy"] {
            env.insert(name.to_owned(), no_proxy.to_owned());
        }
        for name in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
        ] {
            env.insert(name.to_owned(), bundle.clone());
        }
        env.insert("NODE_EXTRA_CA_CERTS".to_owned(), ca);
        env
    }

    pub(crate) fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub(crate) fn rules(&self) -> &EgressRules {
        &self.rules
    }

    pub(crate) fn upstream_tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.upstream_tls
    }
}

/// The host's CA bundle (if it has one) followed by the egress CA, and the CA alone; replaced
/// atomically, so a sandbox never reads half a file.
fn write_trust_files(dir: &Path, ca_pem: &str) -> Result<(), EgressError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io_error(dir))?;
    let mut bundle = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca_pem);
    for (name, text) in [
        (TRUST_BUNDLE_FILE, bundle.as_str()),
        (TRUST_CA_FILE, ca_pem),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).map_err(io_error(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .map_err(io_error(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_prefixed_and_distinct() {
        let (a, b) = (new_placeholder(), new_placeholder());
        assert!(a.starts_with(PLACEHOLDER_PREFIX));
        assert_eq!(a.len(), PLACEHOLDER_PREFIX.len() + 32);
        assert_ne!(a, b);
    }

    #[test]
    fn sandbox_env_points_at_the_proxy_with_verifiable_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let rules = EgressRules::new("100.80.0.0/16".parse().unwrap(), false);
        let egress = Egress::open(dir.path(), 3128, rules, None).unwrap();
        let env = egress.sandbox_env("sb-1");
        let url = &env["HTTPS_PROXY"];
        let rest = url.strip_prefix("http://sb-1:").unwrap();
        let (token, addr) = rest.split_once('@').unwrap();
        assert_eq!(addr, "100.80.0.1:3128");
        assert!(egress.credentials().verify("sb-1", token));
        assert!(!egress.credentials().verify("sb-2", token));
        assert_eq!(env["SSL_CERT_FILE"], "/etc/daytona/egress/ca-bundle.pem");
        let bundle = std::fs::read_to_string(dir.path().join("trust/ca-bundle.pem")).unwrap();
        assert!(bundle.ends_with(egress.ca().certificate_pem()));
        // The same CA and key come back after a restart.
        let again = Egress::open(dir.path(), 3128, rules, None).unwrap();
        assert_eq!(again.ca().certificate_pem(), egress.ca().certificate_pem());
        assert_eq!(again.sandbox_env("sb-1")["HTTPS_PROXY"], *url);
    }
}
