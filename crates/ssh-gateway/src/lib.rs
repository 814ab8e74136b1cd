//! The SSH gateway: `ssh -p 2222 <token>@host` reaches the sandbox the token was issued for.
//!
//! The user name is an SSH access token from the API; any authentication method (including
//! "none") succeeds when the token is valid, so no password ever exists inside a sandbox. Shells,
//! commands and the SFTP subsystem run through the sandbox daemon's `/process/stream` WebSocket
//! (as the sandbox user); local port forwards reach `<port>` of the sandbox. Both dial the
//! sandbox through [`daytona_proxy::route::dial`]: directly, or through its runner's tunnel.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use tokio::net::TcpListener;

mod daemon;
pub mod remote;
mod session;

/// Where a token leads.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub sandbox_id: String,
    /// How to reach the started sandbox (its daemon listens on [`DAEMON_PORT`]).
    pub route: daytona_proxy::SandboxRoute,
}

pub const DAEMON_PORT: u16 = 2280;

#[derive(Debug, thiserror::Error)]
pub enum SshAccessError {
    #[error("invalid or expired SSH access token")]
    InvalidToken,
    #[error("sandbox {0} is not started")]
    NotRunning(String),
    #[error("{0}")]
    Unavailable(String),
}

/// A sandbox lookup's failure as the gateway reports it.
pub fn target_error(sandbox_id: &str, e: daytona_proxy::ProxyError) -> SshAccessError {
    use daytona_proxy::ProxyError;
    match e {
        ProxyError::NotRunning(_) | ProxyError::NotFound(_) => {
            SshAccessError::NotRunning(sandbox_id.to_string())
        }
        other => SshAccessError::Unavailable(other.to_string()),
    }
}

/// Validates tokens and records activity; the API in-process, a network client when split.
#[async_trait::async_trait]
pub trait SshDirectory: Send + Sync + 'static {
    async fn resolve(&self, token: &str) -> Result<SshTarget, SshAccessError>;
    async fn touch(&self, sandbox_id: &str);
}

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("SSH_HOST_KEY: {0}")]
    Invalid(String),
    #[error("host key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The host key: `SSH_HOST_KEY` (base64 of an OpenSSH private key) when set, else the key in
/// `dir/ssh_host_ed25519_key`, generated there on first use so clients see a stable identity.
pub fn host_key(configured: Option<&str>, dir: &Path) -> Result<PrivateKey, HostKeyError> {
    if let Some(b64) = configured {
        let compact: String = b64.split_whitespace().collect();
        let pem = STANDARD
            .decode(compact)
            .map_err(|e| HostKeyError::Invalid(format!("not base64: {e}")))?;
        return PrivateKey::from_openssh(&pem)
            .map_err(|e| HostKeyError::Invalid(format!("not an OpenSSH private key: {e}")));
    }
    let path = dir.join("ssh_host_ed25519_key");
    let io = |source| HostKeyError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(&path) {
        Ok(pem) => PrivateKey::from_openssh(&pem)
            .map_err(|e| HostKeyError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
            let pem = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| HostKeyError::Invalid(e.to_string()))?;
            std::fs::create_dir_all(dir).map_err(io)?;
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                f.write_all(pem.as_bytes()).map_err(io)?;
            }
            std::fs::rename(&tmp, &path).map_err(io)?;
            tracing::info!(path = %path.display(), fingerprint = %key.fingerprint(HashAlg::Sha256), "generated SSH host key");
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// Serves SSH on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    directory: Arc<dyn SshDirectory>,
    host_key: PrivateKey,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    use russh::server::Server as _;
    let config = Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-daytona-gateway".into()),
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    });
    let mut server = session::Gateway { directory };
    let running = server.run_on_socket(config, &listener);
    let handle = running.handle();
    tokio::select! {
        result = running => result,
        () = shutdown => {
            handle.shutdown("server shutting down".into());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_is_generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = host_key(None, dir.path()).unwrap();
        let b = host_key(None, dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let pem = std::fs::read(dir.path().join("ssh_host_ed25519_key")).unwrap();
        let configured = STANDARD.encode(&pem);
        let c = host_key(Some(&configured), Path::new("/nonexistent")).unwrap();
        assert_eq!(a.public_key(), c.public_key());
        assert!(matches!(
            host_key(Some("!!"), dir.path()),
            Err(HostKeyError::Invalid(_))
        ));
    }
}
