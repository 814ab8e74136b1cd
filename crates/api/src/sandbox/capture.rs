//! Taking a sandbox's files elsewhere: a snapshot (its changes become a new snapshot), a fork
//! (a new sandbox with a copy of its files), an archive (its files move to object storage) and
//! the restore of an archived sandbox when it is started again.
//!
//! Each follows the service's rule: record the transitional state first (`snapshotting`,
//! `forking`, `archiving`, `restoring`), then drive the runner from a detached task under the
//! sandbox's lock. Snapshot and fork return the source to the state it had; a failed snapshot
//! or fork leaves the source as it was (the reason in `errorReason`), not in `error`.

use std::sync::Arc;

use daytona_runner::RunnerError;

use super::dto::Sandbox;
use super::service::{SandboxService, is_valid_name, runner_request};
use crate::error::{ApiError, ApiResult};
use crate::events::Event;
use crate::quota;
use crate::store::{SandboxRow, now};

/// Object key of an archived sandbox's disk (outside every organization's own prefix, which
/// build-context uploads may write to).
pub(crate) fn archive_key(sandbox_id: &str) -> String {
    format!("sandbox-archives/{sandbox_id}.disk.zst")
}

/// A copy of a sandbox's disk in object storage that a restore starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoredCopy {
    /// Its archive (deleted once restored).
    Archive,
    /// A backup, at this key (kept).
    Backup(String),
}

impl SandboxService {
    /// The sandbox's changes become the snapshot `name` (state `snapshotting` meanwhile; a
    /// running sandbox keeps running).
    pub(crate) async fn snapshot_sandbox(
        self: &Arc<Self>,
        row: SandboxRow,
        name: &str,
    ) -> ApiResult<Sandbox> {
        let previous = match row.state.as_str() {
            "started" | "stopped" | "paused" => row.state.clone(),
            other => {
                return Err(ApiError::Conflict(format!(
                    "Sandbox {} cannot be snapshotted while {other}; it must be started, stopped or paused",
                    row.id
                )));
            }
        };
        let (snapshot, snapshot_guard) = self
            .snapshots
            .begin_capture(
                &row.organization_id,
                name,
                &row.id,
                (row.cpu, row.memory, row.disk),
            )
            .await?;
        let id = row.id.clone();
        self.store
            .set_sandbox_state(&id, "snapshotting", None)
            .await?;
        self.announce(&row).await;
        let this = self.clone();
        let (sid, base) = (id.clone(), row.image_ref.clone());
        self.run_transition(&id, async move {
            let outcome = this.runner.snapshot_sandbox(&sid, &base).await;
            let reason = outcome
                .as_ref()
                .err()
                .map(|e| format!("snapshot failed: {e}"));
            if let Some(reason) = &reason {
                tracing::warn!(sandbox = %sid, snapshot = %snapshot.name, "{reason}");
            }
            this.snapshots
                .finish_capture(&snapshot, outcome.map_err(|e| e.to_string()))
                .await?;
            drop(snapshot_guard);
            this.store
                .set_sandbox_state(&sid, &previous, reason.as_deref())
                .await
        })
        .await
    }

    /// A new sandbox (named `name`, else after its id) with a copy of the source's files, its
    /// snapshot, resources, env and labels, started. Returns the fork.
    pub(crate) async fn fork_sandbox(
        self: &Arc<Self>,
        source: SandboxRow,
        name: Option<String>,
    ) -> ApiResult<Sandbox> {
        let previous = match source.state.as_str() {
            "started" | "stopped" | "paused" => source.state.clone(),
            other => {
                return Err(ApiError::Conflict(format!(
                    "Sandbox {} cannot be forked while {other}; it must be started, stopped or paused",
                    source.id
                )));
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        let name = name.unwrap_or_else(|| id.clone());
        if !is_valid_name(&name) {
            return Err(ApiError::BadRequest(format!(
                "name: '{name}' is invalid; use 1-255 letters, digits, '-', '_' or '.'"
            )));
        }
        let conflict = || ApiError::Conflict(format!("Sandbox with name {name} already exists"));
        if self
            .store
            .find_sandbox(&source.organization_id, &name)
            .await?
            .is_some()
        {
            return Err(conflict());
        }
        let ts = now();
        let fork = SandboxRow {
            id: id.clone(),
            name: name.clone(),
            state: "creating".into(),
            desired_state: "started".into(),
            error_reason: None,
            daemon_version: None,
            created_at: ts.clone(),
            updated_at: ts.clone(),
            last_activity_at: ts,
            auto_destroy_at: None,
            warm_pool_id: None,
            pooled: false,
            // The fork has its own disk: the source's backups are not its.
            backup_state: "None".into(),
            backup_key: None,
            backup_created_at: None,
            backup_error: None,
            ..source.clone()
        };
        {
            let _quota_guard = self.lock_quota(&source.organization_id).await?;
            let quotas = self
                .store
                .organization_quotas(&source.organization_id)
                .await?;
            let used = self
                .store
                .resource_use(&source.organization_id, None)
                .await?;
            let request = quota::Request {
                cpu: fork.cpu,
                memory: fork.memory,
                disk: fork.disk,
            };
            quota::check(&quotas, used, request, true)?;
            self.store
                .insert_sandbox(&fork)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => conflict(),
                    e => e.into(),
                })?;
        }
        self.store.insert_fork(&source.id, &id).await?;
        tracing::info!(sandbox = %id, source = %source.id, "forking sandbox");
        self.events
            .publish(Event::sandbox_created(&self.to_dto(fork.clone())));
        let request = runner_request(&fork)?;
        self.store
            .set_sandbox_state(&source.id, "forking", None)
            .await?;
        self.announce(&source).await;

        let this = self.clone();
        let source_id = source.id.clone();
        self.run_transition(&id, async move {
            // The fork's lock is held; the source's is taken second (never the other way).
            let _source_guard = match this.lock_sandbox(&source_id).await {
                Ok(guard) => guard,
                Err(e) => return this.fail(&source_id, "fork", e).await,
            };
            let before = this.store.sandbox_record(&source_id).await?;
            let result = this.runner.fork_sandbox(&source_id, &request).await;
            let reason = result.as_ref().err().map(|e| format!("fork failed: {e}"));
            this.store
                .set_sandbox_state(&source_id, &previous, reason.as_deref())
                .await?;
            if let Some(before) = before {
                this.announce(&before).await;
            }
            match result {
                Ok(_) => {
                    this.store
                        .set_sandbox_started(&request.id, this.runner.id(), None)
                        .await
                }
                Err(e) => this.fail(&request.id, "fork", e).await,
            }
        })
        .await
    }

    /// Moves a stopped sandbox's files to object storage (`archiving` → `archived`).
    pub(crate) async fn archive_sandbox(self: &Arc<Self>, row: SandboxRow) -> ApiResult<Sandbox> {
        match row.state.as_str() {
            "archived" | "archiving" => return Ok(self.to_dto(row)),
            "stopped" => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "Sandbox is not stopped (state: {other}); only stopped sandboxes can be archived"
                )));
            }
        }
        if row.auto_delete_interval == 0 {
            return Err(ApiError::BadRequest(
                "Ephemeral sandboxes cannot be archived".into(),
            ));
        }
        let id = row.id.clone();
        self.store
            .set_sandbox_desired_state(&id, "archived")
            .await?;
        self.store.set_sandbox_state(&id, "archiving", None).await?;
        self.announce(&row).await;
        let this = self.clone();
        let sid = id.clone();
        self.run_transition(&id, async move {
            match this.runner.archive_sandbox(&sid, &archive_key(&sid)).await {
                Ok(_) => this.store.set_sandbox_archived(&sid).await,
                Err(e) => this.fail(&sid, "archive", e).await,
            }
        })
        .await
    }

    /// Brings a sandbox back from a copy of its files in object storage (`restoring` →
    /// `started`) on the runner placement chooses now; the caller checked quotas.
    pub(super) async fn restore_sandbox(
        self: &Arc<Self>,
        row: SandboxRow,
        copy: StoredCopy,
    ) -> ApiResult<Sandbox> {
        let id = row.id.clone();
        let runner_id = self.runner.place(&id, &row.target).await?;
        self.store.set_sandbox_runner(&id, &runner_id).await?;
        self.store.set_sandbox_desired_state(&id, "started").await?;
        self.store.set_sandbox_state(&id, "restoring", None).await?;
        self.announce(&row).await;
        let work = self.clone().restore_on_runner(row, copy)?;
        self.run_transition(&id, work).await
    }

    /// The runner's part of a restore onto the sandbox's recorded runner.
    pub(super) fn restore_on_runner(
        self: Arc<Self>,
        row: SandboxRow,
        copy: StoredCopy,
    ) -> ApiResult<impl std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'static>
    {
        let request = runner_request(&row)?;
        Ok(async move {
            let key = match &copy {
                StoredCopy::Archive => archive_key(&request.id),
                StoredCopy::Backup(key) => key.clone(),
            };
            match self.runner.restore_sandbox(&request, &key).await {
                Ok(_) => {
                    self.store
                        .set_sandbox_started(&request.id, self.runner.id(), None)
                        .await?;
                    // The sandbox's files live on a runner again: the archive is stale. A
                    // backup stays until a newer one replaces it; the runner that held the
                    // sandbox drops its copy when it reports it.
                    if copy == StoredCopy::Archive {
                        self.delete_archive(&request.id).await;
                    }
                    Ok(())
                }
                Err(e) => {
                    // The files are still where they were before: a failed restore of a
                    // backup leaves the sandbox on its own runner (whose copy must not be
                    // taken for stale when it comes back).
                    if let (StoredCopy::Backup(_), Some(holder)) = (&copy, &row.runner_id) {
                        self.store.set_sandbox_runner(&request.id, holder).await?;
                    }
                    self.fail(&request.id, "restore", e).await
                }
            }
        })
    }

    /// After a crash during `archiving`: when the archive had been uploaded (the runner may
    /// already have removed the local files, before `archived` was recorded), records the
    /// sandbox as archived and returns true. Uploads are atomic, so an existing object is whole.
    pub(super) async fn finish_interrupted_archive(&self, sandbox_id: &str) -> ApiResult<bool> {
        match self.runner.archive_exists(&archive_key(sandbox_id)).await {
            Ok(true) => {}
            Ok(false) | Err(RunnerError::NoStorage(_) | RunnerError::Unsupported(_)) => {
                return Ok(false);
            }
            Err(e) => {
                tracing::warn!(sandbox = %sandbox_id, error = %e, "could not look up the sandbox's archive");
                return Ok(false);
            }
        }
        // A local copy the crash left behind is stale: the archive is the sandbox now.
        if let Err(e) = self.runner.destroy_sandbox(sandbox_id).await {
            tracing::warn!(sandbox = %sandbox_id, error = %e, "could not remove the local files of an archived sandbox");
        }
        self.store.set_sandbox_archived(sandbox_id).await?;
        Ok(true)
    }

    /// Deletes the sandbox's archive, if it has one.
    pub(super) async fn delete_archive(&self, sandbox_id: &str) {
        self.delete_disk_copy(sandbox_id, &archive_key(sandbox_id))
            .await
    }

    /// Deletes a copy of the sandbox's disk (archive or backup) at `key`. Failures are logged:
    /// a leftover object costs space, not correctness.
    pub(super) async fn delete_disk_copy(&self, sandbox_id: &str, key: &str) {
        match self.runner.delete_archive(key).await {
            Ok(()) | Err(RunnerError::NoStorage(_) | RunnerError::Unsupported(_)) => {}
            Err(e) => {
                tracing::warn!(sandbox = %sandbox_id, key, error = %e, "could not delete a copy of the sandbox's disk")
            }
        }
    }

    /// Sandboxes forked from `row`.
    pub(crate) async fn forks(&self, row: &SandboxRow) -> ApiResult<Vec<Sandbox>> {
        Ok(self
            .store
            .forks_of(&row.id)
            .await?
            .into_iter()
            .map(|r| self.to_dto(r))
            .collect())
    }

    /// The sandbox `row` was forked from, if it is a fork and that sandbox still exists.
    pub(crate) async fn parent(&self, row: &SandboxRow) -> ApiResult<Sandbox> {
        let parent = match self.store.parent_of(&row.id).await? {
            Some(parent) => self.store.sandbox_by_id(&parent).await?,
            None => None,
        };
        parent
            .map(|p| self.to_dto(p))
            .ok_or_else(|| ApiError::NotFound(format!("Sandbox {} has no parent", row.id)))
    }
}
