//! How this server reaches other hosts: the one place that builds outbound HTTP clients, so every
//! call (runner and proxy to the API, OIDC discovery and keys, registry pulls and pushes, S3 of
//! the API and the runner, the OTLP exporter) goes through `HTTP_PROXY`/`HTTPS_PROXY` except for
//! the hosts in `NO_PROXY`, and trusts the CAs of `NODE_EXTRA_CA_CERTS` besides the usual roots.
//! Proxies come from the configuration only (the HTTP library's own reading of the environment is
//! turned off), so what the configuration says is what happens. The same settings reach s3fs
//! through its environment ([`Outbound::proxy_env`], [`Outbound::write_ca_bundle`]) and SMTP's
//! TLS as extra roots ([`Outbound::extra_root_pems`]; SMTP is not HTTP, so no proxy applies).
//!
//! Not through a proxy, by design: calls to our own sandboxes' daemons on this host's bridge
//! ([`Outbound::local_client_builder`]), and the proxy's and SSH gateway's traffic to runners
//! (runners sit on the deployment's private network, as if always in `NO_PROXY`).

use std::path::PathBuf;
use std::sync::Arc;

use daytona_config::MiscConfig;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("NODE_EXTRA_CA_CERTS={path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("{variable}: not a proxy URL ({reason})")]
    Proxy {
        variable: &'static str,
        reason: String,
    },
}

/// Debian's bundle of the system's trusted CAs (package ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The settings both reqwest client builders (async and blocking) take alike.
trait Builder: Sized {
    fn no_proxy(self) -> Self;
    fn proxy(self, proxy: reqwest::Proxy) -> Self;
    fn tls_certs_merge(self, certs: impl IntoIterator<Item = reqwest::Certificate>) -> Self;
}

macro_rules! builder {
    ($ty:ty) => {
        impl Builder for $ty {
            fn no_proxy(self) -> Self {
                <$ty>::no_proxy(self)
            }
            fn proxy(self, proxy: reqwest::Proxy) -> Self {
                <$ty>::proxy(self, proxy)
            }
            fn tls_certs_merge(
                self,
                certs: impl IntoIterator<Item = reqwest::Certificate>,
            ) -> Self {
                <$ty>::tls_certs_merge(self, certs)
            }
        }
    };
}
builder!(reqwest::ClientBuilder);
builder!(reqwest::blocking::ClientBuilder);

/// Proxies and extra trusted CAs for outbound connections. Cheap to clone.
#[derive(Clone, Default)]
pub struct Outbound {
    http_proxy: Option<String>,
    https_proxy: Option<String>,
    no_proxy: Option<String>,
    /// PEM certificates of `NODE_EXTRA_CA_CERTS`, checked at startup.
    extra_roots: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for Outbound {
    // Proxy URLs may embed credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("http_proxy", &self.http_proxy.is_some())
            .field("https_proxy", &self.https_proxy.is_some())
            .field("no_proxy", &self.no_proxy)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl Outbound {
    /// Direct connections and the usual roots only.
    pub fn direct() -> Self {
        Self::default()
    }

    /// Reads the CA bundle now, so a missing or empty file stops startup with its name.
    pub fn from_config(misc: &MiscConfig) -> Result<Self, OutboundError> {
        let extra_roots = match &misc.extra_ca_certs {
            Some(path) => read_bundle(path)?,
            None => Vec::new(),
        };
        let outbound = Outbound {
            http_proxy: misc.http_proxy.as_ref().map(|s| s.expose().to_owned()),
            https_proxy: misc.https_proxy.as_ref().map(|s| s.expose().to_owned()),
            no_proxy: misc.no_proxy.clone(),
            extra_roots: Arc::new(extra_roots),
        };
        // Proxy URLs are checked once here; `client_builder` relies on it.
        for (variable, url) in [
            ("HTTP_PROXY", &outbound.http_proxy),
            ("HTTPS_PROXY", &outbound.https_proxy),
        ] {
            if let Some(url) = url {
                reqwest::Proxy::all(url.as_str()).map_err(|e| OutboundError::Proxy {
                    variable,
                    reason: e.to_string(),
                })?;
            }
        }
        Ok(outbound)
    }

    /// A reqwest client builder with the proxies and extra roots applied; callers add their
    /// timeouts.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        self.apply(reqwest::Client::builder())
    }

    /// The same for a blocking client (the OTLP exporter exports from a thread of its own,
    /// outside any async runtime).
    pub fn blocking_client_builder(&self) -> reqwest::blocking::ClientBuilder {
        self.apply(reqwest::blocking::Client::builder())
    }

    /// For our own processes on this host's bridge (sandbox daemons): never through a proxy,
    /// whatever the environment says.
    pub fn local_client_builder() -> reqwest::ClientBuilder {
        Outbound::direct().client_builder()
    }

    fn apply<B: Builder>(&self, builder: B) -> B {
        let no_proxy = || {
            self.no_proxy
                .as_deref()
                .and_then(reqwest::NoProxy::from_string)
        };
        let mut builder = builder.no_proxy();
        if let Some(url) = &self.http_proxy
            && let Ok(proxy) = reqwest::Proxy::http(url.as_str())
        {
            builder = builder.proxy(proxy.no_proxy(no_proxy()));
        }
        if let Some(url) = &self.https_proxy
            && let Ok(proxy) = reqwest::Proxy::https(url.as_str())
        {
            builder = builder.proxy(proxy.no_proxy(no_proxy()));
        }
        if !self.extra_roots.is_empty() {
            let certs = self
                .extra_roots
                .iter()
                .filter_map(|pem| reqwest::Certificate::from_pem(pem).ok());
            builder = builder.tls_certs_merge(certs);
        }
        builder
    }

    /// The PEM certificates of `NODE_EXTRA_CA_CERTS`, one each, for TLS stacks that are not
    /// reqwest's (SMTP).
    pub fn extra_root_pems(&self) -> impl Iterator<Item = &[u8]> {
        self.extra_roots.iter().map(Vec::as_slice)
    }

    /// The proxy settings as the environment of a child process that uses libcurl (s3fs):
    /// curl reads `http_proxy` only in lower case, so all three are given that way.
    pub fn proxy_env(&self) -> Vec<(&'static str, String)> {
        [
            ("http_proxy", &self.http_proxy),
            ("https_proxy", &self.https_proxy),
            ("no_proxy", &self.no_proxy),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect()
    }

    /// Writes the system's CA bundle followed by the extra CAs to `path`, for programs that take
    /// one bundle in place of the system's (libcurl's `CURL_CA_BUNDLE`); `None` without extra
    /// CAs (the system's bundle is used as is).
    pub fn write_ca_bundle(&self, path: &std::path::Path) -> std::io::Result<Option<PathBuf>> {
        if self.extra_roots.is_empty() {
            return Ok(None);
        }
        let mut bundle = match std::fs::read(SYSTEM_CA_BUNDLE) {
            Ok(system) => system,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{SYSTEM_CA_BUNDLE}: {e}"),
                ));
            }
        };
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        for pem in self.extra_roots.iter() {
            bundle.extend_from_slice(pem);
        }
        std::fs::write(path, bundle)?;
        Ok(Some(path.to_path_buf()))
    }

    /// The same settings for an OCI registry client.
    pub fn oci_config(
        &self,
        mut config: oci_client::client::ClientConfig,
    ) -> oci_client::client::ClientConfig {
        config.http_proxy = self.http_proxy.clone();
        config.https_proxy = self.https_proxy.clone();
        config.no_proxy = self.no_proxy.clone();
        config.extra_root_certificates = self
            .extra_roots
            .iter()
            .map(|pem| oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect();
        config
    }
}

/// The certificates of a PEM bundle, one PEM block each.
fn read_bundle(path: &std::path::Path) -> Result<Vec<Vec<u8>>, OutboundError> {
    let bad = |reason: String| OutboundError::CaBundle {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            return Err(bad("a certificate is not terminated".into()));
        };
        let block = &rest[start..start + end + END.len()];
        reqwest::Certificate::from_pem(block.as_bytes())
            .map_err(|e| bad(format!("not a valid certificate: {e}")))?;
        blocks.push(format!("{block}\n").into_bytes());
        rest = &rest[start + end + END.len()..];
    }
    if blocks.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn misc(vars: &[(&str, &str)]) -> MiscConfig {
        daytona_config::Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .expect("valid configuration")
        .misc
    }

    #[test]
    fn a_bad_bundle_is_refused_naming_the_variable() {
        let dir = std::env::temp_dir().join(format!("outbound-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Outbound::from_config(&misc(&[("NODE_EXTRA_CA_CERTS", empty.to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("NODE_EXTRA_CA_CERTS") && err.contains("no PEM"),
            "{err}"
        );
        let missing = dir.join("missing.pem");
        let err =
            Outbound::from_config(&misc(&[("NODE_EXTRA_CA_CERTS", missing.to_str().unwrap())]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("cannot read"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proxies_reach_the_oci_client() {
        let outbound = Outbound::from_config(&misc(&[
            ("http_proxy", "http://127.0.0.1:3128"),
            ("HTTPS_PROXY", "http://127.0.0.1:3129"),
            ("NO_PROXY", "localhost,registry"),
        ]))
        .unwrap();
        let config = outbound.oci_config(Default::default());
        assert_eq!(config.http_proxy.as_deref(), Some("http://127.0.0.1:3128"));
        assert_eq!(config.https_proxy.as_deref(), Some("http://127.0.0.1:3129"));
        assert_eq!(config.no_proxy.as_deref(), Some("localhost,registry"));
        assert!(!format!("{outbound:?}").contains("3128"));
    }

    #[test]
    fn child_processes_get_only_the_configured_proxies_and_a_merged_bundle() {
        let outbound = Outbound::from_config(&misc(&[
            ("HTTPS_PROXY", "http://127.0.0.1:3129"),
            ("NO_PROXY", "localhost,runner.internal"),
        ]))
        .unwrap();
        assert_eq!(
            outbound.proxy_env(),
            vec![
                ("https_proxy", "http://127.0.0.1:3129".to_string()),
                ("no_proxy", "localhost,runner.internal".to_string()),
            ]
        );
        let dir = std::env::temp_dir().join(format!("outbound-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bundle = dir.join("bundle.pem");
        assert_eq!(Outbound::direct().write_ca_bundle(&bundle).unwrap(), None);
        assert!(!bundle.exists());

        // Any certificate will do: the system bundle's first one stands in for an extra CA.
        let system = std::fs::read_to_string(SYSTEM_CA_BUNDLE).unwrap();
        let end = system.find("-----END CERTIFICATE-----").unwrap() + 25;
        let start = system.find("-----BEGIN CERTIFICATE-----").unwrap();
        let extra = dir.join("extra.pem");
        std::fs::write(&extra, &system[start..end]).unwrap();
        let outbound =
            Outbound::from_config(&misc(&[("NODE_EXTRA_CA_CERTS", extra.to_str().unwrap())]))
                .unwrap();
        assert_eq!(
            outbound.write_ca_bundle(&bundle).unwrap().as_deref(),
            Some(bundle.as_path())
        );
        let merged = std::fs::read_to_string(&bundle).unwrap();
        assert!(merged.starts_with(&system), "the system's CAs come first");
        assert!(merged[system.len()..].contains(&system[start..end]));
        assert_eq!(outbound.extra_root_pems().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
