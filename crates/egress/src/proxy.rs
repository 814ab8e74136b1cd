//! The forward proxy itself (HTTP/1.1 on the bridge's gateway address).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::policy::Refusal;
use crate::rewrite::{ProxyBody, RewriteError, full, substitute};
use crate::{Egress, EgressDirectory, EgressError, EgressGrant, ResolvedSecret};

/// Why a proxied request is answered by the proxy itself.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("proxy authentication required: {0}")]
    Auth(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("refused by the sandbox's egress policy: {0}")]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Upstream(String),
    #[error("sandbox lookup failed: {0}")]
    Directory(String),
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
}

impl Failure {
    fn response(&self) -> Response<ProxyBody> {
        let status = match self {
            Failure::Auth(_) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Failure::BadRequest(_) | Failure::Rewrite(RewriteError::NotRepresentable(_)) => {
                StatusCode::BAD_REQUEST
            }
            Failure::Refused(_) => StatusCode::FORBIDDEN,
            Failure::Upstream(_) | Failure::Rewrite(RewriteError::Body(_)) => {
                StatusCode::BAD_GATEWAY
            }
            Failure::Directory(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut response = Response::new(full(format!("daytona egress proxy: {self}\n")));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Failure::Auth(_) = self {
            headers.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"daytona-egress\""),
            );
        }
        response
    }
}

/// TLS towards real hosts: the host's trust store, the bundled web roots and `extra_ca_file`.
pub(crate) fn upstream_tls(extra_ca_file: Option<&Path>) -> Result<ClientConfig, EgressError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    debug!(added, "host CA certificates trusted for egress");
    if let Some(path) = extra_ca_file {
        let extra = |reason: String| EgressError::ExtraCa {
            path: path.to_path_buf(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| extra(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| extra(e.to_string()))?;
        if certs.is_empty() {
            return Err(extra("holds no PEM certificate".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| extra(e.to_string()))?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| EgressError::Certificate(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Binds the proxy on the gateway address (before the bridge exists, hence `IP_FREEBIND`).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_freebind_v4(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Serves the egress proxy until `shutdown` completes.
pub async fn serve(
    egress: Arc<Egress>,
    directory: Arc<dyn EgressDirectory>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let addr = SocketAddr::V4(egress.listen_address());
    let listener = bind(addr)?;
    info!(%addr, "egress proxy listening");
    let proxy = Arc::new(Proxy { egress, directory });
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "egress proxy accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                debug!(%peer, error = %e, "egress proxy connection ended");
            }
        });
    }
}

struct Proxy {
    egress: Arc<Egress>,
    directory: Arc<dyn EgressDirectory>,
}

/// Headers that belong to one hop and are never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named
        .iter()
        .chain(HOP_BY_HOP.map(HeaderName::from_static).iter())
    {
        headers.remove(name);
    }
}

/// The secrets whose values may go to `host`.
fn secrets_for<'a>(grant: &'a EgressGrant, host: &str) -> Vec<&'a ResolvedSecret> {
    grant
        .secrets
        .iter()
        .filter(|s| s.applies_to(host))
        .collect()
}

impl Proxy {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        match self.route(req).await {
            Ok(response) => response,
            Err(failure) => {
                debug!(error = %failure, "egress request answered by the proxy");
                failure.response()
            }
        }
    }

    /// The sandbox named by the request's proxy credentials.
    fn authenticate(&self, headers: &HeaderMap) -> Result<String, Failure> {
        let value = headers
            .get(header::PROXY_AUTHORIZATION)
            .ok_or(Failure::Auth("no Proxy-Authorization"))?;
        let encoded = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Basic "))
            .ok_or(Failure::Auth("Proxy-Authorization is not Basic"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(Failure::Auth(
                "Proxy-Authorization is not base64 of user:password",
            ))?;
        let (id, token) = decoded
            .split_once(':')
            .ok_or(Failure::Auth("Proxy-Authorization has no password"))?;
        if !self.egress.credentials().verify(id, token) {
            return Err(Failure::Auth("wrong sandbox credentials"));
        }
        Ok(id.to_owned())
    }

    async fn grant(&self, sandbox: &str) -> Result<EgressGrant, Failure> {
        self.directory
            .grant(sandbox)
            .await
            .map_err(|e| Failure::Directory(e.0))?
            .ok_or(Failure::Auth("the sandbox no longer exists"))
    }

    async fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Failure> {
        let sandbox = self.authenticate(req.headers())?;
        let grant = self.grant(&sandbox).await?;
        if req.method() == Method::CONNECT {
            return self.connect(req, sandbox, grant).await;
        }
        self.forward_plain(req, &grant).await
    }

    /// The address to connect to for `host:port`: the first one the sandbox may reach.
    async fn resolve(
        &self,
        grant: &EgressGrant,
        host: &str,
        port: u16,
    ) -> Result<SocketAddr, Failure> {
        if grant.policy.block_all {
            return Err(Refusal::BlockAll.into());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| Failure::Upstream(format!("cannot resolve {host}: {e}")))?;
        let mut refusal = None;
        for addr in addrs {
            match self.egress.rules().check(&grant.policy, addr) {
                Ok(()) => return Ok(addr),
                Err(r) => refusal = Some(r),
            }
        }
        Err(refusal.map_or_else(
            || Failure::Upstream(format!("{host} has no address")),
            Failure::Refused,
        ))
    }

    async fn dial(addr: SocketAddr) -> Result<TcpStream, Failure> {
        TcpStream::connect(addr)
            .await
            .map_err(|e| Failure::Upstream(format!("cannot connect to {addr}: {e}")))
    }

    /// `CONNECT`: intercepted when a secret applies to the host, else a plain tunnel.
    async fn connect(
        self: Arc<Self>,
        req: Request<Incoming>,
        sandbox: String,
        grant: EgressGrant,
    ) -> Result<Response<ProxyBody>, Failure> {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .ok_or_else(|| Failure::BadRequest("CONNECT needs host:port".into()))?;
        let port = authority
            .port_u16()
            .ok_or_else(|| Failure::BadRequest("CONNECT needs host:port".into()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addr = self.resolve(&grant, &host, port).await?;
        let upstream = Self::dial(addr).await?;
        let intercept = !secrets_for(&grant, &host).is_empty();
        debug!(%sandbox, %host, port, %addr, intercept, "egress CONNECT");
        tokio::spawn(async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(upgraded) => TokioIo::new(upgraded),
                Err(e) => return debug!(error = %e, "CONNECT upgrade failed"),
            };
            if intercept {
                self.intercept(upgraded, upstream, addr, sandbox, host)
                    .await;
            } else {
                let mut upgraded = upgraded;
                let mut upstream = upstream;
                let _ = tokio::io::copy_bidirectional(&mut upgraded, &mut upstream).await;
            }
        });
        Ok(Response::new(full(bytes::Bytes::new())))
    }

    /// Terminates the sandbox's TLS with a certificate for `host`, opens verified TLS to the real
    /// host, and forwards each request with the placeholders of the secrets allowed there
    /// replaced (secrets and policy looked up again for every request).
    async fn intercept(
        self: Arc<Self>,
        client: TokioIo<hyper::upgrade::Upgraded>,
        upstream: TcpStream,
        addr: SocketAddr,
        sandbox: String,
        host: String,
    ) {
        let server_config = match self.egress.ca().server_config(&host) {
            Ok(config) => config,
            Err(e) => return warn!(%host, error = %e, "cannot mint a certificate"),
        };
        let client = match tokio_rustls::TlsAcceptor::from(server_config)
            .accept(client)
            .await
        {
            Ok(tls) => tls,
            Err(e) => return debug!(%sandbox, %host, error = %e, "sandbox TLS handshake failed"),
        };
        // Failures from here on are answered to each request, so the sandbox sees why.
        let sender = match self.upstream_session(&host, upstream).await {
            Ok(sender) => Ok(Arc::new(tokio::sync::Mutex::new(sender))),
            Err(e) => Err(e.to_string()),
        };
        let service = service_fn(move |req: Request<Incoming>| {
            let (proxy, sandbox, host, sender) =
                (self.clone(), sandbox.clone(), host.clone(), sender.clone());
            async move {
                let result = async {
                    let sender = sender.map_err(Failure::Upstream)?;
                    let grant = proxy.grant(&sandbox).await?;
                    proxy.egress.rules().check(&grant.policy, addr)?;
                    let mut req = substitute(req, &secrets_for(&grant, &host)).await?;
                    strip_hop_by_hop(req.headers_mut());
                    let mut sender = sender.lock().await;
                    sender
                        .ready()
                        .await
                        .map_err(|e| Failure::Upstream(format!("{host}: {e}")))?;
                    let response = sender
                        .send_request(req)
                        .await
                        .map_err(|e| Failure::Upstream(format!("{host}: {e}")))?;
                    Ok::<_, Failure>(response)
                }
                .await;
                Ok::<_, Infallible>(match result {
                    Ok(response) => relay(response),
                    Err(failure) => failure.response(),
                })
            }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(client), service)
            .await
        {
            debug!(error = %e, "intercepted connection ended");
        }
    }

    async fn upstream_session(
        &self,
        host: &str,
        upstream: TcpStream,
    ) -> Result<hyper::client::conn::http1::SendRequest<ProxyBody>, Failure> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Failure::BadRequest(format!("{host} is not a TLS server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(self.egress.upstream_tls().clone())
            .connect(name, upstream)
            .await
            .map_err(|e| Failure::Upstream(format!("TLS to {host} failed: {e}")))?;
        Self::handshake(TokioIo::new(tls)).await
    }

    async fn handshake<T>(
        io: TokioIo<T>,
    ) -> Result<hyper::client::conn::http1::SendRequest<ProxyBody>, Failure>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| Failure::Upstream(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// A plain-HTTP request in absolute form (`GET http://host/path`).
    async fn forward_plain(
        &self,
        req: Request<Incoming>,
        grant: &EgressGrant,
    ) -> Result<Response<ProxyBody>, Failure> {
        let uri = req.uri().clone();
        if uri.scheme_str() != Some("http") {
            return Err(Failure::BadRequest(
                "only absolute http:// URLs and CONNECT are proxied".into(),
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| Failure::BadRequest("the URL has no host".into()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addr = self
            .resolve(grant, &host, authority.port_u16().unwrap_or(80))
            .await?;
        let mut req = substitute(req, &secrets_for(grant, &host)).await?;
        strip_hop_by_hop(req.headers_mut());
        if !req.headers().contains_key(header::HOST) {
            let value = HeaderValue::from_str(authority.as_str())
                .map_err(|_| Failure::BadRequest("bad host".into()))?;
            req.headers_mut().insert(header::HOST, value);
        }
        // Origin form towards the server.
        let origin = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .map_err(|_| Failure::BadRequest("bad request target".into()))?;
        *req.uri_mut() = origin;
        let mut sender = Self::handshake(TokioIo::new(Self::dial(addr).await?)).await?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| Failure::Upstream(format!("{host}: {e}")))?;
        Ok(relay(response))
    }
}

/// An upstream response on its way back to the sandbox.
fn relay(response: Response<Incoming>) -> Response<ProxyBody> {
    use http_body_util::BodyExt;
    let mut response = response.map(BodyExt::boxed);
    strip_hop_by_hop(response.headers_mut());
    response
}
