//! Streaming one request to an upstream inside a sandbox: the toolbox daemon or a preview port.
//! Bodies stream both ways; an `Upgrade` (WebSocket) is spliced byte for byte once both sides
//! switched protocols.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::SandboxDirectory;

/// How often a long-lived (upgraded) connection counts as sandbox activity.
const UPGRADED_ACTIVITY_INTERVAL: Duration = Duration::from_secs(50);

pub(crate) type HttpClient = Client<HttpConnector, Body>;

pub(crate) fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Where a request goes and what it may carry along.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    /// Path and query sent upstream, starting with `/`.
    pub path_and_query: String,
    /// Keep the caller's `Host` (preview apps often build links from it).
    pub keep_host: bool,
    /// Request headers that carried our credentials and must not reach the sandbox.
    pub strip: Vec<HeaderName>,
    /// Counts an upgraded connection as activity of this sandbox while it lasts.
    pub activity: Option<(Arc<dyn SandboxDirectory>, String)>,
}

/// The upstream could not be reached or broke off before answering.
#[derive(Debug)]
pub(crate) struct ForwardError {
    pub connect: bool,
    pub message: String,
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

pub(crate) async fn forward(
    client: &HttpClient,
    upstream: Upstream,
    mut req: Request,
) -> Result<Response, ForwardError> {
    let upgrade = is_upgrade(req.headers());
    let uri: Uri = format!("http://{}{}", upstream.addr, upstream.path_and_query)
        .parse()
        .map_err(|e| ForwardError {
            connect: false,
            message: format!("bad upstream uri: {e}"),
        })?;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (mut parts, body) = req.into_parts();
    // HTTP/2 callers name the host in the URI only.
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    for name in &upstream.strip {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::HOST);
    if let Some(host) = original_host {
        if upstream.keep_host {
            parts.headers.insert(header::HOST, host.clone());
        }
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-host"), host);
    }

    let mut resp = client
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| ForwardError {
            connect: e.is_connect(),
            message: e.to_string(),
        })?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let activity = upstream.activity;
        tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade failed");
                    return;
                }
            };
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let splice = tokio::io::copy_bidirectional(&mut client, &mut upstream);
            let keep_active = async {
                let Some((directory, sandbox_id)) = activity else {
                    return std::future::pending().await;
                };
                let mut tick = tokio::time::interval(UPGRADED_ACTIVITY_INTERVAL);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    directory.touch(&sandbox_id).await;
                }
            };
            tokio::select! {
                result = splice => if let Err(e) = result {
                    tracing::debug!(error = %e, "upgraded connection ended");
                },
                () = keep_active => {}
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, Body::new(body)))
}
