//! Users, organizations and API keys.

use super::{Store, now};

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
            "SELECT o.id, u.id FROM users u JOIN organizations o ON o.created_by = u.id AND o.personal = 1
             WHERE u.role = 'admin' ORDER BY u.created_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// Creates a user with its personal organization in one transaction; returns the org id.
    pub async fn create_user_with_personal_org(
        &self,
        user_id: &str,
        name: &str,
        role: &str,
    ) -> Result<String, sqlx::Error> {
        let org_id = uuid::Uuid::new_v4().to_string();
        let ts = now();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, name, email, role, created_at) VALUES (?, ?, NULL, ?, ?)",
        )
        .bind(user_id)
        .bind(name)
        .bind(role)
        .bind(&ts)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO organizations (id, name, personal, created_by, created_at) VALUES (?, 'Personal', 1, ?, ?)",
        )
        .bind(&org_id)
        .bind(user_id)
        .bind(&ts)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO organization_members (organization_id, user_id, role) VALUES (?, ?, 'owner')")
            .bind(&org_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(org_id)
    }

    pub async fn insert_api_key(&self, key: NewApiKey<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO api_keys (id, organization_id, user_id, name, key_hash, key_prefix, permissions, created_at,
             expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?"
        )))
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn api_keys_of(&self, org: &str, user: &str) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
        sqlx::query_as::<_, ApiKeyRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = ? AND user_id = ? ORDER BY created_at"
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
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = ? AND user_id = ? AND name = ?"
        )))
        .bind(org)
        .bind(user)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn delete_api_key(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM api_keys WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn touch_api_key(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
