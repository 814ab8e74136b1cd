//! Volumes (`/api/volumes`): directories that an organization's sandboxes mount and share live.
//!
//! States as upstream: `pending_create` → `creating` → `ready` (or `error`), and on delete
//! `pending_delete` → `deleting` → `deleted` (the row stays, so the name is free again). The
//! runner keeps the files (`daytona_runner::volume`); a sandbox names the volumes it mounts at
//! create (`volumes: [{volumeId, mountPath, subpath?}]`, by id or name), stored resolved to ids
//! in its row, and the runtime bind-mounts them at every start. A volume that any sandbox which
//! still exists mounts cannot be deleted.

pub mod routes;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use daytona_runner::SandboxRunner;
use serde::Serialize;

use crate::cluster::{Cluster, ClusterError, LockGuard};
use crate::error::{ApiError, ApiResult};
use crate::events::{Event, EventBus};
use crate::sandbox::dto::VolumeMount;
use crate::store::{Store, VolumeRow, now};

/// How long a delete request waits for the files to go before answering `pending_delete`.
const WAIT_FOR_DELETE: Duration = Duration::from_secs(10);

/// `VolumeDto` as SDK 0.226.1 reads it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDto {
    pub id: String,
    pub name: String,
    pub organization_id: String,
    pub state: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
    pub error_reason: Option<String>,
}

impl From<VolumeRow> for VolumeDto {
    fn from(r: VolumeRow) -> Self {
        VolumeDto {
            id: r.id,
            name: r.name,
            organization_id: r.organization_id,
            state: r.state,
            created_at: r.created_at,
            updated_at: r.updated_at,
            last_used_at: r.last_used_at,
            error_reason: r.error_reason,
        }
    }
}

fn is_valid_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub struct VolumeService {
    store: Store,
    runner: Arc<dyn SandboxRunner>,
    events: Arc<dyn EventBus>,
    /// Locks shared with the other API processes: `volume-mounts:<organization>` is held from
    /// resolving a sandbox's volumes until the sandbox is stored, and from checking that no
    /// sandbox mounts a volume until it is marked for deletion (neither can slip between the
    /// other's check and write); `volume-quota:<organization>` while a new volume is counted
    /// against the quota and inserted.
    cluster: Arc<dyn Cluster>,
}

impl VolumeService {
    pub fn new(
        store: Store,
        runner: Arc<dyn SandboxRunner>,
        events: Arc<dyn EventBus>,
        cluster: Arc<dyn Cluster>,
    ) -> Self {
        VolumeService {
            store,
            runner,
            events,
            cluster,
        }
    }

    /// Records `state` and tells the organization.
    async fn set_state(&self, row: &VolumeRow, state: &str, reason: Option<&str>) {
        if let Err(e) = self.store.set_volume_state(&row.id, state, reason).await {
            tracing::error!(volume = %row.id, error = %e, "could not record volume state");
            return;
        }
        match self.store.volume_by_id(&row.organization_id, &row.id).await {
            Ok(Some(now)) => self
                .events
                .publish(Event::volume_state_updated(&row.state, &now.into())),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(volume = %row.id, error = %e, "could not read volume to publish its state")
            }
        }
    }

    pub async fn create(&self, org: &str, name: &str) -> ApiResult<VolumeDto> {
        if !is_valid_volume_name(name) {
            return Err(ApiError::BadRequest(format!(
                "name: '{name}' is invalid; use 1-255 letters, digits, '-', '_' or '.'"
            )));
        }
        let conflict = || ApiError::Conflict(format!("Volume with name {name} already exists"));
        let ts = now();
        let row = VolumeRow {
            id: uuid::Uuid::new_v4().to_string(),
            organization_id: org.to_string(),
            name: name.to_string(),
            state: "pending_create".into(),
            error_reason: None,
            created_at: ts.clone(),
            updated_at: ts,
            last_used_at: None,
        };
        {
            let _quota = self.cluster.lock(&format!("volume-quota:{org}")).await?;
            if self.store.volume_by_name(org, name).await?.is_some() {
                return Err(conflict());
            }
            let limit = self.store.organization_quotas(org).await?.volume_quota;
            let used = self.store.count_volumes(org).await?;
            if limit > 0 && used >= limit {
                return Err(ApiError::Forbidden(format!(
                    "Volume quota exceeded: requested 1, in use {used}, limit {limit}"
                )));
            }
            self.store.insert_volume(&row).await.map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => conflict(),
                e => e.into(),
            })?;
        }
        tracing::info!(volume = %row.id, %name, "creating volume");
        self.events
            .publish(Event::volume_created(&row.clone().into()));
        let id = row.id.clone();
        self.provision(row).await;
        self.get(org, &id).await
    }

    /// Makes the volume's storage (a directory: quick, so done inline) and records the outcome.
    async fn provision(&self, mut row: VolumeRow) {
        self.set_state(&row, "creating", None).await;
        row.state = "creating".into();
        match self.runner.create_volume(&row.id).await {
            Ok(()) => self.set_state(&row, "ready", None).await,
            Err(e) => {
                tracing::warn!(volume = %row.id, error = %e, "volume create failed");
                self.set_state(&row, "error", Some(&format!("create failed: {e}")))
                    .await
            }
        }
    }

    /// Removes the volume's files and records the outcome.
    async fn remove(&self, mut row: VolumeRow) {
        self.set_state(&row, "deleting", None).await;
        row.state = "deleting".into();
        match self.runner.delete_volume(&row.id).await {
            Ok(()) => self.set_state(&row, "deleted", None).await,
            Err(e) => {
                tracing::warn!(volume = %row.id, error = %e, "volume delete failed");
                self.set_state(&row, "error", Some(&format!("delete failed: {e}")))
                    .await
            }
        }
    }

    fn not_found(id: &str) -> ApiError {
        ApiError::NotFound(format!("Volume with ID {id} not found"))
    }

    pub async fn get(&self, org: &str, id: &str) -> ApiResult<VolumeDto> {
        self.store
            .volume_by_id(org, id)
            .await?
            .map(Into::into)
            .ok_or_else(|| Self::not_found(id))
    }

    pub async fn get_by_name(&self, org: &str, name: &str) -> ApiResult<VolumeDto> {
        self.store
            .volume_by_name(org, name)
            .await?
            .map(Into::into)
            .ok_or_else(|| ApiError::NotFound(format!("Volume with name {name} not found")))
    }

    pub async fn list(&self, org: &str, include_deleted: bool) -> ApiResult<Vec<VolumeDto>> {
        Ok(self
            .store
            .list_volumes(org, include_deleted)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Marks the volume for deletion and removes its files (waiting a little for that); refused
    /// while a sandbox that still exists mounts it.
    pub async fn delete(self: &Arc<Self>, org: &str, id: &str) -> ApiResult<VolumeDto> {
        let row = {
            let _mounts = self.lock_mounts(org).await?;
            let row = self
                .store
                .volume_by_id(org, id)
                .await?
                .filter(|r| r.state != "deleted")
                .ok_or_else(|| Self::not_found(id))?;
            if !matches!(row.state.as_str(), "ready" | "error") {
                return Err(ApiError::Conflict(format!(
                    "Volume {} cannot be deleted while {}",
                    row.name, row.state
                )));
            }
            let users: Vec<String> = self
                .store
                .sandboxes_mounting_volumes(org)
                .await?
                .into_iter()
                .filter(|s| mounted_ids(&s.volumes).contains(&row.id))
                .map(|s| {
                    if s.name == s.id {
                        s.id
                    } else {
                        format!("{} ({})", s.name, s.id)
                    }
                })
                .collect();
            if !users.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "Volume {} is in use by sandbox(es) {}; delete them first",
                    row.name,
                    users.join(", ")
                )));
            }
            self.set_state(&row, "pending_delete", None).await;
            VolumeRow {
                state: "pending_delete".into(),
                ..row
            }
        };
        let this = self.clone();
        let task = tokio::spawn({
            let row = row.clone();
            async move { this.remove(row).await }
        });
        let _ = tokio::time::timeout(WAIT_FOR_DELETE, task).await;
        self.get(org, &row.id).await
    }

    /// Serializes sandbox creates that mount volumes with volume deletes; hold the guard from
    /// [`Self::resolve_mounts`] until the sandbox is stored.
    pub async fn lock_mounts(&self, org: &str) -> Result<LockGuard, ClusterError> {
        self.cluster.lock(&format!("volume-mounts:{org}")).await
    }

    /// Checks a create request's volume mounts and resolves volume names to ids. Each volume
    /// must be `org`'s and ready; mount paths absolute, outside the system's directories and
    /// distinct; subpaths relative without `..`.
    pub async fn resolve_mounts(
        &self,
        org: &str,
        mounts: &[VolumeMount],
    ) -> ApiResult<Vec<VolumeMount>> {
        let mut paths = HashSet::new();
        let mut resolved = Vec::with_capacity(mounts.len());
        for (i, mount) in mounts.iter().enumerate() {
            let field = |name: &str| format!("volumes[{i}].{name}");
            daytona_runtime::check_mount_target(&mount.mount_path).map_err(|reason| {
                ApiError::BadRequest(format!(
                    "{}: '{}' {reason}",
                    field("mountPath"),
                    mount.mount_path
                ))
            })?;
            if !paths.insert(mount.mount_path.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "{}: '{}' is mounted twice",
                    field("mountPath"),
                    mount.mount_path
                )));
            }
            let subpath = mount.subpath.clone().filter(|s| !s.is_empty());
            if let Some(sub) = &subpath {
                daytona_runtime::check_subpath(sub).map_err(|reason| {
                    ApiError::BadRequest(format!("{}: '{sub}' {reason}", field("subpath")))
                })?;
            }
            let volume = match self.store.volume_by_id(org, &mount.volume_id).await? {
                Some(v) if v.state != "deleted" => Some(v),
                _ => self.store.volume_by_name(org, &mount.volume_id).await?,
            }
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "{}: volume {} not found",
                    field("volumeId"),
                    mount.volume_id
                ))
            })?;
            if volume.state != "ready" {
                return Err(ApiError::BadRequest(format!(
                    "{}: volume {} is not ready (state: {})",
                    field("volumeId"),
                    volume.name,
                    volume.state
                )));
            }
            self.store.mark_volume_used(&volume.id).await?;
            resolved.push(VolumeMount {
                volume_id: volume.id,
                mount_path: mount.mount_path.clone(),
                subpath,
            });
        }
        Ok(resolved)
    }

    /// Finishes creates and deletes a restart interrupted.
    pub async fn reconcile(&self) -> ApiResult<()> {
        for row in self.store.volumes_in_transition().await? {
            tracing::info!(volume = %row.id, state = %row.state, "finishing interrupted volume operation");
            match row.state.as_str() {
                "pending_create" | "creating" => self.provision(row).await,
                _ => self.remove(row).await,
            }
        }
        Ok(())
    }
}

/// The volume ids in a sandbox's stored `volumes` JSON.
fn mounted_ids(json: &str) -> Vec<String> {
    parse_mounts(json)
        .into_iter()
        .map(|m| m.volume_id)
        .collect()
}

/// A sandbox's stored mounts (written by this module, so well-formed; unreadable means none).
pub fn parse_mounts(json: &str) -> Vec<VolumeMount> {
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::error!(error = %e, "stored sandbox volumes are not valid JSON");
        Vec::new()
    })
}

/// What the runner needs to mount a sandbox's stored volumes.
pub fn runner_mounts(json: &str) -> Vec<daytona_runner::VolumeMount> {
    parse_mounts(json)
        .into_iter()
        .map(|m| daytona_runner::VolumeMount {
            volume_id: m.volume_id,
            mount_path: m.mount_path,
            subpath: m.subpath,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_mounts_round_trip_to_the_runner() {
        let json = r#"[{"volumeId":"v1","mountPath":"/data"},{"volumeId":"v2","mountPath":"/x","subpath":"a/b"}]"#;
        assert_eq!(mounted_ids(json), ["v1", "v2"]);
        let mounts = runner_mounts(json);
        assert_eq!(mounts[1].subpath.as_deref(), Some("a/b"));
        assert_eq!(mounts[0].subpath, None);
        assert!(runner_mounts("[]").is_empty());
    }

    #[test]
    fn names() {
        assert!(is_valid_volume_name("my-vol_1.x"));
        for bad in ["", "a b", "a/b", &"x".repeat(256)] {
            assert!(!is_valid_volume_name(bad), "{bad}");
        }
    }
}
