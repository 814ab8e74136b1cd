//! Organization secrets (`organization_secrets`): values are stored sealed (see
//! `crate::secret::seal`), never in the clear.

use sqlx::AssertSqlSafe;

use super::Store;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrgSecretRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub description: Option<String>,
    /// Nonce and ciphertext, base64.
    pub value_sealed: String,
    pub placeholder: String,
    /// JSON array of host patterns.
    pub hosts: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Order of a secret listing (the SDK's `sort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSort {
    Name,
    CreatedAt,
    UpdatedAt,
}

impl SecretSort {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "name" => SecretSort::Name,
            "createdAt" => SecretSort::CreatedAt,
            "updatedAt" => SecretSort::UpdatedAt,
            _ => return None,
        })
    }
}

/// One page of a secret listing.
#[derive(Debug, Clone)]
pub struct SecretFilter {
    /// Part of the name (case-insensitive).
    pub name: Option<String>,
    pub sort: SecretSort,
    pub descending: bool,
    pub offset: i64,
    pub limit: i64,
}

impl Store {
    pub async fn insert_org_secret(&self, row: &OrgSecretRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO organization_secrets
             (id, organization_id, name, description, value_sealed, placeholder, hosts, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&row.id)
        .bind(&row.organization_id)
        .bind(&row.name)
        .bind(&row.description)
        .bind(&row.value_sealed)
        .bind(&row.placeholder)
        .bind(&row.hosts)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn org_secret(
        &self,
        org: &str,
        id: &str,
    ) -> Result<Option<OrgSecretRow>, sqlx::Error> {
        sqlx::query_as::<_, OrgSecretRow>(
            "SELECT * FROM organization_secrets WHERE organization_id = $1 AND id = $2",
        )
        .bind(org)
        .bind(id)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn org_secret_by_name(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<OrgSecretRow>, sqlx::Error> {
        sqlx::query_as::<_, OrgSecretRow>(
            "SELECT * FROM organization_secrets WHERE organization_id = $1 AND name = $2",
        )
        .bind(org)
        .bind(name)
        .fetch_optional(self.pool())
        .await
    }

    /// `org`'s secrets with these ids (missing ones are left out).
    pub async fn org_secrets_by_ids(
        &self,
        org: &str,
        ids: &[String],
    ) -> Result<Vec<OrgSecretRow>, sqlx::Error> {
        let mut found = Vec::with_capacity(ids.len());
        // Sandboxes mount a handful of secrets: one indexed lookup each.
        for id in ids {
            if let Some(row) = self.org_secret(org, id).await? {
                found.push(row);
            }
        }
        Ok(found)
    }

    /// One page of `org`'s secrets and how many match the filter in all; fetches `limit + 1`
    /// rows so the caller knows whether another page follows.
    pub async fn list_org_secrets(
        &self,
        org: &str,
        f: &SecretFilter,
    ) -> Result<(Vec<OrgSecretRow>, i64), sqlx::Error> {
        // `$2` is a LIKE pattern: the name filter with its wildcards escaped, `%` without one.
        const WHERE: &str = "organization_id = $1 AND LOWER(name) LIKE $2 ESCAPE '\\'";
        let escaped = f.name.as_deref().unwrap_or("").to_lowercase();
        let escaped = escaped
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let pattern = format!("%{escaped}%");
        let column = match f.sort {
            SecretSort::Name => "name",
            SecretSort::CreatedAt => "created_at",
            SecretSort::UpdatedAt => "updated_at",
        };
        let dir = if f.descending { "DESC" } else { "ASC" };
        let rows = sqlx::query_as::<_, OrgSecretRow>(AssertSqlSafe(format!(
            "SELECT * FROM organization_secrets WHERE {WHERE}
             ORDER BY {column} {dir}, id {dir} LIMIT $3 OFFSET $4"
        )))
        .bind(org)
        .bind(&pattern)
        .bind(f.limit + 1)
        .bind(f.offset)
        .fetch_all(self.pool())
        .await?;
        let total: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM organization_secrets WHERE {WHERE}"
        )))
        .bind(org)
        .bind(&pattern)
        .fetch_one(self.pool())
        .await?;
        Ok((rows, total))
    }

    /// Replaces the changeable fields of the secret `row.id` of `row.organization_id`.
    pub async fn update_org_secret(&self, row: &OrgSecretRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE organization_secrets SET description = $1, value_sealed = $2, hosts = $3, updated_at = $4
             WHERE organization_id = $5 AND id = $6",
        )
        .bind(&row.description)
        .bind(&row.value_sealed)
        .bind(&row.hosts)
        .bind(&row.updated_at)
        .bind(&row.organization_id)
        .bind(&row.id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deletes the secret; whether it existed.
    pub async fn delete_org_secret(&self, org: &str, id: &str) -> Result<bool, sqlx::Error> {
        let done =
            sqlx::query("DELETE FROM organization_secrets WHERE organization_id = $1 AND id = $2")
                .bind(org)
                .bind(id)
                .execute(self.pool())
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records the secrets a sandbox mounts (JSON array).
    pub async fn set_sandbox_secrets(
        &self,
        sandbox_id: &str,
        secrets: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET secrets = $1, updated_at = $2 WHERE id = $3")
            .bind(secrets)
            .bind(super::now())
            .bind(sandbox_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
