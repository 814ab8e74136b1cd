//! Build definitions of snapshots built from a Dockerfile.

use super::{SnapshotRow, Store};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SnapshotBuildRow {
    pub snapshot_id: String,
    pub organization_id: String,
    pub build_ref: String,
    pub dockerfile: String,
    /// JSON array of strings.
    pub context_hashes: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Store {
    pub async fn insert_snapshot_build(&self, row: &SnapshotBuildRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO snapshot_builds (snapshot_id, organization_id, build_ref, dockerfile,
             context_hashes, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.snapshot_id)
        .bind(&row.organization_id)
        .bind(&row.build_ref)
        .bind(&row.dockerfile)
        .bind(&row.context_hashes)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn snapshot_build(
        &self,
        snapshot_id: &str,
    ) -> Result<Option<SnapshotBuildRow>, sqlx::Error> {
        sqlx::query_as::<_, SnapshotBuildRow>(
            "SELECT * FROM snapshot_builds WHERE snapshot_id = $1",
        )
        .bind(snapshot_id)
        .fetch_optional(self.pool())
        .await
    }

    /// The organization's snapshot built from the definition `build_ref` that is usable or
    /// on its way (the newest), for sandboxes created from an image definition.
    pub async fn snapshot_for_build(
        &self,
        org: &str,
        build_ref: &str,
    ) -> Result<Option<SnapshotRow>, sqlx::Error> {
        sqlx::query_as::<_, SnapshotRow>(
            "SELECT s.* FROM snapshots s JOIN snapshot_builds b ON b.snapshot_id = s.id
             WHERE b.organization_id = $1 AND b.build_ref = $2 AND s.state IN ('active', 'building')
             ORDER BY s.created_at DESC LIMIT 1",
        )
        .bind(org)
        .bind(build_ref)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn snapshot_by_id(&self, id: &str) -> Result<Option<SnapshotRow>, sqlx::Error> {
        sqlx::query_as::<_, SnapshotRow>("SELECT * FROM snapshots WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await
    }

    /// Sets the image a sandbox waiting for its build will be created from.
    pub async fn set_sandbox_image(&self, id: &str, image_ref: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET image_ref = $1, updated_at = $2 WHERE id = $3")
            .bind(image_ref)
            .bind(super::now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

impl Store {
    /// Appends `lines` to snapshot `snapshot_id`'s build log, numbered from `first` by `origin`;
    /// lines of `origin` already stored under those numbers are kept as they are.
    pub async fn append_build_log(
        &self,
        snapshot_id: &str,
        origin: &str,
        first: i64,
        lines: &[String],
    ) -> Result<(), sqlx::Error> {
        let ts = super::now();
        let mut tx = self.pool().begin().await?;
        for (i, line) in lines.iter().enumerate() {
            sqlx::query(
                "INSERT INTO build_log_lines (snapshot_id, origin, idx, line, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (snapshot_id, origin, idx) DO NOTHING",
            )
            .bind(snapshot_id)
            .bind(origin)
            .bind(first + i as i64)
            .bind(line)
            .bind(&ts)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Up to `limit` lines of the build log of `snapshot_id` stored after the line `after`
    /// (0: from the start), with their positions, in the order they were stored.
    pub async fn build_log_after(
        &self,
        snapshot_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, sqlx::Error> {
        sqlx::query_as::<_, (i64, String)>(
            "SELECT id, line FROM build_log_lines WHERE snapshot_id = $1 AND id > $2
             ORDER BY id LIMIT $3",
        )
        .bind(snapshot_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await
    }

    /// The newest runner job of `job_type` for `resource_id` (on `runner_id` when given).
    pub async fn latest_job(
        &self,
        job_type: &str,
        resource_id: &str,
        runner_id: Option<&str>,
    ) -> Result<Option<super::JobRow>, sqlx::Error> {
        sqlx::query_as::<_, super::JobRow>(
            "SELECT * FROM runner_jobs WHERE job_type = $1 AND resource_id = $2
               AND ($3 IS NULL OR runner_id = $3)
             ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(job_type)
        .bind(resource_id)
        .bind(runner_id)
        .fetch_optional(self.pool())
        .await
    }
}
