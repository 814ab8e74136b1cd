//! The proxy: `/toolbox/{sandboxId}/{path}` goes to the toolbox daemon inside that sandbox, and a
//! preview host `{port}-{sandboxId}.{PROXY_DOMAIN}` goes to that port inside the sandbox. Bodies
//! stream both ways and WebSocket upgrades pass through.
//!
//! It knows nothing about stores or runners: a [`SandboxDirectory`] (the API in-process, or a
//! network client in split deployments) authorizes each request and names the sandbox's address.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};

mod credentials;
mod forward;
pub mod host;
pub mod invalidation;
mod login;
mod preview;
pub mod remote;
pub mod route;
mod signed_file;

pub use credentials::Credential;
pub use host::{HostPattern, PreviewHost};
pub use login::BrowserLogin;
pub use route::{RunnerHop, SandboxRoute};
pub use signed_file::SignedFile;

pub use forward::{DirectForwarder, ForwardError};
use forward::{HttpClient, Upstream};

/// The toolbox daemon's port inside every sandbox.
pub const TOOLBOX_PORT: u16 = 2280;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotRunning(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    BadGateway(String),
}

impl ProxyError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            ProxyError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ProxyError::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            ProxyError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ProxyError::NotRunning(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ProxyError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
            ProxyError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "BAD_GATEWAY"),
        }
    }

    /// The error as a small HTML page, for browsers.
    fn into_html(self) -> Response {
        let (status, _) = self.status();
        let title = status.canonical_reason().unwrap_or("Error");
        let page = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
             <h1>{} {title}</h1><p>{}</p><p><small>Daytona proxy</small></p></body></html>",
            status.as_u16(),
            html_escape(&self.to_string()),
        );
        (status, Html(page)).into_response()
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let body = serde_json::json!({
            "statusCode": status.as_u16(),
            "message": self.to_string(),
            "error": status.canonical_reason().unwrap_or("Error"),
            "code": code,
            "source": "DAYTONA_PROXY",
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        (status, Json(body)).into_response()
    }
}

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Whether the caller is a browser that wants a page rather than JSON.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// What a preview host resolved to.
#[derive(Debug, Clone)]
pub struct PreviewTarget {
    pub sandbox_id: String,
    pub public: bool,
    /// The host named a valid signed preview token for this port: no further credentials needed.
    pub signed: bool,
}

/// Authorizes requests and locates sandboxes.
#[async_trait::async_trait]
pub trait SandboxDirectory: Send + Sync + 'static {
    /// Checks that `credential` may reach `sandbox_id` (its toolbox or its previews).
    async fn authorize(&self, sandbox_id: &str, credential: &Credential) -> Result<(), ProxyError>;
    /// Checks that the user `user_id` (an OIDC subject, logged in through the browser) is a
    /// member of the organization that owns `sandbox_id`.
    async fn authorize_user(&self, sandbox_id: &str, user_id: &str) -> Result<(), ProxyError>;
    /// Resolves the label of a preview host (a sandbox id, or a signed preview token valid for
    /// `port`).
    async fn preview_target(&self, label: &str, port: u16) -> Result<PreviewTarget, ProxyError>;
    /// How to reach a started sandbox (its address, and the runner to go through when that
    /// runner is a process of its own); [`ProxyError::NotRunning`] when it is not started.
    async fn sandbox_route(&self, sandbox_id: &str) -> Result<SandboxRoute, ProxyError>;
    /// Records traffic to the sandbox (keeps auto-stop honest). Implementations throttle.
    async fn touch(&self, sandbox_id: &str);
    /// Forwarding to the sandbox's address failed to connect: a cached address is stale.
    fn forget(&self, _sandbox_id: &str) {}
}

/// How the proxy recognises and treats preview hosts.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Host shapes of previews (`PROXY_DOMAIN`, `PROXY_TEMPLATE_URL`).
    pub preview_hosts: Vec<HostPattern>,
    /// `TOOLBOX_ONLY_MODE`: previews are refused.
    pub toolbox_only: bool,
    /// `PREVIEW_WARNING_ENABLED`: browsers see an interstitial page first.
    pub preview_warning: bool,
    /// `COOKIE_DOMAIN` (any `:port` is ignored).
    pub cookie_domain: Option<String>,
    /// Browser login through the OIDC issuer for private previews (`OIDC_DOMAIN` set).
    pub login: Option<BrowserLogin>,
}

#[derive(Clone)]
pub(crate) struct ProxyState {
    directory: Arc<dyn SandboxDirectory>,
    client: HttpClient,
    settings: Arc<ProxySettings>,
}

pub fn router(directory: Arc<dyn SandboxDirectory>, settings: ProxySettings) -> Router {
    let state = ProxyState {
        directory,
        client: forward::client(),
        settings: Arc::new(settings),
    };
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/callback", get(login::callback))
        .route("/toolbox/{sandbox_id}", any(toolbox_root))
        .route("/toolbox/{sandbox_id}/{*path}", any(toolbox))
        .fallback(
            |uri: Uri| async move { ProxyError::NotFound(format!("no route for {}", uri.path())) },
        )
        // Preview hosts take every path, so they are recognised before routing.
        .layer(middleware::from_fn_with_state(state.clone(), route_preview))
        // Outermost, so previews are traced too and a caller's trace continues here.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(daytona_telemetry::server_span::<axum::body::Body>),
        )
        .with_state(state)
}

async fn route_preview(State(state): State<ProxyState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    match state
        .settings
        .preview_hosts
        .iter()
        .find_map(|p| p.parse(host))
    {
        Some(preview) => preview::handle(state, preview, req).await,
        None => next.run(req).await,
    }
}

async fn toolbox_root(
    State(state): State<ProxyState>,
    Path(sandbox_id): Path<String>,
    req: Request,
) -> Result<Response, ProxyError> {
    toolbox_forward(state, sandbox_id, String::new(), req).await
}

async fn toolbox(
    State(state): State<ProxyState>,
    Path((sandbox_id, path)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ProxyError> {
    toolbox_forward(state, sandbox_id, path, req).await
}

async fn toolbox_forward(
    state: ProxyState,
    sandbox_id: String,
    path: String,
    req: Request,
) -> Result<Response, ProxyError> {
    let found = credentials::find(&req, &sandbox_id).ok_or_else(|| {
        ProxyError::Unauthorized(
            "Missing credentials: send 'Authorization: Bearer <API key>'".into(),
        )
    })?;
    state
        .directory
        .authorize(&sandbox_id, &found.credential)
        .await?;
    let route = state.directory.sandbox_route(&sandbox_id).await?;
    if !credentials::skips_activity(req.headers()) {
        state.directory.touch(&sandbox_id).await;
    }
    let query = credentials::query_without(req.uri().query(), found.credential.query_params());
    let upstream = Upstream {
        sandbox_id: sandbox_id.clone(),
        route,
        port: TOOLBOX_PORT,
        path_and_query: format!("/{path}{query}"),
        keep_host: false,
        strip: found.strip,
        activity: Some((state.directory.clone(), sandbox_id.clone())),
    };
    forward::forward(&state.client, upstream, req)
        .await
        .map_err(|e| {
            if e.connect {
                state.directory.forget(&sandbox_id);
            }
            ProxyError::BadGateway(format!(
                "toolbox of sandbox {sandbox_id} is unreachable: {}",
                e.message
            ))
        })
}

/// Name of the header that carries a sandbox's preview token.
pub const PREVIEW_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-daytona-preview-token");
