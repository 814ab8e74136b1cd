//! Snapshots: named images that sandboxes are created from (`/api/snapshots`).
//!
//! Creating one makes the runner import/pull and unpack the image (`pending` → `pulling` →
//! `active`, or `error` with the reason). The default snapshot (`DEFAULT_SNAPSHOT`) is a
//! `general` snapshot of the admin organization, visible to every organization.
//!
//! The API process that pulls, builds or captures a snapshot holds the cluster lock
//! `snapshot:<id>` until it is done, so with several replicas another one takes over only what a
//! dead replica left (its lock lapses), never what a live one is doing.

use std::sync::Arc;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use daytona_runner::SandboxRunner;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::AuthContext;
use crate::cluster::{Cluster, InProcessCluster, LockGuard};
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::store::{SnapshotFilter, SnapshotRow, Store, now};

mod build;
pub use build::{BuildInfo, BuildSettings, Builds};

/// How long `POST /snapshots` waits for the pull before answering with the pending state.
const WAIT_FOR_PULL: Duration = Duration::from_secs(50);
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 200;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSnapshot {
    pub name: String,
    pub image_name: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub build_info: Option<serde_json::Value>,
    pub cpu: Option<u32>,
    pub gpu: Option<u32>,
    pub memory: Option<u32>,
    pub disk: Option<u32>,
    pub region_id: Option<String>,
    pub sandbox_class: Option<String>,
}

/// `SnapshotDto` as SDK 0.226.1 reads it (`size` in GB, nullable fields present as null).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotDto {
    pub id: String,
    pub organization_id: String,
    pub general: bool,
    pub name: String,
    pub image_name: String,
    pub state: String,
    pub size: Option<f64>,
    pub entrypoint: Option<Vec<String>>,
    pub cpu: i64,
    pub gpu: i64,
    pub mem: i64,
    pub disk: i64,
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
    pub source_sandbox_id: Option<String>,
    /// The reference runners use: the internal registry's copy when there is one.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
}

impl From<SnapshotRow> for SnapshotDto {
    fn from(r: SnapshotRow) -> Self {
        SnapshotDto {
            reference: Some(r.runnable_image().to_owned()).filter(|i| !i.is_empty()),
            entrypoint: r
                .entrypoint
                .as_deref()
                .and_then(|e| serde_json::from_str(e).ok()),
            size: r
                .size_bytes
                .map(|b| (b as f64 / 1e9 * 1000.0).round() / 1000.0),
            id: r.id,
            organization_id: r.organization_id,
            general: r.general,
            name: r.name,
            image_name: r.image_name,
            state: r.state,
            cpu: r.cpu,
            gpu: r.gpu,
            mem: r.mem,
            disk: r.disk,
            error_reason: r.error_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
            last_used_at: r.last_used_at,
            source_sandbox_id: r.source_sandbox_id,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPage {
    pub items: Vec<SnapshotDto>,
    pub total: i64,
    pub page: i64,
    pub total_pages: i64,
}

pub struct SnapshotService {
    store: Store,
    runner: Arc<dyn SandboxRunner>,
    /// Image builds (`buildInfo`); `None` refuses them.
    builds: Option<Arc<Builds>>,
    /// `host[:port]/project/` of the transient registry, whose `{organization id}/` paths hold
    /// what each organization pushed (runners pull them with full access).
    transient_prefix: Option<String>,
    /// Who works on which snapshot, and build log wake-ups, across API processes.
    cluster: Arc<dyn Cluster>,
}

pub(crate) fn is_valid_snapshot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl SnapshotService {
    pub fn new(store: Store, runner: Arc<dyn SandboxRunner>) -> Self {
        SnapshotService {
            store,
            runner,
            builds: None,
            transient_prefix: None,
            cluster: Arc::new(InProcessCluster::default()),
        }
    }

    /// Snapshots may name only their own organization's images of the transient registry at
    /// `host` (`host[:port]`) under `project`.
    pub fn with_transient_registry(mut self, host: &str, project: &str) -> Self {
        self.transient_prefix = Some(format!("{}/{project}/", host.to_ascii_lowercase()));
        self
    }

    /// Refuses an image another organization pushed to the transient registry.
    fn check_transient_owner(&self, ctx: &AuthContext, image: &str) -> ApiResult<()> {
        let Some(prefix) = &self.transient_prefix else {
            return Ok(());
        };
        let lowered = image.to_ascii_lowercase();
        let Some(path) = lowered.strip_prefix(prefix.as_str()) else {
            return Ok(());
        };
        match path.split_once('/') {
            Some((owner, _)) if owner != ctx.organization_id && !ctx.system_admin => {
                Err(ApiError::Forbidden(format!(
                    "imageName: '{image}' belongs to another organization's part of the transient \
                     registry"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Shares snapshot work and build logs with the other API processes of `cluster`.
    pub fn with_cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.cluster = cluster;
        self
    }

    fn lock_key(id: &str) -> String {
        format!("snapshot:{id}")
    }

    /// The lock of a snapshot this process is about to work on (a new one: nobody holds it).
    async fn lock_snapshot(&self, id: &str) -> ApiResult<LockGuard> {
        Ok(self.cluster.lock(&Self::lock_key(id)).await?)
    }

    /// Builds images from `buildInfo` as `builds` says.
    pub fn with_builds(mut self, builds: Builds) -> Self {
        self.builds = Some(Arc::new(builds));
        self
    }

    /// Registers `DEFAULT_SNAPSHOT` as a general snapshot of `org` (once) and makes sure the
    /// runner has it, in the background.
    pub async fn ensure_default(self: &Arc<Self>, org: &str, image: &str) -> ApiResult<()> {
        let (row, guard) = match self.store.general_snapshot_by_name(image).await? {
            Some(row) => {
                // Another API process pulling it makes sure of it already.
                let Some(guard) = self.cluster.try_lock(&Self::lock_key(&row.id)).await? else {
                    return Ok(());
                };
                (row, guard)
            }
            None => {
                let row = new_row(org, true, image, image, None, (1, 1, 3));
                let guard = self.lock_snapshot(&row.id).await?;
                self.store.insert_snapshot(&row).await?;
                (row, guard)
            }
        };
        let this = self.clone();
        tokio::spawn(async move { this.pull(row, guard).await });
        Ok(())
    }

    /// Imports/pulls the snapshot's image on the runner and records the outcome, holding the
    /// snapshot's lock `_guard` meanwhile.
    async fn pull(&self, row: SnapshotRow, _guard: LockGuard) {
        let _ = self
            .store
            .set_snapshot_state(&row.id, "pulling", None)
            .await;
        let outcome = match self.runner.pull_image(&row.image_name).await {
            Ok(image) => {
                tracing::info!(snapshot = %row.name, digest = %image.digest, "snapshot active");
                // Recorded before it is active: every sandbox of it uses the internal copy.
                if let Some(internal_ref) = &image.published
                    && let Err(e) = self
                        .store
                        .set_snapshot_internal_ref(&row.id, internal_ref)
                        .await
                {
                    tracing::error!(snapshot = %row.id, error = %e, "could not record snapshot state");
                    return;
                }
                // The snapshot's own entrypoint wins over the image's.
                let entrypoint = row.entrypoint.clone().unwrap_or_else(|| {
                    let ep: Vec<String> = image.entrypoint.into_iter().chain(image.cmd).collect();
                    serde_json::to_string(&ep).expect("strings serialize")
                });
                self.store
                    .set_snapshot_active(
                        &row.id,
                        &image.digest,
                        image.size_bytes as i64,
                        &entrypoint,
                    )
                    .await
            }
            Err(e) => {
                tracing::warn!(snapshot = %row.name, error = %e, "snapshot pull failed");
                self.store
                    .set_snapshot_state(&row.id, "error", Some(&e.to_string()))
                    .await
            }
        };
        if let Err(e) = outcome {
            tracing::error!(snapshot = %row.id, error = %e, "could not record snapshot state");
        }
    }

    /// Carries on, after a restart, what the previous process left in progress: pulls start
    /// again, builds run again (their finished layers are cached), and a snapshot of a sandbox
    /// that was being taken is taken again. What another live API process works on (it holds
    /// the snapshot's lock) is left to it.
    pub async fn reconcile(self: &Arc<Self>) -> ApiResult<()> {
        for row in self.store.snapshots_in_progress().await? {
            self.take_over(row).await?;
        }
        Ok(())
    }

    /// Takes over what an API process that died left half-done: snapshots in progress for
    /// longer than [`crate::sandbox::service::ORPHAN_AGE`] whose lock nobody holds (a dead
    /// holder's lock lapses).
    pub async fn recover_orphans(self: &Arc<Self>) -> ApiResult<()> {
        let cutoff = (chrono::Utc::now() - crate::sandbox::service::ORPHAN_AGE)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for row in self.store.snapshots_in_progress().await? {
            if row.updated_at < cutoff {
                self.take_over(row).await?;
            }
        }
        Ok(())
    }

    /// Goes on with the work on snapshot `row` that nobody does now, if nobody does.
    async fn take_over(self: &Arc<Self>, row: SnapshotRow) -> ApiResult<()> {
        let Some(guard) = self.cluster.try_lock(&Self::lock_key(&row.id)).await? else {
            tracing::debug!(snapshot = %row.name, "snapshot is in another process's work");
            return Ok(());
        };
        match row.state.as_str() {
            "building" => self.resume_build(&row, guard).await?,
            "snapshotting" => self.resume_capture(row, guard).await?,
            _ => {
                tracing::info!(snapshot = %row.name, "pulling again: the process pulling it stopped");
                let this = self.clone();
                tokio::spawn(async move { this.pull(row, guard).await });
            }
        }
        Ok(())
    }

    /// Takes again the snapshot of a sandbox whose capture was interrupted, under the
    /// sandbox's lock (a remote runner's capture still running is awaited, not repeated).
    async fn resume_capture(self: &Arc<Self>, row: SnapshotRow, guard: LockGuard) -> ApiResult<()> {
        let Some(sandbox_id) = row.source_sandbox_id.clone() else {
            return self
                .interrupted(&row, "its source sandbox is not recorded")
                .await;
        };
        // The capture runs under the sandbox's lock: held means it is still going on.
        let Some(sandbox_guard) = self
            .cluster
            .try_lock(&format!("sandbox:{sandbox_id}"))
            .await?
        else {
            return Ok(());
        };
        let Some(sandbox) = self.store.sandbox_record(&sandbox_id).await? else {
            return self
                .interrupted(&row, "its source sandbox no longer exists")
                .await;
        };
        tracing::info!(snapshot = %row.name, sandbox = %sandbox_id, "taking an interrupted sandbox snapshot again");
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this
                .runner
                .snapshot_sandbox(&sandbox_id, &sandbox.image_ref)
                .await
                .map_err(|e| format!("snapshot failed: {e}"));
            if let Err(e) = this.finish_capture(&row, outcome).await {
                tracing::error!(snapshot = %row.id, error = %e, "could not record snapshot state");
            }
            drop((sandbox_guard, guard));
        });
        Ok(())
    }

    /// Ends a snapshot whose work cannot go on in `error`, saying why.
    pub(super) async fn interrupted(&self, row: &SnapshotRow, why: &str) -> ApiResult<()> {
        tracing::warn!(snapshot = %row.name, reason = why, "snapshot interrupted");
        self.store
            .set_snapshot_state(&row.id, "error", Some(&format!("interrupted: {why}")))
            .await?;
        Ok(())
    }

    pub async fn create(
        self: &Arc<Self>,
        ctx: &AuthContext,
        body: CreateSnapshot,
    ) -> ApiResult<SnapshotDto> {
        if !is_valid_snapshot_name(&body.name) {
            return Err(ApiError::BadRequest(format!(
                "name: '{}' is not a valid snapshot name",
                body.name
            )));
        }
        let build = body.build_info.as_ref().map(BuildInfo::parse).transpose()?;
        if build.is_some() {
            self.builds()?;
        }
        if body.gpu.unwrap_or(0) > 0 {
            return Err(ApiError::BadRequest("gpu: this server has no GPUs".into()));
        }
        let image = match &build {
            // Known once built.
            Some(_) => String::new(),
            None => {
                let image = body
                    .image_name
                    .clone()
                    .filter(|i| !i.trim().is_empty())
                    .ok_or_else(|| {
                        ApiError::BadRequest(
                            "imageName: required (an image reference), or buildInfo".into(),
                        )
                    })?;
                if is_local_reference(&image) {
                    local_reference_allowed(ctx, "imageName", &image)?;
                }
                self.check_transient_owner(ctx, &image)?;
                image
            }
        };
        if self
            .store
            .find_snapshot(&ctx.organization_id, &body.name)
            .await?
            .is_some()
        {
            return Err(ApiError::Conflict(format!(
                "Snapshot with name {} already exists",
                body.name
            )));
        }
        for (field, value) in [
            ("cpu", body.cpu),
            ("memory", body.memory),
            ("disk", body.disk),
        ] {
            if value == Some(0) {
                return Err(ApiError::BadRequest(format!("{field}: must be at least 1")));
            }
        }
        let entrypoint = body
            .entrypoint
            .as_ref()
            .map(|e| serde_json::to_string(e).expect("strings serialize"));
        let resources = (
            body.cpu.unwrap_or(1),
            body.memory.unwrap_or(1),
            body.disk.unwrap_or(3),
        );
        let mut row = new_row(
            &ctx.organization_id,
            false,
            &body.name,
            &image,
            entrypoint,
            resources,
        );
        if build.is_some() {
            row.state = "building".into();
        }
        // Held from before the row exists, so no other process takes the work over.
        let guard = self.lock_snapshot(&row.id).await?;
        self.store
            .insert_snapshot(&row)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    ApiError::Conflict(format!("Snapshot with name {} already exists", row.name))
                }
                e => e.into(),
            })?;
        let id = row.id.clone();
        if let Some(build) = build {
            // The SDK follows the build (state, logs) itself.
            if let Err(e) = self.start_build(&row, build, guard).await {
                self.store
                    .set_snapshot_state(&id, "error", Some(&e.to_string()))
                    .await?;
                return Err(e);
            }
            return self.get(ctx, &id).await;
        }
        let this = self.clone();
        let task = tokio::spawn(async move { this.pull(row, guard).await });
        let _ = tokio::time::timeout(WAIT_FOR_PULL, task).await;
        self.get(ctx, &id).await
    }

    /// Registers the snapshot `name` that sandbox `sandbox` is about to become (state
    /// `snapshotting`, the sandbox's resources) and its lock, to hold until the capture ends;
    /// refuses a name the organization already uses.
    pub async fn begin_capture(
        &self,
        org: &str,
        name: &str,
        sandbox: &str,
        (cpu, mem, disk): (i64, i64, i64),
    ) -> ApiResult<(SnapshotRow, LockGuard)> {
        if !is_valid_snapshot_name(name) {
            return Err(ApiError::BadRequest(format!(
                "name: '{name}' is not a valid snapshot name"
            )));
        }
        let conflict = || ApiError::Conflict(format!("Snapshot with name {name} already exists"));
        if self.store.find_snapshot(org, name).await?.is_some() {
            return Err(conflict());
        }
        let mut row = new_row(org, false, name, "", None, (1, 1, 1));
        row.state = "snapshotting".into();
        row.source_sandbox_id = Some(sandbox.to_owned());
        (row.cpu, row.mem, row.disk) = (cpu, mem, disk);
        let guard = self.lock_snapshot(&row.id).await?;
        self.store
            .insert_snapshot(&row)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => conflict(),
                e => e.into(),
            })?;
        Ok((row, guard))
    }

    /// Records the outcome of a capture that [`Self::begin_capture`] registered.
    pub async fn finish_capture(
        &self,
        row: &SnapshotRow,
        outcome: Result<daytona_runner::CapturedImage, String>,
    ) -> Result<(), sqlx::Error> {
        match outcome {
            Ok(captured) => {
                let image = captured.image;
                let ep: Vec<String> = image.entrypoint.into_iter().chain(image.cmd).collect();
                self.store
                    .set_snapshot_captured(
                        &row.id,
                        &captured.reference,
                        &image.digest,
                        image.size_bytes as i64,
                        &serde_json::to_string(&ep).expect("strings serialize"),
                    )
                    .await
            }
            Err(reason) => {
                self.store
                    .set_snapshot_state(&row.id, "error", Some(&reason))
                    .await
            }
        }
    }

    pub async fn find(&self, ctx: &AuthContext, id_or_name: &str) -> ApiResult<SnapshotRow> {
        self.store
            .find_snapshot(&ctx.organization_id, id_or_name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("Snapshot {id_or_name} not found")))
    }

    pub async fn get(&self, ctx: &AuthContext, id_or_name: &str) -> ApiResult<SnapshotDto> {
        Ok(self.find(ctx, id_or_name).await?.into())
    }

    /// A snapshot the caller may change: general ones belong to the admin organization.
    async fn find_owned(&self, ctx: &AuthContext, id_or_name: &str) -> ApiResult<SnapshotRow> {
        let row = self.find(ctx, id_or_name).await?;
        if row.organization_id != ctx.organization_id {
            return Err(ApiError::Forbidden(format!(
                "Snapshot {} is a general snapshot and can only be changed by its owner",
                row.name
            )));
        }
        Ok(row)
    }

    pub async fn delete(self: &Arc<Self>, ctx: &AuthContext, id_or_name: &str) -> ApiResult<()> {
        let row = self.find_owned(ctx, id_or_name).await?;
        self.store.delete_snapshot(&row.id).await?;
        // In the background: the collection waits for pulls and sandbox creates in progress.
        let this = self.clone();
        tokio::spawn(async move { this.collect_garbage().await });
        Ok(())
    }

    /// Lets the runner remove images no snapshot names anymore (and their layers, unless a
    /// sandbox still uses them). Failures are logged: nothing depends on the space coming back.
    pub async fn collect_garbage(&self) {
        let keep = match self.store.snapshot_digests().await {
            Ok(keep) => keep,
            Err(e) => {
                tracing::warn!(error = %e, "image garbage collection skipped: cannot list snapshots");
                return;
            }
        };
        if let Err(e) = self.runner.collect_garbage(&keep).await {
            tracing::warn!(error = %e, "image garbage collection failed");
        }
    }

    pub async fn set_active(
        &self,
        ctx: &AuthContext,
        id_or_name: &str,
        active: bool,
    ) -> ApiResult<SnapshotDto> {
        ctx.require("write:snapshots")?;
        let row = self.find_owned(ctx, id_or_name).await?;
        let next = match (row.state.as_str(), active) {
            ("active" | "inactive", true) => "active",
            ("active" | "inactive", false) => "inactive",
            (state, _) => {
                return Err(ApiError::BadRequest(format!(
                    "Snapshot {} cannot be {} while {state}",
                    row.name,
                    if active { "activated" } else { "deactivated" }
                )));
            }
        };
        self.store.set_snapshot_state(&row.id, next, None).await?;
        self.get(ctx, &row.id).await
    }

    /// The image reference and default resources for a sandbox created from `name`.
    /// Image archive references (`oci-archive:` …) may be used directly as well.
    pub async fn resolve_for_sandbox(
        &self,
        ctx: &AuthContext,
        name: &str,
    ) -> ApiResult<SnapshotChoice> {
        match self.store.find_snapshot(&ctx.organization_id, name).await? {
            // A snapshot still being pulled is usable: the runner waits for the same pull.
            Some(row) if matches!(row.state.as_str(), "active" | "pending" | "pulling") => {
                self.store.mark_snapshot_used(&row.id).await?;
                Ok(SnapshotChoice {
                    image: row.runnable_image().to_owned(),
                    name: row.name,
                    resources: Some((row.cpu as u32, row.mem as u32, row.disk as u32)),
                })
            }
            Some(row) => Err(ApiError::BadRequest(format!(
                "Snapshot {} is not active (state: {}{})",
                row.name,
                row.state,
                row.error_reason
                    .map(|r| format!(", reason: {r}"))
                    .unwrap_or_default()
            ))),
            None if is_local_reference(name) => {
                local_reference_allowed(ctx, "snapshot", name)?;
                Ok(SnapshotChoice {
                    name: name.to_string(),
                    image: name.to_string(),
                    resources: None,
                })
            }
            None => Err(ApiError::NotFound(format!("Snapshot {name} not found"))),
        }
    }
}

/// Local image references name files on the server (archives, OCI layouts, other tenants'
/// committed snapshots), so only system administrators may use them directly; everyone else
/// uses snapshots by name.
fn is_local_reference(reference: &str) -> bool {
    ["oci-archive:", "oci:", "docker-archive:"]
        .iter()
        .any(|p| reference.starts_with(p))
}

fn local_reference_allowed(ctx: &AuthContext, field: &str, reference: &str) -> ApiResult<()> {
    if ctx.system_admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{field}: '{reference}' names a file on the server; only system administrators may use \
             local image references"
        )))
    }
}

/// What a sandbox is created from.
pub struct SnapshotChoice {
    pub name: String,
    pub image: String,
    /// (cpu, memory GiB, disk GiB) defaults of the snapshot.
    pub resources: Option<(u32, u32, u32)>,
}

pub(crate) fn new_row(
    org: &str,
    general: bool,
    name: &str,
    image: &str,
    entrypoint: Option<String>,
    (cpu, mem, disk): (u32, u32, u32),
) -> SnapshotRow {
    let ts = now();
    SnapshotRow {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org.to_string(),
        general,
        name: name.to_string(),
        image_name: image.to_string(),
        state: "pending".into(),
        error_reason: None,
        digest: None,
        size_bytes: None,
        entrypoint,
        cpu: cpu.into(),
        gpu: 0,
        mem: mem.into(),
        disk: disk.into(),
        created_at: ts.clone(),
        updated_at: ts,
        last_used_at: None,
        source_sandbox_id: None,
        internal_ref: None,
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, delete))
        .routes(routes!(activate))
        .routes(routes!(deactivate))
        .merge(build::router())
}

#[utoipa::path(
    post,
    path = "/snapshots",
    tag = "snapshots",
    operation_id = "snapshot_create"
)]
async fn create(
    State(state): State<AppState>,
    ctx: AuthContext,
    JsonBody(body): JsonBody<CreateSnapshot>,
) -> ApiResult<Json<SnapshotDto>> {
    ctx.require("write:snapshots")?;
    Ok(Json(state.snapshots.create(&ctx, body).await?))
}

#[utoipa::path(get, path = "/snapshots/{id}", tag = "snapshots", operation_id = "snapshot_get_one", params(("id" = String, Path)))]
async fn get_one(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<SnapshotDto>> {
    Ok(Json(state.snapshots.get(&ctx, &id).await?))
}

#[utoipa::path(delete, path = "/snapshots/{id}", tag = "snapshots", operation_id = "snapshot_delete", params(("id" = String, Path)))]
async fn delete(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.require("delete:snapshots")?;
    state.snapshots.delete(&ctx, &id).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(post, path = "/snapshots/{id}/activate", tag = "snapshots", operation_id = "snapshot_activate", params(("id" = String, Path)))]
async fn activate(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<SnapshotDto>> {
    Ok(Json(state.snapshots.set_active(&ctx, &id, true).await?))
}

#[utoipa::path(post, path = "/snapshots/{id}/deactivate", tag = "snapshots", operation_id = "snapshot_deactivate", params(("id" = String, Path)))]
async fn deactivate(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.snapshots.set_active(&ctx, &id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/snapshots",
    tag = "snapshots",
    operation_id = "snapshot_list"
)]
async fn list(
    State(state): State<AppState>,
    ctx: AuthContext,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<SnapshotPage>> {
    let (mut page, mut limit, mut name, mut order_by, mut descending) =
        (1i64, DEFAULT_PAGE, None, "created_at", true);
    let mut source_sandbox_id = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "page" => {
                page = value.parse().ok().filter(|p| *p >= 1).ok_or_else(|| {
                    ApiError::BadRequest(format!("page: '{value}' is not an integer >= 1"))
                })?
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_PAGE).contains(l))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit: expected an integer from 1 to {MAX_PAGE}"
                        ))
                    })?
            }
            "name" => name = Some(value.into_owned()),
            "sourceSandboxId" => source_sandbox_id = Some(value.into_owned()),
            "sort" => {
                order_by = match value.as_ref() {
                    "name" => "name",
                    "state" => "state",
                    "lastUsedAt" => "last_used_at",
                    "createdAt" => "created_at",
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "sort: '{value}' is not one of name, state, lastUsedAt, createdAt"
                        )));
                    }
                }
            }
            "order" => descending = crate::sandbox::routes::descending_order(&value)?,
            _ => {}
        }
    }
    let (rows, total) = state
        .store
        .list_snapshots(
            &ctx.organization_id,
            &SnapshotFilter {
                name: name.as_deref(),
                source_sandbox_id: source_sandbox_id.as_deref(),
            },
            order_by,
            descending,
            (page - 1) * limit,
            limit,
        )
        .await?;
    Ok(Json(SnapshotPage {
        items: rows.into_iter().map(SnapshotDto::from).collect(),
        total,
        page,
        total_pages: (total + limit - 1) / limit,
    }))
}
