//! Volume rows, and the sandboxes that mount volumes.

use super::{Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VolumeRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub state: String,
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
}

/// A sandbox that still exists and mounts volumes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MountingSandbox {
    pub id: String,
    pub name: String,
    /// JSON array of `{volumeId, mountPath, subpath?}`.
    pub volumes: String,
}

impl Store {
    pub async fn insert_volume(&self, row: &VolumeRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO volumes (id, organization_id, name, state, error_reason, created_at, updated_at, last_used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&row.id)
        .bind(&row.organization_id)
        .bind(&row.name)
        .bind(&row.state)
        .bind(&row.error_reason)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .bind(&row.last_used_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// `org`'s volume with this id, deleted ones included.
    pub async fn volume_by_id(
        &self,
        org: &str,
        id: &str,
    ) -> Result<Option<VolumeRow>, sqlx::Error> {
        sqlx::query_as::<_, VolumeRow>(
            "SELECT * FROM volumes WHERE organization_id = $1 AND id = $2",
        )
        .bind(org)
        .bind(id)
        .fetch_optional(self.pool())
        .await
    }

    /// `org`'s volume with this name that is not deleted.
    pub async fn volume_by_name(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<VolumeRow>, sqlx::Error> {
        sqlx::query_as::<_, VolumeRow>(
            "SELECT * FROM volumes WHERE organization_id = $1 AND name = $2 AND state <> 'deleted'",
        )
        .bind(org)
        .bind(name)
        .fetch_optional(self.pool())
        .await
    }

    /// `org`'s volumes, newest first.
    pub async fn list_volumes(
        &self,
        org: &str,
        include_deleted: bool,
    ) -> Result<Vec<VolumeRow>, sqlx::Error> {
        sqlx::query_as::<_, VolumeRow>(
            "SELECT * FROM volumes WHERE organization_id = $1 AND (state <> 'deleted' OR $2)
             ORDER BY created_at DESC, id DESC",
        )
        .bind(org)
        .bind(include_deleted)
        .fetch_all(self.pool())
        .await
    }

    /// How many volumes `org` has that are not deleted (what the volume quota counts).
    pub async fn count_volumes(&self, org: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM volumes WHERE organization_id = $1 AND state <> 'deleted'",
        )
        .bind(org)
        .fetch_one(self.pool())
        .await
    }

    /// Every volume in one of `states`, of any organization (work a restart must finish).
    pub async fn volumes_in_transition(&self) -> Result<Vec<VolumeRow>, sqlx::Error> {
        sqlx::query_as::<_, VolumeRow>(
            "SELECT * FROM volumes WHERE state IN ('pending_create', 'creating', 'pending_delete', 'deleting')",
        )
        .fetch_all(self.pool())
        .await
    }

    pub async fn set_volume_state(
        &self,
        id: &str,
        state: &str,
        error_reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE volumes SET state = $1, error_reason = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(state)
        .bind(error_reason)
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn mark_volume_used(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE volumes SET last_used_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// `org`'s sandboxes that still exist and mount any volume.
    pub async fn sandboxes_mounting_volumes(
        &self,
        org: &str,
    ) -> Result<Vec<MountingSandbox>, sqlx::Error> {
        sqlx::query_as::<_, MountingSandbox>(
            "SELECT id, name, volumes FROM sandboxes
             WHERE organization_id = $1 AND state <> 'destroyed' AND volumes <> '[]'
             ORDER BY created_at, id",
        )
        .bind(org)
        .fetch_all(self.pool())
        .await
    }
}
