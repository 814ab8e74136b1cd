//! A [`SandboxDirectory`] over the API's HTTP routes, for a proxy (or SSH gateway) that runs as its
//! own process (`DAYTONA_ROLES=proxy`). It calls the API with the service's key (`PROXY_API_KEY`)
//! and keeps answers briefly, as upstream's proxy does, so a busy sandbox costs the API a few
//! calls every few seconds rather than several per request.
//!
//! How long answers live, and so how stale they can be:
//! - authorizations (allowed or refused), the public flag, signed preview tokens and signing keys:
//!   [`ANSWER_TTL`] — a revoked key, token or rotated signing key keeps working that long;
//! - sandbox addresses: until forwarding to them fails, at most [`LOCATION_TTL`]. A stopped or
//!   paused sandbox keeps its address (nothing answers there, or the next lookup after the TTL is
//!   refused with "not started"); a deleted sandbox's address may be given to a new sandbox, so a
//!   request can reach that address for at most [`LOCATION_TTL`] after the last lookup;
//! - activity: reported at most once per sandbox per [`TOUCH_INTERVAL`], in the background.
//!
//! Failures of the API itself (unreachable, 5xx) are never kept.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::{Credential, PreviewTarget, ProxyError, RunnerHop, SandboxDirectory, SandboxRoute};

/// How long authorization answers, public flags, signed tokens and signing keys are kept.
pub const ANSWER_TTL: Duration = Duration::from_secs(5);
/// The longest a sandbox address is used without asking the API again.
pub const LOCATION_TTL: Duration = Duration::from_secs(5);
/// At most one activity report per sandbox in this interval (the API's own throttle too).
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(10);
/// Each API call's limit; the API answers from its database, so this only bounds an outage.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Entries beyond this count make an insert drop the expired ones first.
const PRUNE_AT: usize = 4096;

/// A failed call to the API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiCallError {
    #[error("the API at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("the API answered {status} to {path}: {message}")]
    Status {
        status: u16,
        path: String,
        message: String,
    },
    #[error("the API's answer to {path} is not what this version expects: {message}")]
    BadAnswer { path: String, message: String },
}

impl ApiCallError {
    fn status(&self) -> Option<u16> {
        match self {
            ApiCallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's own message for a refused call, the whole description otherwise.
    fn message(&self) -> String {
        match self {
            ApiCallError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// Calls the API (`DAYTONA_API_URL`, ending in `/api`) as one service.
#[derive(Clone)]
pub struct ApiClient {
    base: Arc<str>,
    key: Arc<str>,
    /// The variable that holds `key`, for messages.
    key_variable: &'static str,
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("key_variable", &self.key_variable)
            .finish_non_exhaustive()
    }
}

/// Everything but letters, digits, `-` and `_` is encoded in a path segment (`.` too: a `..`
/// segment would be resolved away by the URL parser).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// One path segment, percent-encoded (labels and tokens come from callers).
pub fn segment(raw: &str) -> String {
    utf8_percent_encode(raw, SEGMENT).to_string()
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

impl ApiClient {
    pub fn new(
        base_url: &str,
        key: &str,
        key_variable: &'static str,
        http: reqwest::ClientBuilder,
    ) -> Result<Self, reqwest::Error> {
        let http = http
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .build()?;
        Ok(ApiClient {
            base: base_url.trim_end_matches('/').into(),
            key: key.into(),
            key_variable,
            http,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET {base}{path}` as this service.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiCallError> {
        self.call(reqwest::Method::GET, path, &self.key).await
    }

    /// `GET {base}{path}` with someone else's bearer key (a user's, whose access is checked).
    pub async fn get_as<T: DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
    ) -> Result<T, ApiCallError> {
        self.call(reqwest::Method::GET, path, key).await
    }

    /// `POST {base}{path}` without a body, as this service; the answer's body is ignored.
    pub async fn post(&self, path: &str) -> Result<(), ApiCallError> {
        self.send(reqwest::Method::POST, path, &self.key)
            .await
            .map(drop)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
    ) -> Result<T, ApiCallError> {
        let response = self.send(method, path, key).await?;
        response.json().await.map_err(|e| ApiCallError::BadAnswer {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
    ) -> Result<reqwest::Response, ApiCallError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .request(method, &url)
            .bearer_auth(key)
            .headers(daytona_telemetry::trace_headers())
            .send()
            .await
            .map_err(|e| ApiCallError::Unreachable {
                url: self.base.to_string(),
                message: error_chain(&e),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .and_then(|b| b.message)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        Err(ApiCallError::Status {
            status: status.as_u16(),
            path: path.to_string(),
            message,
        })
    }

    /// Checks that the API accepts this service's key as `service` (`proxy`, `ssh-gateway`).
    pub async fn check_identity(&self, service: &str) -> Result<(), IdentityError> {
        #[derive(Deserialize)]
        struct Identity {
            service: String,
        }
        match self.get::<Identity>("/internal/identity").await {
            Ok(id) if id.service == service => Ok(()),
            Ok(id) => Err(IdentityError::Refused(format!(
                "the API at {} takes {} for the {}'s key, not the {service}'s",
                self.base, self.key_variable, id.service
            ))),
            Err(e @ ApiCallError::Status { status, .. }) if status == 401 || status == 403 => {
                Err(IdentityError::Refused(format!(
                    "the API at {} does not accept this {}: {} (set the same {} for the API and \
                     this {service}; the API accepts it only when it does not run the {service} role itself)",
                    self.base,
                    self.key_variable,
                    e.message(),
                    self.key_variable,
                )))
            }
            Err(e) => Err(IdentityError::Unavailable(e.to_string())),
        }
    }

    /// The error a refused service key becomes on a request path.
    fn key_refused(&self, e: &ApiCallError) -> ProxyError {
        ProxyError::BadGateway(format!(
            "the API refused this service's {} ({}); check that it matches the API's",
            self.key_variable,
            e.message()
        ))
    }

    /// A service call's failure as a proxy error: 404 and 409 are answers about the sandbox,
    /// 401/403 mean our own key is wrong, anything else that the API is unavailable.
    pub fn service_error(&self, e: ApiCallError) -> ProxyError {
        match e.status() {
            Some(404) => ProxyError::NotFound(e.message()),
            Some(409) => ProxyError::NotRunning(e.message()),
            Some(401 | 403) => self.key_refused(&e),
            _ => ProxyError::Unavailable(e.to_string()),
        }
    }
}

/// Why a split service's startup check failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The API answered and refused the key: fatal.
    #[error("{0}")]
    Refused(String),
    /// The API did not answer: the service may start and keep trying.
    #[error("{0}")]
    Unavailable(String),
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A map whose entries expire.
struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().expect("cache lock poisoned");
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().expect("cache lock poisoned");
        if entries.len() >= PRUNE_AT {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(key, (Instant::now(), value));
    }

    fn remove(&self, key: &K) {
        self.entries
            .lock()
            .expect("cache lock poisoned")
            .remove(key);
    }

    /// Inserts `key` unless a live entry exists; true when inserted (a throttle).
    fn claim(&self, key: K, value: V) -> bool {
        let mut entries = self.entries.lock().expect("cache lock poisoned");
        if entries
            .get(&key)
            .is_some_and(|(at, _)| at.elapsed() < self.ttl)
        {
            return false;
        }
        if entries.len() >= PRUNE_AT {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        entries.insert(key, (Instant::now(), value));
        true
    }
}

/// Whether an answer is about the request (kept) rather than about the API's health (not kept).
fn definitive<T>(result: &Result<T, ProxyError>) -> bool {
    !matches!(
        result,
        Err(ProxyError::Unavailable(_) | ProxyError::BadGateway(_))
    )
}

/// The sandbox directory of a split proxy or SSH gateway: the API over HTTP, with short caches.
pub struct RemoteDirectory {
    api: ApiClient,
    /// (sandbox, digest of the credential) → the answer.
    access: TtlCache<(String, [u8; 32]), Result<(), ProxyError>>,
    previews: TtlCache<(String, u16), PreviewTarget>,
    signing_keys: TtlCache<String, String>,
    locations: TtlCache<String, SandboxRoute>,
    touched: TtlCache<String, ()>,
}

impl RemoteDirectory {
    pub fn new(api: ApiClient) -> Self {
        RemoteDirectory {
            api,
            access: TtlCache::new(ANSWER_TTL),
            previews: TtlCache::new(ANSWER_TTL),
            signing_keys: TtlCache::new(ANSWER_TTL),
            locations: TtlCache::new(LOCATION_TTL),
            touched: TtlCache::new(TOUCH_INTERVAL),
        }
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    async fn ask_access(
        &self,
        sandbox_id: &str,
        credential: &Credential,
    ) -> Result<(), ProxyError> {
        let id = segment(sandbox_id);
        match credential {
            Credential::ApiKey(key) => {
                // Asked as the caller: the API checks the key and its organization.
                match self
                    .api
                    .get_as::<bool>(&format!("/preview/{id}/access"), key)
                    .await
                {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(ProxyError::NotFound(format!(
                        "Sandbox {sandbox_id} not found"
                    ))),
                    Err(e) => Err(match e.status() {
                        Some(401) => ProxyError::Unauthorized(e.message()),
                        Some(403) => ProxyError::Forbidden(e.message()),
                        Some(404) => ProxyError::NotFound(e.message()),
                        _ => ProxyError::Unavailable(e.to_string()),
                    }),
                }
            }
            Credential::PreviewToken(token) => {
                let valid = self
                    .api
                    .get::<bool>(&format!("/preview/{id}/validate/{}", segment(token)))
                    .await
                    .map_err(|e| self.api.service_error(e))?;
                if valid {
                    Ok(())
                } else {
                    Err(ProxyError::Unauthorized(format!(
                        "Invalid preview token for sandbox {sandbox_id}"
                    )))
                }
            }
            Credential::SignedFile(signed) => {
                let key = self.signing_key(sandbox_id).await?;
                let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
                signed.verify(&key, now).map_err(|reason| {
                    ProxyError::Unauthorized(format!(
                        "Signed URL for {} in sandbox {sandbox_id} refused: {reason}",
                        signed.path
                    ))
                })
            }
        }
    }

    async fn signing_key(&self, sandbox_id: &str) -> Result<String, ProxyError> {
        if let Some(key) = self.signing_keys.get(&sandbox_id.to_string()) {
            return Ok(key);
        }
        let key: String = self
            .api
            .get(&format!("/preview/{}/signing-key", segment(sandbox_id)))
            .await
            .map_err(|e| self.api.service_error(e))?;
        self.signing_keys
            .insert(sandbox_id.to_string(), key.clone());
        Ok(key)
    }

    async fn ask_preview_target(
        &self,
        label: &str,
        port: u16,
    ) -> Result<PreviewTarget, ProxyError> {
        let label_segment = segment(label);
        match self
            .api
            .get::<bool>(&format!("/preview/{label_segment}/public"))
            .await
        {
            Ok(public) => {
                return Ok(PreviewTarget {
                    sandbox_id: label.to_string(),
                    public,
                    signed: false,
                });
            }
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(self.api.service_error(e)),
        }
        match self
            .api
            .get::<String>(&format!("/preview/{label_segment}/{port}/sandbox-id"))
            .await
        {
            Ok(sandbox_id) => Ok(PreviewTarget {
                sandbox_id,
                public: false,
                signed: true,
            }),
            Err(e) if e.status() == Some(404) => Err(ProxyError::NotFound(format!(
                "No sandbox or valid signed preview URL for '{label}' on port {port} (signed URLs expire)"
            ))),
            Err(e) => Err(self.api.service_error(e)),
        }
    }
}

fn credential_digest(credential: &Credential) -> [u8; 32] {
    let mut hash = Sha256::new();
    match credential {
        Credential::ApiKey(k) => {
            hash.update(b"api-key\0");
            hash.update(k.as_bytes());
        }
        Credential::PreviewToken(t) => {
            hash.update(b"preview-token\0");
            hash.update(t.as_bytes());
        }
        Credential::SignedFile(s) => {
            for part in ["signed-file", &s.method, &s.path, &s.expires, &s.signature] {
                hash.update(part.as_bytes());
                hash.update(b"\0");
            }
        }
    }
    hash.finalize().into()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    ip: IpAddr,
    /// Set when the sandbox's runner is a process of its own: traffic goes through it.
    runner_url: Option<String>,
    runner_credential: Option<String>,
}

impl Location {
    fn into_route(self) -> SandboxRoute {
        let via = match (self.runner_url, self.runner_credential) {
            (Some(url), Some(credential)) => Some(RunnerHop {
                url: url.trim_end_matches('/').to_owned(),
                credential,
            }),
            _ => None,
        };
        SandboxRoute { ip: self.ip, via }
    }
}

#[async_trait::async_trait]
impl SandboxDirectory for RemoteDirectory {
    async fn authorize(&self, sandbox_id: &str, credential: &Credential) -> Result<(), ProxyError> {
        let key = (sandbox_id.to_string(), credential_digest(credential));
        if let Some(answer) = self.access.get(&key) {
            return answer;
        }
        let answer = self.ask_access(sandbox_id, credential).await;
        if definitive(&answer) {
            self.access.insert(key, answer.clone());
        }
        answer
    }

    /// Asked every time (membership changes must take effect); the API says why on refusal.
    async fn authorize_user(&self, sandbox_id: &str, user_id: &str) -> Result<(), ProxyError> {
        let path = format!(
            "/internal/sandbox/{}/members/{}",
            segment(sandbox_id),
            segment(user_id)
        );
        match self.api.get::<bool>(&path).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ProxyError::Forbidden(format!(
                "User {user_id} may not open sandbox {sandbox_id}"
            ))),
            Err(e) => Err(match e.status() {
                Some(403) => ProxyError::Forbidden(e.message()),
                Some(404) => ProxyError::NotFound(e.message()),
                Some(409) => ProxyError::NotRunning(e.message()),
                _ => ProxyError::Unavailable(e.to_string()),
            }),
        }
    }

    async fn preview_target(&self, label: &str, port: u16) -> Result<PreviewTarget, ProxyError> {
        let key = (label.to_string(), port);
        if let Some(target) = self.previews.get(&key) {
            return Ok(target);
        }
        let target = self.ask_preview_target(label, port).await?;
        self.previews.insert(key, target.clone());
        Ok(target)
    }

    async fn sandbox_route(&self, sandbox_id: &str) -> Result<SandboxRoute, ProxyError> {
        if let Some(route) = self.locations.get(&sandbox_id.to_string()) {
            return Ok(route);
        }
        let location: Location = self
            .api
            .get(&format!(
                "/internal/sandbox/{}/location",
                segment(sandbox_id)
            ))
            .await
            .map_err(|e| self.api.service_error(e))?;
        let route = location.into_route();
        self.locations.insert(sandbox_id.to_string(), route.clone());
        Ok(route)
    }

    async fn touch(&self, sandbox_id: &str) {
        if !self.touched.claim(sandbox_id.to_string(), ()) {
            return;
        }
        // In the background: activity never delays a request.
        let api = self.api.clone();
        let path = format!("/sandbox/{}/last-activity", segment(sandbox_id));
        let sandbox = sandbox_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = api.post(&path).await {
                tracing::warn!(%sandbox, error = %e, "could not report sandbox activity");
            }
        });
    }

    fn forget(&self, sandbox_id: &str) {
        self.locations.remove(&sandbox_id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_expire_and_claims_throttle() {
        let cache = TtlCache::new(Duration::from_millis(50));
        cache.insert("a", 1);
        assert_eq!(cache.get(&"a"), Some(1));
        assert!(!cache.claim("a", 2), "a live entry is not claimed again");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&"a"), None);
        assert!(cache.claim("a", 3));
        cache.remove(&"a");
        assert_eq!(cache.get(&"a"), None);
    }

    #[test]
    fn credentials_of_different_kinds_never_share_an_entry() {
        let a = credential_digest(&Credential::ApiKey("x".into()));
        let b = credential_digest(&Credential::PreviewToken("x".into()));
        assert_ne!(a, b);
        assert_eq!(a, credential_digest(&Credential::ApiKey("x".into())));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("3f2a-b_9"), "3f2a-b_9");
    }

    #[test]
    fn only_answers_about_the_request_are_kept() {
        assert!(definitive::<()>(&Ok(())));
        assert!(definitive::<()>(&Err(ProxyError::Unauthorized("x".into()))));
        assert!(!definitive::<()>(&Err(ProxyError::Unavailable("x".into()))));
    }
}
