//! Warm pools, and the pooled sandboxes that wait in them.
//!
//! A pooled sandbox is an ordinary row of its organization with `pooled` set. It leaves the pool
//! by exactly one conditional update — claimed by a create, or released to be destroyed — so two
//! parties never both get it, on either backend.

use sqlx::AssertSqlSafe;

use super::sandboxes::COLUMNS;
use super::{SandboxRow, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WarmPoolRow {
    pub id: String,
    pub organization_id: String,
    pub snapshot_id: String,
    /// The snapshot's name when the pool was made (what the API shows).
    pub snapshot: String,
    pub target: String,
    /// The number of ready sandboxes wanted.
    pub pool: i64,
    pub cpu: i64,
    pub mem: i64,
    pub disk: i64,
    pub os_user: String,
    /// JSON object of strings.
    pub env: String,
    /// Why the pool is not full, while it is not.
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// What a create sets on the pooled sandbox it claims.
#[derive(Debug, Clone)]
pub struct Claim {
    pub name: String,
    /// JSON object of strings.
    pub labels: String,
    pub public: bool,
    pub auto_stop_interval: i64,
    pub auto_archive_interval: i64,
    pub auto_delete_interval: i64,
    pub auto_pause_interval: i64,
    pub auto_destroy_at: Option<String>,
}

impl Store {
    pub async fn insert_warm_pool(&self, row: &WarmPoolRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO warm_pools (id, organization_id, snapshot_id, snapshot, target, pool, cpu, mem,
             disk, os_user, env, error_reason, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&row.id)
        .bind(&row.organization_id)
        .bind(&row.snapshot_id)
        .bind(&row.snapshot)
        .bind(&row.target)
        .bind(row.pool)
        .bind(row.cpu)
        .bind(row.mem)
        .bind(row.disk)
        .bind(&row.os_user)
        .bind(&row.env)
        .bind(&row.error_reason)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// `org`'s pools, oldest first.
    pub async fn warm_pools(&self, org: &str) -> Result<Vec<WarmPoolRow>, sqlx::Error> {
        sqlx::query_as::<_, WarmPoolRow>(
            "SELECT * FROM warm_pools WHERE organization_id = $1 ORDER BY created_at, id",
        )
        .bind(org)
        .fetch_all(self.pool())
        .await
    }

    /// Every organization's pools (for the worker that fills them).
    pub async fn all_warm_pools(&self) -> Result<Vec<WarmPoolRow>, sqlx::Error> {
        sqlx::query_as::<_, WarmPoolRow>("SELECT * FROM warm_pools ORDER BY created_at, id")
            .fetch_all(self.pool())
            .await
    }

    pub async fn warm_pool(&self, org: &str, id: &str) -> Result<Option<WarmPoolRow>, sqlx::Error> {
        sqlx::query_as::<_, WarmPoolRow>(
            "SELECT * FROM warm_pools WHERE organization_id = $1 AND id = $2",
        )
        .bind(org)
        .bind(id)
        .fetch_optional(self.pool())
        .await
    }

    /// `org`'s pool for the snapshot named `snapshot` in region `target`, if any.
    pub async fn warm_pool_for(
        &self,
        org: &str,
        snapshot_id: &str,
        target: &str,
    ) -> Result<Option<WarmPoolRow>, sqlx::Error> {
        sqlx::query_as::<_, WarmPoolRow>(
            "SELECT * FROM warm_pools WHERE organization_id = $1 AND snapshot_id = $2 AND target = $3",
        )
        .bind(org)
        .bind(snapshot_id)
        .bind(target)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn set_warm_pool_size(&self, id: &str, pool: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE warm_pools SET pool = $1, updated_at = $2 WHERE id = $3")
            .bind(pool)
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records (or, with `None`, clears) why the pool is not full; `updated_at` only moves
    /// when the reason changes.
    pub async fn set_warm_pool_error(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE warm_pools SET error_reason = $1, updated_at = $2
             WHERE id = $3 AND error_reason IS DISTINCT FROM $1",
        )
        .bind(reason)
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deletes `org`'s pool; false when it has none with this id.
    pub async fn delete_warm_pool(&self, org: &str, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM warm_pools WHERE organization_id = $1 AND id = $2")
            .bind(org)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every sandbox still waiting in a pool (whatever its state), oldest first.
    pub async fn pooled_sandboxes(&self) -> Result<Vec<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE pooled = TRUE AND state <> 'destroyed'
             ORDER BY created_at, id"
        )))
        .fetch_all(self.pool())
        .await
    }

    /// Ids of the started sandboxes waiting in `pool`, oldest first: the candidates of a claim.
    pub async fn ready_pooled_sandboxes(&self, pool: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT id FROM sandboxes WHERE warm_pool_id = $1 AND pooled = TRUE AND state = 'started'
             ORDER BY created_at, id",
        )
        .bind(pool)
        .fetch_all(self.pool())
        .await
    }

    /// The number of started sandboxes waiting in `pool`.
    pub async fn ready_pooled_count(&self, pool: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM sandboxes WHERE warm_pool_id = $1 AND pooled = TRUE AND state = 'started'",
        )
        .bind(pool)
        .fetch_one(self.pool())
        .await
    }

    /// Takes the started pooled sandbox `id` out of its pool for a create, with the create's
    /// settings; false when it is no longer there (claimed or released meanwhile).
    pub async fn claim_pooled_sandbox(&self, id: &str, claim: &Claim) -> Result<bool, sqlx::Error> {
        let ts = now();
        let done = sqlx::query(
            "UPDATE sandboxes SET pooled = FALSE, name = $1, labels = $2, public = $3,
             auto_stop_interval = $4, auto_archive_interval = $5, auto_delete_interval = $6,
             auto_pause_interval = $7, auto_destroy_at = $8, created_at = $9, updated_at = $10,
             last_activity_at = $11
             WHERE id = $12 AND pooled = TRUE AND state = 'started'",
        )
        .bind(&claim.name)
        .bind(&claim.labels)
        .bind(claim.public)
        .bind(claim.auto_stop_interval)
        .bind(claim.auto_archive_interval)
        .bind(claim.auto_delete_interval)
        .bind(claim.auto_pause_interval)
        .bind(&claim.auto_destroy_at)
        .bind(&ts)
        .bind(&ts)
        .bind(&ts)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks the pooled sandbox `id` as being destroyed unless a create claimed it or it is
    /// still being made; true when the caller now destroys it.
    pub async fn release_pooled_sandbox(&self, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE sandboxes SET state = 'destroying', desired_state = 'destroyed', updated_at = $1
             WHERE id = $2 AND pooled = TRUE AND state IN ('started', 'stopped', 'error', 'build_failed')",
        )
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
