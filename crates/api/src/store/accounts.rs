//! Users, organizations and API keys.

use super::{NewUser, OrgQuotas, Store, now};

/// An API key as authentication sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CredentialRow {
    #[sqlx(flatten)]
    pub key: ApiKeyRow,
    /// `owner` or `member` of the key's organization.
    pub member_role: String,
    /// `admin` or `user`.
    pub system_role: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub organization_id: String,
    pub user_id: String,
    pub name: String,
    /// Comma-separated permissions; `*` grants all.
    pub permissions: String,
    pub key_prefix: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

const KEY_COLUMNS: &str = "id, organization_id, user_id, name, permissions, key_prefix, created_at, expires_at, last_used_at";

pub struct NewApiKey<'a> {
    pub organization_id: &'a str,
    pub user_id: &'a str,
    pub name: &'a str,
    pub key_hash: &'a str,
    pub key_prefix: &'a str,
    pub permissions: &'a str,
    pub expires_at: Option<&'a str>,
}

impl Store {
    /// The admin user's personal organization id, if initial setup already ran.
    pub async fn admin_organization(&self) -> Result<Option<(String, String)>, sqlx::Error> {
        sqlx::query_as::<_, (String, String)>(
            "SELECT o.id, u.id FROM users u JOIN organizations o ON o.created_by = u.id AND o.personal = TRUE
             WHERE u.role = 'admin' ORDER BY u.created_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// Creates a user (no email, unlimited quotas) with its personal organization; returns the
    /// organization's id.
    pub async fn create_user_with_personal_org(
        &self,
        user_id: &str,
        name: &str,
        role: &str,
    ) -> Result<String, sqlx::Error> {
        self.create_user(NewUser {
            id: user_id,
            name,
            email: None,
            role,
            quotas: &OrgQuotas::default(),
            default_region: None,
        })
        .await
    }

    /// The key with this digest, with its user's role in the key's organization and its system
    /// role. None when the key is unknown or its user is no longer a member of a live
    /// organization.
    pub async fn api_key_credential(
        &self,
        key_hash: &str,
    ) -> Result<Option<CredentialRow>, sqlx::Error> {
        sqlx::query_as::<_, CredentialRow>(
            "SELECT k.id, k.organization_id, k.user_id, k.name, k.permissions, k.key_prefix, k.created_at,
             k.expires_at, k.last_used_at, m.role AS member_role, u.role AS system_role
             FROM api_keys k
             JOIN organization_members m ON m.organization_id = k.organization_id AND m.user_id = k.user_id
             JOIN organizations o ON o.id = k.organization_id AND o.deleted_at IS NULL
             JOIN users u ON u.id = k.user_id
             WHERE k.key_hash = $1",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn insert_api_key(&self, key: NewApiKey<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO api_keys (id, organization_id, user_id, name, key_hash, key_prefix, permissions, created_at,
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(key.organization_id)
        .bind(key.user_id)
        .bind(key.name)
        .bind(key.key_hash)
        .bind(key.key_prefix)
        .bind(key.permissions)
        .bind(now())
        .bind(key.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRow>, sqlx::Error> {
        sqlx::query_as::<_, ApiKeyRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
        )))
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn api_keys_of(&self, org: &str, user: &str) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
        sqlx::query_as::<_, ApiKeyRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 AND user_id = $2 ORDER BY created_at"
        )))
        .bind(org)
        .bind(user)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn api_key_by_name(
        &self,
        org: &str,
        user: &str,
        name: &str,
    ) -> Result<Option<ApiKeyRow>, sqlx::Error> {
        sqlx::query_as::<_, ApiKeyRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 AND user_id = $2 AND name = $3"
        )))
        .bind(org)
        .bind(user)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn delete_api_key(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM api_keys WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn touch_api_key(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
