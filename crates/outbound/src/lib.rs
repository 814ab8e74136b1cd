//! How this server reaches other hosts: the one place that builds outbound HTTP clients, so every
//! call (runner and proxy to the API, OIDC discovery and keys, registry pulls, image builds)
//! goes through `HTTP_PROXY`/`HTTPS_PROXY` except for the hosts in `NO_PROXY`, and trusts the
//! CAs of `NODE_EXTRA_CA_CERTS` besides the usual roots. Proxies come from the configuration
//! only (the HTTP library's own reading of the environment is turned off), so what the
//! configuration says is what happens.

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
        let no_proxy = || {
            self.no_proxy
                .as_deref()
                .and_then(reqwest::NoProxy::from_string)
        };
        let mut builder = reqwest::Client::builder().no_proxy();
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
}
