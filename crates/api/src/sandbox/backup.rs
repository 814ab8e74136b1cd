//! Backups: a copy of a stopped sandbox's disk in the runners' archive storage that, unlike an
//! archive, leaves the runner's own copy in place. When the runner holding a stopped sandbox
//! is gone (or taken out of placement, or overloaded), a start restores the newest completed
//! backup on another runner.
//!
//! As upstream: every stop asks for one (`backupState` `None` → `Pending`), a worker takes
//! pending backups (`InProgress`, at most [`MAX_BACKUPS_PER_RUNNER`] per runner) and records
//! them `Completed` or `Error`; a start clears the state. The backup runs under the sandbox's
//! lock and after the stop has answered, so it never races an operation and never slows a
//! stop. The newest completed copy is kept until a newer one completes or the sandbox is
//! destroyed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use daytona_runner::RunnerError;

use super::dto::Sandbox;
use super::service::SandboxService;
use crate::error::{ApiError, ApiResult};
use crate::store::{BackupOutcome, SandboxRow};

/// Backups one runner uploads at a time (upstream's `MAX_CONCURRENT_BACKUPS_PER_RUNNER` is 6;
/// each is a disk read plus zstd, so fewer on small hosts).
pub const MAX_BACKUPS_PER_RUNNER: i64 = 2;

/// How often the worker looks for pending backups when nothing woke it.
const ROUND: Duration = Duration::from_secs(10);

/// Object key of a backup of `sandbox_id` taken at `taken_at` (outside every organization's
/// own prefix, like archives).
pub(crate) fn backup_key(sandbox_id: &str, taken_at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "backups/{sandbox_id}/{}.disk.zst",
        taken_at.format("%Y%m%dT%H%M%S%.3fZ")
    )
}

impl SandboxService {
    /// `POST /sandbox/{id}/backup`: asks for a backup of a stopped sandbox.
    pub(crate) async fn request_backup(self: &Arc<Self>, row: SandboxRow) -> ApiResult<Sandbox> {
        if row.state != "stopped" {
            return Err(ApiError::Conflict(format!(
                "Sandbox {} cannot be backed up while {}; only stopped sandboxes can",
                row.id, row.state
            )));
        }
        self.store.request_backup(&row.id).await?;
        self.backups_wanted();
        let row = self.store.sandbox_by_id(&row.id).await?.unwrap_or(row);
        Ok(self.to_dto(row))
    }

    /// Wakes the backup worker (a stop or a request just asked for a backup).
    pub(super) fn backups_wanted(&self) {
        self.backup_wakeup.notify_one();
    }

    /// One round of the worker: starts the pending backups whose runner has room and whose
    /// sandbox is in no operation; returns how many it started.
    pub async fn start_pending_backups(self: &Arc<Self>) -> ApiResult<usize> {
        // A backup runs under its sandbox's lock: one recorded as running whose lock is free
        // was left by a process that died (its lock lapsed), so it is asked for again.
        for id in self.store.running_backups().await? {
            if let Some(_guard) = self.cluster().try_lock(&format!("sandbox:{id}")).await? {
                tracing::info!(sandbox = %id, "taking over a backup whose process is gone");
                self.store.end_backup(&id, None).await?;
            }
        }
        let mut started = 0;
        for row in self.store.pending_backups().await? {
            let Some(runner_id) = &row.runner_id else {
                continue;
            };
            if self.store.backups_in_progress(runner_id).await? >= MAX_BACKUPS_PER_RUNNER {
                continue;
            }
            let Some(guard) = self
                .cluster()
                .try_lock(&format!("sandbox:{}", row.id))
                .await?
            else {
                continue; // in an operation: the next round takes it
            };
            if !self.store.claim_backup(&row.id).await? {
                continue;
            }
            started += 1;
            let this = self.clone();
            tokio::spawn(async move {
                let _guard = guard;
                if let Err(e) = this.back_up(&row.id).await {
                    tracing::error!(sandbox = %row.id, error = %e, "could not record a backup");
                }
            });
        }
        Ok(started)
    }

    /// Takes the backup of `id` that this process claimed.
    async fn back_up(&self, id: &str) -> Result<(), sqlx::Error> {
        let taken_at = chrono::Utc::now();
        let key = backup_key(id, taken_at);
        let started = Instant::now();
        match self.runner.backup_sandbox(id, &key).await {
            Ok(bytes) => {
                tracing::info!(
                    sandbox = %id, key, bytes,
                    backup_ms = started.elapsed().as_millis() as u64,
                    "sandbox backup completed"
                );
                let created_at = taken_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                match self.store.complete_backup(id, &key, &created_at).await? {
                    BackupOutcome::Recorded { replaced } => {
                        if let Some(old) = replaced.filter(|old| *old != key) {
                            self.delete_disk_copy(id, &old).await;
                        }
                    }
                    BackupOutcome::Abandoned => self.delete_disk_copy(id, &key).await,
                }
                Ok(())
            }
            // Its runner is gone for now: asked again when it is back.
            Err(RunnerError::Unavailable(reason)) => {
                tracing::info!(sandbox = %id, %reason, "backup postponed");
                self.store.end_backup(id, None).await
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "sandbox backup failed");
                self.store
                    .end_backup(id, Some(&format!("backup failed: {e}")))
                    .await
            }
        }
    }
}

/// Starts pending backups whenever a stop or request asks for one, and every [`ROUND`].
pub fn spawn(service: Arc<SandboxService>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = service.start_pending_backups().await {
                tracing::warn!(error = %e, "cannot start pending backups");
            }
            tokio::select! {
                _ = service.backup_wakeup.notified() => {}
                _ = tokio::time::sleep(ROUND) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_keys_sort_by_time_under_the_sandbox() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let first = backup_key("sbx", at("2026-01-02T03:04:05.006Z"));
        let second = backup_key("sbx", at("2026-01-02T03:04:05.120Z"));
        assert_eq!(first, "backups/sbx/20260102T030405.006Z.disk.zst");
        assert!(first < second);
    }
}
