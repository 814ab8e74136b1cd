//! Temporary credentials for the embedded S3 endpoint (what `GET /object-storage/push-access`
//! hands out): an access key, its secret and a session token that names the organization and
//! the expiry. Nothing is stored: the secret is an HMAC of the access key and the token carries
//! its own HMAC, both under a key derived from the server's secret, so any API replica with
//! the same secret verifies them and a restart does not invalidate them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::{Digest, Sha256};

/// Temporary S3 credentials scoped to one organization's prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct PushCredentials {
    pub access_key: String,
    pub secret: String,
    pub session_token: String,
    pub organization_id: String,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for PushCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushCredentials")
            .field("access_key", &self.access_key)
            .field("organization_id", &self.organization_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Why a request's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the request carries no session token (X-Amz-Security-Token)")]
    MissingToken,
    #[error("the session token is malformed or was not issued by this server")]
    InvalidToken,
    #[error("the session token belongs to another access key")]
    WrongAccessKey,
    #[error("the temporary credentials expired")]
    Expired,
}

/// Issues and verifies [`PushCredentials`].
#[derive(Clone)]
pub struct CredentialAuthority {
    key: [u8; 32],
}

impl std::fmt::Debug for CredentialAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialAuthority")
    }
}

/// Access keys look like AWS STS ones (`ASIA` + 16 characters) so clients accept them.
const ACCESS_KEY_PREFIX: &str = "ASIA";
const ACCESS_KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

impl CredentialAuthority {
    /// An authority whose key is derived from `server_secret` (e.g. `ENCRYPTION_KEY`).
    pub fn new(server_secret: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"daytona object-storage push access\0");
        hasher.update(server_secret);
        CredentialAuthority {
            key: hasher.finalize().into(),
        }
    }

    fn mac(&self, purpose: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(purpose);
        mac.update(b"\0");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// New credentials for `organization_id`, valid for `ttl`.
    pub fn issue(&self, organization_id: &str, ttl: Duration) -> PushCredentials {
        let mut rng = rand::rng();
        let suffix: String = (0..16)
            .map(|_| ACCESS_KEY_ALPHABET[rng.random_range(0..ACCESS_KEY_ALPHABET.len())] as char)
            .collect();
        let access_key = format!("{ACCESS_KEY_PREFIX}{suffix}");
        let expires_at = SystemTime::now() + ttl;
        let expiry = expires_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let payload = format!("{access_key}\n{organization_id}\n{expiry}");
        let session_token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            hex::encode(self.mac(b"token", payload.as_bytes()))
        );
        PushCredentials {
            secret: self.secret_for(&access_key),
            access_key,
            session_token,
            organization_id: organization_id.to_owned(),
            expires_at,
        }
    }

    /// The secret of an access key this authority issued (or would issue).
    pub fn secret_for(&self, access_key: &str) -> String {
        hex::encode(self.mac(b"secret", access_key.as_bytes()))
    }

    /// The organization a request signed with `access_key` and carrying `token` may act for.
    pub fn verify(
        &self,
        access_key: &str,
        token: &str,
        now: SystemTime,
    ) -> Result<String, CredentialError> {
        let (payload, mac) = token.split_once('.').ok_or(CredentialError::InvalidToken)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| CredentialError::InvalidToken)?;
        let mac = hex::decode(mac).map_err(|_| CredentialError::InvalidToken)?;
        let mut expected = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        expected.update(b"token\0");
        expected.update(&payload);
        expected
            .verify_slice(&mac)
            .map_err(|_| CredentialError::InvalidToken)?;
        let payload = String::from_utf8(payload).map_err(|_| CredentialError::InvalidToken)?;
        let mut parts = payload.split('\n');
        let (Some(key), Some(org), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CredentialError::InvalidToken);
        };
        if key != access_key {
            return Err(CredentialError::WrongAccessKey);
        }
        let expiry: u64 = expiry.parse().map_err(|_| CredentialError::InvalidToken)?;
        if now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() >= expiry {
            return Err(CredentialError::Expired);
        }
        Ok(org.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_verify_until_they_expire() {
        let authority = CredentialAuthority::new(b"server secret");
        let creds = authority.issue("org-1", Duration::from_secs(60));
        assert!(creds.access_key.starts_with("ASIA") && creds.access_key.len() == 20);
        assert_eq!(authority.secret_for(&creds.access_key), creds.secret);
        let now = SystemTime::now();
        assert_eq!(
            authority.verify(&creds.access_key, &creds.session_token, now),
            Ok("org-1".to_owned())
        );
        assert_eq!(
            authority.verify(
                &creds.access_key,
                &creds.session_token,
                now + Duration::from_secs(61)
            ),
            Err(CredentialError::Expired)
        );
        let other = authority.issue("org-1", Duration::from_secs(60));
        assert_eq!(
            authority.verify(&other.access_key, &creds.session_token, now),
            Err(CredentialError::WrongAccessKey)
        );
    }

    #[test]
    fn tokens_of_another_server_or_tampered_ones_are_refused() {
        let authority = CredentialAuthority::new(b"server secret");
        let creds = authority.issue("org-1", Duration::from_secs(60));
        let stranger = CredentialAuthority::new(b"another secret");
        let now = SystemTime::now();
        assert_eq!(
            stranger.verify(&creds.access_key, &creds.session_token, now),
            Err(CredentialError::InvalidToken)
        );
        assert_ne!(stranger.secret_for(&creds.access_key), creds.secret);
        // The organization is part of the signed payload: swapping it breaks the MAC.
        let (_, mac) = creds.session_token.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(format!("{}\norg-2\n99999999999", creds.access_key));
        assert_eq!(
            authority.verify(&creds.access_key, &format!("{forged}.{mac}"), now),
            Err(CredentialError::InvalidToken)
        );
        assert_eq!(
            authority.verify(&creds.access_key, "garbage", now),
            Err(CredentialError::InvalidToken)
        );
    }
}
