//! Signed file URLs (SDK 0.226 `download_url` / `upload_url`): a toolbox request for
//! `GET /files/download` or `POST /files/upload-v2` that carries `path`, `expires` and
//! `signature` instead of credentials. The signature is
//! `"v1_" + base64url_nopad(HMAC-SHA256(key, "v1:files:{METHOD}:{path}:{expires}"))` with the
//! sandbox's signing key; `expires` is unix seconds, `0` meaning never.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const PREFIX: &str = "v1_";
pub(crate) const SIGNED_PARAMS: [&str; 2] = ["expires", "signature"];

/// A request that presents a file-URL signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedFile {
    pub method: String,
    pub path: String,
    /// As sent: the signature covers this text.
    pub expires: String,
    pub signature: String,
}

impl SignedFile {
    /// The signature a request offers, when `operation` (the toolbox path after the sandbox id)
    /// is one of the signable file operations and the query has all three parameters.
    pub(crate) fn from_request(method: &str, operation: &str, query: Option<&str>) -> Option<Self> {
        let expected_method = match operation.trim_start_matches('/') {
            "files/download" => "GET",
            "files/upload-v2" => "POST",
            _ => return None,
        };
        if method != expected_method {
            return None;
        }
        let (mut path, mut expires, mut signature) = (None, None, None);
        for (key, value) in form_urlencoded::parse(query?.as_bytes()) {
            match key.as_ref() {
                "path" => path = Some(value.into_owned()),
                "expires" => expires = Some(value.into_owned()),
                "signature" => signature = Some(value.into_owned()),
                _ => {}
            }
        }
        Some(SignedFile {
            method: expected_method.to_string(),
            path: path?,
            expires: expires?,
            signature: signature?,
        })
    }

    /// Checks the signature against `key` and the expiry against `now` (unix seconds).
    pub fn verify(&self, key: &str, now: u64) -> Result<(), String> {
        let expires: u64 = self.expires.parse().map_err(|_| {
            format!(
                "expires: '{}' is not a unix time in seconds (0 = never)",
                self.expires
            )
        })?;
        if expires != 0 && expires < now {
            return Err("signed URL has expired".into());
        }
        let raw = self
            .signature
            .strip_prefix(PREFIX)
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or_else(|| "signature is malformed (expected v1_<base64url>)".to_string())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
            .map_err(|e| format!("signing key unusable: {e}"))?;
        mac.update(self.canonical().as_bytes());
        mac.verify_slice(&raw)
            .map_err(|_| "signature does not match (the key may have been rotated)".to_string())
    }

    fn canonical(&self) -> String {
        format!("v1:files:{}:{}:{}", self.method, self.path, self.expires)
    }

    /// Signs like the SDK does (used by tests and by anything that hands out URLs).
    pub fn sign(key: &str, method: &str, path: &str, expires: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
        mac.update(format!("v1:files:{method}:{path}:{expires}").as_bytes());
        format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(method: &str, op: &str, path: &str, expires: u64, key: &str) -> SignedFile {
        let signature = SignedFile::sign(key, method, path, expires);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("path", path)
            .append_pair("expires", &expires.to_string())
            .append_pair("signature", &signature)
            .finish();
        SignedFile::from_request(method, op, Some(&query)).expect("recognised")
    }

    #[test]
    fn matches_the_sdk_signature() {
        // Python: compute_file_url_signature("k", "GET", "/tmp/a b", 1700000000)
        assert_eq!(
            SignedFile::sign("k", "GET", "/tmp/a b", 1_700_000_000),
            "v1_en_ogMUVewbjEFMN2ax5rCikTaehGwpwWPTxQ7AeVEU"
        );
    }

    #[test]
    fn verifies_and_refuses() {
        let now = 1_000;
        let ok = offered("GET", "/files/download", "/tmp/x", 2_000, "key");
        assert_eq!(ok.verify("key", now), Ok(()));
        assert!(
            ok.verify("other", now)
                .unwrap_err()
                .contains("does not match")
        );
        assert!(ok.verify("key", 2_001).unwrap_err().contains("expired"));
        let never = offered("POST", "files/upload-v2", "/tmp/x", 0, "key");
        assert_eq!(never.verify("key", u64::MAX), Ok(()));
        let mut garbled = ok.clone();
        garbled.expires = "soon".into();
        assert!(
            garbled
                .verify("key", now)
                .unwrap_err()
                .contains("expires: 'soon'")
        );
        // A signature for one path does not open another.
        let mut moved = ok.clone();
        moved.path = "/etc/shadow".into();
        assert!(moved.verify("key", now).is_err());
        // Upload signatures are not download signatures.
        let mut method = never.clone();
        method.method = "GET".into();
        assert!(method.verify("key", now).is_err());
    }

    #[test]
    fn only_file_operations_with_all_parameters() {
        let q = "path=%2Fa&expires=0&signature=v1_x";
        assert!(SignedFile::from_request("GET", "files/download", Some(q)).is_some());
        assert!(SignedFile::from_request("POST", "files/download", Some(q)).is_none());
        assert!(SignedFile::from_request("GET", "process/execute", Some(q)).is_none());
        assert!(SignedFile::from_request("GET", "files/download", Some("path=%2Fa")).is_none());
        assert!(SignedFile::from_request("GET", "files/download", None).is_none());
    }
}
