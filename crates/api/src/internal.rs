//! Machine-to-machine access for a proxy and an SSH gateway that run as their own processes
//! (`DAYTONA_ROLES=proxy`, `DAYTONA_ROLES=ssh-gateway`).
//!
//! They authenticate with `PROXY_API_KEY` and `SSH_GATEWAY_API_KEY` (upstream's names); the API
//! accepts a service key only when this process does not run that role itself, so the published
//! placeholder values open nothing on an all-in-one server. The routes follow upstream's shapes
//! where upstream has one (`/preview/...`, `GET /sandbox/ssh-access/validate`,
//! `POST /sandbox/{id}/last-activity`); `/internal/...` are our additions (who am I, where is a
//! sandbox). A user API key on a service route gets 403.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{AuthContext, bearer, hash_key};
use crate::error::{ApiError, ApiResult};
use crate::store::SecretKind;

/// A service that calls the API on its own behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Proxy,
    SshGateway,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Proxy => "proxy",
            Service::SshGateway => "ssh-gateway",
        }
    }

    fn key_variable(self) -> &'static str {
        match self {
            Service::Proxy => "PROXY_API_KEY",
            Service::SshGateway => "SSH_GATEWAY_API_KEY",
        }
    }
}

/// The keys the API accepts from services, kept as SHA-256 digests (compared digest to digest).
#[derive(Debug, Clone, Default)]
pub struct ServiceKeys {
    proxy: Option<String>,
    ssh_gateway: Option<String>,
}

impl ServiceKeys {
    /// `None` for a service that runs in this process (it needs no key).
    pub fn new(proxy: Option<&str>, ssh_gateway: Option<&str>) -> Self {
        let digest = |k: Option<&str>| k.filter(|k| !k.is_empty()).map(hash_key);
        ServiceKeys {
            proxy: digest(proxy),
            ssh_gateway: digest(ssh_gateway),
        }
    }

    fn identify(&self, token: &str) -> Option<Service> {
        let digest = hash_key(token);
        if self.proxy.as_deref() == Some(digest.as_str()) {
            Some(Service::Proxy)
        } else if self.ssh_gateway.as_deref() == Some(digest.as_str()) {
            Some(Service::SshGateway)
        } else {
            None
        }
    }
}

/// The caller of a service-only route. Service calls are not rate limited (as upstream's
/// machine-to-machine contexts) and not audited (they change nothing but activity times).
#[derive(Debug, Clone, Copy)]
pub struct ServiceCaller(pub Service);

impl ServiceCaller {
    /// Refuses the other service's key.
    fn require(self, allowed: &[Service]) -> ApiResult<()> {
        if allowed.contains(&self.0) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "This route is not for the {} (its key is {})",
                self.0.as_str(),
                self.0.key_variable()
            )))
        }
    }
}

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Service(service) => Ok(ServiceCaller(service)),
            Caller::User(_) => Err(ApiError::Forbidden(
                "This route is for the proxy and the SSH gateway only (PROXY_API_KEY, \
                 SSH_GATEWAY_API_KEY); a user API key cannot call it"
                    .into(),
            )),
        }
    }
}

/// A user (API key) or a service: for routes both may call.
#[derive(Debug, Clone)]
pub enum Caller {
    User(AuthContext),
    Service(Service),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        // Service keys first, as upstream's validation order.
        if let Some(service) =
            bearer(&parts.headers).and_then(|t| state.access.service_keys().identify(t))
        {
            return Ok(Caller::Service(service));
        }
        AuthContext::from_request_parts(parts, state)
            .await
            .map(Caller::User)
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(identity))
        .routes(routes!(location))
        .routes(routes!(member))
        .routes(routes!(is_public))
        .routes(routes!(has_access))
        .routes(routes!(validate_preview_token))
        .routes(routes!(signed_preview_sandbox))
        .routes(routes!(preview_signing_key))
        .routes(routes!(invalidations))
}

/// `GET /internal/invalidations`: what a split proxy or gateway must forget, as server-sent
/// events, from every API replica (see `crate::invalidation`).
#[utoipa::path(
    get,
    path = "/internal/invalidations",
    tag = "internal",
    operation_id = "internal_invalidations"
)]
async fn invalidations(State(state): State<AppState>, _caller: ServiceCaller) -> Response {
    state.sandboxes.invalidations().events().into_response()
}

#[derive(Serialize)]
struct Identity {
    /// `proxy` or `ssh-gateway`.
    service: &'static str,
}

/// `GET /internal/identity`: which service the key belongs to (a split service's startup check).
#[utoipa::path(
    get,
    path = "/internal/identity",
    tag = "internal",
    operation_id = "internal_identity"
)]
async fn identity(caller: ServiceCaller) -> Json<Identity> {
    Json(Identity {
        service: caller.0.as_str(),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    sandbox_id: String,
    /// The started sandbox's address; its daemon listens on port 2280.
    ip: String,
    /// When the sandbox's runner is a process of its own: where it serves the sandbox's traffic
    /// (`/sandboxes/{id}/ports/{port}/…`, `/sandboxes/{id}/tcp/{port}`) …
    #[serde(skip_serializing_if = "Option::is_none")]
    runner_url: Option<String>,
    /// … and the short-lived credential it accepts for this sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    runner_credential: Option<String>,
}

/// `GET /internal/sandbox/{id}/location`: how to reach a started sandbox (409 otherwise).
#[utoipa::path(get, path = "/internal/sandbox/{id}/location", tag = "internal", operation_id = "internal_sandbox_location", params(("id" = String, Path)))]
async fn location(
    State(state): State<AppState>,
    _caller: ServiceCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<Location>> {
    let route = crate::sandbox::access::sandbox_route(&state, &id)
        .await
        .map_err(proxy_error)?;
    let (runner_url, runner_credential) = match route.via {
        Some(hop) => (Some(hop.url), Some(hop.credential)),
        None => (None, None),
    };
    Ok(Json(Location {
        sandbox_id: id,
        ip: route.ip.to_string(),
        runner_url,
        runner_credential,
    }))
}

/// `GET /internal/sandbox/{id}/members/{user_id}`: whether the user (an OIDC subject the split
/// proxy's browser login established) belongs to the organization owning the sandbox: `true`,
/// else 403 naming why.
#[utoipa::path(get, path = "/internal/sandbox/{id}/members/{user_id}", tag = "internal", operation_id = "internal_sandbox_member", params(("id" = String, Path), ("user_id" = String, Path)))]
async fn member(
    State(state): State<AppState>,
    _caller: ServiceCaller,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<Json<bool>> {
    use daytona_proxy::SandboxDirectory;
    state
        .authorize_user(&id, &user_id)
        .await
        .map_err(proxy_error)?;
    Ok(Json(true))
}

/// The in-process directory's answers as HTTP: the remote directory maps them back.
fn proxy_error(e: daytona_proxy::ProxyError) -> ApiError {
    use daytona_proxy::ProxyError as P;
    match e {
        P::BadRequest(m) => ApiError::BadRequest(m),
        P::Unauthorized(m) => ApiError::Unauthorized(m),
        P::Forbidden(m) => ApiError::Forbidden(m),
        P::NotFound(m) => ApiError::NotFound(m),
        P::NotRunning(m) => ApiError::Conflict(m),
        P::Unavailable(m) | P::BadGateway(m) => ApiError::Unavailable(m),
    }
}

async fn live(state: &AppState, id: &str) -> ApiResult<crate::store::SandboxRow> {
    state
        .store
        .sandbox_by_id(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Sandbox {id} not found")))
}

/// `GET /preview/{id}/public`: whether previews of the sandbox need no credentials.
#[utoipa::path(get, path = "/preview/{id}/public", tag = "preview", operation_id = "preview_is_public", params(("id" = String, Path)))]
async fn is_public(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<bool>> {
    caller.require(&[Service::Proxy])?;
    Ok(Json(live(&state, &id).await?.public))
}

/// `GET /preview/{id}/access`: whether the calling user (its API key) may reach the sandbox; the
/// proxy asks with the key its caller presented. Other organizations' sandboxes are 404.
#[utoipa::path(get, path = "/preview/{id}/access", tag = "preview", operation_id = "preview_has_access", params(("id" = String, Path)))]
async fn has_access(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<bool>> {
    let row = state.sandboxes.find(&ctx, &id).await?;
    // By id only: the proxy routes by id, and a name must not stand for another sandbox's id.
    if row.id != id {
        return Err(ApiError::NotFound(format!("Sandbox {id} not found")));
    }
    Ok(Json(true))
}

/// `GET /preview/{id}/validate/{token}`: whether `token` is the sandbox's preview token.
#[utoipa::path(get, path = "/preview/{id}/validate/{token}", tag = "preview", operation_id = "preview_validate_token", params(("id" = String, Path), ("token" = String, Path)))]
async fn validate_preview_token(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path((id, token)): Path<(String, String)>,
) -> ApiResult<Json<bool>> {
    caller.require(&[Service::Proxy])?;
    let row = live(&state, &id).await?;
    let expected = state
        .store
        .sandbox_secret(
            &row.id,
            SecretKind::PreviewToken,
            crate::sandbox::access::random_token,
        )
        .await?;
    Ok(Json(hash_key(&token) == hash_key(&expected)))
}

/// `GET /preview/{token}/{port}/sandbox-id`: the sandbox a signed preview token opens on `port`
/// (404 once it expired or was revoked), with `Cache-Control: max-age` = the seconds it has
/// left, so the proxy never keeps it longer. The first segment is named `id` because the router
/// needs one name per position; it holds the signed token.
#[utoipa::path(get, path = "/preview/{id}/{port}/sandbox-id", tag = "preview", operation_id = "preview_signed_sandbox_id", params(("id" = String, Path, description = "the signed preview token"), ("port" = String, Path)))]
async fn signed_preview_sandbox(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path((token, port)): Path<(String, String)>,
) -> ApiResult<Response> {
    caller.require(&[Service::Proxy])?;
    let port = crate::sandbox::access::parse_port(&port)?;
    let (sandbox_id, expires_at) = state
        .store
        .signed_preview_sandbox(&hash_key(&token), port)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "No valid signed preview URL with that token for port {port} (signed URLs expire)"
            ))
        })?;
    let left = chrono::DateTime::parse_from_rfc3339(&expires_at)
        .map(|at| (at.to_utc() - chrono::Utc::now()).num_seconds().max(0))
        .unwrap_or(0);
    Ok((
        [(CACHE_CONTROL, format!("max-age={left}"))],
        Json(sandbox_id),
    )
        .into_response())
}

/// `GET /preview/{id}/signing-key`: the key file URLs of the sandbox are signed with, so the
/// proxy verifies signatures itself.
#[utoipa::path(get, path = "/preview/{id}/signing-key", tag = "preview", operation_id = "preview_signing_key", params(("id" = String, Path)))]
async fn preview_signing_key(
    State(state): State<AppState>,
    caller: ServiceCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<String>> {
    caller.require(&[Service::Proxy])?;
    let row = live(&state, &id).await?;
    Ok(Json(
        state
            .store
            .sandbox_secret(
                &row.id,
                SecretKind::SigningKey,
                crate::sandbox::access::random_token,
            )
            .await?,
    ))
}
