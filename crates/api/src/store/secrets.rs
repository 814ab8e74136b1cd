//! Per-sandbox secrets the API hands out again on request (`sandbox_secrets`, one per kind).

use super::{Store, now};

/// Kinds of per-sandbox secret (`sandbox_secrets.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// Opens the sandbox's previews and toolbox (X-Daytona-Preview-Token); renewed on every start.
    PreviewToken,
    /// Signs file URLs (SDK `download_url` / `upload_url`); survives restarts until rotated.
    SigningKey,
}

impl SecretKind {
    fn as_str(self) -> &'static str {
        match self {
            SecretKind::PreviewToken => "preview_token",
            SecretKind::SigningKey => "signing_key",
        }
    }
}

impl Store {
    /// The sandbox's `kind` of secret; `fresh()` becomes it when there is none yet.
    pub async fn sandbox_secret(
        &self,
        sandbox_id: &str,
        kind: SecretKind,
        fresh: impl FnOnce() -> String,
    ) -> Result<String, sqlx::Error> {
        let read = || {
            sqlx::query_scalar(
                "SELECT value FROM sandbox_secrets WHERE sandbox_id = $1 AND kind = $2",
            )
            .bind(sandbox_id)
            .bind(kind.as_str())
        };
        // Read first: this runs on every preview request, and a write would take SQLite's lock.
        if let Some(value) = read().fetch_optional(self.pool()).await? {
            return Ok(value);
        }
        sqlx::query(
            "INSERT INTO sandbox_secrets (sandbox_id, kind, value, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sandbox_id, kind) DO NOTHING",
        )
        .bind(sandbox_id)
        .bind(kind.as_str())
        .bind(fresh())
        .bind(now())
        .execute(self.pool())
        .await?;
        // Whoever won a concurrent insert decides the value.
        read().fetch_one(self.pool()).await
    }

    /// Replaces the sandbox's `kind` of secret with `value`; what the old one opened stops working.
    pub async fn rotate_sandbox_secret(
        &self,
        sandbox_id: &str,
        kind: SecretKind,
        value: String,
    ) -> Result<String, sqlx::Error> {
        sqlx::query(
            "INSERT INTO sandbox_secrets (sandbox_id, kind, value, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sandbox_id, kind) DO UPDATE SET value = excluded.value, created_at = excluded.created_at",
        )
        .bind(sandbox_id)
        .bind(kind.as_str())
        .bind(&value)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(value)
    }

    /// Drops the sandbox's `kind` of secret; the next request for it makes a new one.
    pub async fn forget_sandbox_secret(
        &self,
        sandbox_id: &str,
        kind: SecretKind,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM sandbox_secrets WHERE sandbox_id = $1 AND kind = $2")
            .bind(sandbox_id)
            .bind(kind.as_str())
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
