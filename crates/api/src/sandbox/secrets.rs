//! The secrets a sandbox mounts: replacing them (`PUT /sandbox/{id}/secrets`) and giving a
//! running sandbox's daemon the current set (after every start, and at once on a change).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::SandboxService;
use super::dto::Sandbox;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::secret;

impl SandboxService {
    /// Replaces the sandbox's secrets. A running sandbox's later processes get the new
    /// variables at once (what already runs keeps its environment); a stopped one gets them
    /// at its next start. The egress proxy applies the new set to the next request either way.
    pub async fn update_secrets(
        self: &Arc<Self>,
        ctx: &AuthContext,
        id_or_name: &str,
        requested: &[BTreeMap<String, String>],
    ) -> ApiResult<Sandbox> {
        let row = self.find(ctx, id_or_name).await?;
        let env: BTreeMap<String, String> = serde_json::from_str(&row.env)
            .map_err(|e| ApiError::Internal(format!("stored env of sandbox {}: {e}", row.id)))?;
        let mounts =
            secret::resolve_mounts(&self.store, &ctx.organization_id, requested, &env).await?;
        let json = serde_json::to_string(&mounts).expect("secret mounts serialize");
        // Under the sandbox's lock, so a start in progress pushes either the old set before or
        // the new one after this.
        {
            let _guard = self.lock_sandbox(&row.id).await?;
            self.store.set_sandbox_secrets(&row.id, &json).await?;
            if row.state == "started" {
                self.push_secret_env(&row.id).await;
            }
        }
        tracing::info!(sandbox = %row.id, secrets = mounts.len(), "sandbox secrets replaced");
        let row = self.find(ctx, &row.id).await?;
        Ok(self.to_dto(row))
    }

    /// Gives the running sandbox's daemon the stored secret variables (dropping ones no longer
    /// mounted). Failures are logged: the sandbox runs, and the next start tries again.
    pub(super) async fn push_secret_env(&self, id: &str) {
        let secrets = match self.store.sandbox_by_id(id).await {
            Ok(Some(row)) => secret::mount_env(&row.secrets),
            Ok(None) => return,
            Err(e) => {
                return tracing::warn!(sandbox = %id, error = %e, "cannot read sandbox secrets");
            }
        };
        if let Err(e) = self.runner.update_secret_env(id, &secrets).await {
            tracing::warn!(sandbox = %id, error = %e, "cannot apply secrets to the running sandbox");
        }
    }
}
