//! Temporary push credentials of the transient registry (see `registry_token`).

use super::Store;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RegistryCredentialRow {
    pub username: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    pub organization_id: String,
    /// The user who asked for it.
    pub created_by: String,
    pub created_at: String,
    pub expires_at: String,
}

impl Store {
    pub async fn insert_registry_credential(
        &self,
        row: &RegistryCredentialRow,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO registry_credentials (username, secret_hash, organization_id, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&row.username)
        .bind(&row.secret_hash)
        .bind(&row.organization_id)
        .bind(&row.created_by)
        .bind(&row.created_at)
        .bind(&row.expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The credential named `username` that is still valid at `now`.
    pub async fn live_registry_credential(
        &self,
        username: &str,
        now: &str,
    ) -> Result<Option<RegistryCredentialRow>, sqlx::Error> {
        sqlx::query_as::<_, RegistryCredentialRow>(
            "SELECT * FROM registry_credentials WHERE username = $1 AND expires_at > $2",
        )
        .bind(username)
        .bind(now)
        .fetch_optional(self.pool())
        .await
    }

    /// Removes credentials that expired before `now`; returns how many.
    pub async fn delete_expired_registry_credentials(&self, now: &str) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM registry_credentials WHERE expires_at <= $1")
            .bind(now)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
