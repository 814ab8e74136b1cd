//! Backups of stopped sandboxes' disks: the state upstream calls `BackupState` (`None` →
//! `Pending` → `InProgress` → `Completed`/`Error`) and the key of the newest completed copy.
//! None of these writes touch `updated_at`: a backup does not change the sandbox, and the
//! auto-archive and auto-delete intervals count from its last change.

use super::{SandboxRow, Store};
use sqlx::AssertSqlSafe;

use super::sandboxes::COLUMNS;

impl Store {
    /// Asks for a backup of sandbox `id` unless one is already asked for or running; returns
    /// whether the request is new.
    pub async fn request_backup(&self, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE sandboxes SET backup_state = 'Pending', backup_error = NULL
             WHERE id = $1 AND backup_state NOT IN ('Pending', 'InProgress')",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stopped sandboxes waiting for a backup, oldest request first.
    pub async fn pending_backups(&self) -> Result<Vec<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE backup_state = 'Pending' AND state = 'stopped'
               AND runner_id IS NOT NULL ORDER BY updated_at, id"
        )))
        .fetch_all(self.pool())
        .await
    }

    /// Ids of the sandboxes whose backup is recorded as running.
    pub async fn running_backups(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM sandboxes WHERE backup_state = 'InProgress'")
            .fetch_all(self.pool())
            .await
    }

    /// How many backups of `runner_id`'s sandboxes are running.
    pub async fn backups_in_progress(&self, runner_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM sandboxes WHERE runner_id = $1 AND backup_state = 'InProgress'",
        )
        .bind(runner_id)
        .fetch_one(self.pool())
        .await
    }

    /// Takes the pending backup of stopped sandbox `id` (`Pending` → `InProgress`); false when
    /// it is no longer pending or no longer stopped.
    pub async fn claim_backup(&self, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE sandboxes SET backup_state = 'InProgress'
             WHERE id = $1 AND backup_state = 'Pending' AND state = 'stopped'",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the running backup of `id` as completed at `key`, taken at `created_at`, and
    /// says which copy is now stale: the one it replaces, or itself when the sandbox no longer
    /// waited for it (destroyed meanwhile).
    pub async fn complete_backup(
        &self,
        id: &str,
        key: &str,
        created_at: &str,
    ) -> Result<BackupOutcome, sqlx::Error> {
        let previous: Option<Option<String>> = sqlx::query_scalar(
            "SELECT backup_key FROM sandboxes WHERE id = $1 AND backup_state = 'InProgress'",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        let Some(previous) = previous else {
            return Ok(BackupOutcome::Abandoned);
        };
        let done = sqlx::query(
            "UPDATE sandboxes SET backup_state = 'Completed', backup_key = $1,
               backup_created_at = $2, backup_error = NULL
             WHERE id = $3 AND backup_state = 'InProgress' AND state <> 'destroyed'",
        )
        .bind(key)
        .bind(created_at)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(if done.rows_affected() == 1 {
            BackupOutcome::Recorded { replaced: previous }
        } else {
            BackupOutcome::Abandoned
        })
    }

    /// Ends the running backup of `id`: `Error` with `reason`, or back to `Pending` (to be
    /// tried again) when `reason` is `None`.
    pub async fn end_backup(&self, id: &str, reason: Option<&str>) -> Result<(), sqlx::Error> {
        let state = if reason.is_some() { "Error" } else { "Pending" };
        sqlx::query(
            "UPDATE sandboxes SET backup_state = $1, backup_error = $2
             WHERE id = $3 AND backup_state = 'InProgress'",
        )
        .bind(state)
        .bind(reason)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// What became of a completed backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupOutcome {
    /// It is the sandbox's backup now; `replaced` is the key of the one before, if any.
    Recorded { replaced: Option<String> },
    /// The sandbox no longer waited for it (destroyed): the new copy is stale.
    Abandoned,
}
