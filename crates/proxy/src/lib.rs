//! The proxy: routes `/toolbox/{sandboxId}/{path}` to the toolbox daemon inside that sandbox,
//! streaming bodies both ways and passing WebSocket upgrades through.
//!
//! It knows nothing about stores or runners: a [`SandboxDirectory`] (the API in-process, or a
//! network client in split deployments) authorizes each request and names the daemon's address.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotRunning(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    BadGateway(String),
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ProxyError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ProxyError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ProxyError::NotRunning(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ProxyError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
            ProxyError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "BAD_GATEWAY"),
        };
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

/// Authorizes toolbox requests and locates sandbox daemons.
#[async_trait::async_trait]
pub trait SandboxDirectory: Send + Sync + 'static {
    /// The daemon address of `sandbox_id` if `token` may use its toolbox.
    async fn toolbox_target(&self, token: &str, sandbox_id: &str)
    -> Result<SocketAddr, ProxyError>;
}

#[derive(Clone)]
struct ProxyState {
    directory: Arc<dyn SandboxDirectory>,
    client: Client<HttpConnector, Body>,
}

pub fn router(directory: Arc<dyn SandboxDirectory>) -> Router {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build(connector);
    let state = ProxyState { directory, client };
    Router::new()
        .route("/toolbox/{sandbox_id}", any(toolbox_root))
        .route("/toolbox/{sandbox_id}/{*path}", any(toolbox))
        .fallback(
            |uri: Uri| async move { ProxyError::NotFound(format!("no route for {}", uri.path())) },
        )
        .with_state(state)
}

async fn toolbox_root(
    State(state): State<ProxyState>,
    Path(sandbox_id): Path<String>,
    req: Request,
) -> Result<Response, ProxyError> {
    forward(state, sandbox_id, String::new(), req).await
}

async fn toolbox(
    State(state): State<ProxyState>,
    Path((sandbox_id, path)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ProxyError> {
    forward(state, sandbox_id, path, req).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
        && headers.contains_key(header::UPGRADE)
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == "connection" || name == "upgrade") {
            continue;
        }
        headers.remove(name);
    }
}

async fn forward(
    state: ProxyState,
    sandbox_id: String,
    path: String,
    mut req: Request,
) -> Result<Response, ProxyError> {
    let token = bearer(req.headers())
        .ok_or_else(|| {
            ProxyError::Unauthorized(
                "Missing credentials: send 'Authorization: Bearer <API key>'".into(),
            )
        })?
        .to_string();
    let addr = state.directory.toolbox_target(&token, &sandbox_id).await?;

    let upgrade = is_upgrade(req.headers());
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let uri: Uri = format!("http://{addr}/{path}{query}")
        .parse()
        .map_err(|e| ProxyError::BadGateway(format!("bad upstream uri: {e}")))?;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    // The sandbox never sees the caller's credentials.
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-host"),
        HeaderValue::from_static("daytona-proxy"),
    );
    parts.headers.remove(header::HOST);

    let mut resp = state
        .client
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| {
            ProxyError::BadGateway(format!(
                "toolbox of sandbox {sandbox_id} is unreachable: {e}"
            ))
        })?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    {
                        tracing::debug!(error = %e, "upgraded toolbox connection ended");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "toolbox upgrade failed"),
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, Body::new(body)))
}
