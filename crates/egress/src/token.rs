//! Per-sandbox proxy credentials: user = sandbox id, password = HMAC-SHA256 of the id under the
//! runner's key (`proxy-credentials.key`, 0600), so nothing per sandbox is stored.

use std::path::Path;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::{EgressError, io_error};

#[derive(Clone)]
pub struct Credentials {
    key: [u8; 32],
}

impl Credentials {
    pub fn new(key: [u8; 32]) -> Self {
        Credentials { key }
    }

    /// The key in `path`, made (random, 0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<Self, EgressError> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => {
                Ok(Credentials::new(bytes.try_into().expect("32 bytes")))
            }
            Ok(_) => Err(EgressError::Certificate(format!(
                "{} is not a 32-byte key",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use rand::RngExt;
                let key: [u8; 32] = rand::rng().random();
                daytona_config::write_private_file(path, &key).map_err(io_error(path))?;
                Ok(Credentials::new(key))
            }
            Err(e) => Err(io_error(path)(e)),
        }
    }

    fn mac(&self, sandbox_id: &str) -> Hmac {
        let mut mac = Hmac::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"daytona-egress-proxy\0");
        mac.update(sandbox_id.as_bytes());
        mac
    }

    /// The proxy password of `sandbox_id`.
    pub fn token(&self, sandbox_id: &str) -> String {
        hex::encode(self.mac(sandbox_id).finalize().into_bytes())
    }

    /// Whether `token` is `sandbox_id`'s password (constant time).
    pub fn verify(&self, sandbox_id: &str, token: &str) -> bool {
        hex::decode(token).is_ok_and(|t| self.mac(sandbox_id).verify_slice(&t).is_ok())
    }
}

type Hmac = hmac::Hmac<Sha256>;
