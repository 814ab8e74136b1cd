//! Access to a sandbox from outside the SDK: preview URLs (plain and signed), SSH access tokens,
//! and the lookups the proxy and the SSH gateway make for them.
//!
//! Three kinds of secrets: the per-sandbox preview token (plain text, handed out again on every
//! preview-url request), signed preview tokens (bound to one port, expiring) and SSH tokens
//! (expiring; both stored as SHA-256 only).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Json;
use axum::extract::{Path, Query, State};
use daytona_proxy::{
    Credential, PreviewTarget, ProxyError, RunnerHop, SandboxDirectory, SandboxRoute,
};
use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::dto::Sandbox;
use crate::AppState;
use crate::auth::{self, AuthContext, hash_key};
use crate::error::{ApiError, ApiResult};
use crate::internal::{Caller, Service, ServiceKeys};
use crate::json::bounded;
use crate::store::{NewSshAccess, SandboxRow, SecretKind, Store, now};

const SIGNED_DEFAULT_S: u64 = 60;
const SIGNED_MAX_S: u64 = 24 * 60 * 60;
const SSH_DEFAULT_MIN: u64 = 60;
/// Upstream accepts up to 24 h of SSH access per token.
const SSH_MAX_MIN: u64 = 24 * 60;
/// At most one `last_activity_at` write per sandbox in this interval.
const TOUCH_INTERVAL: Duration = Duration::from_secs(10);
const TOKEN_LEN: usize = 32;

/// Values the access endpoints need from configuration.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// `PROXY_TEMPLATE_URL` with `{{PORT}}` and `{{sandboxId}}`.
    pub preview_url_template: String,
    /// `SSH_GATEWAY_COMMAND` with `{{TOKEN}}`.
    pub ssh_command_template: String,
}

pub struct AccessService {
    settings: AccessSettings,
    touched: Mutex<HashMap<String, Instant>>,
    /// Keys of a proxy and an SSH gateway that run as their own processes (`internal.rs`).
    service_keys: ServiceKeys,
}

/// A random token of lowercase letters and digits: usable as a DNS label and an SSH user name.
pub(crate) fn random_token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..TOKEN_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn timestamp_in(d: Duration) -> String {
    let t = chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl AccessService {
    pub fn new(settings: AccessSettings) -> Self {
        AccessService {
            settings,
            touched: Mutex::new(HashMap::new()),
            service_keys: ServiceKeys::default(),
        }
    }

    /// Accepts these keys from a split proxy and SSH gateway (none by default).
    pub fn with_service_keys(mut self, keys: ServiceKeys) -> Self {
        self.service_keys = keys;
        self
    }

    pub(crate) fn service_keys(&self) -> &ServiceKeys {
        &self.service_keys
    }

    fn preview_url(&self, port: u16, label: &str) -> String {
        self.settings
            .preview_url_template
            .replace("{{PORT}}", &port.to_string())
            .replace("{{sandboxId}}", label)
    }

    /// The sandbox a signed preview token opens for `port`, while it has not expired.
    async fn signed_sandbox(
        &self,
        store: &Store,
        token: &str,
        port: u16,
    ) -> Result<Option<String>, sqlx::Error> {
        let found = store.signed_preview_sandbox(&hash_key(token), port).await?;
        Ok(found.map(|(sandbox_id, _expires_at)| sandbox_id))
    }

    /// The sandbox an SSH token opens, while it has not expired.
    pub async fn ssh_sandbox(
        &self,
        store: &Store,
        token: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        store.ssh_access_sandbox(&hash_key(token)).await
    }

    /// Records activity on the sandbox, at most once per [`TOUCH_INTERVAL`].
    pub async fn touch(&self, store: &Store, sandbox_id: &str) {
        {
            let mut touched = self.touched.lock().expect("touch map poisoned");
            let now = Instant::now();
            if touched
                .get(sandbox_id)
                .is_some_and(|t| now.duration_since(*t) < TOUCH_INTERVAL)
            {
                return;
            }
            touched.retain(|_, t| now.duration_since(*t) < TOUCH_INTERVAL);
            touched.insert(sandbox_id.to_string(), now);
        }
        if let Err(e) = store.touch_sandbox(sandbox_id).await {
            tracing::warn!(sandbox = %sandbox_id, error = %e, "could not record sandbox activity");
        }
    }
}

/// The address of a started sandbox.
/// How the proxy and SSH gateway reach a started sandbox: its address, and the runner process
/// to go through (with a fresh credential for this sandbox) when its runner is not this process.
pub async fn sandbox_route(state: &AppState, sandbox_id: &str) -> Result<SandboxRoute, ProxyError> {
    let row = live_sandbox(&state.store, sandbox_id).await?;
    if row.state != "started" {
        return Err(ProxyError::NotRunning(format!(
            "Sandbox {sandbox_id} is not started (state: {})",
            row.state
        )));
    }
    let runner = state.sandboxes.runner();
    let unavailable = |e: daytona_runner::RunnerError| ProxyError::Unavailable(e.to_string());
    let ip = runner
        .daemon_address(sandbox_id)
        .await
        .map_err(unavailable)?
        .map(|addr| addr.ip())
        .ok_or_else(|| ProxyError::NotRunning(format!("Sandbox {sandbox_id} is not running")))?;
    let via = runner
        .traffic_endpoint(sandbox_id)
        .await
        .map_err(unavailable)?
        .map(|endpoint| {
            let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
            RunnerHop {
                credential: daytona_proxy::route::issue_credential(
                    &endpoint.key_digest,
                    sandbox_id,
                    now,
                ),
                url: endpoint.url.trim_end_matches('/').to_owned(),
            }
        });
    Ok(SandboxRoute { ip, via })
}

async fn live_sandbox(store: &Store, sandbox_id: &str) -> Result<SandboxRow, ProxyError> {
    store
        .sandbox_by_id(sandbox_id)
        .await
        .map_err(|e| ProxyError::Unavailable(e.to_string()))?
        .ok_or_else(|| ProxyError::NotFound(format!("Sandbox {sandbox_id} not found")))
}

#[async_trait::async_trait]
impl SandboxDirectory for AppState {
    async fn authorize(&self, sandbox_id: &str, credential: &Credential) -> Result<(), ProxyError> {
        let row = live_sandbox(&self.store, sandbox_id).await?;
        match credential {
            Credential::ApiKey(key) => {
                // A user's token is checked for membership of the sandbox's organization.
                let ctx = auth::authenticate_bearer(self, key, Some(&row.organization_id))
                    .await
                    .map_err(|e| match e {
                        ApiError::Unauthorized(m) => ProxyError::Unauthorized(m),
                        ApiError::NotFound(_) => {
                            ProxyError::NotFound(format!("Sandbox {sandbox_id} not found"))
                        }
                        other => ProxyError::Unavailable(other.to_string()),
                    })?;
                if ctx.organization_id != row.organization_id {
                    // Same answer as for a missing sandbox: ids of other organizations stay hidden.
                    return Err(ProxyError::NotFound(format!(
                        "Sandbox {sandbox_id} not found"
                    )));
                }
            }
            Credential::PreviewToken(token) => {
                let expected = self
                    .store
                    .sandbox_secret(sandbox_id, SecretKind::PreviewToken, random_token)
                    .await
                    .map_err(|e| ProxyError::Unavailable(e.to_string()))?;
                if token.as_bytes() != expected.as_bytes() {
                    return Err(ProxyError::Unauthorized(format!(
                        "Invalid preview token for sandbox {sandbox_id}"
                    )));
                }
            }
            Credential::SignedFile(signed) => {
                let key = self
                    .store
                    .sandbox_secret(sandbox_id, SecretKind::SigningKey, random_token)
                    .await
                    .map_err(|e| ProxyError::Unavailable(e.to_string()))?;
                let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
                signed.verify(&key, now).map_err(|reason| {
                    ProxyError::Unauthorized(format!(
                        "Signed URL for {} in sandbox {sandbox_id} refused: {reason}",
                        signed.path
                    ))
                })?;
            }
        }
        Ok(())
    }

    async fn authorize_user(&self, sandbox_id: &str, user_id: &str) -> Result<(), ProxyError> {
        let row = live_sandbox(&self.store, sandbox_id).await?;
        let member = self
            .store
            .member_role(&row.organization_id, user_id)
            .await
            .map_err(|e| ProxyError::Unavailable(e.to_string()))?;
        match member {
            Some(_) => Ok(()),
            None => Err(ProxyError::Forbidden(format!(
                "User {user_id} is not a member of the organization that owns sandbox {sandbox_id}"
            ))),
        }
    }

    async fn preview_target(&self, label: &str, port: u16) -> Result<PreviewTarget, ProxyError> {
        let unavailable = |e: sqlx::Error| ProxyError::Unavailable(e.to_string());
        if let Some(row) = self.store.sandbox_by_id(label).await.map_err(unavailable)? {
            return Ok(PreviewTarget {
                sandbox_id: row.id,
                public: row.public,
                signed: false,
            });
        }
        match self
            .access
            .signed_sandbox(&self.store, label, port)
            .await
            .map_err(unavailable)?
        {
            Some(sandbox_id) => Ok(PreviewTarget {
                sandbox_id,
                public: false,
                signed: true,
            }),
            None => Err(ProxyError::NotFound(format!(
                "No sandbox or valid signed preview URL for '{label}' on port {port} (signed URLs expire)"
            ))),
        }
    }

    async fn sandbox_route(&self, sandbox_id: &str) -> Result<SandboxRoute, ProxyError> {
        sandbox_route(self, sandbox_id).await
    }

    async fn touch(&self, sandbox_id: &str) {
        self.access.touch(&self.store, sandbox_id).await
    }
}

// --- HTTP -------------------------------------------------------------------------------------

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(preview_url))
        .routes(routes!(signed_preview_url))
        .routes(routes!(expire_signed_preview_url))
        .routes(routes!(create_ssh_access, revoke_ssh_access))
        .routes(routes!(validate_ssh_access))
        .routes(routes!(signing_key))
        .routes(routes!(rotate_signing_key))
}

pub(crate) fn parse_port(raw: &str) -> ApiResult<u16> {
    raw.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::BadRequest(format!("port: '{raw}' is not a port number (1-65535)"))
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PreviewUrl {
    sandbox_id: String,
    url: String,
    token: String,
}

#[utoipa::path(get, path = "/sandbox/{id}/ports/{port}/preview-url", tag = "sandbox", operation_id = "sandbox_access_preview_url", params(("id" = String, Path), ("port" = String, Path)))]
async fn preview_url(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((id, port)): Path<(String, String)>,
) -> ApiResult<Json<PreviewUrl>> {
    let port = parse_port(&port)?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    let token = state
        .store
        .sandbox_secret(&row.id, SecretKind::PreviewToken, random_token)
        .await?;
    Ok(Json(PreviewUrl {
        url: state.access.preview_url(port, &row.id),
        sandbox_id: row.id,
        token,
    }))
}

/// `GET /sandbox/{id}/signing-key`: the key the SDK signs file URLs with (a JSON string).
#[utoipa::path(get, path = "/sandbox/{id}/signing-key", tag = "sandbox", operation_id = "sandbox_access_signing_key", params(("id" = String, Path)))]
async fn signing_key(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<String>> {
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(
        state
            .store
            .sandbox_secret(&row.id, SecretKind::SigningKey, random_token)
            .await?,
    ))
}

/// `POST /sandbox/{id}/signing-key/rotate`: a new key; URLs signed with the old one stop working.
#[utoipa::path(post, path = "/sandbox/{id}/signing-key/rotate", tag = "sandbox", operation_id = "sandbox_access_rotate_signing_key", params(("id" = String, Path)))]
async fn rotate_signing_key(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<String>> {
    ctx.require("write:sandboxes")?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    let key = state
        .store
        .rotate_sandbox_secret(&row.id, SecretKind::SigningKey, random_token())
        .await?;
    state.sandboxes.invalidations().sandbox(&row.id);
    Ok(Json(key))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedQuery {
    expires_in_seconds: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SignedPreviewUrl {
    sandbox_id: String,
    port: u16,
    token: String,
    url: String,
}

#[utoipa::path(get, path = "/sandbox/{id}/ports/{port}/signed-preview-url", tag = "sandbox", operation_id = "sandbox_access_signed_preview_url", params(("id" = String, Path), ("port" = String, Path)))]
async fn signed_preview_url(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((id, port)): Path<(String, String)>,
    Query(q): Query<SignedQuery>,
) -> ApiResult<Json<SignedPreviewUrl>> {
    let port = parse_port(&port)?;
    let seconds = bounded(
        "expiresInSeconds",
        q.expires_in_seconds.as_deref(),
        SIGNED_DEFAULT_S,
        SIGNED_MAX_S,
    )?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    let token = random_token();
    let expires_at = timestamp_in(Duration::from_secs(seconds));
    state
        .store
        .insert_signed_preview_token(&hash_key(&token), &row.id, port, &expires_at)
        .await?;
    Ok(Json(SignedPreviewUrl {
        url: state.access.preview_url(port, &token),
        sandbox_id: row.id,
        port,
        token,
    }))
}

#[utoipa::path(post, path = "/sandbox/{id}/ports/{port}/signed-preview-url/{token}/expire", tag = "sandbox", operation_id = "sandbox_access_expire_signed_preview_url", params(("id" = String, Path), ("port" = String, Path), ("token" = String, Path)))]
async fn expire_signed_preview_url(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((id, port, token)): Path<(String, String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let port = parse_port(&port)?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    let existed = state
        .store
        .delete_signed_preview_token(&hash_key(&token), &row.id, port)
        .await?;
    state.sandboxes.invalidations().sandbox(&row.id);
    if !existed {
        return Err(ApiError::NotFound(format!(
            "No signed preview URL with that token for port {port} of sandbox {}",
            row.id
        )));
    }
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SshQuery {
    expires_in_minutes: Option<String>,
    token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SshAccess {
    id: String,
    sandbox_id: String,
    token: String,
    expires_at: String,
    created_at: String,
    updated_at: String,
    ssh_command: String,
}

#[utoipa::path(post, path = "/sandbox/{id}/ssh-access", tag = "sandbox", operation_id = "sandbox_access_create_ssh_access", params(("id" = String, Path)))]
async fn create_ssh_access(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    Query(q): Query<SshQuery>,
) -> ApiResult<Json<SshAccess>> {
    let minutes = bounded(
        "expiresInMinutes",
        q.expires_in_minutes.as_deref(),
        SSH_DEFAULT_MIN,
        SSH_MAX_MIN,
    )?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    let token = random_token();
    let ts = now();
    let access = SshAccess {
        id: uuid::Uuid::new_v4().to_string(),
        ssh_command: state
            .access
            .settings
            .ssh_command_template
            .replace("{{TOKEN}}", &token),
        sandbox_id: row.id,
        expires_at: timestamp_in(Duration::from_secs(minutes * 60)),
        created_at: ts.clone(),
        updated_at: ts,
        token,
    };
    // As upstream: a new token replaces the sandbox's earlier ones.
    state
        .store
        .replace_ssh_access(&NewSshAccess {
            id: &access.id,
            sandbox_id: &access.sandbox_id,
            token_hash: &hash_key(&access.token),
            expires_at: &access.expires_at,
            created_at: &access.created_at,
            updated_at: &access.updated_at,
        })
        .await?;
    Ok(Json(access))
}

#[utoipa::path(delete, path = "/sandbox/{id}/ssh-access", tag = "sandbox", operation_id = "sandbox_access_revoke_ssh_access", params(("id" = String, Path)))]
async fn revoke_ssh_access(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    Query(q): Query<SshQuery>,
) -> ApiResult<Json<Sandbox>> {
    let row = state.sandboxes.find(&ctx, &id).await?;
    let token_hash = q.token.as_deref().filter(|t| !t.is_empty()).map(hash_key);
    let revoked = state
        .store
        .revoke_ssh_access(&row.id, token_hash.as_deref())
        .await?;
    if token_hash.is_some() && revoked == 0 {
        return Err(ApiError::NotFound(format!(
            "No SSH access with that token for sandbox {}",
            row.id
        )));
    }
    Ok(Json(state.sandboxes.to_dto(row)))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SshValidation {
    valid: bool,
    sandbox_id: String,
}

#[utoipa::path(
    get,
    path = "/sandbox/ssh-access/validate",
    tag = "sandbox",
    operation_id = "sandbox_access_validate_ssh_access"
)]
async fn validate_ssh_access(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<SshQuery>,
) -> ApiResult<Json<SshValidation>> {
    let token = q
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::BadRequest("token: required".into()))?;
    let sandbox_id = match state.access.ssh_sandbox(&state.store, &token).await? {
        None => None,
        // The SSH gateway validates every token; a user only its own organization's: a token of
        // another organization is reported invalid.
        Some(id) => match &caller {
            Caller::Service(Service::SshGateway) => {
                state.store.sandbox_by_id(&id).await?.map(|row| row.id)
            }
            Caller::Service(other) => {
                return Err(ApiError::Forbidden(format!(
                    "The {} cannot validate SSH access tokens",
                    other.as_str()
                )));
            }
            Caller::User(ctx) => state
                .store
                .find_sandbox(&ctx.organization_id, &id)
                .await?
                .map(|row| row.id),
        },
    };
    Ok(Json(SshValidation {
        valid: sandbox_id.is_some(),
        sandbox_id: sandbox_id.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_dns_labels_and_unique() {
        let a = random_token();
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(a, random_token());
    }

    #[test]
    fn query_bounds() {
        assert_eq!(bounded("x", None, 60, 100).unwrap(), 60);
        assert_eq!(bounded("x", Some("100"), 60, 100).unwrap(), 100);
        assert!(bounded("x", Some("0"), 60, 100).is_err());
        assert!(bounded("x", Some("101"), 60, 100).is_err());
        assert!(bounded("x", Some("abc"), 60, 100).is_err());
        assert!(parse_port("0").is_err() && parse_port("70000").is_err());
        assert_eq!(parse_port("8080").unwrap(), 8080);
    }
}
