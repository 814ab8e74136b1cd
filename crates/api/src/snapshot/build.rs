//! Snapshots built from a Dockerfile (`buildInfo`, what the SDK's declarative `Image`
//! produces): the build runs on the runner in the background (`building` → `active`, or
//! `error` with the reason), its log goes to `<data>/build-logs/<snapshot id>.log` and is
//! served, live with `follow=true`, at `/snapshots/{id}/build-logs` and, for a sandbox created
//! from an image, `/sandbox/{id}/build-logs`.
//!
//! A sandbox created from an image definition uses the organization's snapshot of the same
//! definition (`build_ref`: the Dockerfile and the sorted context hashes), building one named
//! `build-<ref prefix>` when there is none.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use daytona_runner::image::build::{BuildLog, BuildRequest};
use daytona_runner::image::dockerfile::{self, Instruction};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::{SnapshotService, new_row};
use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::store::{SnapshotBuildRow, SnapshotRow, now};

/// How builds run and where their logs go.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub log_dir: PathBuf,
    /// `BUILD_TIMEOUT_MIN`
    pub timeout: Duration,
    /// `BUILD_CPU_CORES`, `BUILD_MEMORY_GB`: each `RUN` sandbox's limits.
    pub cpu: u32,
    pub memory_gib: u32,
    pub disk_gib: u32,
}

/// Builds in progress and their logs.
pub struct Builds {
    settings: BuildSettings,
    live: Mutex<HashMap<String, Arc<LiveLog>>>,
}

impl Builds {
    pub fn new(settings: BuildSettings) -> Self {
        Builds {
            settings,
            live: Mutex::default(),
        }
    }

    fn log_path(&self, snapshot_id: &str) -> PathBuf {
        self.settings.log_dir.join(format!("{snapshot_id}.log"))
    }

    fn live(&self, snapshot_id: &str) -> Option<Arc<LiveLog>> {
        self.live
            .lock()
            .expect("build log map poisoned")
            .get(snapshot_id)
            .cloned()
    }
}

/// A build's log file while the build runs; followers wait on `grown`.
struct LiveLog {
    file: Mutex<std::fs::File>,
    grown: tokio::sync::Notify,
}

impl BuildLog for LiveLog {
    fn line(&self, line: &str) {
        let mut file = self.file.lock().expect("build log poisoned");
        if let Err(e) = writeln!(file, "{line}") {
            tracing::warn!(error = %e, "could not write a build log line");
        }
        drop(file);
        self.grown.notify_waiters();
    }
}

/// `buildInfo` of `POST /snapshots` and `POST /sandbox`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub dockerfile_content: String,
    #[serde(default)]
    pub context_hashes: Vec<String>,
}

impl BuildInfo {
    /// Parses and checks `buildInfo` (a Dockerfile this server can build).
    pub fn parse(value: &serde_json::Value) -> ApiResult<Self> {
        let info: BuildInfo = serde_json::from_value(value.clone())
            .map_err(|e| ApiError::BadRequest(format!("buildInfo: {e}")))?;
        dockerfile::parse(&info.dockerfile_content)
            .map_err(|e| ApiError::BadRequest(format!("buildInfo.dockerfileContent: {e}")))?;
        if let Some(bad) = info
            .context_hashes
            .iter()
            .find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(ApiError::BadRequest(format!(
                "buildInfo.contextHashes: {bad:?} is not a context hash"
            )));
        }
        Ok(info)
    }

    /// What names identical definitions: the Dockerfile and the sorted context hashes.
    pub fn build_ref(&self) -> String {
        let mut hashes = self.context_hashes.clone();
        hashes.sort();
        let mut hasher = Sha256::new();
        hasher.update(self.dockerfile_content.as_bytes());
        for hash in &hashes {
            hasher.update(b"\0");
            hasher.update(hash.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

impl SnapshotService {
    pub(super) fn builds(&self) -> ApiResult<&Arc<Builds>> {
        self.builds.as_ref().ok_or_else(|| {
            ApiError::BadRequest(
                "buildInfo: this server does not build images; create the snapshot from an image \
                 reference (imageName)"
                    .into(),
            )
        })
    }

    /// Records the definition of the new snapshot `row` (state `building`) and starts its build.
    pub(super) async fn start_build(
        self: &Arc<Self>,
        row: &SnapshotRow,
        info: BuildInfo,
    ) -> ApiResult<()> {
        self.builds()?;
        let ts = now();
        self.store
            .insert_snapshot_build(&SnapshotBuildRow {
                snapshot_id: row.id.clone(),
                organization_id: row.organization_id.clone(),
                build_ref: info.build_ref(),
                dockerfile: info.dockerfile_content.clone(),
                context_hashes: serde_json::to_string(&info.context_hashes)
                    .expect("strings serialize"),
                created_at: ts.clone(),
                updated_at: ts,
            })
            .await?;
        self.launch_build(row, info)
    }

    /// Starts the build of snapshot `row` from its recorded definition `info`, in the
    /// background, with a fresh log.
    fn launch_build(self: &Arc<Self>, row: &SnapshotRow, info: BuildInfo) -> ApiResult<()> {
        let builds = self.builds()?.clone();
        std::fs::create_dir_all(&builds.settings.log_dir).map_err(|e| {
            ApiError::Internal(format!(
                "cannot create {}: {e}",
                builds.settings.log_dir.display()
            ))
        })?;
        let path = builds.log_path(&row.id);
        let file = std::fs::File::create(&path)
            .map_err(|e| ApiError::Internal(format!("cannot create {}: {e}", path.display())))?;
        let log = Arc::new(LiveLog {
            file: Mutex::new(file),
            grown: tokio::sync::Notify::new(),
        });
        builds
            .live
            .lock()
            .expect("build log map poisoned")
            .insert(row.id.clone(), log.clone());
        let this = self.clone();
        let row = row.clone();
        tokio::spawn(async move {
            this.run_build(&builds, row, info, log).await;
        });
        Ok(())
    }

    async fn run_build(
        &self,
        builds: &Builds,
        row: SnapshotRow,
        info: BuildInfo,
        log: Arc<LiveLog>,
    ) {
        let settings = &builds.settings;
        let request = BuildRequest {
            id: row.id.clone(),
            base_images: self.base_images(&row.organization_id, &info).await,
            dockerfile: info.dockerfile_content,
            context_hashes: info.context_hashes,
            organization_id: row.organization_id.clone(),
            cpu: settings.cpu,
            memory_gib: settings.memory_gib,
            disk_gib: settings.disk_gib,
            timeout: settings.timeout,
        };
        let outcome = self
            .runner
            .build_image(&request, log.clone())
            .await
            .map_err(|e| e.to_string());
        if let Err(reason) = &outcome {
            log.line(&format!("Build failed: {reason}"));
        }
        if let Err(e) = self.finish_capture(&row, outcome).await {
            tracing::error!(snapshot = %row.id, error = %e, "could not record the build's outcome");
        }
        builds
            .live
            .lock()
            .expect("build log map poisoned")
            .remove(&row.id);
        log.grown.notify_waiters();
    }

    /// `FROM` names that are the organization's snapshots, mapped to their images.
    async fn base_images(&self, org: &str, info: &BuildInfo) -> BTreeMap<String, String> {
        let mut bases = BTreeMap::new();
        let steps = dockerfile::parse(&info.dockerfile_content).unwrap_or_default();
        for step in steps {
            if let Instruction::From { image } = step.instruction
                && let Ok(Some(snapshot)) = self.store.find_snapshot(org, &image).await
                && snapshot.state == "active"
                && !snapshot.runnable_image().is_empty()
            {
                bases.insert(image, snapshot.runnable_image().to_owned());
            }
        }
        bases
    }

    /// The snapshot a sandbox created from `info` uses: the organization's snapshot of the same
    /// definition, or a new one (`build-<ref prefix>`) whose build starts now.
    pub async fn snapshot_for_build(
        self: &Arc<Self>,
        org: &str,
        info: BuildInfo,
    ) -> ApiResult<SnapshotRow> {
        self.builds()?;
        let build_ref = info.build_ref();
        if let Some(row) = self.store.snapshot_for_build(org, &build_ref).await? {
            return Ok(row);
        }
        let name = format!("build-{}", &build_ref[..16]);
        let mut row = new_row(org, false, &name, "", None, (1, 1, 3));
        row.state = "building".into();
        match self.store.insert_snapshot(&row).await {
            Ok(()) => {}
            // A concurrent create of the same definition won, or an earlier build of it failed
            // under this name: use, or retry, that one.
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                let existing = self.store.find_snapshot(org, &name).await?.ok_or_else(|| {
                    ApiError::Conflict(format!("Snapshot {name} changed concurrently"))
                })?;
                if existing.state != "error" {
                    return Ok(existing);
                }
                self.store.delete_snapshot(&existing.id).await?;
                self.store.insert_snapshot(&row).await?;
            }
            Err(e) => return Err(e.into()),
        }
        self.start_build(&row, info).await?;
        Ok(row)
    }

    /// Builds again a snapshot whose build a restart interrupted (the layer cache keeps what
    /// the first attempt finished); one without a recorded definition ends in `error`.
    pub(super) async fn resume_build(self: &Arc<Self>, row: &SnapshotRow) -> ApiResult<()> {
        let Some(build) = self.store.snapshot_build(&row.id).await? else {
            return self
                .interrupted(row, "its build definition is missing")
                .await;
        };
        let info = BuildInfo {
            dockerfile_content: build.dockerfile,
            context_hashes: serde_json::from_str(&build.context_hashes).unwrap_or_default(),
        };
        tracing::info!(snapshot = %row.name, "resuming a build the restart interrupted");
        if let Err(e) = self.launch_build(row, info) {
            return self.interrupted(row, &e.to_string()).await;
        }
        Ok(())
    }

    /// Waits for the build of snapshot `id` to end: its image, or why there is none.
    pub async fn wait_for_build(&self, id: &str) -> Result<String, String> {
        let limit = self
            .builds
            .as_ref()
            .map_or(Duration::ZERO, |b| b.settings.timeout)
            + Duration::from_secs(60);
        let started = tokio::time::Instant::now();
        loop {
            let row = self
                .store
                .snapshot_by_id(id)
                .await
                .map_err(|e| format!("cannot read snapshot {id}: {e}"))?
                .ok_or_else(|| format!("snapshot {id} was deleted during its build"))?;
            match row.state.as_str() {
                "active" => return Ok(row.runnable_image().to_owned()),
                "building" | "pending" if started.elapsed() < limit => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                "building" | "pending" => {
                    return Err(format!("the build of snapshot {} did not finish", row.name));
                }
                state => {
                    return Err(format!(
                        "the build of snapshot {} failed ({state}): {}",
                        row.name,
                        row.error_reason.unwrap_or_default()
                    ));
                }
            }
        }
    }

    /// The snapshot's build log; with `follow`, a stream that ends when the build does.
    async fn build_log(&self, snapshot_id: &str, follow: bool) -> ApiResult<Response> {
        let builds = self.builds()?.clone();
        let path = builds.log_path(snapshot_id);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::NotFound(format!(
                    "Snapshot {snapshot_id} has no build log"
                )));
            }
            Err(e) => return Err(ApiError::Internal(format!("{}: {e}", path.display()))),
        };
        let id = snapshot_id.to_owned();
        let stream = futures::stream::unfold(Some(file), move |file| {
            let builds = builds.clone();
            let id = id.clone();
            async move {
                let mut file = file?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    // Registered before reading, so a line written in between is not missed.
                    let live = follow.then(|| builds.live(&id)).flatten();
                    let mut grown = live.as_ref().map(|l| Box::pin(l.grown.notified()));
                    if let Some(grown) = grown.as_mut() {
                        grown.as_mut().enable();
                    }
                    match file.read(&mut buf).await {
                        Err(e) => return Some((Err(e), None)),
                        Ok(0) => match grown {
                            Some(grown) => {
                                // Woken by new lines, the build's end, or at least once a second.
                                let _ = tokio::time::timeout(Duration::from_secs(1), grown).await;
                            }
                            None => return None,
                        },
                        Ok(n) => {
                            buf.truncate(n);
                            return Some((Ok(axum::body::Bytes::from(buf)), Some(file)));
                        }
                    }
                }
            }
        });
        Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::from_stream(stream),
        )
            .into_response())
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(snapshot_logs))
        .routes(routes!(snapshot_logs_url))
        .routes(routes!(sandbox_logs))
        .routes(routes!(sandbox_logs_url))
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: Option<String>,
}

impl LogQuery {
    fn follow(&self) -> ApiResult<bool> {
        match self.follow.as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "follow: '{other}' is not true or false"
            ))),
        }
    }
}

/// `scheme://host` of the API as the caller reached it.
fn api_base(headers: &HeaderMap) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or(v).trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let scheme = header("x-forwarded-proto").unwrap_or_else(|| "http".into());
    let host = header("x-forwarded-host")
        .or_else(|| header("host"))
        .unwrap_or_else(|| "localhost".into());
    format!("{scheme}://{host}/api")
}

#[utoipa::path(get, path = "/snapshots/{id}/build-logs", tag = "snapshots", operation_id = "snapshot_build_snapshot_logs", params(("id" = String, Path)))]
async fn snapshot_logs(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Response> {
    let row = state.snapshots.find(&ctx, &id).await?;
    state.snapshots.build_log(&row.id, query.follow()?).await
}

#[utoipa::path(get, path = "/snapshots/{id}/build-logs-url", tag = "snapshots", operation_id = "snapshot_build_snapshot_logs_url", params(("id" = String, Path)))]
async fn snapshot_logs_url(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let row = state.snapshots.find(&ctx, &id).await?;
    Ok(Json(serde_json::json!({
        "url": format!("{}/snapshots/{}/build-logs", api_base(&headers), row.id)
    })))
}

/// The snapshot a sandbox was built from.
async fn sandbox_build_snapshot(
    state: &AppState,
    ctx: &AuthContext,
    id: &str,
) -> ApiResult<SnapshotRow> {
    let sandbox = state.sandboxes.find(ctx, id).await?;
    let name = sandbox
        .snapshot
        .ok_or_else(|| ApiError::NotFound(format!("Sandbox {id} was not built from an image")))?;
    let snapshot = state.snapshots.find(ctx, &name).await?;
    match state.store.snapshot_build(&snapshot.id).await? {
        Some(_) => Ok(snapshot),
        None => Err(ApiError::NotFound(format!(
            "Sandbox {id} was not built from an image"
        ))),
    }
}

#[utoipa::path(get, path = "/sandbox/{id}/build-logs", tag = "snapshots", operation_id = "snapshot_build_sandbox_logs", params(("id" = String, Path)))]
async fn sandbox_logs(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Response> {
    let snapshot = sandbox_build_snapshot(&state, &ctx, &id).await?;
    state
        .snapshots
        .build_log(&snapshot.id, query.follow()?)
        .await
}

#[utoipa::path(get, path = "/sandbox/{id}/build-logs-url", tag = "snapshots", operation_id = "snapshot_build_sandbox_logs_url", params(("id" = String, Path)))]
async fn sandbox_logs_url(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let sandbox = state.sandboxes.find(&ctx, &id).await?;
    sandbox_build_snapshot(&state, &ctx, &id).await?;
    Ok(Json(serde_json::json!({
        "url": format!("{}/sandbox/{}/build-logs", api_base(&headers), sandbox.id)
    })))
}
