//! The key that signs registry tokens: ECDSA P-256 (`ES256`) with a self-signed certificate,
//! which the registry trusts as its `rootcertbundle`. Every token carries the certificate
//! (`x5c`), which distribution checks against that bundle, and its libtrust key id (`kid`),
//! which it looks up among the bundle's keys when a token has no `x5c`.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{CertificateParams, DnType, KeyPair, KeyUsagePurpose, PublicKeyData};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::RegistryTokenError;

/// Validity of a generated certificate; the registry refuses tokens once it lapsed.
const CERT_DAYS: i64 = 3650;

pub struct SigningKey {
    encoding: EncodingKey,
    /// base64 DER of the certificate, as `x5c` wants it.
    certificate: String,
    key_id: String,
    public_key: Vec<u8>,
}

fn key_error(path: &Path, e: impl std::fmt::Display) -> RegistryTokenError {
    RegistryTokenError::Key(format!("{}: {e}", path.display()))
}

impl SigningKey {
    /// The key at `key_path` with its certificate at `cert_path`, both made there when both are
    /// missing (the key written 0600, last, so its presence means both are complete).
    pub fn load_or_create(key_path: &Path, cert_path: &Path) -> Result<Self, RegistryTokenError> {
        let (key, cert_pem) = match std::fs::read_to_string(key_path) {
            Ok(key_pem) => {
                let key = KeyPair::from_pem(&key_pem).map_err(|e| key_error(key_path, e))?;
                let cert =
                    std::fs::read_to_string(cert_path).map_err(|e| key_error(cert_path, e))?;
                (key, cert)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if cert_path.exists() {
                    return Err(key_error(
                        key_path,
                        format!(
                            "missing while its certificate {} exists",
                            cert_path.display()
                        ),
                    ));
                }
                create(key_path, cert_path)?
            }
            Err(e) => return Err(key_error(key_path, e)),
        };
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(key_error(key_path, "not an ECDSA P-256 key"));
        }
        let certificate = pem_body(&cert_pem, "CERTIFICATE")
            .ok_or_else(|| key_error(cert_path, "no PEM CERTIFICATE in it"))?;
        if certificate_key(&certificate).as_deref() != Some(key.der_bytes()) {
            return Err(key_error(cert_path, "does not certify the signing key"));
        }
        Ok(SigningKey {
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            certificate,
            key_id: libtrust_key_id(&key.subject_public_key_info()),
            public_key: key.der_bytes().to_vec(),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The uncompressed public point (what verifies the tokens).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    pub fn sign(&self, claims: &impl Serialize) -> Result<String, RegistryTokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".into());
        header.kid = Some(self.key_id.clone());
        header.x5c = Some(vec![self.certificate.clone()]);
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| RegistryTokenError::Key(format!("signing a token: {e}")))
    }
}

/// Where the key and certificate live: the configured paths, else `<data dir>/registry-token/`.
pub fn key_paths(auth: &daytona_config::RegistryTokenAuth, data_dir: &Path) -> (PathBuf, PathBuf) {
    match (&auth.key_path, &auth.cert_path) {
        (Some(key), Some(cert)) => (key.clone(), cert.clone()),
        _ => {
            let dir = data_dir.join("registry-token");
            (dir.join("key.pem"), dir.join("cert.pem"))
        }
    }
}

fn create(key_path: &Path, cert_path: &Path) -> Result<(KeyPair, String), RegistryTokenError> {
    if let Some(dir) = key_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| key_error(dir, e))?;
    }
    let key = KeyPair::generate().map_err(|e| key_error(key_path, e))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Daytona registry token issuer");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CERT_DAYS);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params
        .self_signed(&key)
        .map_err(|e| key_error(cert_path, e))?;
    std::fs::write(cert_path, cert.pem()).map_err(|e| key_error(cert_path, e))?;
    daytona_config::write_private_file(key_path, key.serialize_pem().as_bytes())
        .map_err(|e| key_error(key_path, e))?;
    tracing::info!(key = %key_path.display(), certificate = %cert_path.display(),
        "created the registry token signing key");
    Ok((key, cert.pem()))
}

/// The base64 body of the first PEM block labelled `label`.
fn pem_body(pem: &str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop].split_whitespace().collect();
    STANDARD.decode(&body).ok()?;
    Some(body)
}

/// The subject public key of a DER certificate (base64), found by its encoding in the
/// certificate: enough to check that a configured certificate belongs to the key.
fn certificate_key(certificate: &str) -> Option<Vec<u8>> {
    let der = STANDARD.decode(certificate).ok()?;
    // An uncompressed P-256 point: 0x04 followed by 64 bytes, inside a BIT STRING
    // (03 42 00 04 ...).
    let at = der.windows(4).position(|w| w == [0x03, 0x42, 0x00, 0x04])?;
    der.get(at + 3..at + 3 + 65).map(<[u8]>::to_vec)
}

/// libtrust's key id (docker/libtrust `keyIDFromCryptoKey`): the first 240 bits of the SHA-256
/// of the DER SubjectPublicKeyInfo, base32 without padding, in groups of four joined by `:`.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let encoded = base32(&digest[..30]);
    let groups: Vec<&str> = encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).expect("base32 is ASCII"))
        .collect();
    groups.join(":")
}

/// RFC 4648 base32 (standard alphabet) without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648() {
        // RFC 4648 section 10 vectors, padding removed.
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"fo"), "MZXQ");
        assert_eq!(base32(b"foo"), "MZXW6");
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn key_ids_have_libtrusts_shape() {
        let id = libtrust_key_id(b"any key");
        let groups: Vec<&str> = id.split(':').collect();
        assert_eq!(groups.len(), 12, "{id}");
        assert!(groups.iter().all(|g| g.len() == 4));
    }

    #[test]
    fn a_key_is_made_once_then_loaded_and_signs_verifiable_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let (key_path, cert_path) = (dir.path().join("k/key.pem"), dir.path().join("k/cert.pem"));
        let made = SigningKey::load_or_create(&key_path, &cert_path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let loaded = SigningKey::load_or_create(&key_path, &cert_path).unwrap();
        assert_eq!(made.key_id(), loaded.key_id());

        let token = loaded.sign(&serde_json::json!({"sub": "x"})).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(made.key_id()));
        let x5c = header.x5c.unwrap();
        assert_eq!(certificate_key(&x5c[0]).unwrap(), made.public_key());
        let key = jsonwebtoken::DecodingKey::from_ec_der(made.public_key());
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();

        // Another key's certificate is refused.
        let other = dir.path().join("other");
        SigningKey::load_or_create(&other.join("key.pem"), &other.join("cert.pem")).unwrap();
        std::fs::copy(other.join("cert.pem"), &cert_path).unwrap();
        let refused = SigningKey::load_or_create(&key_path, &cert_path)
            .err()
            .unwrap();
        assert!(
            refused.to_string().contains("does not certify"),
            "{refused}"
        );
        // A certificate without its key is refused rather than silently replaced.
        std::fs::remove_file(&key_path).unwrap();
        let refused = SigningKey::load_or_create(&key_path, &cert_path)
            .err()
            .unwrap();
        assert!(refused.to_string().contains("missing"), "{refused}");
    }
}
