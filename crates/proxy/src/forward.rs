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
use crate::route::{KEEP_HOST_HEADER, SandboxRoute, TRAFFIC_CREDENTIAL_HEADER, UNREACHABLE_HEADER};

/// W3C trace context headers: through a runner they carry this process's span, not the caller's.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// How often a long-lived (upgraded) connection counts as sandbox activity.
const UPGRADED_ACTIVITY_INTERVAL: Duration = Duration::from_secs(50);

pub(crate) type HttpClient = Client<HttpConnector<SandboxResolver>, Body>;

/// Resolves upstream names of the form `{sandboxId}.{ipv4}` to that address (other names, of
/// runners, through the system resolver).
///
/// Naming upstreams by sandbox *and* address keys the connection pool by both: a deleted
/// sandbox's address is soon given to a new one, and a kept-alive connection to the old daemon
/// must never be reused for it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SandboxResolver;

impl tower::Service<Name> for SandboxResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if let Some(ip) = upstream_ip(name.as_str()) {
            return Box::pin(std::future::ready(Ok(
                vec![SocketAddr::new(ip, 0)].into_iter()
            )));
        }
        // Any other name is a runner's (`RUNNER_DOMAIN`): the system resolver.
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(addrs.into_iter())
        })
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

/// Forwards requests straight to sandbox ports: a runner serving its own sandboxes' traffic.
#[derive(Clone)]
pub struct DirectForwarder {
    client: HttpClient,
}

impl Default for DirectForwarder {
    fn default() -> Self {
        DirectForwarder { client: client() }
    }
}

impl DirectForwarder {
    /// Sends `req` to `port` of the sandbox at `ip` as `path_and_query`, keeping the caller's
    /// `Host` when asked; bodies stream and upgrades are spliced. The error says what failed.
    pub async fn forward(
        &self,
        sandbox_id: &str,
        ip: IpAddr,
        port: u16,
        path_and_query: String,
        keep_host: bool,
        req: Request,
    ) -> Result<Response, ForwardError> {
        let upstream = Upstream {
            sandbox_id: sandbox_id.to_owned(),
            route: SandboxRoute::direct(ip),
            port,
            path_and_query,
            keep_host,
            strip: Vec::new(),
            activity: None,
        };
        forward(&self.client, upstream, req).await
    }
}

/// Where a request goes and what it may carry along.
pub(crate) struct Upstream {
    pub sandbox_id: String,
    pub route: SandboxRoute,
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

/// The upstream could not be reached (`connect`) or broke off before answering.
#[derive(Debug)]
pub struct ForwardError {
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
    let uri = match &upstream.route.via {
        None => format!(
            "http://{}:{}{}",
            upstream_host(&upstream.sandbox_id, upstream.route.ip),
            upstream.port,
            upstream.path_and_query
        ),
        Some(hop) => format!(
            "{}/sandboxes/{}/ports/{}{}",
            hop.url,
            crate::remote::segment(&upstream.sandbox_id),
            upstream.port,
            upstream.path_and_query
        ),
    };
    let uri: Uri = uri.parse().map_err(|e| ForwardError {
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
    parts.headers.remove(TRAFFIC_CREDENTIAL_HEADER);
    parts.headers.remove(KEEP_HOST_HEADER);
    if let Some(hop) = &upstream.route.via {
        let credential = HeaderValue::from_str(&hop.credential).map_err(|_| ForwardError {
            connect: false,
            message: "the runner credential is not a header value".into(),
        })?;
        parts.headers.insert(TRAFFIC_CREDENTIAL_HEADER, credential);
        // The runner's span of this request continues this process's trace.
        for name in TRACE_HEADERS {
            parts.headers.remove(name);
        }
        parts.headers.extend(daytona_telemetry::trace_headers());
        if upstream.keep_host {
            parts
                .headers
                .insert(KEEP_HOST_HEADER, HeaderValue::from_static("true"));
        }
    }

    let mut resp = client
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| ForwardError {
            connect: e.is_connect(),
            message: e.to_string(),
        })?;

    // Through a runner, a sandbox it could not reach is that runner's answer: the same failure.
    if let Some(hop) = &upstream.route.via
        && let Some(reason) = resp.headers().get(UNREACHABLE_HEADER)
    {
        return Err(ForwardError {
            connect: true,
            message: format!(
                "runner {}: {}",
                hop.url,
                String::from_utf8_lossy(reason.as_bytes())
            ),
        });
    }

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
