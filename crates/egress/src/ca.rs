//! The runner's egress CA: a self-signed ECDSA P-256 certificate authority kept in the egress
//! directory (`ca-key.pem` 0600, `ca.pem`), and the leaf certificates it mints for the hosts
//! whose TLS the proxy terminates (cached per host, valid for [`LEAF_DAYS`] days).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{EgressError, io_error};

/// Validity of a minted leaf certificate; minted again after half of it.
const LEAF_DAYS: i64 = 30;
/// Validity of the CA.
const CA_DAYS: i64 = 3650;
/// Hosts whose leaf configuration is kept (the oldest go first).
const CACHED_LEAVES: usize = 1024;

pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, (time::OffsetDateTime, Arc<ServerConfig>)>>,
}

/// The CA's subject; the issuer of every leaf must carry exactly this name.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Daytona");
    name.push(DnType::CommonName, "Daytona sandbox egress CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn cert_error(e: impl std::fmt::Display) -> EgressError {
    EgressError::Certificate(e.to_string())
}

impl CertificateAuthority {
    /// The CA in `dir`, made there (key first written 0600) when it has none.
    pub fn load_or_create(dir: &Path) -> Result<Self, EgressError> {
        let key_path = dir.join("ca-key.pem");
        let cert_path = dir.join("ca.pem");
        let (key, cert_pem) = match std::fs::read_to_string(&key_path) {
            Ok(key_pem) => {
                let key = KeyPair::from_pem(&key_pem).map_err(cert_error)?;
                let cert = std::fs::read_to_string(&cert_path).map_err(io_error(&cert_path))?;
                (key, cert)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate().map_err(cert_error)?;
                let mut params = ca_params();
                let now = time::OffsetDateTime::now_utc();
                params.not_before = now - time::Duration::days(1);
                params.not_after = now + time::Duration::days(CA_DAYS);
                let cert = params.self_signed(&key).map_err(cert_error)?;
                std::fs::write(&cert_path, cert.pem()).map_err(io_error(&cert_path))?;
                // The key last: its presence means both files are complete.
                daytona_config::write_private_file(&key_path, key.serialize_pem().as_bytes())
                    .map_err(io_error(&key_path))?;
                tracing::info!(path = %cert_path.display(), "created the egress CA");
                (key, cert.pem())
            }
            Err(e) => return Err(io_error(&key_path)(e)),
        };
        use rustls_pki_types::pem::PemObject;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(cert_error)?;
        Ok(CertificateAuthority {
            cert_pem,
            cert_der,
            issuer: Issuer::new(ca_params(), key),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A TLS server configuration presenting a certificate for `host` (a DNS name or an IP
    /// address), minted on first use.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, EgressError> {
        let now = time::OffsetDateTime::now_utc();
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((renew_at, config)) = leaves.get(host)
            && *renew_at > now
        {
            return Ok(config.clone());
        }
        let key = KeyPair::generate().map_err(cert_error)?;
        let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(cert_error)?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(LEAF_DAYS);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_error)?;
        let chain = vec![cert.der().clone(), self.cert_der.clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(cert_error)?
                .with_no_client_auth()
                .with_single_cert(chain, key_der)
                .map_err(cert_error)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if leaves.len() >= CACHED_LEAVES
            && let Some(oldest) = leaves
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(h, _)| h.clone())
        {
            leaves.remove(&oldest);
        }
        let renew_at = now + time::Duration::days(LEAF_DAYS / 2);
        leaves.insert(host.to_owned(), (renew_at, config.clone()));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_chain_to_the_ca_and_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let a = ca.server_config("api.example.com").unwrap();
        assert!(Arc::ptr_eq(
            &a,
            &ca.server_config("api.example.com").unwrap()
        ));
        ca.server_config("100.64.0.1").unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("ca-key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the CA key is private");
        let reloaded = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(reloaded.certificate_pem(), ca.certificate_pem());
    }
}
