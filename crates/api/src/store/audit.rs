//! The audit log (`audit_log`): one row per mutating API call by an authenticated caller.

use serde::Serialize;
use serde_json::Value;

use super::{JsonText, Store, now};

/// One recorded call, as the audit listing returns it.
#[derive(Debug, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: String,
    pub organization_id: String,
    pub actor_id: String,
    pub actor_email: String,
    pub actor_api_key_prefix: Option<String>,
    pub action: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub status_code: i64,
    pub error_message: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub source: Option<String>,
    #[sqlx(try_from = "JsonText")]
    pub metadata: Value,
    pub created_at: String,
}

/// A call to record; the actor's email and key prefix are copied from the user and key rows.
pub struct NewAuditEntry<'a> {
    pub organization_id: &'a str,
    pub user_id: &'a str,
    /// None for a user's token.
    pub api_key_id: Option<&'a str>,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: Option<&'a str>,
    pub status_code: u16,
    pub error_message: Option<&'a str>,
    pub ip_address: &'a str,
    pub user_agent: Option<&'a str>,
    pub source: Option<&'a str>,
    pub metadata: &'a Value,
}

/// Which entries of an organization a listing shows: `from`/`to` bound the time (inclusive),
/// `before` is a cursor `(created_at, id)` (entries strictly older).
pub struct AuditSelection<'a> {
    pub organization_id: &'a str,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub before: Option<(&'a str, &'a str)>,
}

impl Store {
    pub async fn insert_audit_entry(&self, e: &NewAuditEntry<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_log (id, organization_id, actor_id, actor_email, actor_api_key_prefix, action,
                 target_type, target_id, status_code, error_message, ip_address, user_agent, source, metadata,
                 created_at)
             SELECT $1, $2, u.id, COALESCE(u.email, u.name), k.key_prefix, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12
             FROM users u LEFT JOIN api_keys k ON k.id = $13 WHERE u.id = $14",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(e.organization_id)
        .bind(e.action)
        .bind(e.target_type)
        .bind(e.target_id)
        .bind(i64::from(e.status_code))
        .bind(e.error_message)
        .bind(e.ip_address)
        .bind(e.user_agent)
        .bind(e.source)
        .bind(e.metadata.to_string())
        .bind(now())
        .bind(e.api_key_id)
        .bind(e.user_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// How many entries the selection holds, ignoring its cursor.
    pub async fn count_audit_entries(&self, s: &AuditSelection<'_>) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE organization_id = $1
               AND ($2 IS NULL OR created_at >= $2) AND ($3 IS NULL OR created_at <= $3)",
        )
        .bind(s.organization_id)
        .bind(s.from)
        .bind(s.to)
        .fetch_one(self.pool())
        .await
    }

    /// Entries of the selection, newest first.
    pub async fn audit_entries(
        &self,
        s: &AuditSelection<'_>,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let (before_time, before_id) = s.before.unzip();
        sqlx::query_as(
            "SELECT * FROM audit_log WHERE organization_id = $1
               AND ($2 IS NULL OR created_at >= $2) AND ($3 IS NULL OR created_at <= $3)
               AND ($4 IS NULL OR created_at < $4 OR (created_at = $4 AND id < $5))
             ORDER BY created_at DESC, id DESC LIMIT $6 OFFSET $7",
        )
        .bind(s.organization_id)
        .bind(s.from)
        .bind(s.to)
        .bind(before_time)
        .bind(before_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await
    }
}
