//! The gateway's [`SshDirectory`] when it runs as its own process (`DAYTONA_ROLES=ssh-gateway`):
//! tokens are validated by the API (`GET /sandbox/ssh-access/validate`, with the gateway's key),
//! addresses and activity go through the proxy's [`RemoteDirectory`] (same caches and bounds).

use daytona_proxy::SandboxDirectory;
use daytona_proxy::remote::RemoteDirectory;
use serde::Deserialize;

use crate::{SshAccessError, SshDirectory, SshTarget, target_error};

pub struct RemoteSshDirectory {
    sandboxes: RemoteDirectory,
}

impl RemoteSshDirectory {
    pub fn new(sandboxes: RemoteDirectory) -> Self {
        RemoteSshDirectory { sandboxes }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Validation {
    valid: bool,
    sandbox_id: String,
}

#[async_trait::async_trait]
impl SshDirectory for RemoteSshDirectory {
    async fn resolve(&self, token: &str) -> Result<SshTarget, SshAccessError> {
        let api = self.sandboxes.api();
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish();
        // Not cached: each connection authenticates once, and a revoked token must stop at once.
        let validation: Validation = api
            .get(&format!("/sandbox/ssh-access/validate?{query}"))
            .await
            .map_err(|e| SshAccessError::Unavailable(api.service_error(e).to_string()))?;
        if !validation.valid {
            return Err(SshAccessError::InvalidToken);
        }
        let sandbox_id = validation.sandbox_id;
        let route = self
            .sandboxes
            .sandbox_route(&sandbox_id)
            .await
            .map_err(|e| target_error(&sandbox_id, e))?;
        Ok(SshTarget { sandbox_id, route })
    }

    async fn touch(&self, sandbox_id: &str) {
        self.sandboxes.touch(sandbox_id).await
    }
}
