//! Signed preview tokens and SSH access tokens; both are stored only as SHA-256 digests and
//! open their sandbox until they expire.

use super::{Store, now};

/// An SSH access token as stored (`ssh_access`).
pub struct NewSshAccess<'a> {
    pub id: &'a str,
    pub sandbox_id: &'a str,
    pub token_hash: &'a str,
    pub expires_at: &'a str,
    pub created_at: &'a str,
    pub updated_at: &'a str,
}

impl Store {
    pub async fn insert_signed_preview_token(
        &self,
        token_hash: &str,
        sandbox_id: &str,
        port: u16,
        expires_at: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO signed_preview_tokens (token_hash, sandbox_id, port, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(sandbox_id)
        .bind(i64::from(port))
        .bind(expires_at)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The sandbox a signed preview token opens for `port` and when the token expires (RFC
    /// 3339), while it has not expired.
    pub async fn signed_preview_sandbox(
        &self,
        token_hash: &str,
        port: u16,
    ) -> Result<Option<(String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT sandbox_id, expires_at FROM signed_preview_tokens
             WHERE token_hash = $1 AND port = $2 AND expires_at > $3",
        )
        .bind(token_hash)
        .bind(i64::from(port))
        .bind(now())
        .fetch_optional(self.pool())
        .await
    }

    /// Whether a token for that sandbox and port existed (it no longer does).
    pub async fn delete_signed_preview_token(
        &self,
        token_hash: &str,
        sandbox_id: &str,
        port: u16,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM signed_preview_tokens WHERE token_hash = $1 AND sandbox_id = $2 AND port = $3",
        )
        .bind(token_hash)
        .bind(sandbox_id)
        .bind(i64::from(port))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Stores `access` in place of the sandbox's earlier SSH tokens (as upstream: one at a time).
    pub async fn replace_ssh_access(&self, access: &NewSshAccess<'_>) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM ssh_access WHERE sandbox_id = $1")
            .bind(access.sandbox_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO ssh_access (id, sandbox_id, token_hash, expires_at, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(access.id)
        .bind(access.sandbox_id)
        .bind(access.token_hash)
        .bind(access.expires_at)
        .bind(access.created_at)
        .bind(access.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The live sandbox an SSH token opens, while it has not expired.
    pub async fn ssh_access_sandbox(
        &self,
        token_hash: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT a.sandbox_id FROM ssh_access a JOIN sandboxes s ON s.id = a.sandbox_id
             WHERE a.token_hash = $1 AND a.expires_at > $2 AND s.state <> 'destroyed'",
        )
        .bind(token_hash)
        .bind(now())
        .fetch_optional(self.pool())
        .await
    }

    /// Revokes one SSH token of the sandbox, or all of them; returns how many there were.
    pub async fn revoke_ssh_access(
        &self,
        sandbox_id: &str,
        token_hash: Option<&str>,
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM ssh_access WHERE sandbox_id = $1 AND ($2 IS NULL OR token_hash = $2)",
        )
        .bind(sandbox_id)
        .bind(token_hash)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}
