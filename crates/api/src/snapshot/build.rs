//! Snapshots built from a Dockerfile (`buildInfo`, what the SDK's declarative `Image`
//! produces): the build runs on the runner in the background (`building` → `active`, or
//! `error` with the reason), its log goes to the store (`build_log_lines`), so every API replica
//! serves it, live with `follow=true` (woken through the cluster), at
//! `/snapshots/{id}/build-logs` and, for a sandbox created from an image,
//! `/sandbox/{id}/build-logs`. A remote runner reports its lines while it builds
//! (`POST /jobs/{id}/logs`, to any replica) and all of them again with its outcome.
//!
//! A sandbox created from an image definition uses the organization's snapshot of the same
//! definition (`build_ref`: the Dockerfile and the sorted context hashes), building one named
//! `build-<ref prefix>` when there is none.

use std::collections::BTreeMap;
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
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{SnapshotService, new_row};
use crate::AppState;
use crate::auth::AuthContext;
use crate::cluster::{Cluster, LockGuard, channel};
use crate::error::{ApiError, ApiResult};
use crate::store::{SnapshotBuildRow, SnapshotRow, Store, now};

/// How builds run.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    /// `BUILD_TIMEOUT_MIN`
    pub timeout: Duration,
    /// `BUILD_CPU_CORES`, `BUILD_MEMORY_GB`: each `RUN` sandbox's limits.
    pub cpu: u32,
    pub memory_gib: u32,
    pub disk_gib: u32,
}

/// How builds run.
pub struct Builds {
    settings: BuildSettings,
}

impl Builds {
    pub fn new(settings: BuildSettings) -> Self {
        Builds { settings }
    }
}

/// Lines a follower reads from the store at once.
const LOG_PAGE: i64 = 500;

/// What goes into a build log: this attempt's own lines, or lines another party numbered.
enum LogEntry {
    Own(String),
    Numbered {
        origin: String,
        first: usize,
        lines: Vec<String>,
    },
}

/// The log of one build attempt. Lines are stored in order by a writer task (the runner calls
/// [`BuildLog::line`] synchronously) and every replica's followers are woken through the
/// cluster; [`LiveLog::close`] waits until everything written is stored.
struct LiveLog {
    sender: Mutex<Option<mpsc::UnboundedSender<LogEntry>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl LiveLog {
    fn start(store: Store, cluster: Arc<dyn Cluster>, snapshot_id: String) -> Arc<Self> {
        let (sender, mut entries) = mpsc::unbounded_channel::<LogEntry>();
        // This attempt's own numbering: another attempt (after a takeover) has its own.
        let origin = format!("api-{}", uuid::Uuid::new_v4());
        let writer = tokio::spawn(async move {
            let mut next = 0usize;
            while let Some(entry) = entries.recv().await {
                let mut queued = vec![entry];
                while let Ok(entry) = entries.try_recv() {
                    queued.push(entry);
                }
                for (origin, first, lines) in batches(&origin, &mut next, queued) {
                    if let Err(e) = store
                        .append_build_log(&snapshot_id, &origin, first as i64, &lines)
                        .await
                    {
                        tracing::warn!(snapshot = %snapshot_id, error = %e, "could not store build log lines");
                    }
                }
                cluster.publish(channel::BUILD_LOG, snapshot_id.clone());
            }
        });
        Arc::new(LiveLog {
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
        })
    }

    fn send(&self, entry: LogEntry) {
        if let Some(sender) = self.sender.lock().expect("build log poisoned").as_ref() {
            let _ = sender.send(entry);
        }
    }

    /// Stops taking lines and waits until those written are stored.
    async fn close(&self) {
        drop(self.sender.lock().expect("build log poisoned").take());
        let writer = self.writer.lock().expect("build log poisoned").take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }
}

/// Queued log entries as numbered batches, in order: consecutive own lines become one batch of
/// `own_origin`, numbered on from `next`.
fn batches(
    own_origin: &str,
    next: &mut usize,
    queued: Vec<LogEntry>,
) -> Vec<(String, usize, Vec<String>)> {
    let mut out: Vec<(String, usize, Vec<String>)> = Vec::new();
    for entry in queued {
        match entry {
            LogEntry::Own(line) => {
                match out.last_mut() {
                    Some((origin, _, lines)) if origin == own_origin => lines.push(line),
                    _ => out.push((own_origin.to_owned(), *next, vec![line])),
                }
                *next += 1;
            }
            LogEntry::Numbered {
                origin,
                first,
                lines,
            } => out.push((origin, first, lines)),
        }
    }
    out
}

impl BuildLog for LiveLog {
    fn line(&self, line: &str) {
        self.send(LogEntry::Own(line.to_owned()));
    }

    fn numbered(&self, origin: &str, first: usize, lines: &[String]) {
        self.send(LogEntry::Numbered {
            origin: origin.to_owned(),
            first,
            lines: lines.to_vec(),
        });
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

    /// Records the definition of the new snapshot `row` (state `building`, its lock `guard`
    /// held) and starts its build.
    pub(super) async fn start_build(
        self: &Arc<Self>,
        row: &SnapshotRow,
        info: BuildInfo,
        guard: LockGuard,
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
        self.launch_build(row, info, guard, None)
    }

    /// Starts the build of snapshot `row` from its recorded definition `info` in the
    /// background, holding the snapshot's lock `guard` until it ends; `resumed` is the first
    /// log line of an attempt that takes over an interrupted one.
    fn launch_build(
        self: &Arc<Self>,
        row: &SnapshotRow,
        info: BuildInfo,
        guard: LockGuard,
        resumed: Option<String>,
    ) -> ApiResult<()> {
        let builds = self.builds()?.clone();
        let log = LiveLog::start(self.store.clone(), self.cluster.clone(), row.id.clone());
        if let Some(line) = resumed {
            log.line(&line);
        }
        let this = self.clone();
        let row = row.clone();
        tokio::spawn(async move {
            this.run_build(&builds, row, info, log).await;
            drop(guard);
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
        // Every line is stored before the state changes, so a follower that sees the build
        // ended has read its whole log.
        log.close().await;
        if let Err(e) = self.finish_capture(&row, outcome).await {
            tracing::error!(snapshot = %row.id, error = %e, "could not record the build's outcome");
        }
        self.cluster.publish(channel::BUILD_LOG, row.id.clone());
    }

    /// Lines `offset..` of the build log that remote runner job `job_id` reports while it
    /// builds snapshot `snapshot_id` (a batch reported twice is stored once).
    pub async fn record_runner_log(
        &self,
        snapshot_id: &str,
        job_id: &str,
        offset: u64,
        lines: &[String],
    ) -> ApiResult<()> {
        if self.store.snapshot_by_id(snapshot_id).await?.is_none() {
            return Err(ApiError::NotFound(format!(
                "Snapshot {snapshot_id} of job {job_id} was deleted"
            )));
        }
        let offset = i64::try_from(offset)
            .map_err(|_| ApiError::BadRequest(format!("offset: {offset} is too large")))?;
        self.store
            .append_build_log(snapshot_id, job_id, offset, lines)
            .await?;
        self.cluster
            .publish(channel::BUILD_LOG, snapshot_id.to_owned());
        Ok(())
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
        let guard = self.lock_snapshot(&row.id).await?;
        self.start_build(&row, info, guard).await?;
        Ok(row)
    }

    /// Builds again a snapshot whose build was interrupted (a restart, or the API replica running
    /// it died), holding its lock `guard`: the layer cache keeps what the first attempt
    /// finished, and a remote runner's build still running is awaited rather than repeated.
    /// One without a recorded definition ends in `error`.
    pub(super) async fn resume_build(
        self: &Arc<Self>,
        row: &SnapshotRow,
        guard: LockGuard,
    ) -> ApiResult<()> {
        let Some(build) = self.store.snapshot_build(&row.id).await? else {
            return self
                .interrupted(row, "its build definition is missing")
                .await;
        };
        let info = BuildInfo {
            dockerfile_content: build.dockerfile,
            context_hashes: serde_json::from_str(&build.context_hashes).unwrap_or_default(),
        };
        tracing::info!(snapshot = %row.name, "resuming an interrupted build");
        let line = "Resuming the build: the API process running it stopped".to_owned();
        if let Err(e) = self.launch_build(row, info, guard, Some(line)) {
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

    /// The snapshot's build log; with `follow`, a stream that ends when the build does (on
    /// whichever API replica it runs).
    async fn build_log(&self, snapshot_id: &str, follow: bool) -> ApiResult<Response> {
        self.builds()?;
        let first = self.store.build_log_after(snapshot_id, 0, LOG_PAGE).await?;
        if first.is_empty() && self.store.snapshot_build(snapshot_id).await?.is_none() {
            return Err(ApiError::NotFound(format!(
                "Snapshot {snapshot_id} has no build log"
            )));
        }
        let store = self.store.clone();
        let id = snapshot_id.to_owned();
        // Subscribed before the first read, so a line stored in between still wakes us.
        let wakeups = follow.then(|| self.cluster.subscribe(channel::BUILD_LOG));
        let follower = LogFollower {
            store,
            id,
            after: 0,
            follow,
            wakeups,
            first: Some(first),
        };
        let stream = futures::stream::unfold(follower, |mut f| async move {
            match f.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(axum::body::Bytes::from(chunk)), f)),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), f.finished())),
            }
        });
        Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::from_stream(stream),
        )
            .into_response())
    }
}

/// Reads a build log from the store, following it while the build is in progress.
struct LogFollower {
    store: Store,
    id: String,
    /// Position of the last line sent.
    after: i64,
    follow: bool,
    wakeups: Option<futures::stream::BoxStream<'static, String>>,
    /// The page read to check that there is a log.
    first: Option<Vec<(i64, String)>>,
}

impl LogFollower {
    fn finished(mut self) -> Self {
        self.follow = false;
        self.after = i64::MAX;
        self
    }

    /// The next lines, waiting for them while the build goes on; `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<String>, sqlx::Error> {
        loop {
            // Wake-ups that came while lines were sent are covered by the read below.
            if let Some(wakeups) = self.wakeups.as_mut() {
                while let Some(Some(_)) = wakeups.next().now_or_never() {}
            }
            // The state is read before the lines: lines are stored before a build ends.
            let building = self.follow
                && self
                    .store
                    .snapshot_by_id(&self.id)
                    .await?
                    .is_some_and(|row| {
                        matches!(row.state.as_str(), "building" | "pending" | "pulling")
                    });
            let lines = match self.first.take() {
                Some(lines) => lines,
                None => {
                    self.store
                        .build_log_after(&self.id, self.after, LOG_PAGE)
                        .await?
                }
            };
            if let Some((last, _)) = lines.last() {
                self.after = *last;
                let mut chunk = String::new();
                for (_, line) in lines {
                    chunk.push_str(&line);
                    chunk.push('\n');
                }
                return Ok(Some(chunk));
            }
            if !building {
                return Ok(None);
            }
            let Some(wakeups) = self.wakeups.as_mut() else {
                return Ok(None);
            };
            // Woken by lines of this build (on any replica), or at least once a second.
            let id = &self.id;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(woken) = wakeups.next().await {
                    if &woken == id {
                        return;
                    }
                }
            })
            .await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_lines_are_numbered_on_and_reported_lines_keep_their_numbers() {
        let mut next = 3;
        let own = |l: &str| LogEntry::Own(l.to_owned());
        let out = batches(
            "api-1",
            &mut next,
            vec![
                own("a"),
                own("b"),
                LogEntry::Numbered {
                    origin: "job-1".into(),
                    first: 7,
                    lines: vec!["x".into()],
                },
                own("c"),
            ],
        );
        assert_eq!(
            out,
            vec![
                ("api-1".to_owned(), 3, vec!["a".to_owned(), "b".to_owned()]),
                ("job-1".to_owned(), 7, vec!["x".to_owned()]),
                ("api-1".to_owned(), 5, vec!["c".to_owned()]),
            ]
        );
        assert_eq!(next, 6);
    }
}
