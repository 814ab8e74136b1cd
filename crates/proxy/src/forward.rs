//! Streaming one request to an upstream inside a sandbox: the toolbox daemon or a preview port.
//! Bodies stream both ways; an `Upgrade` (WebSocket) is spliced byte for byte once both sides
//! switched protocols.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::SandboxDirectory;

/// How often a long-lived (upgraded) connection counts as sandbox activity.
const UPGRADED_ACTIVITY_INTERVAL: Duration = Duration::from_secs(50);

pub(crate) type HttpClient = Client<HttpConnector<SandboxResolver>, Body>;

/// Resolves upstream names of the form `{sandboxId}.{ipv4}` to that address.
///
/// Naming upstreams by sandbox *and* address keys the connection pool by both: a deleted
/// sandbox's address is soon given to a new one, and a kept-alive connection to the old daemon
/// must never be reused for it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SandboxResolver;

impl tower::Service<Name> for SandboxResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        std::future::ready(
            upstream_ip(name.as_str())
                .map(|ip| vec![SocketAddr::new(ip, 0)].into_iter())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("'{}' is not a sandbox upstream", name.as_str()),
                    )
                }),
        )
    }
}

/// The URI host for `ip` of `sandbox_id` (see [`SandboxResolver`]).
pub(crate) fn upstream_host(sandbox_id: &str, ip: IpAddr) -> String {
    let dns_safe = !sandbox_id.is_empty()
        && sandbox_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    match ip {
        IpAddr::V4(v4) if dns_safe => format!("{}.{v4}", sandbox_id.to_ascii_lowercase()),
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn upstream_ip(host: &str) -> Option<IpAddr> {
    let (_, ip) = host.split_once('.')?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

pub(crate) fn client() -> HttpClient {
    let mut connector = HttpConnector::new_with_resolver(SandboxResolver);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Where a request goes and what it may carry along.
pub(crate) struct Upstream {
    pub sandbox_id: String,
    pub ip: IpAddr,
    pub port: u16,
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
    let host = upstream_host(&upstream.sandbox_id, upstream.ip);
    let uri: Uri = format!("http://{host}:{}{}", upstream.port, upstream.path_and_query)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_carry_sandbox_and_address() {
        let ip: IpAddr = "100.64.0.7".parse().unwrap();
        let host = upstream_host("0B9C-11", ip);
        assert_eq!(host, "0b9c-11.100.64.0.7");
        assert_eq!(upstream_ip(&host), Some(ip));
        assert_eq!(upstream_host("bad/id", ip), "100.64.0.7");
        assert_eq!(upstream_ip("example.com"), None);
    }
}
