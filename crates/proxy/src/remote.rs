//! A [`SandboxDirectory`] over the API's HTTP routes, for a proxy (or SSH gateway) that runs as its
//! own process (`DAYTONA_ROLES=proxy`). It calls the API with the service's key (`PROXY_API_KEY`)
//! and keeps answers briefly, as upstream's proxy does, so a busy sandbox costs the API a few
//! calls every few seconds rather than several per request.
//!
//! The API pushes what changed ([`RemoteDirectory::follow_invalidations`]: `GET
//! /internal/invalidations`, fed by every API replica through the cluster broadcast), so a kept
//! answer about a sandbox is dropped as soon as the sandbox changes (state, public flag, tokens,
//! signing key) and answers about users' keys when a key is revoked or a membership ends. When
//! the stream breaks, everything kept is dropped and the stream is opened again with backoff;
//! everything is dropped again once it is back, since changes in between were not heard.
//!
//! The lifetimes below are the safety net for changes that were never announced (a stream that
//! is down, a message lost between replicas):
//! - authorizations (allowed or refused), the public flag, signed preview tokens and signing keys:
//!   [`ANSWER_TTL`]; a signed preview token never past its own expiry (the API's `max-age`);
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::invalidation::{EventParser, HEARTBEAT, Invalidation};
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
/// An invalidation stream silent this long (three missed heartbeats) is taken for dead.
const STREAM_SILENCE: Duration = Duration::from_secs(HEARTBEAT.as_secs() * 3);
/// The first and the longest wait before opening the invalidation stream again.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

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
        // No client-wide timeout: each call sets [`CALL_TIMEOUT`], the invalidation stream none.
        let http = http.connect_timeout(CONNECT_TIMEOUT).build()?;
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

    /// `GET {base}{path}` as this service, with how long the API says the answer holds
    /// (`Cache-Control: max-age`), if it says.
    pub async fn get_fresh<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, Option<Duration>), ApiCallError> {
        let response = self.send(reqwest::Method::GET, path, &self.key).await?;
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let value = response.json().await.map_err(|e| ApiCallError::BadAnswer {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        Ok((value, max_age))
    }

    /// `POST {base}{path}` without a body, as this service; the answer's body is ignored.
    pub async fn post(&self, path: &str) -> Result<(), ApiCallError> {
        self.send(reqwest::Method::POST, path, &self.key)
            .await
            .map(drop)
    }

    /// `GET {base}{path}` as this service, without a time limit: a stream read as it comes.
    async fn open_stream(&self, path: &str) -> Result<reqwest::Response, ApiCallError> {
        self.request(reqwest::Method::GET, path, &self.key, None)
            .await
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
        self.request(method, path, key, Some(CALL_TIMEOUT)).await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ApiCallError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(key)
            .headers(daytona_telemetry::trace_headers());
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
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

/// `max-age=N` of a `Cache-Control` value.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control
        .split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|n| n.parse().ok())
        .map(Duration::from_secs)
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
    /// key → (expiry, value)
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        self.entries.lock().expect("cache lock poisoned")
    }

    fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        self.lock()
            .get(key)
            .filter(|(expiry, _)| *expiry > now)
            .map(|(_, v)| v.clone())
    }

    /// Inserts an entry that lives `ttl` (at most the cache's own).
    fn insert_for(&self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= PRUNE_AT {
            entries.retain(|_, (expiry, _)| *expiry > now);
        }
        entries.insert(key, (now + ttl.min(self.ttl), value));
    }

    fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Drops the entries for which `stale(key, value)` holds.
    fn remove_where(&self, stale: impl Fn(&K, &V) -> bool) {
        self.lock().retain(|k, (_, v)| !stale(k, v));
    }

    fn clear(&self) {
        self.lock().clear();
    }

    /// Inserts `key` unless a live entry exists; true when inserted (a throttle).
    fn claim(&self, key: K, value: V) -> bool {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.get(&key).is_some_and(|(expiry, _)| *expiry > now) {
            return false;
        }
        if entries.len() >= PRUNE_AT {
            entries.retain(|_, (expiry, _)| *expiry > now);
        }
        entries.insert(key, (now + self.ttl, value));
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

/// The API's answers a split service keeps, and what makes them go.
struct Answers {
    /// (sandbox, digest of the credential) → the answer.
    access: TtlCache<(String, [u8; 32]), Result<(), ProxyError>>,
    /// (sandbox id or signed token, port) → the target.
    previews: TtlCache<(String, u16), PreviewTarget>,
    signing_keys: TtlCache<String, String>,
    locations: TtlCache<String, SandboxRoute>,
    /// Counts invalidations. An answer asked for before one and arriving after it may predate
    /// the change, so it is not kept (see [`Answers::keep`]).
    epoch: AtomicU64,
}

impl Answers {
    fn new() -> Self {
        Answers {
            access: TtlCache::new(ANSWER_TTL),
            previews: TtlCache::new(ANSWER_TTL),
            signing_keys: TtlCache::new(ANSWER_TTL),
            locations: TtlCache::new(LOCATION_TTL),
            epoch: AtomicU64::new(0),
        }
    }

    /// Read before asking the API; handed to [`keep`](Self::keep) with the answer.
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Keeps an answer asked for at `asked` unless an invalidation came in since: the
    /// invalidation bumps the epoch before it removes entries, so either it removes this one or
    /// the check below sees the bump.
    fn keep<K: Eq + Hash + Clone, V: Clone>(
        &self,
        cache: &TtlCache<K, V>,
        asked: u64,
        key: K,
        value: V,
        ttl: Duration,
    ) {
        cache.insert_for(key.clone(), value, ttl);
        if self.epoch() != asked {
            cache.remove(&key);
        }
    }

    fn apply(&self, invalidation: &Invalidation) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        match invalidation {
            Invalidation::Sandbox { id } => {
                self.access.remove_where(|(sandbox, _), _| sandbox == id);
                self.previews
                    .remove_where(|(label, _), target| label == id || target.sandbox_id == *id);
                self.signing_keys.remove(id);
                self.locations.remove(id);
            }
            Invalidation::Credentials => self.access.clear(),
            Invalidation::All => self.clear(),
        }
    }

    fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.access.clear();
        self.previews.clear();
        self.signing_keys.clear();
        self.locations.clear();
    }
}

/// The sandbox directory of a split proxy or SSH gateway: the API over HTTP, with short caches.
pub struct RemoteDirectory {
    api: ApiClient,
    answers: Arc<Answers>,
    touched: TtlCache<String, ()>,
}

impl RemoteDirectory {
    pub fn new(api: ApiClient) -> Self {
        RemoteDirectory {
            api,
            answers: Arc::new(Answers::new()),
            touched: TtlCache::new(TOUCH_INTERVAL),
        }
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// Follows the API's invalidation stream for as long as the returned task runs (the
    /// process's life): named answers are dropped as changes are announced; when the stream
    /// breaks, every answer is dropped and it is opened again with backoff.
    pub fn follow_invalidations(&self) -> tokio::task::JoinHandle<()> {
        let api = self.api.clone();
        let answers = self.answers.clone();
        tokio::spawn(async move {
            let mut backoff = RECONNECT_MIN;
            loop {
                let opened = Instant::now();
                match api.open_stream("/internal/invalidations").await {
                    Ok(response) => {
                        // Changes made while no stream was open were not heard.
                        answers.clear();
                        tracing::info!(api = %api.base_url(), "following the API's invalidations");
                        let end = read_invalidations(response, &answers).await;
                        answers.clear();
                        tracing::warn!(
                            reason = %end,
                            "the API's invalidation stream ended; kept answers dropped, reconnecting"
                        );
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        retry_in = ?backoff,
                        "cannot follow the API's invalidations; answers are kept only briefly"
                    ),
                }
                if opened.elapsed() > RECONNECT_MAX {
                    backoff = RECONNECT_MIN; // the stream had been up: start over quickly
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        })
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
        if let Some(key) = self.answers.signing_keys.get(&sandbox_id.to_string()) {
            return Ok(key);
        }
        let asked = self.answers.epoch();
        let key: String = self
            .api
            .get(&format!("/preview/{}/signing-key", segment(sandbox_id)))
            .await
            .map_err(|e| self.api.service_error(e))?;
        self.answers.keep(
            &self.answers.signing_keys,
            asked,
            sandbox_id.to_string(),
            key.clone(),
            ANSWER_TTL,
        );
        Ok(key)
    }

    /// The target and how long it may be kept.
    async fn ask_preview_target(
        &self,
        label: &str,
        port: u16,
    ) -> Result<(PreviewTarget, Duration), ProxyError> {
        let label_segment = segment(label);
        match self
            .api
            .get::<bool>(&format!("/preview/{label_segment}/public"))
            .await
        {
            Ok(public) => {
                let target = PreviewTarget {
                    sandbox_id: label.to_string(),
                    public,
                    signed: false,
                };
                return Ok((target, ANSWER_TTL));
            }
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(self.api.service_error(e)),
        }
        match self
            .api
            .get_fresh::<String>(&format!("/preview/{label_segment}/{port}/sandbox-id"))
            .await
        {
            // Never kept past the token's expiry.
            Ok((sandbox_id, max_age)) => Ok((
                PreviewTarget {
                    sandbox_id,
                    public: false,
                    signed: true,
                },
                max_age.unwrap_or(ANSWER_TTL),
            )),
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
        if let Some(answer) = self.answers.access.get(&key) {
            return answer;
        }
        let asked = self.answers.epoch();
        let answer = self.ask_access(sandbox_id, credential).await;
        if definitive(&answer) {
            self.answers
                .keep(&self.answers.access, asked, key, answer.clone(), ANSWER_TTL);
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
        if let Some(target) = self.answers.previews.get(&key) {
            return Ok(target);
        }
        let asked = self.answers.epoch();
        let (target, ttl) = self.ask_preview_target(label, port).await?;
        self.answers
            .keep(&self.answers.previews, asked, key, target.clone(), ttl);
        Ok(target)
    }

    async fn sandbox_route(&self, sandbox_id: &str) -> Result<SandboxRoute, ProxyError> {
        if let Some(route) = self.answers.locations.get(&sandbox_id.to_string()) {
            return Ok(route);
        }
        let asked = self.answers.epoch();
        let location: Location = self
            .api
            .get(&format!(
                "/internal/sandbox/{}/location",
                segment(sandbox_id)
            ))
            .await
            .map_err(|e| self.api.service_error(e))?;
        let route = location.into_route();
        self.answers.keep(
            &self.answers.locations,
            asked,
            sandbox_id.to_string(),
            route.clone(),
            LOCATION_TTL,
        );
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
        self.answers.locations.remove(&sandbox_id.to_string());
    }
}

/// Applies the invalidations of an open stream until it ends; returns why it ended.
async fn read_invalidations(mut response: reqwest::Response, answers: &Answers) -> String {
    let mut parser = EventParser::default();
    loop {
        let chunk = match tokio::time::timeout(STREAM_SILENCE, response.chunk()).await {
            Err(_) => return format!("nothing heard for {STREAM_SILENCE:?}"),
            Ok(Err(e)) => return error_chain(&e),
            Ok(Ok(None)) => return "closed by the API".into(),
            Ok(Ok(Some(chunk))) => chunk,
        };
        for data in parser.feed(&chunk) {
            match serde_json::from_str::<Invalidation>(&data) {
                Ok(invalidation) => {
                    tracing::debug!(?invalidation, "invalidated");
                    answers.apply(&invalidation);
                }
                Err(e) => {
                    // From a newer API, perhaps: forgetting everything is always safe.
                    tracing::warn!(error = %e, "unknown invalidation; dropping every kept answer");
                    answers.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_expire_and_claims_throttle() {
        let cache = TtlCache::new(Duration::from_millis(50));
        cache.insert_for("a", 1, Duration::from_secs(60));
        assert_eq!(cache.get(&"a"), Some(1));
        assert!(!cache.claim("a", 2), "a live entry is not claimed again");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&"a"), None);
        assert!(cache.claim("a", 3));
        cache.remove(&"a");
        assert_eq!(cache.get(&"a"), None);
    }

    #[test]
    fn an_entry_lives_at_most_its_own_ttl_and_the_caches() {
        let cache = TtlCache::new(Duration::from_millis(50));
        cache.insert_for("short", 1, Duration::ZERO);
        assert_eq!(cache.get(&"short"), None, "max-age=0: not kept");
        cache.insert_for("long", 2, Duration::from_secs(3600));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&"long"), None, "capped by the cache's TTL");
        assert_eq!(max_age("no-cache, max-age=7"), Some(Duration::from_secs(7)));
        assert_eq!(max_age("private"), None);
    }

    fn target(sandbox_id: &str) -> PreviewTarget {
        PreviewTarget {
            sandbox_id: sandbox_id.into(),
            public: false,
            signed: true,
        }
    }

    #[test]
    fn an_invalidation_drops_every_answer_about_its_sandbox_only() {
        let answers = Answers::new();
        let ttl = Duration::from_secs(60);
        let asked = answers.epoch();
        for id in ["s1", "s2"] {
            let route = SandboxRoute {
                ip: "100.64.0.2".parse().unwrap(),
                via: None,
            };
            answers.keep(&answers.locations, asked, id.to_string(), route, ttl);
            answers.keep(
                &answers.signing_keys,
                asked,
                id.to_string(),
                "k".into(),
                ttl,
            );
            answers.keep(
                &answers.access,
                asked,
                (id.to_string(), [0; 32]),
                Ok(()),
                ttl,
            );
            answers.keep(
                &answers.previews,
                asked,
                (id.to_string(), 80),
                target(id),
                ttl,
            );
            // A signed token's entry names its sandbox only in the value.
            answers.keep(
                &answers.previews,
                asked,
                (format!("tok-{id}"), 80),
                target(id),
                ttl,
            );
        }
        answers.apply(&Invalidation::Sandbox { id: "s1".into() });
        assert!(answers.locations.get(&"s1".to_string()).is_none());
        assert!(answers.signing_keys.get(&"s1".to_string()).is_none());
        assert!(answers.access.get(&("s1".to_string(), [0; 32])).is_none());
        assert!(answers.previews.get(&("s1".to_string(), 80)).is_none());
        assert!(answers.previews.get(&("tok-s1".to_string(), 80)).is_none());
        assert!(answers.locations.get(&"s2".to_string()).is_some());
        assert!(answers.previews.get(&("tok-s2".to_string(), 80)).is_some());
        assert!(answers.access.get(&("s2".to_string(), [0; 32])).is_some());

        answers.apply(&Invalidation::Credentials);
        assert!(answers.access.get(&("s2".to_string(), [0; 32])).is_none());
        assert!(answers.locations.get(&"s2".to_string()).is_some());
        answers.clear();
        assert!(answers.locations.get(&"s2".to_string()).is_none());
    }

    #[test]
    fn an_answer_asked_before_an_invalidation_is_not_kept() {
        let answers = Answers::new();
        let asked = answers.epoch();
        // The change is announced while the (old) answer is on its way.
        answers.apply(&Invalidation::Sandbox { id: "s1".into() });
        let ttl = Duration::from_secs(60);
        answers.keep(
            &answers.signing_keys,
            asked,
            "s1".to_string(),
            "old".into(),
            ttl,
        );
        assert_eq!(answers.signing_keys.get(&"s1".to_string()), None);
        let asked = answers.epoch();
        answers.keep(
            &answers.signing_keys,
            asked,
            "s1".to_string(),
            "new".into(),
            ttl,
        );
        assert_eq!(
            answers.signing_keys.get(&"s1".to_string()).as_deref(),
            Some("new")
        );
    }

    #[tokio::test]
    async fn the_stream_applies_invalidations_and_says_why_it_ended() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
            let body = ": hi\n\ndata: {\"kind\":\"sandbox\",\"id\":\"s1\"}\n\n";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(body.as_bytes()).await.unwrap();
        });
        let api = ApiClient::new(
            &format!("http://{addr}/api"),
            "key",
            "PROXY_API_KEY",
            reqwest::Client::builder(),
        )
        .unwrap();
        let answers = Answers::new();
        let ttl = Duration::from_secs(60);
        answers.keep(&answers.signing_keys, 0, "s1".to_string(), "k".into(), ttl);
        let response = api.open_stream("/internal/invalidations").await.unwrap();
        let end = read_invalidations(response, &answers).await;
        assert_eq!(end, "closed by the API");
        assert_eq!(answers.signing_keys.get(&"s1".to_string()), None);
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
