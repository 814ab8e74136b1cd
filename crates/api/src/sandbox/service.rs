//! The sandbox state machine.
//!
//! Each operation records the desired state and a transitional state (`creating`, `starting`,
//! `stopping`, `destroying`) in the store, then drives the runner from a detached task so a
//! client that disconnects never leaves a sandbox half-way. The HTTP handler waits for that
//! task (up to [`WAIT_FOR_RUNNER`]) so the SDK usually receives the final state in the same
//! response instead of polling. Operations on one sandbox are serialized by a per-sandbox lock.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use daytona_runner::{SandboxRequest, SandboxRunner};
use tracing::Instrument;

use super::capture::StoredCopy;
use super::dto::{CreateSandbox, Sandbox};
use crate::auth::AuthContext;
use crate::cluster::{Cluster, ClusterError, InProcessCluster, LockGuard};
use crate::error::{ApiError, ApiResult};
use crate::events::{Event, EventBus, InProcessEventBus};
use crate::invalidation::Invalidations;
use crate::quota;
use crate::snapshot::BuildInfo;
use crate::snapshot::SnapshotService;
use crate::store::{Claim, SandboxFilter, SandboxRow, SecretKind, Store, now};
use crate::volume::{self, VolumeService};

/// How long a request waits for the runner before answering with the transitional state.
const WAIT_FOR_RUNNER: Duration = Duration::from_secs(50);

/// States a sandbox is in only while an operation on it runs.
const TRANSITIONAL: &[&str] = &[
    "pending_build",
    "creating",
    "starting",
    "stopping",
    "destroying",
    "archiving",
    "restoring",
    "resuming",
    "pausing",
    "resizing",
    "forking",
    "snapshotting",
];

/// How long a transitional state must have been left untouched, with its sandbox's lock free,
/// before another API process takes the operation over.
pub const ORPHAN_AGE: Duration = Duration::from_secs(20);

/// Upstream's defaults for a sandbox created without explicit values.
const DEFAULT_CPU: u32 = 1;
const DEFAULT_MEMORY_GIB: u32 = 1;
const DEFAULT_DISK_GIB: u32 = 3;
const DEFAULT_AUTO_STOP_MIN: i64 = 15;
const DEFAULT_AUTO_ARCHIVE_MIN: i64 = 7 * 24 * 60;

/// The caller's settings of a create that a sandbox takes on whether it is made anew or
/// claimed from a warm pool.
pub(crate) fn claim_for(body: &CreateSandbox, name: String) -> Claim {
    Claim {
        name,
        labels: serde_json::to_string(&body.labels).expect("string map serializes"),
        public: body.public.unwrap_or(false),
        auto_stop_interval: body.auto_stop_interval.unwrap_or(DEFAULT_AUTO_STOP_MIN),
        auto_archive_interval: body
            .auto_archive_interval
            .unwrap_or(DEFAULT_AUTO_ARCHIVE_MIN),
        auto_delete_interval: body.auto_delete_interval.unwrap_or(-1),
        auto_pause_interval: body.auto_pause_interval.unwrap_or(0),
        auto_destroy_at: body.ttl_minutes.filter(|m| *m > 0).map(|m| {
            (chrono::Utc::now() + chrono::Duration::minutes(m))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }),
    }
}

/// Values the service needs from configuration.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// `toolboxProxyUrl` of every sandbox (no trailing slash).
    pub toolbox_proxy_url: String,
    /// Image used when a create request names no snapshot (`DEFAULT_SNAPSHOT`).
    pub default_snapshot: String,
    /// Region reported as `target` (`DEFAULT_REGION_ID`).
    pub default_region: String,
    /// `MAX_AUTO_ARCHIVE_INTERVAL`, in minutes.
    pub max_auto_archive_minutes: i64,
}

pub struct SandboxService {
    pub(super) store: Store,
    pub(super) runner: Arc<dyn SandboxRunner>,
    pub(super) snapshots: Arc<SnapshotService>,
    pub(super) settings: SandboxSettings,
    /// Per-sandbox and quota locks, shared with the other API processes of the deployment.
    cluster: Arc<dyn Cluster>,
    pub(super) events: Arc<dyn EventBus>,
    volumes: Arc<VolumeService>,
    /// Tells split proxies and gateways what changed, through `cluster`.
    invalidations: Arc<Invalidations>,
    /// Wakes the backup worker (`backup::spawn`).
    pub(super) backup_wakeup: tokio::sync::Notify,
}

/// Milliseconds with two decimals, for timing logs.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

pub(crate) fn is_valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl SandboxService {
    pub fn new(
        store: Store,
        runner: Arc<dyn SandboxRunner>,
        snapshots: Arc<SnapshotService>,
        settings: SandboxSettings,
    ) -> Self {
        let events: Arc<dyn EventBus> = Arc::new(InProcessEventBus::default());
        let cluster: Arc<dyn Cluster> = Arc::new(InProcessCluster::default());
        SandboxService {
            volumes: Arc::new(VolumeService::new(
                store.clone(),
                runner.clone(),
                events.clone(),
                cluster.clone(),
            )),
            store,
            runner,
            snapshots,
            settings,
            invalidations: Arc::new(Invalidations::new(cluster.clone())),
            cluster,
            events,
            backup_wakeup: tokio::sync::Notify::new(),
        }
    }

    /// Takes its locks from `cluster`, shared with the other API processes of the deployment
    /// (and publishes invalidations there).
    pub fn with_cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.invalidations = Arc::new(Invalidations::new(cluster.clone()));
        self.cluster = cluster;
        let bus = self.events.clone();
        self.with_event_bus(bus)
    }

    /// Publishes sandbox and volume events to `bus` instead of this process's own bus.
    pub fn with_event_bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.volumes = Arc::new(VolumeService::new(
            self.store.clone(),
            self.runner.clone(),
            bus.clone(),
            self.cluster.clone(),
        ));
        self.events = bus;
        self
    }

    /// The volumes the sandboxes mount (`/api/volumes`).
    pub fn volumes(&self) -> &Arc<VolumeService> {
        &self.volumes
    }

    pub fn events(&self) -> &Arc<dyn EventBus> {
        &self.events
    }

    /// Invalidations for split proxies and gateways (published here on every state write, and
    /// by the routes that change what they keep: settings, tokens, keys, memberships).
    pub fn invalidations(&self) -> &Arc<Invalidations> {
        &self.invalidations
    }

    /// Publishes what changed in the stored sandbox since `before` (state, desired state).
    /// Called after every state write; events are hints, so failures are only logged.
    pub(super) async fn announce(&self, before: &SandboxRow) {
        // Its address, preview token or very existence may have changed with its state.
        self.invalidations.sandbox(&before.id);
        if before.pooled {
            return; // not its organization's yet: a claim announces it as created
        }
        match self.store.sandbox_record(&before.id).await {
            Ok(Some(row)) => {
                let dto = self.to_dto(row);
                for event in Event::sandbox_changes(&before.state, &before.desired_state, &dto) {
                    self.events.publish(event);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(sandbox = %before.id, error = %e, "could not read sandbox to publish its state")
            }
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn max_auto_archive_minutes(&self) -> i64 {
        self.settings.max_auto_archive_minutes
    }

    pub fn runner(&self) -> &Arc<dyn SandboxRunner> {
        &self.runner
    }

    pub fn to_dto(&self, row: SandboxRow) -> Sandbox {
        Sandbox::from_row(row, &self.settings.toolbox_proxy_url)
    }

    pub fn cluster(&self) -> &Arc<dyn Cluster> {
        &self.cluster
    }

    /// Serializes the operations on sandbox `id`.
    pub(crate) async fn lock_sandbox(&self, id: &str) -> Result<LockGuard, ClusterError> {
        self.cluster.lock(&format!("sandbox:{id}")).await
    }

    /// Held while a new allocation of organization `org` is checked against its quotas and
    /// stored, so concurrent creates cannot overrun a quota together.
    pub(super) async fn lock_quota(&self, org: &str) -> Result<LockGuard, ClusterError> {
        self.cluster.lock(&format!("sandbox-quota:{org}")).await
    }

    pub async fn find(&self, ctx: &AuthContext, id_or_name: &str) -> ApiResult<SandboxRow> {
        self.store
            .find_sandbox(&ctx.organization_id, id_or_name)
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!("Sandbox with ID or name {id_or_name} not found"))
            })
    }

    fn validate(&self, body: &CreateSandbox) -> ApiResult<()> {
        if let Some(name) = &body.name
            && !is_valid_name(name)
        {
            return Err(ApiError::BadRequest(format!(
                "name: '{name}' is invalid; use 1-255 letters, digits, '-', '_' or '.'"
            )));
        }
        if let Some(key) = body.env.keys().find(|k| !is_valid_env_key(k)) {
            return Err(ApiError::BadRequest(format!(
                "env: '{key}' is not a valid environment variable name"
            )));
        }
        super::settings::network_policy(
            body.network_block_all.unwrap_or(false),
            body.network_allow_list.as_deref(),
        )?;
        if body.build_info.is_some() && body.snapshot.is_some() {
            return Err(ApiError::BadRequest(
                "snapshot: a sandbox is created from a snapshot or from buildInfo, not both".into(),
            ));
        }
        if body.gpu.unwrap_or(0) > 0 {
            return Err(ApiError::BadRequest("gpu: this server has no GPUs".into()));
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
        Ok(())
    }

    pub async fn create(
        self: &Arc<Self>,
        ctx: &AuthContext,
        body: CreateSandbox,
    ) -> ApiResult<Sandbox> {
        self.create_in(ctx, body, None).await
    }

    /// Makes a sandbox that waits, hidden, in warm pool `pool` until a create claims it;
    /// returns once it is recorded (the runner makes it in the background).
    pub(crate) async fn create_pooled(
        self: &Arc<Self>,
        ctx: &AuthContext,
        body: CreateSandbox,
        pool: &str,
    ) -> ApiResult<Sandbox> {
        self.create_in(ctx, body, Some(pool)).await
    }

    async fn create_in(
        self: &Arc<Self>,
        ctx: &AuthContext,
        body: CreateSandbox,
        warm_pool: Option<&str>,
    ) -> ApiResult<Sandbox> {
        let started = std::time::Instant::now();
        self.validate(&body)?;
        let target = crate::organization::sandbox_region(
            &self.store,
            &ctx.organization_id,
            body.target.as_deref(),
            &self.settings.default_region,
        )
        .await?;
        let snapshot_name = body
            .snapshot
            .as_deref()
            .unwrap_or(&self.settings.default_snapshot);
        // From an image definition: the snapshot of that definition, built first if need be.
        let build = match &body.build_info {
            Some(info) => Some(
                self.snapshots
                    .snapshot_for_build(&ctx.organization_id, BuildInfo::parse(info)?)
                    .await?,
            ),
            None => None,
        };
        let choice = match &build {
            Some(snapshot) => crate::snapshot::SnapshotChoice {
                name: snapshot.name.clone(),
                image: snapshot.runnable_image().to_owned(),
                resources: None,
            },
            None => {
                self.snapshots
                    .resolve_for_sandbox(ctx, snapshot_name)
                    .await?
            }
        };
        // A matching warm sandbox is already started: take it instead of making one.
        if warm_pool.is_none()
            && build.is_none()
            && let Some(claimed) =
                crate::warm_pool::claim(self, ctx, &body, snapshot_name, &target).await?
        {
            return Ok(claimed);
        }
        let pending_build = build
            .as_ref()
            .filter(|s| s.state != "active")
            .map(|s| s.id.clone());
        let (cpu, memory, disk) =
            choice
                .resources
                .unwrap_or((DEFAULT_CPU, DEFAULT_MEMORY_GIB, DEFAULT_DISK_GIB));
        let image_ref = choice.image;
        // Held until the sandbox is stored, so its volumes cannot be deleted meanwhile.
        let mounts_guard = self.volumes.lock_mounts(&ctx.organization_id).await?;
        let mounts = self
            .volumes
            .resolve_mounts(&ctx.organization_id, &body.volumes)
            .await?;
        let secrets = crate::secret::resolve_mounts(
            &self.store,
            &ctx.organization_id,
            body.secrets.as_deref().unwrap_or_default(),
            &body.env,
        )
        .await?;
        let id = uuid::Uuid::new_v4().to_string();
        let name = body.name.clone().unwrap_or_else(|| id.clone());
        if self
            .store
            .find_sandbox(&ctx.organization_id, &name)
            .await?
            .is_some()
        {
            return Err(ApiError::Conflict(format!(
                "Sandbox with name {name} already exists"
            )));
        }
        let runner_id = self.runner.place(&id, &target).await?;
        let ts = now();
        let settings = claim_for(&body, name);
        let row = SandboxRow {
            id: id.clone(),
            organization_id: ctx.organization_id.clone(),
            name: settings.name,
            snapshot: Some(choice.name),
            image_ref: image_ref.clone(),
            os_user: body.user.clone().unwrap_or_else(|| "daytona".into()),
            env: serde_json::to_string(&body.env).expect("string map serializes"),
            labels: settings.labels,
            public: settings.public,
            network_block_all: body.network_block_all.unwrap_or(false),
            network_allow_list: body.network_allow_list.clone(),
            domain_allow_list: body.domain_allow_list.clone(),
            target,
            cpu: body.cpu.unwrap_or(cpu).into(),
            gpu: 0,
            memory: body.memory.unwrap_or(memory).into(),
            disk: body.disk.unwrap_or(disk).into(),
            state: if pending_build.is_some() {
                "pending_build".into()
            } else {
                "creating".into()
            },
            desired_state: "started".into(),
            error_reason: None,
            auto_stop_interval: settings.auto_stop_interval,
            auto_archive_interval: settings.auto_archive_interval,
            auto_delete_interval: settings.auto_delete_interval,
            auto_pause_interval: settings.auto_pause_interval,
            runner_id: Some(runner_id),
            daemon_version: None,
            created_at: ts.clone(),
            updated_at: ts.clone(),
            last_activity_at: ts,
            auto_destroy_at: settings.auto_destroy_at,
            volumes: serde_json::to_string(&mounts).expect("mounts serialize"),
            warm_pool_id: warm_pool.map(str::to_string),
            pooled: warm_pool.is_some(),
            secrets: serde_json::to_string(&secrets).expect("secret mounts serialize"),
            backup_state: "None".into(),
            backup_key: None,
            backup_created_at: None,
            backup_error: None,
        };
        // Check and insert under one lock so concurrent creates cannot overrun a quota together.
        let quota_guard = self.lock_quota(&ctx.organization_id).await?;
        let quotas = self.store.organization_quotas(&ctx.organization_id).await?;
        let used = self.store.resource_use(&ctx.organization_id, None).await?;
        quota::check(
            &quotas,
            used,
            quota::Request {
                cpu: row.cpu,
                memory: row.memory,
                disk: row.disk,
            },
            true,
        )?;
        self.store.insert_sandbox(&row).await.map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                ApiError::Conflict(format!("Sandbox with name {} already exists", row.name))
            }
            e => e.into(),
        })?;
        drop(quota_guard);
        drop(mounts_guard);
        let recorded = started.elapsed();
        tracing::info!(sandbox = %id, image = %image_ref, warm_pool, "creating sandbox");
        if !row.pooled {
            self.events
                .publish(Event::sandbox_created(&self.to_dto(row.clone())));
        }

        let request = runner_request(&row)?;
        // A build takes long: answer `pending_build` at once, the SDK follows the build's log.
        // Nobody waits for a pooled sandbox.
        let wait = if pending_build.is_some() || row.pooled {
            Duration::ZERO
        } else {
            WAIT_FOR_RUNNER
        };
        let this = self.clone();
        let sandbox = self
            .transition(
                &id,
                async move {
                    match pending_build {
                        Some(snapshot) => this.provision_after_build(request, snapshot).await,
                        None => this.provision(request).await,
                    }
                },
                wait,
            )
            .await;
        tracing::debug!(
            sandbox = %id,
            record_ms = ms(recorded),
            total_ms = ms(started.elapsed()),
            "create answered"
        );
        sandbox
    }

    /// A create from an image definition: waits for the build of `snapshot` (the sandbox is
    /// `pending_build` meanwhile), then provisions from its image; a failed build ends the
    /// sandbox in `build_failed` with the build's reason.
    async fn provision_after_build(
        self: Arc<Self>,
        mut request: SandboxRequest,
        snapshot: String,
    ) -> Result<(), sqlx::Error> {
        match self.snapshots.wait_for_build(&snapshot).await {
            Ok(image) => {
                self.store.set_sandbox_image(&request.id, &image).await?;
                self.store
                    .set_sandbox_state(&request.id, "creating", None)
                    .await?;
                request.image = image;
                self.provision(request).await
            }
            Err(reason) => {
                tracing::warn!(sandbox = %request.id, %reason, "sandbox image build failed");
                self.store
                    .set_sandbox_state(&request.id, "build_failed", Some(&reason))
                    .await
            }
        }
    }

    /// The runner's part of a create: make the sandbox and record it started, or the reason it
    /// could not be made.
    async fn provision(self: Arc<Self>, request: SandboxRequest) -> Result<(), sqlx::Error> {
        let runner_started = std::time::Instant::now();
        let created = self.runner.create_sandbox(&request).await;
        tracing::debug!(
            sandbox = %request.id,
            runner_ms = ms(runner_started.elapsed()),
            "runner finished the create"
        );
        match created {
            Ok(_) => {
                self.store
                    .set_sandbox_started(&request.id, self.runner.id(), None)
                    .await
            }
            Err(e) => self.fail(&request.id, "create", e).await,
        }
    }

    /// Records a runner failure as the sandbox's `error` state with the reason.
    pub(super) async fn fail(
        &self,
        id: &str,
        op: &str,
        e: impl std::fmt::Display,
    ) -> Result<(), sqlx::Error> {
        tracing::warn!(sandbox = %id, error = %e, "sandbox {op} failed");
        self.store
            .set_sandbox_state(id, "error", Some(&format!("{op} failed: {e}")))
            .await
    }

    /// Runs `work` detached under the sandbox's lock and waits for it up to [`WAIT_FOR_RUNNER`];
    /// returns the sandbox as it is then.
    pub(super) async fn run_transition(
        self: &Arc<Self>,
        id: &str,
        work: impl Future<Output = Result<(), sqlx::Error>> + Send + 'static,
    ) -> ApiResult<Sandbox> {
        self.transition(id, work, WAIT_FOR_RUNNER).await
    }

    /// [`Self::run_transition`], waiting at most `wait`.
    async fn transition(
        self: &Arc<Self>,
        id: &str,
        work: impl Future<Output = Result<(), sqlx::Error>> + Send + 'static,
        wait: Duration,
    ) -> ApiResult<Sandbox> {
        let sandbox_id = id.to_string();
        let this = self.clone();
        let detached = async move {
            let _guard = match this.lock_sandbox(&sandbox_id).await {
                Ok(guard) => guard,
                Err(e) => {
                    // The transitional state is recorded: end it rather than leave it hanging.
                    if let Err(e) = this.fail(&sandbox_id, "operation", &e).await {
                        tracing::error!(sandbox = %sandbox_id, error = %e, "could not record sandbox state");
                    }
                    return;
                }
            };
            let before = this.store.sandbox_record(&sandbox_id).await.ok().flatten();
            if let Err(e) = work.await {
                tracing::error!(sandbox = %sandbox_id, error = %e, "could not record sandbox state");
            }
            if let Some(before) = before {
                this.announce(&before).await;
            }
        };
        // Detached, yet part of the request's trace (a runner's job for it continues that too).
        let task = tokio::spawn(detached.instrument(tracing::Span::current()));
        let _ = tokio::time::timeout(wait, task).await;
        let row = self.store.sandbox_by_id(id).await?;
        match row {
            Some(row) => Ok(self.to_dto(row)),
            // Destroyed: answer with the final state (the SDK treats it as gone).
            None => {
                let mut row = self
                    .store
                    .sandbox_record(id)
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
                row.state = "destroyed".into();
                Ok(self.to_dto(row))
            }
        }
    }

    pub async fn start(
        self: &Arc<Self>,
        ctx: &AuthContext,
        id_or_name: &str,
    ) -> ApiResult<Sandbox> {
        let row = self.find(ctx, id_or_name).await?;
        self.start_sandbox(row).await
    }

    pub(crate) async fn start_sandbox(self: &Arc<Self>, row: SandboxRow) -> ApiResult<Sandbox> {
        match row.state.as_str() {
            "started" | "starting" | "creating" | "resuming" => return Ok(self.to_dto(row)),
            "paused" => return self.resume_sandbox(row).await,
            "stopped" | "error" | "archived" => {}
            other => {
                return Err(ApiError::Conflict(format!(
                    "Sandbox {} cannot be started while {other}",
                    row.id
                )));
            }
        }
        let quotas = self.store.organization_quotas(&row.organization_id).await?;
        let used = self
            .store
            .resource_use(&row.organization_id, Some(&row.id))
            .await?;
        let request = quota::Request {
            cpu: row.cpu,
            memory: row.memory,
            disk: row.disk,
        };
        quota::check(&quotas, used, request, true)?;
        let id = row.id.clone();
        // As upstream: a start (not a resume) invalidates the preview token handed out before.
        self.store
            .forget_sandbox_secret(&id, SecretKind::PreviewToken)
            .await?;
        if row.state == "archived" {
            return self.restore_sandbox(row, StoredCopy::Archive).await;
        }
        // Its runner is gone (or should not take it now): the newest backup starts elsewhere.
        if let Some(reason) = self.runner.unfit_to_start(&id).await? {
            return match (row.backup_state.as_str(), row.backup_key.clone()) {
                ("Completed", Some(key)) => {
                    tracing::info!(sandbox = %id, %reason, key, "starting the sandbox from its backup on another runner");
                    self.restore_sandbox(row, StoredCopy::Backup(key)).await
                }
                (backup, _) => Err(ApiError::Conflict(format!(
                    "Sandbox {id} has no runner and backup is not completed (backup state: {backup}): {reason}"
                ))),
            };
        }
        self.store.set_sandbox_desired_state(&id, "started").await?;
        self.store.set_sandbox_state(&id, "starting", None).await?;
        self.announce(&row).await;
        self.run_transition(&id, self.clone().boot(id.clone()))
            .await
    }

    /// The runner's part of a start: run the existing sandbox and record it started, or the
    /// reason it could not start.
    async fn boot(self: Arc<Self>, id: String) -> Result<(), sqlx::Error> {
        match self.runner.start_sandbox(&id).await {
            Ok(_) => {
                // The secrets may have changed since the sandbox was made.
                self.push_secret_env(&id).await;
                self.store
                    .set_sandbox_started(&id, self.runner.id(), None)
                    .await
            }
            Err(e) => self.fail(&id, "start", e).await,
        }
    }

    pub async fn stop(self: &Arc<Self>, ctx: &AuthContext, id_or_name: &str) -> ApiResult<Sandbox> {
        let row = self.find(ctx, id_or_name).await?;
        self.stop_sandbox(row).await
    }

    /// Stops a sandbox; an ephemeral one (`autoDeleteInterval` 0) is deleted once stopped.
    pub(crate) async fn stop_sandbox(self: &Arc<Self>, row: SandboxRow) -> ApiResult<Sandbox> {
        match row.state.as_str() {
            "stopped" | "stopping" => return Ok(self.to_dto(row)),
            "started" | "error" | "paused" => {}
            other => {
                return Err(ApiError::Conflict(format!(
                    "Sandbox {} cannot be stopped while {other}",
                    row.id
                )));
            }
        }
        let id = row.id.clone();
        self.store.set_sandbox_desired_state(&id, "stopped").await?;
        self.store.set_sandbox_state(&id, "stopping", None).await?;
        self.announce(&row).await;
        let this = self.clone();
        let sid = id.clone();
        let ephemeral = row.auto_delete_interval == 0;
        let sandbox = self
            .run_transition(&id, async move {
                match this.runner.stop_sandbox(&sid).await {
                    Ok(()) => {
                        this.store.set_sandbox_state(&sid, "stopped", None).await?;
                        // Every stop gets a backup (an ephemeral sandbox is deleted instead).
                        if !ephemeral {
                            this.store.request_backup(&sid).await?;
                        }
                        Ok(())
                    }
                    Err(e) => this.fail(&sid, "stop", e).await,
                }
            })
            .await?;
        // Taken in the background once the stop has answered and released the sandbox.
        self.backups_wanted();
        if sandbox.state == "stopped" && sandbox.auto_delete_interval == 0 {
            let row = self.store.sandbox_by_id(&id).await?;
            if let Some(row) = row {
                return self.delete_sandbox(row).await;
            }
        }
        Ok(sandbox)
    }

    pub async fn delete(
        self: &Arc<Self>,
        ctx: &AuthContext,
        id_or_name: &str,
    ) -> ApiResult<Sandbox> {
        let row = self.find(ctx, id_or_name).await?;
        self.delete_sandbox(row).await
    }

    pub(crate) async fn delete_sandbox(self: &Arc<Self>, row: SandboxRow) -> ApiResult<Sandbox> {
        let id = row.id.clone();
        self.store
            .set_sandbox_desired_state(&id, "destroyed")
            .await?;
        self.store
            .set_sandbox_state(&id, "destroying", None)
            .await?;
        self.announce(&row).await;
        let this = self.clone();
        let sid = id.clone();
        self.run_transition(&id, async move {
            match this.runner.destroy_sandbox(&sid).await {
                Ok(()) => {
                    this.delete_archive(&sid).await;
                    // Read under the lock: a backup that just completed is in the row now.
                    let backup = this
                        .store
                        .sandbox_record(&sid)
                        .await?
                        .and_then(|r| r.backup_key);
                    if let Some(key) = backup {
                        this.delete_disk_copy(&sid, &key).await;
                    }
                    this.store.set_sandbox_state(&sid, "destroyed", None).await
                }
                Err(e) => this.fail(&sid, "destroy", e).await,
            }
        })
        .await
    }

    /// Freezes a started sandbox: processes and memory are kept, cpu is not used.
    pub(crate) async fn pause_sandbox(self: &Arc<Self>, row: SandboxRow) -> ApiResult<Sandbox> {
        match row.state.as_str() {
            "paused" | "pausing" => return Ok(self.to_dto(row)),
            "started" => {}
            other => {
                return Err(ApiError::Conflict(format!(
                    "Sandbox {} cannot be paused while {other}; only started sandboxes can",
                    row.id
                )));
            }
        }
        let id = row.id.clone();
        self.store.set_sandbox_desired_state(&id, "paused").await?;
        self.store.set_sandbox_state(&id, "pausing", None).await?;
        self.announce(&row).await;
        let this = self.clone();
        let sid = id.clone();
        self.run_transition(&id, async move {
            match this.runner.pause_sandbox(&sid).await {
                Ok(()) => this.store.set_sandbox_state(&sid, "paused", None).await,
                Err(e) => this.fail(&sid, "pause", e).await,
            }
        })
        .await
    }

    async fn resume_sandbox(self: &Arc<Self>, row: SandboxRow) -> ApiResult<Sandbox> {
        let id = row.id.clone();
        self.store.set_sandbox_desired_state(&id, "started").await?;
        self.store.set_sandbox_state(&id, "resuming", None).await?;
        self.announce(&row).await;
        let this = self.clone();
        let sid = id.clone();
        self.run_transition(&id, async move {
            match this.runner.resume_sandbox(&sid).await {
                Ok(()) => {
                    this.store
                        .set_sandbox_started(&sid, this.runner.id(), None)
                        .await
                }
                Err(e) => this.fail(&sid, "resume", e).await,
            }
        })
        .await
    }

    /// Changes cpu and memory (live when started) and disk (only while stopped).
    pub(crate) async fn resize_sandbox(
        self: &Arc<Self>,
        row: SandboxRow,
        cpu: Option<u32>,
        memory: Option<u32>,
        disk: Option<u32>,
    ) -> ApiResult<Sandbox> {
        for (field, value) in [("cpu", cpu), ("memory", memory), ("disk", disk)] {
            if value == Some(0) {
                return Err(ApiError::BadRequest(format!("{field}: must be at least 1")));
            }
        }
        let running = match row.state.as_str() {
            "started" => true,
            "stopped" => false,
            other => {
                return Err(ApiError::Conflict(format!(
                    "Sandbox {} cannot be resized while {other}; stop or start it first",
                    row.id
                )));
            }
        };
        let new = quota::Request {
            cpu: cpu.map_or(row.cpu, i64::from),
            memory: memory.map_or(row.memory, i64::from),
            disk: disk.map_or(row.disk, i64::from),
        };
        if running && new.disk != row.disk {
            return Err(ApiError::BadRequest(
                "disk: can only be changed while the sandbox is stopped".into(),
            ));
        }
        {
            let _quota_guard = self.lock_quota(&row.organization_id).await?;
            let quotas = self.store.organization_quotas(&row.organization_id).await?;
            let used = self
                .store
                .resource_use(&row.organization_id, Some(&row.id))
                .await?;
            quota::check(&quotas, used, new, running)?;
        }
        let id = row.id.clone();
        let previous = row.state.clone();
        self.store.set_sandbox_state(&id, "resizing", None).await?;
        self.announce(&row).await;
        let this = self.clone();
        let sid = id.clone();
        let resize = daytona_runner::Resize {
            cpu: cpu.filter(|c| i64::from(*c) != row.cpu),
            memory_gib: memory.filter(|m| i64::from(*m) != row.memory),
            disk_gib: disk.filter(|d| i64::from(*d) != row.disk),
        };
        self.run_transition(&id, async move {
            match this.runner.resize_sandbox(&sid, &resize).await {
                Ok(()) => {
                    this.store
                        .set_sandbox_resources(&sid, new.cpu, new.memory, new.disk)
                        .await?;
                    this.store.set_sandbox_state(&sid, &previous, None).await
                }
                // A refused resize (e.g. shrinking below the data on disk) changes nothing.
                Err(e) => {
                    tracing::warn!(sandbox = %sid, error = %e, "resize failed");
                    this.store
                        .set_sandbox_state(&sid, &previous, Some(&format!("resize failed: {e}")))
                        .await
                }
            }
        })
        .await
    }

    pub async fn list(
        &self,
        ctx: &AuthContext,
        filter: &SandboxFilter,
    ) -> ApiResult<(Vec<SandboxRow>, bool)> {
        let mut rows = self
            .store
            .list_sandboxes(&ctx.organization_id, filter)
            .await?;
        let more = rows.len() as i64 > filter.limit;
        rows.truncate(filter.limit as usize);
        Ok((rows, more))
    }

    /// Brings stored states in line with the runtime after a restart: sandboxes that are still
    /// running are adopted, an interrupted create or start is carried out again (the caller asked
    /// for a running sandbox), an interrupted archive whose upload completed ends `archived`, the
    /// others are recorded as stopped.
    pub async fn reconcile(self: &Arc<Self>) -> ApiResult<()> {
        self.volumes.reconcile().await?;
        for row in self.store.live_sandboxes().await? {
            self.reconcile_sandbox(row).await?;
        }
        Ok(())
    }

    /// Takes over what an API process that died left half-done: sandboxes in a transitional
    /// state for longer than [`ORPHAN_AGE`] whose lock nobody holds (a dead holder's lock
    /// lapses sooner) are reconciled as after a restart.
    pub async fn recover_orphans(self: &Arc<Self>) -> ApiResult<()> {
        // First, as at startup: sandboxes waiting for a build wait for the resumed build.
        self.snapshots.recover_orphans().await?;
        let cutoff =
            (chrono::Utc::now() - ORPHAN_AGE).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for row in self.store.live_sandboxes().await? {
            if TRANSITIONAL.contains(&row.state.as_str()) && row.updated_at < cutoff {
                tracing::info!(sandbox = %row.id, state = %row.state, since = %row.updated_at, "taking over an abandoned operation");
                self.reconcile_sandbox(row).await?;
            }
        }
        Ok(())
    }

    /// Brings one stored sandbox in line with its runner after its operation was interrupted.
    async fn reconcile_sandbox(self: &Arc<Self>, row: SandboxRow) -> ApiResult<()> {
        // A sandbox whose lock is held is in an operation of another API process.
        let Some(_guard) = self
            .cluster
            .try_lock(&format!("sandbox:{}", row.id))
            .await?
        else {
            tracing::info!(sandbox = %row.id, "sandbox is in another process's operation");
            return Ok(());
        };
        if row.state == "pending_build" && row.desired_state == "started" {
            self.resume_pending_build(&row).await?;
            return Ok(());
        }
        let running = match self.runner.daemon_address(&row.id).await {
            Ok(addr) => addr.is_some(),
            // Its runner cannot be asked now (a remote one not heard from since this
            // restart): the runner's own reports settle the state when it is back.
            Err(daytona_runner::RunnerError::Unavailable(reason)) => {
                tracing::info!(sandbox = %row.id, %reason, "sandbox state left as it is");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(sandbox = %row.id, error = %e, "could not read sandbox status");
                false
            }
        };
        if !running
            && row.desired_state == "started"
            && matches!(row.state.as_str(), "creating" | "starting")
        {
            self.retry_interrupted(&row)?;
            return Ok(());
        }
        if row.state == "restoring" && !running && self.retry_backup_restore(&row).await? {
            return Ok(());
        }
        if row.state == "archiving" && !running && self.finish_interrupted_archive(&row.id).await? {
            tracing::info!(sandbox = %row.id, from = %row.state, to = "archived", "reconciled sandbox state");
            self.announce(&row).await;
            return Ok(());
        }
        let state = match (row.state.as_str(), running) {
            ("started", true) | ("stopped", false) | ("error", _) | ("archived", _) => {
                return Ok(());
            }
            // Its files are still in object storage; a half-made local copy is replaced
            // by the next restore.
            ("restoring", false) => "archived",
            (_, true) => "started",
            ("destroying", false) => {
                let _ = self.runner.destroy_sandbox(&row.id).await;
                "destroyed"
            }
            (_, false) => "stopped",
        };
        tracing::info!(sandbox = %row.id, from = %row.state, to = state, "reconciled sandbox state");
        self.store.set_sandbox_state(&row.id, state, None).await?;
        self.announce(&row).await;
        Ok(())
    }

    /// Goes on, in the background, with a create that a restart interrupted while it waited
    /// for its image's build (which the snapshot reconcile has started again).
    async fn resume_pending_build(self: &Arc<Self>, row: &SandboxRow) -> ApiResult<()> {
        tracing::info!(sandbox = %row.id, "resuming a create that waits for its build");
        let request = runner_request(row)?;
        let snapshot = match &row.snapshot {
            Some(name) => self.store.find_snapshot(&row.organization_id, name).await?,
            None => None,
        };
        let id = row.id.clone();
        let Some(snapshot) = snapshot else {
            self.store
                .set_sandbox_state(
                    &id,
                    "build_failed",
                    Some("the snapshot being built for this sandbox no longer exists"),
                )
                .await?;
            self.announce(row).await;
            return Ok(());
        };
        let (this, work_this) = (self.clone(), self.clone());
        let work = work_this.provision_after_build(request, snapshot.id);
        tokio::spawn(async move {
            if let Err(e) = this.run_transition(&id, work).await {
                tracing::error!(sandbox = %id, error = %e, "resuming a create after a restart failed");
            }
        });
        Ok(())
    }

    /// Carries out again, in the background, a restore from a backup that a restart
    /// interrupted (one from an archive, whose object still exists, goes back to `archived`);
    /// returns whether it did.
    async fn retry_backup_restore(self: &Arc<Self>, row: &SandboxRow) -> ApiResult<bool> {
        let ("Completed", Some(key)) = (row.backup_state.as_str(), row.backup_key.clone()) else {
            return Ok(false);
        };
        let archive = super::capture::archive_key(&row.id);
        if matches!(self.runner.archive_exists(&archive).await, Ok(true)) {
            return Ok(false);
        }
        tracing::info!(sandbox = %row.id, key, "retrying an interrupted restore from a backup");
        let work = self
            .clone()
            .restore_on_runner(row.clone(), StoredCopy::Backup(key))?;
        let (this, id) = (self.clone(), row.id.clone());
        tokio::spawn(async move {
            if let Err(e) = this.run_transition(&id, work).await {
                tracing::error!(sandbox = %id, error = %e, "retrying a restore after a restart failed");
            }
        });
        Ok(true)
    }

    /// Carries out again, in the background, a create or start that a restart interrupted.
    fn retry_interrupted(self: &Arc<Self>, row: &SandboxRow) -> ApiResult<()> {
        tracing::info!(sandbox = %row.id, state = %row.state, "retrying an interrupted transition");
        let request = (row.state == "creating")
            .then(|| runner_request(row))
            .transpose()?;
        let (this, id) = (self.clone(), row.id.clone());
        let work = {
            let (this, id) = (this.clone(), id.clone());
            async move {
                match request {
                    // Whatever the interrupted create made is discarded, then made anew.
                    Some(request) => match this.runner.destroy_sandbox(&id).await {
                        Ok(()) => this.provision(request).await,
                        Err(e) => this.fail(&id, "create", e).await,
                    },
                    None => this.boot(id).await,
                }
            }
        };
        tokio::spawn(async move {
            if let Err(e) = this.run_transition(&id, work).await {
                tracing::error!(sandbox = %id, error = %e, "retry after a restart failed");
            }
        });
        Ok(())
    }
}

/// What the runner needs to make the stored sandbox `row` (a create, or its retry after a restart).
pub(super) fn runner_request(row: &SandboxRow) -> ApiResult<SandboxRequest> {
    Ok(SandboxRequest {
        id: row.id.clone(),
        image: row.image_ref.clone(),
        // The row records `daytona` when the caller named no user; the runner then prefers the
        // image's own non-root user, so that choice is passed on as `None`.
        user: (row.os_user != "daytona").then(|| row.os_user.clone()),
        env: serde_json::from_str(&row.env)
            .map_err(|e| ApiError::Internal(format!("stored env of sandbox {}: {e}", row.id)))?,
        cpu: row.cpu as u32,
        memory_gib: row.memory as u32,
        disk_gib: row.disk as u32,
        network: super::settings::network_policy(
            row.network_block_all,
            row.network_allow_list.as_deref(),
        )?,
        volumes: volume::runner_mounts(&row.volumes),
        secret_env: crate::secret::mount_env(&row.secrets),
    })
}

/// Parses the `labels` query parameter: a JSON object of strings.
pub fn parse_label_filter(raw: &str) -> ApiResult<Vec<(String, String)>> {
    let map: BTreeMap<String, String> = serde_json::from_str(raw).map_err(|e| {
        ApiError::BadRequest(format!(
            "labels: expected a JSON object of strings, e.g. {{\"env\":\"dev\"}} ({e})"
        ))
    })?;
    Ok(map.into_iter().collect())
}
