//! How the proxy and the SSH gateway reach a sandbox: straight to its bridge address when its
//! runner is in this process (or on this host's bridge), or through the runner that holds it
//! when that runner is a process of its own, possibly on another host.
//!
//! Through a runner, HTTP goes to `{runner}/sandboxes/{id}/ports/{port}{path}` (the runner
//! forwards it, upgrades included, with [`crate::DirectForwarder`]) and raw TCP (SSH sessions and port
//! forwards) opens `GET {runner}/sandboxes/{id}/tcp/{port}` with `Upgrade: daytona-tcp`.
//! Either carries a [`TRAFFIC_CREDENTIAL_HEADER`]: a short-lived HMAC for that one sandbox under
//! the digest of the runner's token, which the API holds (it stores only that digest) and the
//! runner computes from its own token — so the runner verifies callers without asking the API.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use axum::http::{HeaderName, HeaderValue, Request, StatusCode, header};
use hmac::{Hmac, KeyInit, Mac};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Carries the traffic credential from the proxy or gateway to the runner.
pub const TRAFFIC_CREDENTIAL_HEADER: HeaderName =
    HeaderName::from_static("x-daytona-runner-credential");
/// Tells the runner to keep the caller's `Host` (previews) rather than its own.
pub const KEEP_HOST_HEADER: HeaderName = HeaderName::from_static("x-daytona-keep-host");
/// Marks a runner's answer that the sandbox could not be reached there (nothing listens on the
/// port, or the sandbox does not run on that runner): the proxy treats it as a failed connect.
pub const UNREACHABLE_HEADER: HeaderName = HeaderName::from_static("x-daytona-sandbox-unreachable");
/// The `Upgrade` token of a raw TCP tunnel through a runner.
pub const TCP_UPGRADE: &str = "daytona-tcp";
/// How long an issued traffic credential is accepted (callers cache locations for seconds).
pub const CREDENTIAL_LIFETIME_SECS: u64 = 600;

/// Where traffic for one started sandbox goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRoute {
    /// The sandbox's address on its runner's bridge.
    pub ip: IpAddr,
    /// The runner to go through; `None` dials `ip` directly.
    pub via: Option<RunnerHop>,
}

impl SandboxRoute {
    pub fn direct(ip: IpAddr) -> Self {
        SandboxRoute { ip, via: None }
    }
}

/// A runner that forwards a sandbox's traffic, and the credential it accepts for that sandbox.
#[derive(Clone, PartialEq, Eq)]
pub struct RunnerHop {
    /// The runner's own URL (`http://host:port`, no trailing slash).
    pub url: String,
    pub credential: String,
}

impl std::fmt::Debug for RunnerHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerHop")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn mac(key_digest: &str, sandbox_id: &str, expires: u64) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key_digest.as_bytes()).expect("HMAC takes any key");
    mac.update(b"daytona-sandbox-traffic\0");
    mac.update(sandbox_id.as_bytes());
    mac.update(b"\0");
    mac.update(expires.to_string().as_bytes());
    mac
}

/// The key of a runner's traffic credentials: the hex SHA-256 of its token (what the API stores).
pub fn key_digest(token: &str) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A credential for traffic to `sandbox_id` on the runner whose token digest (hex SHA-256) is
/// `key_digest`, valid for [`CREDENTIAL_LIFETIME_SECS`] from `now` (Unix seconds).
pub fn issue_credential(key_digest: &str, sandbox_id: &str, now: u64) -> String {
    let expires = now + CREDENTIAL_LIFETIME_SECS;
    let tag = mac(key_digest, sandbox_id, expires).finalize().into_bytes();
    format!("{expires}.{}", hex::encode(tag))
}

/// Why a runner refused a traffic credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("malformed runner credential")]
    Malformed,
    #[error("runner credential expired")]
    Expired,
    #[error("runner credential is not valid for this sandbox on this runner")]
    Invalid,
}

/// Checks a credential [`issue_credential`] made, in constant time.
pub fn verify_credential(
    key_digest: &str,
    sandbox_id: &str,
    credential: &str,
    now: u64,
) -> Result<(), CredentialError> {
    let (expires, tag) = credential
        .split_once('.')
        .ok_or(CredentialError::Malformed)?;
    let expires: u64 = expires.parse().map_err(|_| CredentialError::Malformed)?;
    let tag = hex::decode(tag).map_err(|_| CredentialError::Malformed)?;
    if expires < now {
        return Err(CredentialError::Expired);
    }
    mac(key_digest, sandbox_id, expires)
        .verify_slice(&tag)
        .map_err(|_| CredentialError::Invalid)
}

/// Seconds since the Unix epoch (credential times).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A byte stream to a port inside a sandbox.
pub trait SandboxIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> SandboxIo for T {}

pub type SandboxStream = Pin<Box<dyn SandboxIo>>;

/// Opens a TCP stream to `port` of the sandbox: directly, or tunnelled through its runner.
pub async fn dial(
    sandbox_id: &str,
    route: &SandboxRoute,
    port: u16,
) -> std::io::Result<SandboxStream> {
    let Some(hop) = &route.via else {
        let tcp = TcpStream::connect(SocketAddr::new(route.ip, port)).await?;
        tcp.set_nodelay(true)?;
        return Ok(Box::pin(tcp));
    };
    let io_error = |what: String| std::io::Error::other(what);
    let url: axum::http::Uri = hop
        .url
        .parse()
        .map_err(|e| io_error(format!("runner URL '{}': {e}", hop.url)))?;
    let authority = url
        .authority()
        .ok_or_else(|| io_error(format!("runner URL '{}' names no host", hop.url)))?
        .clone();
    let port_or_default = authority.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((authority.host(), port_or_default)).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| io_error(format!("runner {}: {e}", hop.url)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "runner tunnel connection ended");
        }
    });
    let path = format!(
        "{}/sandboxes/{}/tcp/{port}",
        url.path().trim_end_matches('/'),
        crate::remote::segment(sandbox_id)
    );
    let mut req = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, TCP_UPGRADE)
        .header(
            TRAFFIC_CREDENTIAL_HEADER,
            HeaderValue::from_str(&hop.credential)
                .map_err(|_| io_error("runner credential is not a header value".into()))?,
        )
        .body(axum::body::Body::empty())
        .map_err(|e| io_error(e.to_string()))?;
    // The runner's span of the tunnel continues the caller's trace.
    req.headers_mut().extend(daytona_telemetry::trace_headers());
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| io_error(format!("runner {}: {e}", hop.url)))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let kind = if status == StatusCode::BAD_GATEWAY {
            std::io::ErrorKind::ConnectionRefused
        } else {
            std::io::ErrorKind::Other
        };
        return Err(std::io::Error::new(
            kind,
            format!("runner {} answered {status}: {body}", hop.url),
        ));
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| io_error(format!("runner {} tunnel: {e}", hop.url)))?;
    Ok(Box::pin(TokioIo::new(upgraded)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_bind_runner_sandbox_and_time() {
        let now = 1_800_000_000;
        let c = issue_credential("digest-a", "sb-1", now);
        assert_eq!(verify_credential("digest-a", "sb-1", &c, now + 10), Ok(()));
        assert_eq!(
            verify_credential("digest-a", "sb-2", &c, now),
            Err(CredentialError::Invalid)
        );
        assert_eq!(
            verify_credential("digest-b", "sb-1", &c, now),
            Err(CredentialError::Invalid)
        );
        assert_eq!(
            verify_credential("digest-a", "sb-1", &c, now + CREDENTIAL_LIFETIME_SECS + 1),
            Err(CredentialError::Expired)
        );
        // A later expiry cannot be claimed without the key.
        let (_, tag) = c.split_once('.').unwrap();
        let forged = format!("{}.{tag}", now + 10 * CREDENTIAL_LIFETIME_SECS);
        assert_eq!(
            verify_credential("digest-a", "sb-1", &forged, now),
            Err(CredentialError::Invalid)
        );
        for bad in ["", "x", "12.zz", "abc.00"] {
            assert_eq!(
                verify_credential("digest-a", "sb-1", bad, now),
                Err(CredentialError::Malformed),
                "{bad}"
            );
        }
    }
}
