//! A runner's end of [`daytona_proxy::route`]: a runner that is its own process serves the traffic of
//! its sandboxes on its port, for the proxy and the SSH gateway only (each request carries a
//! traffic credential the API issued for that sandbox and this runner):
//!
//! - `{any method} /sandboxes/{id}/ports/{port}/{path}` is forwarded to `port` of the sandbox,
//!   bodies streamed and upgrades (WebSocket) spliced, by the proxy's own forwarding;
//! - `GET /sandboxes/{id}/tcp/{port}` with `Upgrade: daytona-tcp` becomes a raw TCP tunnel.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use tracing::Instrument;

use daytona_proxy::DirectForwarder;
use daytona_proxy::route::{
    KEEP_HOST_HEADER, TCP_UPGRADE, TRAFFIC_CREDENTIAL_HEADER, UNREACHABLE_HEADER, key_digest,
    unix_now, verify_credential,
};

/// The sandboxes this runner holds.
#[async_trait::async_trait]
pub trait LocalSandboxes: Send + Sync + 'static {
    /// The address of a running sandbox of this runner; `None` when it has no such sandbox
    /// running.
    async fn address(&self, sandbox_id: &str) -> Result<Option<IpAddr>, String>;
}

#[derive(Clone)]
struct RunnerSide {
    sandboxes: Arc<dyn LocalSandboxes>,
    /// Hex SHA-256 of the runner's token: the key of its traffic credentials.
    key_digest: Arc<str>,
    forwarder: DirectForwarder,
}

/// The routes above; `token` is the runner's own token (`DAYTONA_RUNNER_TOKEN`).
pub fn router(sandboxes: Arc<dyn LocalSandboxes>, token: &str) -> Router {
    let state = RunnerSide {
        sandboxes,
        key_digest: key_digest(token).into(),
        forwarder: DirectForwarder::default(),
    };
    Router::new()
        .route("/sandboxes/{*rest}", any(serve))
        .with_state(state)
}

/// A refusal in the shape of upstream's runner errors.
struct RunnerError {
    status: StatusCode,
    message: String,
    path: String,
    method: Method,
    /// Why the sandbox could not be reached (marked for the proxy), if that is the refusal.
    unreachable: Option<&'static str>,
}

impl IntoResponse for RunnerError {
    fn into_response(self) -> Response {
        let code = self
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_ascii_uppercase()
            .replace(' ', "_");
        let body = serde_json::json!({
            "statusCode": self.status.as_u16(),
            "message": self.message,
            "code": code,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "path": self.path,
            "method": self.method.as_str(),
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(reason) = self.unreachable {
            resp.headers_mut()
                .insert(UNREACHABLE_HEADER, HeaderValue::from_static(reason));
        }
        resp
    }
}

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// HTTP to `port`, with this path (and the request's query).
    Http {
        sandbox_id: String,
        port: u16,
        path: &'a str,
    },
    Tcp {
        sandbox_id: String,
        port: u16,
    },
}

fn parse_target(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix("/sandboxes/")?;
    let (id, rest) = rest.split_once('/')?;
    let sandbox_id = percent_decode_str(id).decode_utf8().ok()?.into_owned();
    if sandbox_id.is_empty() {
        return None;
    }
    if let Some(port) = rest.strip_prefix("tcp/") {
        return Some(Target::Tcp {
            sandbox_id,
            port: port.parse().ok()?,
        });
    }
    let rest = rest.strip_prefix("ports/")?;
    let (port, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    Some(Target::Http {
        sandbox_id,
        port: port.parse().ok()?,
        path,
    })
}

/// Each request is a span continuing the trace of the proxy or gateway that sent it.
async fn serve(State(state): State<RunnerSide>, req: Request) -> Response {
    let span = daytona_telemetry::server_span(&req);
    handle(state, req).instrument(span).await
}

async fn handle(state: RunnerSide, mut req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let error = |status: StatusCode, message: String, unreachable: Option<&'static str>| {
        RunnerError {
            status,
            message,
            path: path.clone(),
            method: method.clone(),
            unreachable,
        }
        .into_response()
    };
    let refuse = |status: StatusCode, message: String| error(status, message, None);
    let Some(target) = parse_target(&path) else {
        return refuse(StatusCode::NOT_FOUND, format!("no route for {path}"));
    };
    let (Target::Http { sandbox_id, .. } | Target::Tcp { sandbox_id, .. }) = &target;
    let Some(credential) = req
        .headers()
        .get(TRAFFIC_CREDENTIAL_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("missing {TRAFFIC_CREDENTIAL_HEADER}"),
        );
    };
    if let Err(e) = verify_credential(&state.key_digest, sandbox_id, credential, unix_now()) {
        return refuse(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let ip = match state.sandboxes.address(sandbox_id).await {
        Ok(Some(ip)) => ip,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("sandbox {sandbox_id} is not running on this runner"),
                Some("not running on this runner"),
            );
        }
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    match target {
        Target::Tcp { port, .. } => tunnel(ip, port, req)
            .await
            .unwrap_or_else(|(status, message)| refuse(status, message)),
        Target::Http {
            sandbox_id,
            port,
            path: rest,
        } => {
            let headers = req.headers_mut();
            headers.remove(TRAFFIC_CREDENTIAL_HEADER);
            let keep_host = headers.remove(KEEP_HOST_HEADER).is_some();
            // Not kept: the host the proxy saw, so the sandbox's X-Forwarded-Host stays true.
            if !keep_host && let Some(seen) = headers.get("x-forwarded-host").cloned() {
                headers.insert(header::HOST, seen);
            }
            let query = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let rest = if rest.is_empty() { "/" } else { rest };
            let path_and_query = format!("{rest}{query}");
            match state
                .forwarder
                .forward(&sandbox_id, ip, port, path_and_query, keep_host, req)
                .await
            {
                Ok(resp) => resp,
                Err(e) => error(
                    StatusCode::BAD_GATEWAY,
                    format!("port {port} of sandbox {sandbox_id}: {}", e.message),
                    e.connect.then_some("nothing listens on the port"),
                ),
            }
        }
    }
}

/// Connects to the sandbox first (so a closed port is a 502, not a dead tunnel), then
/// switches protocols and splices the two connections.
async fn tunnel(ip: IpAddr, port: u16, mut req: Request) -> Result<Response, (StatusCode, String)> {
    let wants_tunnel = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(TCP_UPGRADE));
    if !wants_tunnel {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("a TCP tunnel needs 'Connection: upgrade' and 'Upgrade: {TCP_UPGRADE}'"),
        ));
    }
    let mut sandbox = tokio::net::TcpStream::connect(SocketAddr::new(ip, port))
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                format!("cannot connect to port {port} of the sandbox: {e}"),
            )
        })?;
    let _ = sandbox.set_nodelay(true);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut caller = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut caller, &mut sandbox).await {
                    tracing::debug!(error = %e, "sandbox tunnel ended");
                }
            }
            Err(e) => tracing::warn!(error = %e, "sandbox tunnel upgrade failed"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(TCP_UPGRADE));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_sandbox_port_and_rest() {
        assert_eq!(
            parse_target("/sandboxes/sb%2D1/ports/2280/files/x%20y"),
            Some(Target::Http {
                sandbox_id: "sb-1".into(),
                port: 2280,
                path: "/files/x%20y"
            })
        );
        assert_eq!(
            parse_target("/sandboxes/sb/ports/3000"),
            Some(Target::Http {
                sandbox_id: "sb".into(),
                port: 3000,
                path: ""
            })
        );
        assert_eq!(
            parse_target("/sandboxes/sb/tcp/22"),
            Some(Target::Tcp {
                sandbox_id: "sb".into(),
                port: 22
            })
        );
        for bad in [
            "/sandboxes/sb/ports/x/y",
            "/sandboxes//ports/1",
            "/sandboxes/sb/tcp/99999",
            "/sandboxes/sb/other/1",
            "/other",
        ] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
    }
}
