//! Snapshot rows.

use super::{Flag, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SnapshotRow {
    pub id: String,
    pub organization_id: String,
    #[sqlx(try_from = "Flag")]
    pub general: bool,
    pub name: String,
    pub image_name: String,
    pub state: String,
    pub error_reason: Option<String>,
    pub digest: Option<String>,
    pub size_bytes: Option<i64>,
    /// JSON array of strings.
    pub entrypoint: Option<String>,
    pub cpu: i64,
    pub gpu: i64,
    pub mem: i64,
    pub disk: i64,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
    /// The sandbox this snapshot was taken from (`POST /sandbox/{id}/snapshot`).
    pub source_sandbox_id: Option<String>,
    /// The internal registry's copy of a pulled image, which every runner can pull.
    pub internal_ref: Option<String>,
}

impl SnapshotRow {
    /// The image sandboxes of this snapshot are made from: the internal registry's copy when
    /// there is one.
    pub fn runnable_image(&self) -> &str {
        self.internal_ref.as_deref().unwrap_or(&self.image_name)
    }
}

/// Which snapshots a listing shows.
#[derive(Debug, Default)]
pub struct SnapshotFilter<'a> {
    /// Part of the name.
    pub name: Option<&'a str>,
    /// Only snapshots taken from this sandbox.
    pub source_sandbox_id: Option<&'a str>,
}

impl Store {
    pub async fn insert_snapshot(&self, row: &SnapshotRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO snapshots (id, organization_id, general, name, image_name, state, error_reason, digest,
             size_bytes, entrypoint, cpu, gpu, mem, disk, created_at, updated_at, last_used_at, source_sandbox_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        )
        .bind(&row.id)
        .bind(&row.organization_id)
        .bind(row.general)
        .bind(&row.name)
        .bind(&row.image_name)
        .bind(&row.state)
        .bind(&row.error_reason)
        .bind(&row.digest)
        .bind(row.size_bytes)
        .bind(&row.entrypoint)
        .bind(row.cpu)
        .bind(row.gpu)
        .bind(row.mem)
        .bind(row.disk)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .bind(&row.last_used_at)
        .bind(&row.source_sandbox_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A snapshot `org` can use, by id or name: its own first, then general ones.
    pub async fn find_snapshot(
        &self,
        org: &str,
        id_or_name: &str,
    ) -> Result<Option<SnapshotRow>, sqlx::Error> {
        sqlx::query_as::<_, SnapshotRow>(
            "SELECT * FROM snapshots WHERE (organization_id = $1 OR general = TRUE) AND (id = $2 OR name = $2)
             ORDER BY (id = $2) DESC, (organization_id = $1) DESC LIMIT 1",
        )
        .bind(org)
        .bind(id_or_name)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn general_snapshot_by_name(
        &self,
        name: &str,
    ) -> Result<Option<SnapshotRow>, sqlx::Error> {
        sqlx::query_as::<_, SnapshotRow>(
            "SELECT * FROM snapshots WHERE general = TRUE AND name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await
    }

    /// One page of the snapshots `org` can see, and the total count.
    pub async fn list_snapshots(
        &self,
        org: &str,
        filter: &SnapshotFilter<'_>,
        order_by: &str,
        descending: bool,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<SnapshotRow>, i64), sqlx::Error> {
        let pattern = format!("%{}%", filter.name.unwrap_or(""));
        let dir = if descending { "DESC" } else { "ASC" };
        // LOWER on both sides: SQLite's LIKE ignores ASCII case, PostgreSQL's does not.
        let mut condition =
            "(organization_id = $1 OR general = TRUE) AND LOWER(name) LIKE LOWER($2)".to_owned();
        let mut params = 2;
        if filter.source_sandbox_id.is_some() {
            params += 1;
            condition.push_str(&format!(" AND source_sandbox_id = ${params}"));
        }
        // `order_by` comes from a fixed set of column names chosen by the caller.
        let sql = format!(
            "SELECT * FROM snapshots WHERE {condition} ORDER BY {order_by} {dir}, id {dir} LIMIT ${} OFFSET ${}",
            params + 1,
            params + 2
        );
        let mut rows = sqlx::query_as::<_, SnapshotRow>(sqlx::AssertSqlSafe(sql))
            .bind(org)
            .bind(&pattern);
        if let Some(source) = filter.source_sandbox_id {
            rows = rows.bind(source);
        }
        let rows = rows.bind(limit).bind(offset).fetch_all(self.pool()).await?;
        let count = format!("SELECT COUNT(*) FROM snapshots WHERE {condition}");
        let mut total = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
            .bind(org)
            .bind(&pattern);
        if let Some(source) = filter.source_sandbox_id {
            total = total.bind(source);
        }
        let total: i64 = total.fetch_one(self.pool()).await?;
        Ok((rows, total))
    }

    /// Snapshots (of every organization) in a state that only a running task of this
    /// process moves on: after a restart, nothing does unless reconcile picks them up.
    pub async fn snapshots_in_progress(&self) -> Result<Vec<SnapshotRow>, sqlx::Error> {
        sqlx::query_as::<_, SnapshotRow>(
            "SELECT * FROM snapshots WHERE state IN ('pending', 'pulling', 'building', 'snapshotting')
             ORDER BY created_at",
        )
        .fetch_all(self.pool())
        .await
    }

    pub async fn set_snapshot_state(
        &self,
        id: &str,
        state: &str,
        error_reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE snapshots SET state = $1, error_reason = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(state)
        .bind(error_reason)
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn set_snapshot_active(
        &self,
        id: &str,
        digest: &str,
        size_bytes: i64,
        entrypoint: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE snapshots SET state = 'active', error_reason = NULL, digest = $1, size_bytes = $2, entrypoint = $3,
             updated_at = $4 WHERE id = $5",
        )
        .bind(digest)
        .bind(size_bytes)
        .bind(entrypoint)
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records where the internal registry holds the snapshot's image.
    pub async fn set_snapshot_internal_ref(
        &self,
        id: &str,
        internal_ref: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE snapshots SET internal_ref = $1, updated_at = $2 WHERE id = $3")
            .bind(internal_ref)
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records the image a sandbox snapshot became; the snapshot is then active.
    pub async fn set_snapshot_captured(
        &self,
        id: &str,
        image_name: &str,
        digest: &str,
        size_bytes: i64,
        entrypoint: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE snapshots SET image_name = $1, updated_at = $2 WHERE id = $3")
            .bind(image_name)
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        self.set_snapshot_active(id, digest, size_bytes, entrypoint)
            .await
    }

    pub async fn mark_snapshot_used(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE snapshots SET last_used_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Image digests of every snapshot of every organization that has one (what the
    /// runner's image store must keep).
    pub async fn snapshot_digests(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT DISTINCT digest FROM snapshots WHERE digest IS NOT NULL")
            .fetch_all(self.pool())
            .await
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        sqlx::query("DELETE FROM build_log_lines WHERE snapshot_id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
