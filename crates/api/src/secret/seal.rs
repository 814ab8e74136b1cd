//! Encryption of secret values at rest: AES-256-GCM under a key derived with HKDF-SHA256 from
//! `ENCRYPTION_KEY` (input key material) and `ENCRYPTION_SALT`, a random 96-bit nonce per value,
//! and the secret's organization and id as associated data, so a sealed value copied into
//! another row does not open. Stored as base64 of nonce ‖ ciphertext.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hkdf::Hkdf;
use sha2::Sha256;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
#[error(
    "a stored secret value cannot be decrypted (was ENCRYPTION_KEY or ENCRYPTION_SALT changed?)"
)]
pub struct SealError;

pub struct Sealer {
    cipher: Aes256Gcm,
}

impl Sealer {
    pub fn new(key: &str, salt: &str) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(salt.as_bytes()), key.as_bytes());
        let mut okm = [0u8; 32];
        hkdf.expand(b"daytona organization secrets v1", &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Sealer {
            cipher: Aes256Gcm::new_from_slice(&okm).expect("AES-256 takes a 32-byte key"),
        }
    }

    fn aad(org: &str, id: &str) -> String {
        format!("{org}/{id}")
    }

    pub fn seal(&self, org: &str, id: &str, value: &str) -> String {
        let nonce = Nonce::generate();
        let aad = Self::aad(org, id);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encrypts any message of this size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    pub fn open(&self, org: &str, id: &str, sealed: &str) -> Result<String, SealError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| SealError)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| SealError)?;
        let aad = Self::aad(org, id);
        let plain = self
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError)?;
        String::from_utf8(plain).map_err(|_| SealError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_only_with_the_same_key_and_row() {
        let sealer = Sealer::new("k", "s");
        let sealed = sealer.seal("org", "id", "sk-123");
        assert!(!sealed.contains("sk-123"));
        assert_ne!(sealed, sealer.seal("org", "id", "sk-123"), "fresh nonce");
        assert_eq!(sealer.open("org", "id", &sealed).unwrap(), "sk-123");
        assert!(sealer.open("org", "other", &sealed).is_err());
        assert!(sealer.open("other", "id", &sealed).is_err());
        assert!(Sealer::new("k2", "s").open("org", "id", &sealed).is_err());
        assert!(Sealer::new("k", "s2").open("org", "id", &sealed).is_err());
        assert!(sealer.open("org", "id", "bm9wZQ==").is_err());
    }
}
