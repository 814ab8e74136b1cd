//! The registered remote runners as one [`SandboxRunner`]: a new sandbox is placed on a runner
//! by availability score, and every later call for it becomes a job for that runner
//! ([`RemoteRunner`]). The runners' health checks keep their state, metrics and sandboxes
//! current; one not heard from within its contact interval plus `RUNNER_HEALTH_TIMEOUT_SECONDS`
//! becomes unresponsive and its sandboxes report it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daytona_runner::image::build::{BuildLog, BuildRequest};
use daytona_runner::jobs::{BuildOutcome, Healthcheck, Job, Metrics};
use daytona_runner::{
    CapturedImage, NetworkPolicy, PulledImage, Resize, RunnerError, SandboxRequest, SandboxRunner,
    SandboxUsage, TrafficEndpoint,
};
use serde::de::DeserializeOwned;

use futures::StreamExt;

use super::jobs::{JobHub, outcome};
use super::score::{Usage, availability_score};
use crate::cluster::{Cluster, channel};
use crate::invalidation::Invalidations;
use crate::store::{JobRow, RunnerReport, RunnerRow, Store};

/// What placement and health tracking need from configuration.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// `RUNNER_AVAILABILITY_SCORE_THRESHOLD`
    pub availability_score_threshold: i64,
    /// `RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD`
    pub declarative_build_score_threshold: i64,
    /// `RUNNER_START_SCORE_THRESHOLD`: below it, a stopped sandbox with a completed backup
    /// starts on another runner.
    pub start_score_threshold: i64,
    /// `RUNNER_HEALTH_TIMEOUT_SECONDS`: silence tolerated past a runner's contact interval.
    pub health_timeout: Duration,
    /// Region of images pulled for snapshots and of the default runner (`DEFAULT_REGION_ID`).
    pub default_region: String,
    /// How long a snapshot pull waits for a runner to join.
    pub runner_wait: Duration,
}

/// What the API last heard about a sandbox from its runner.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    daemon: Option<SocketAddr>,
    oom_kills: Option<u64>,
}

pub struct Fleet {
    store: Store,
    hub: JobHub,
    settings: FleetSettings,
    seen: Mutex<HashMap<String, Seen>>,
    /// Woken when a runner reports healthy (a pull waiting for any runner).
    joined: tokio::sync::Notify,
    cluster: Arc<dyn Cluster>,
    /// Split proxies and gateways learn at once that a runner's sandboxes changed state.
    invalidations: Invalidations,
    /// This process's name in [`channel::SANDBOX_MOVED`] messages.
    instance: String,
}

/// One runner's side of the job protocol: each call is a job, awaited until the runner reports.
pub struct RemoteRunner<'a> {
    fleet: &'a Fleet,
    runner: RunnerRow,
}

impl RemoteRunner<'_> {
    pub fn id(&self) -> &str {
        &self.runner.id
    }

    pub async fn run<T: DeserializeOwned>(&self, job: Job) -> Result<T, RunnerError> {
        Ok(self.run_job(job).await?.1)
    }

    /// Runs `job`; returns its id with its result.
    async fn run_job<T: DeserializeOwned>(&self, job: Job) -> Result<(String, T), RunnerError> {
        let fleet = self.fleet;
        let id = fleet
            .hub
            .submit(&fleet.store, &self.runner.id, &job)
            .await
            .map_err(|e| RunnerError::Unavailable(format!("cannot store a job: {e}")))?;
        let result = fleet.await_job(&id, &self.runner.id).await?;
        Ok((id, result))
    }

    /// Runs `job`, unless an earlier job of this runner does the same work (an API process that
    /// died gave it): then that one's outcome is awaited, so the work is not done twice.
    async fn run_once<T: DeserializeOwned>(&self, job: Job) -> Result<T, RunnerError> {
        match self
            .fleet
            .earlier_job(&job, Some(&self.runner.id), false)
            .await
        {
            Some(earlier) => self.fleet.await_job(&earlier.id, &self.runner.id).await,
            None => self.run(job).await,
        }
    }
}

/// A score threshold and the setting it comes from (named when nothing passes it).
#[derive(Debug, Clone, Copy)]
struct Threshold {
    setting: &'static str,
    score: i64,
}

/// How often a build log repeats that its build still waits for a runner.
const WAIT_NOTICE_EVERY: Duration = Duration::from_secs(30);

/// The build log line saying why work waits for a runner, and for how long it may.
fn waiting_line(threshold: Threshold, why: &str, waited: Duration, limit: Duration) -> String {
    format!(
        "Waiting for a runner with an availability score of at least {} ({}): {why}; waited {}s \
         of at most {}s",
        threshold.score,
        threshold.setting,
        waited.as_secs(),
        limit.as_secs()
    )
}

/// Whether a wait that has lasted `waited` is due a notice, the last given at `last`: at once,
/// then every [`WAIT_NOTICE_EVERY`].
fn wait_notice_due(last: Option<Duration>, waited: Duration) -> bool {
    last.is_none_or(|last| waited.saturating_sub(last) >= WAIT_NOTICE_EVERY)
}

/// Why an operator's flag keeps new sandboxes off `runner`, if one does.
fn not_schedulable(runner: &RunnerRow) -> Option<String> {
    let flag = if runner.draining {
        "draining"
    } else if runner.unschedulable {
        "unschedulable"
    } else {
        return None;
    };
    Some(format!("runner {} ({}) is {flag}", runner.id, runner.name))
}

/// How long a runner may hold a job without reporting before the job fails (upstream's
/// limits: the runner does not report progress on a job, so only its outcome counts).
fn job_time_limit(job_type: &str) -> Duration {
    const MINUTE: u64 = 60;
    Duration::from_secs(match job_type {
        "PULL_SNAPSHOT" | "BUILD_SNAPSHOT" | "SNAPSHOT_SANDBOX" | "FORK_SANDBOX"
        | "ARCHIVE_SANDBOX" | "RESTORE_SANDBOX" | "CREATE_BACKUP" => 120 * MINUTE,
        "CREATE_SANDBOX" => 30 * MINUTE,
        _ => 10 * MINUTE,
    })
}

/// How often taken jobs are checked against their time limit.
const STALE_JOB_SWEEP: Duration = Duration::from_secs(60);

/// How long the runner monitor's lease outlives its holder's last round.
const MONITOR_LEASE: Duration = Duration::from_secs(5);

/// Reason recorded on the sandboxes of a runner that stopped answering; the health check that
/// brings the runner back finds them by it.
fn unresponsive_marker(runner_id: &str) -> String {
    format!("runner {runner_id} is unresponsive")
}

impl Fleet {
    /// Must be called inside a Tokio runtime: wake-ups from the other API processes of
    /// `cluster` are relayed to this one's waiters.
    pub fn new(store: Store, settings: FleetSettings, cluster: Arc<dyn Cluster>) -> Arc<Fleet> {
        let mut joins = cluster.subscribe(channel::RUNNER_JOINED);
        let mut moves = cluster.subscribe(channel::SANDBOX_MOVED);
        let fleet = Arc::new(Fleet {
            store,
            hub: JobHub::new(cluster.clone()),
            settings,
            seen: Mutex::new(HashMap::new()),
            joined: tokio::sync::Notify::new(),
            invalidations: Invalidations::new(cluster.clone()),
            cluster,
            instance: uuid::Uuid::new_v4().to_string(),
        });
        let weak = Arc::downgrade(&fleet);
        tokio::spawn(async move {
            while joins.next().await.is_some() {
                match weak.upgrade() {
                    Some(fleet) => fleet.joined.notify_waiters(),
                    None => return,
                }
            }
        });
        // What another API process started, stopped or destroyed is looked up afresh here.
        let weak = Arc::downgrade(&fleet);
        tokio::spawn(async move {
            while let Some(message) = moves.next().await {
                let Some(fleet) = weak.upgrade() else { return };
                if let Some((from, id)) = message.split_once(' ')
                    && from != fleet.instance
                {
                    fleet.seen.lock().expect("seen map").remove(id);
                }
            }
        });
        fleet
    }

    pub fn hub(&self) -> &JobHub {
        &self.hub
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records the default runner (`DEFAULT_RUNNER_API_KEY` is its token).
    pub async fn ensure_default_runner(&self, token: &str) -> Result<(), sqlx::Error> {
        self.store
            .ensure_runner(
                &uuid::Uuid::new_v4().to_string(),
                "default",
                &self.settings.default_region,
                &crate::auth::hash_key(token),
            )
            .await
    }

    /// Why `runner` cannot take work now, or `None` when it can.
    fn why_not_alive(&self, runner: &RunnerRow) -> Option<String> {
        let name = &runner.name;
        match runner.state.as_str() {
            "ready" => {}
            "initializing" => {
                return Some(format!(
                    "runner {} ({name}) has not reported yet",
                    runner.id
                ));
            }
            _ => {
                return Some(format!(
                    "{} ({name}): no contact since {}",
                    unresponsive_marker(&runner.id),
                    runner.last_checked.as_deref().unwrap_or("it registered")
                ));
            }
        }
        let silent_for = runner
            .last_checked
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| chrono::Utc::now().signed_duration_since(t))
            .and_then(|d| d.to_std().ok())
            .unwrap_or_default();
        let allowed = Duration::from_secs(runner.contact_interval_seconds.max(1) as u64)
            + self.settings.health_timeout;
        (silent_for > allowed).then(|| {
            format!(
                "{} ({name}): no contact for {}s (allowed {}s)",
                unresponsive_marker(&runner.id),
                silent_for.as_secs(),
                allowed.as_secs()
            )
        })
    }

    async fn unavailability(&self, runner_id: &str) -> Option<String> {
        match self.store.runner_by_id(runner_id).await {
            Ok(Some(runner)) => self.why_not_alive(&runner),
            Ok(None) => Some(format!("runner {runner_id} was removed")),
            Err(e) => Some(format!("cannot read runner {runner_id}: {e}")),
        }
    }

    fn remote(&self, runner: RunnerRow) -> RemoteRunner<'_> {
        RemoteRunner {
            fleet: self,
            runner,
        }
    }

    /// The runner recorded for `sandbox_id`.
    async fn holder_of(&self, sandbox_id: &str) -> Result<RunnerRow, RunnerError> {
        let store_error = |e: sqlx::Error| RunnerError::Unavailable(format!("database: {e}"));
        let runner_id = self
            .store
            .sandbox_record(sandbox_id)
            .await
            .map_err(store_error)?
            .and_then(|row| row.runner_id)
            .ok_or_else(|| {
                RunnerError::Unavailable(format!("sandbox {sandbox_id} is on no runner"))
            })?;
        self.store
            .runner_by_id(&runner_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                RunnerError::Unavailable(format!(
                    "sandbox {sandbox_id} is on runner {runner_id}, which is not registered"
                ))
            })
    }

    /// The runner that holds `sandbox_id`, if it can take work.
    async fn runner_of(&self, sandbox_id: &str) -> Result<RemoteRunner<'_>, RunnerError> {
        let runner = self.holder_of(sandbox_id).await?;
        if let Some(reason) = self.why_not_alive(&runner) {
            return Err(RunnerError::Unavailable(format!(
                "sandbox {sandbox_id}'s files are on {reason}"
            )));
        }
        Ok(self.remote(runner))
    }

    /// Runners of `region` that can take work, each with its availability score now (its
    /// reported usage, and the allocation the API has placed on it since).
    async fn candidates(&self, region: &str) -> Result<Vec<(RunnerRow, i64, i64)>, RunnerError> {
        let store_error = |e: sqlx::Error| RunnerError::Unavailable(format!("database: {e}"));
        let runners = self
            .store
            .list_runners(Some(region))
            .await
            .map_err(store_error)?;
        if runners.is_empty() {
            return Err(RunnerError::Unavailable(format!(
                "no runner is registered in region {region}: start one with DAYTONA_ROLES=runner \
                 and DAYTONA_API_URL pointing at this API"
            )));
        }
        let mut alive = Vec::new();
        let mut reasons = Vec::new();
        for runner in runners {
            if let Some(reason) = self
                .why_not_alive(&runner)
                .or_else(|| not_schedulable(&runner))
            {
                reasons.push(reason);
                continue;
            }
            let allocation = self
                .store
                .runner_allocation(&runner.id)
                .await
                .map_err(store_error)?;
            let metrics: Metrics = serde_json::from_str(&runner.metrics).unwrap_or_default();
            let percent = |part: f64, whole: f64| {
                if whole > 0.0 {
                    part * 100.0 / whole
                } else {
                    0.0
                }
            };
            let score = availability_score(&Usage {
                cpu_percent: metrics.current_cpu_usage_percentage,
                memory_percent: metrics.current_memory_usage_percentage,
                disk_percent: metrics.current_disk_usage_percentage,
                load_per_cpu: if metrics.cpu > 0.0 {
                    metrics.current_cpu_load_average / metrics.cpu
                } else {
                    0.0
                },
                allocated_cpu_percent: percent(allocation.cpu as f64, metrics.cpu),
                allocated_memory_percent: percent(allocation.memory as f64, metrics.memory_gib),
                allocated_disk_percent: percent(allocation.disk as f64, metrics.disk_gib),
                started_sandboxes: allocation.started as f64,
            });
            alive.push((runner, score, allocation.started));
        }
        if alive.is_empty() {
            return Err(RunnerError::Unavailable(format!(
                "no runner is available in region {region}: {}",
                reasons.join("; ")
            )));
        }
        Ok(alive)
    }

    /// The runner for new work in `region`: among those scoring at least `threshold`, the one
    /// running the fewest sandboxes (the score gates, the count spreads), then the best score.
    async fn choose(&self, region: &str, threshold: Threshold) -> Result<RunnerRow, RunnerError> {
        let Threshold {
            setting,
            score: threshold,
        } = threshold;
        let candidates = self.candidates(region).await?;
        let scores: Vec<String> = candidates
            .iter()
            .map(|(r, score, _)| format!("{} ({}) scores {score}", r.id, r.name))
            .collect();
        candidates
            .into_iter()
            .filter(|(_, score, _)| *score >= threshold)
            .min_by_key(|(_, score, started)| (*started, -score))
            .map(|(runner, _, _)| runner)
            .ok_or_else(|| {
                RunnerError::Unavailable(format!(
                    "no runner in region {region} has an availability score of at least \
                     {threshold} ({setting}): {}",
                    scores.join(", ")
                ))
            })
    }

    /// A runner for work that is not a sandbox's, waiting up to the configured time for one
    /// to join or to pass `threshold` (the API may start before its runners); `log` is told
    /// why it waits. Running out of time fails with the reason naming the threshold.
    async fn any_runner(
        &self,
        threshold: Threshold,
        log: Option<&dyn BuildLog>,
    ) -> Result<RunnerRow, RunnerError> {
        let limit = self.settings.runner_wait;
        let started = tokio::time::Instant::now();
        let mut noticed = None;
        loop {
            let joined = self.joined.notified();
            tokio::pin!(joined);
            joined.as_mut().enable();
            let why = match self.choose(&self.settings.default_region, threshold).await {
                Ok(runner) => return Ok(runner),
                Err(e) => e,
            };
            let waited = started.elapsed();
            if waited >= limit {
                return Err(RunnerError::Unavailable(format!(
                    "waited {}s for a runner: {why}",
                    waited.as_secs()
                )));
            }
            if let Some(log) = log
                && wait_notice_due(noticed, waited)
            {
                noticed = Some(waited);
                let why = why.to_string();
                log.line(&waiting_line(threshold, &why, waited, limit));
            }
            tokio::select! {
                _ = joined => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Waits for job `job_id` of `runner_id` to finish, and reads its result.
    async fn await_job<T: DeserializeOwned>(
        &self,
        job_id: &str,
        runner_id: &str,
    ) -> Result<T, RunnerError> {
        let finished = self
            .hub
            .wait(&self.store, job_id, || async move {
                self.unavailability(runner_id).await
            })
            .await?;
        outcome(&finished)
    }

    /// The newest job doing the same work as `job` (its type and resource) that is unfinished on
    /// a runner that can still finish it, or with `completed_too` also one that completed; on
    /// `runner_id` when given.
    async fn earlier_job(
        &self,
        job: &Job,
        runner_id: Option<&str>,
        completed_too: bool,
    ) -> Option<JobRow> {
        let encoded = job.encode();
        let earlier = match self
            .store
            .latest_job(&encoded.job_type, &encoded.resource_id, runner_id)
            .await
        {
            Ok(earlier) => earlier?,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for an earlier job; submitting a new one");
                return None;
            }
        };
        let wanted = match earlier.state.as_str() {
            // Worth awaiting only while its runner can still finish it.
            daytona_runner::jobs::status::PENDING | daytona_runner::jobs::status::IN_PROGRESS => {
                self.unavailability(&earlier.runner_id).await.is_none()
            }
            daytona_runner::jobs::status::COMPLETED => completed_too,
            _ => false,
        };
        wanted.then(|| {
            tracing::info!(job = %earlier.id, job_type = %earlier.job_type, runner = %earlier.runner_id, "awaiting an earlier job for the same work");
            earlier
        })
    }

    /// Every runner that can take work now.
    async fn alive_runners(&self) -> Result<Vec<RunnerRow>, RunnerError> {
        let runners = self
            .store
            .list_runners(None)
            .await
            .map_err(|e| RunnerError::Unavailable(format!("database: {e}")))?;
        Ok(runners
            .into_iter()
            .filter(|r| self.why_not_alive(r).is_none())
            .collect())
    }

    /// Makes `image` available on `runner` before a sandbox of it is created there.
    async fn ensure_image(
        &self,
        runner: &RemoteRunner<'_>,
        image: &str,
    ) -> Result<(), RunnerError> {
        let state = self
            .store
            .runner_image_state(runner.id(), image)
            .await
            .map_err(|e| RunnerError::Unavailable(format!("database: {e}")))?;
        if state.as_deref() == Some("ready") {
            return Ok(());
        }
        self.pull_on(runner, image).await.map(|_| ())
    }

    async fn pull_on(
        &self,
        runner: &RemoteRunner<'_>,
        image: &str,
    ) -> Result<PulledImage, RunnerError> {
        self.record_image(runner.id(), image, "pulling", None).await;
        let pulled = runner
            .run_once::<PulledImage>(Job::PullSnapshot {
                reference: image.to_owned(),
            })
            .await;
        match &pulled {
            Ok(_) => self.record_image(runner.id(), image, "ready", None).await,
            Err(e) => {
                self.record_image(runner.id(), image, "error", Some(&e.to_string()))
                    .await
            }
        }
        pulled
    }

    async fn record_image(&self, runner_id: &str, image: &str, state: &str, error: Option<&str>) {
        if let Err(e) = self
            .store
            .set_runner_image_state(runner_id, image, state, error)
            .await
        {
            tracing::warn!(runner = runner_id, image, error = %e, "cannot record a runner's image");
        }
    }

    /// Records where the daemon of a sandbox this process just changed is; the other API
    /// processes drop what they had cached.
    fn remember(&self, sandbox_id: &str, daemon: Option<SocketAddr>) {
        self.cache(sandbox_id, daemon);
        self.moved(sandbox_id);
    }

    fn cache(&self, sandbox_id: &str, daemon: Option<SocketAddr>) {
        self.seen
            .lock()
            .expect("seen map")
            .entry(sandbox_id.to_owned())
            .or_default()
            .daemon = daemon;
    }

    fn forget(&self, sandbox_id: &str) {
        self.seen.lock().expect("seen map").remove(sandbox_id);
        self.moved(sandbox_id);
    }

    fn moved(&self, sandbox_id: &str) {
        self.cluster.publish(
            channel::SANDBOX_MOVED,
            format!("{} {sandbox_id}", self.instance),
        );
    }

    /// Takes a runner's health check: records it as ready with its metrics and score, and
    /// brings its sandboxes in line with what it reports (after it was unresponsive).
    pub async fn healthcheck(
        &self,
        runner: &RunnerRow,
        report: &Healthcheck,
    ) -> Result<(), sqlx::Error> {
        let metrics = report.metrics.clone().unwrap_or_default();
        let score = availability_score(&Usage {
            cpu_percent: metrics.current_cpu_usage_percentage,
            memory_percent: metrics.current_memory_usage_percentage,
            disk_percent: metrics.current_disk_usage_percentage,
            load_per_cpu: if metrics.cpu > 0.0 {
                metrics.current_cpu_load_average / metrics.cpu
            } else {
                0.0
            },
            allocated_cpu_percent: 0.0,
            allocated_memory_percent: 0.0,
            allocated_disk_percent: 0.0,
            started_sandboxes: metrics.current_started_sandboxes,
        });
        let metrics_json = serde_json::to_string(&metrics).expect("metrics serialize");
        self.store
            .record_runner_health(
                &runner.id,
                &RunnerReport {
                    domain: report.domain.as_deref(),
                    api_url: report.api_url.as_deref(),
                    proxy_url: report.proxy_url.as_deref(),
                    app_version: &report.app_version,
                    metrics: &metrics_json,
                    availability_score: score,
                    contact_interval_seconds: report.contact_interval_seconds.unwrap_or(30) as i64,
                },
            )
            .await?;
        let stale = self.stale_copies(runner, report).await?;
        {
            let mut seen = self.seen.lock().expect("seen map");
            for sandbox in report.sandboxes.iter().filter(|s| !stale.contains(&s.id)) {
                let entry = seen.entry(sandbox.id.clone()).or_default();
                entry.daemon = sandbox.daemon_address;
                entry.oom_kills = Some(sandbox.oom_kills);
            }
        }
        let marker = unresponsive_marker(&runner.id);
        for id in self
            .store
            .sandboxes_failed_with(&runner.id, &marker)
            .await?
        {
            match report.sandboxes.iter().find(|s| s.id == id) {
                Some(found) => {
                    tracing::info!(sandbox = %id, runner = %runner.id, state = %found.state, "runner is back: sandbox reconciled");
                    self.set_sandbox_state(&id, &found.state, None).await?;
                }
                None => {
                    let reason = format!(
                        "runner {} ({}) came back without this sandbox",
                        runner.id, runner.name
                    );
                    self.set_sandbox_state(&id, "error", Some(&reason)).await?;
                }
            }
        }
        if runner.state != "ready" {
            tracing::info!(runner = %runner.id, name = %runner.name, score, "runner is ready");
        }
        self.cluster
            .publish(channel::RUNNER_JOINED, runner.id.clone());
        Ok(())
    }

    /// Sandboxes `runner` reports that now live on another runner (started elsewhere from a
    /// backup while this one was gone). Each gets a discard job here, once, so the stale copy
    /// never comes back as a second live sandbox.
    async fn stale_copies(
        &self,
        runner: &RunnerRow,
        report: &Healthcheck,
    ) -> Result<Vec<String>, sqlx::Error> {
        let recorded: std::collections::HashSet<String> = self
            .store
            .sandbox_ids_recorded_on(&runner.id)
            .await?
            .into_iter()
            .collect();
        let mut stale = Vec::new();
        for sandbox in &report.sandboxes {
            if recorded.contains(&sandbox.id) {
                continue;
            }
            let Some(row) = self.store.sandbox_record(&sandbox.id).await? else {
                continue; // not this deployment's: left alone
            };
            let Some(holder) = row.runner_id.filter(|holder| *holder != runner.id) else {
                continue;
            };
            stale.push(sandbox.id.clone());
            let job = Job::DiscardSandbox {
                id: sandbox.id.clone(),
            };
            let encoded = job.encode();
            if self
                .store
                .has_unfinished_job(&runner.id, &encoded.job_type, &encoded.resource_id)
                .await?
            {
                continue;
            }
            tracing::info!(sandbox = %sandbox.id, runner = %runner.id, holder = %holder, "runner is back with a copy of a sandbox that moved: discarding it there");
            self.hub.submit(&self.store, &runner.id, &job).await?;
        }
        Ok(stale)
    }

    /// Records a sandbox state the runner side learned (a runner silent or back) and tells
    /// split proxies and gateways, which may hold its old address.
    async fn set_sandbox_state(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        self.store.set_sandbox_state(id, state, reason).await?;
        self.invalidations.sandbox(id);
        Ok(())
    }

    /// Marks runners that went silent as unresponsive and records the reason on their
    /// sandboxes. Runs every second for the life of the process.
    pub fn spawn_monitor(self: &Arc<Self>) {
        let fleet = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last_sweep = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(fleet) = fleet.upgrade() else { return };
                // One API process at a time watches the runners.
                if !fleet.cluster.lead("runner-monitor", MONITOR_LEASE).await {
                    continue;
                }
                if let Err(e) = fleet.check_runners().await {
                    tracing::warn!(error = %e, "cannot check runner health");
                }
                if last_sweep.elapsed() >= STALE_JOB_SWEEP {
                    last_sweep = tokio::time::Instant::now();
                    if let Err(e) = fleet.fail_stale_jobs(chrono::Utc::now()).await {
                        tracing::warn!(error = %e, "cannot check jobs for time-outs");
                    }
                }
            }
        });
    }

    /// Fails the jobs runners have held past their type's time limit at `now`, waking their
    /// callers; returns how many.
    pub async fn fail_stale_jobs(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, sqlx::Error> {
        let shortest = job_time_limit("");
        let cutoff = |limit: Duration| {
            (now - chrono::Duration::from_std(limit).unwrap_or_default())
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let mut failed = 0;
        for job in self.store.jobs_in_progress_since(&cutoff(shortest)).await? {
            let limit = job_time_limit(&job.job_type);
            if job.updated_at >= cutoff(limit) {
                continue;
            }
            let reason = format!(
                "Job timed out - no update received from runner {} for {} minutes",
                job.runner_id,
                limit.as_secs() / 60
            );
            if self
                .hub
                .finish(
                    &self.store,
                    &job.id,
                    &job.runner_id,
                    false,
                    None,
                    Some(&reason),
                )
                .await?
            {
                tracing::warn!(job = %job.id, job_type = %job.job_type, runner = %job.runner_id, "{reason}");
                failed += 1;
            }
        }
        Ok(failed)
    }

    async fn check_runners(&self) -> Result<(), sqlx::Error> {
        for runner in self.store.list_runners(None).await? {
            if runner.state != "ready" {
                continue;
            }
            let Some(reason) = self.why_not_alive(&runner) else {
                continue;
            };
            let Some(last) = runner.last_checked.as_deref() else {
                continue;
            };
            if !self
                .store
                .mark_runner_unresponsive(&runner.id, last)
                .await?
            {
                continue;
            }
            tracing::warn!(runner = %runner.id, name = %runner.name, %reason, "runner is unresponsive");
            for id in self.store.sandboxes_on_runner(&runner.id).await? {
                self.set_sandbox_state(&id, "error", Some(&reason)).await?;
                self.forget(&id);
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl SandboxRunner for Fleet {
    fn id(&self) -> &str {
        "remote"
    }

    async fn place(&self, _sandbox_id: &str, region: &str) -> Result<String, RunnerError> {
        let runner = self.choose(region, self.availability_threshold()).await?;
        Ok(runner.id)
    }

    async fn unfit_to_start(&self, sandbox_id: &str) -> Result<Option<String>, RunnerError> {
        let runner = match self.holder_of(sandbox_id).await {
            Ok(runner) => runner,
            Err(RunnerError::Unavailable(reason)) => return Ok(Some(reason)),
            Err(e) => return Err(e),
        };
        let threshold = self.settings.start_score_threshold;
        Ok(self
            .why_not_alive(&runner)
            .or_else(|| not_schedulable(&runner))
            .or_else(|| {
                (runner.availability_score < threshold).then(|| {
                    format!(
                        "runner {} ({}) scores {}, under the start threshold {threshold}",
                        runner.id, runner.name, runner.availability_score
                    )
                })
            }))
    }

    async fn pull_image(&self, reference: &str) -> Result<PulledImage, RunnerError> {
        let runner = self.any_runner(self.availability_threshold(), None).await?;
        self.pull_on(&self.remote(runner), reference).await
    }

    async fn collect_garbage(&self, keep_images: &[String]) -> Result<(), RunnerError> {
        for runner in self.alive_runners().await? {
            let job = Job::CollectGarbage {
                keep_images: keep_images.to_vec(),
            };
            if let Err(e) = self.remote(runner.clone()).run::<()>(job).await {
                tracing::warn!(runner = %runner.id, error = %e, "image garbage collection failed");
            }
        }
        Ok(())
    }

    async fn create_sandbox(&self, req: &SandboxRequest) -> Result<SocketAddr, RunnerError> {
        let runner = self.runner_of(&req.id).await?;
        self.ensure_image(&runner, &req.image).await?;
        let addr: SocketAddr = runner.run(Job::CreateSandbox(req.clone())).await?;
        self.remember(&req.id, Some(addr));
        Ok(addr)
    }

    async fn start_sandbox(&self, id: &str) -> Result<SocketAddr, RunnerError> {
        let runner = self.runner_of(id).await?;
        let addr: SocketAddr = runner.run(Job::StartSandbox { id: id.into() }).await?;
        self.remember(id, Some(addr));
        Ok(addr)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        let runner = self.runner_of(id).await?;
        runner.run::<()>(Job::StopSandbox { id: id.into() }).await?;
        self.remember(id, None);
        Ok(())
    }

    async fn destroy_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        let runner = self.runner_of(id).await?;
        runner
            .run::<()>(Job::DestroySandbox { id: id.into() })
            .await?;
        self.forget(id);
        Ok(())
    }

    async fn daemon_address(&self, id: &str) -> Result<Option<SocketAddr>, RunnerError> {
        if let Some(addr) = self
            .seen
            .lock()
            .expect("seen map")
            .get(id)
            .and_then(|s| s.daemon)
        {
            return Ok(Some(addr));
        }
        let runner = self.runner_of(id).await?;
        let addr: Option<SocketAddr> = runner.run(Job::DaemonAddress { id: id.into() }).await?;
        if addr.is_some() {
            self.cache(id, addr);
        }
        Ok(addr)
    }

    async fn traffic_endpoint(&self, id: &str) -> Result<Option<TrafficEndpoint>, RunnerError> {
        let runner = self.runner_of(id).await?;
        let url = runner.runner.api_url.clone().ok_or_else(|| {
            RunnerError::Unavailable(format!(
                "runner {} has not reported the URL it serves on",
                runner.runner.id
            ))
        })?;
        Ok(Some(TrafficEndpoint {
            url,
            key_digest: runner.runner.token_hash.clone(),
        }))
    }

    async fn oom_kills(&self, id: &str) -> Result<u64, RunnerError> {
        self.seen
            .lock()
            .expect("seen map")
            .get(id)
            .and_then(|s| s.oom_kills)
            .ok_or_else(|| {
                RunnerError::Unavailable(format!("no health check has reported sandbox {id} yet"))
            })
    }

    async fn usage(&self, id: &str) -> Result<Option<SandboxUsage>, RunnerError> {
        let runner = self.runner_of(id).await?;
        runner.run(Job::SandboxUsage { id: id.into() }).await
    }

    async fn pause_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        let runner = self.runner_of(id).await?;
        runner.run(Job::PauseSandbox { id: id.into() }).await
    }

    async fn resume_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        let runner = self.runner_of(id).await?;
        runner.run(Job::ResumeSandbox { id: id.into() }).await
    }

    async fn resize_sandbox(&self, id: &str, resize: &Resize) -> Result<(), RunnerError> {
        let runner = self.runner_of(id).await?;
        let job = Job::ResizeSandbox {
            id: id.into(),
            resize: *resize,
        };
        runner.run(job).await
    }

    async fn update_network(&self, id: &str, policy: &NetworkPolicy) -> Result<(), RunnerError> {
        let runner = self.runner_of(id).await?;
        let job = Job::UpdateSandboxNetworkSettings {
            id: id.into(),
            policy: policy.clone(),
        };
        runner.run(job).await
    }

    async fn snapshot_sandbox(
        &self,
        id: &str,
        base_image: &str,
    ) -> Result<CapturedImage, RunnerError> {
        let runner = self.runner_of(id).await?;
        let job = Job::SnapshotSandbox {
            id: id.into(),
            base_image: base_image.into(),
        };
        let captured: CapturedImage = runner.run_once(job).await?;
        self.record_image(runner.id(), &captured.reference, "ready", None)
            .await;
        Ok(captured)
    }

    async fn fork_sandbox(
        &self,
        source: &str,
        fork: &SandboxRequest,
    ) -> Result<SocketAddr, RunnerError> {
        // A fork copies the source's disk, so it lives where the source does.
        let runner = self.runner_of(source).await?;
        let job = Job::ForkSandbox {
            source: source.into(),
            fork: fork.clone(),
        };
        let addr: SocketAddr = runner.run(job).await?;
        self.remember(&fork.id, Some(addr));
        Ok(addr)
    }

    async fn build_image(
        &self,
        req: &BuildRequest,
        log: Arc<dyn BuildLog>,
    ) -> Result<CapturedImage, RunnerError> {
        let job = Job::BuildSnapshot(req.clone());
        // A build an API process that died gave a runner is awaited (or its result taken).
        let (runner_id, job_id, built) = match self.earlier_job(&job, None, true).await {
            Some(earlier) => {
                log.line(&format!(
                    "Awaiting the build already given to runner {}",
                    earlier.runner_id
                ));
                let built: BuildOutcome = self.await_job(&earlier.id, &earlier.runner_id).await?;
                (earlier.runner_id, earlier.id, built)
            }
            None => {
                let threshold = Threshold {
                    setting: "RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD",
                    score: self.settings.declarative_build_score_threshold,
                };
                let runner = self.any_runner(threshold, Some(log.as_ref())).await?;
                let runner = self.remote(runner);
                log.line(&format!(
                    "building on runner {} ({})",
                    runner.id(),
                    runner.runner.name
                ));
                let (job_id, built) = runner.run_job::<BuildOutcome>(job).await?;
                (runner.id().to_owned(), job_id, built)
            }
        };
        // The runner reported these while it built; any that did not arrive are added.
        log.numbered(&job_id, 0, &built.log);
        self.record_image(&runner_id, &built.image.reference, "ready", None)
            .await;
        Ok(built.image)
    }

    async fn archive_sandbox(&self, id: &str, key: &str) -> Result<u64, RunnerError> {
        let runner = self.runner_of(id).await?;
        let job = Job::ArchiveSandbox {
            id: id.into(),
            key: key.into(),
        };
        let size = runner.run(job).await?;
        self.forget(id);
        Ok(size)
    }

    async fn backup_sandbox(&self, id: &str, key: &str) -> Result<u64, RunnerError> {
        let runner = self.runner_of(id).await?;
        let job = Job::CreateBackup {
            id: id.into(),
            key: key.into(),
        };
        runner.run(job).await
    }

    async fn restore_sandbox(
        &self,
        req: &SandboxRequest,
        key: &str,
    ) -> Result<SocketAddr, RunnerError> {
        let runner = self.runner_of(&req.id).await?;
        self.ensure_image(&runner, &req.image).await?;
        let job = Job::RestoreSandbox {
            request: req.clone(),
            key: key.into(),
        };
        let addr: SocketAddr = runner.run(job).await?;
        self.remember(&req.id, Some(addr));
        Ok(addr)
    }

    async fn delete_archive(&self, key: &str) -> Result<(), RunnerError> {
        let runner = self.any_alive().await?;
        runner.run(Job::DeleteArchive { key: key.into() }).await
    }

    async fn archive_exists(&self, key: &str) -> Result<bool, RunnerError> {
        let runner = self.any_alive().await?;
        runner.run(Job::ArchiveExists { key: key.into() }).await
    }

    async fn create_volume(&self, id: &str) -> Result<(), RunnerError> {
        self.on_every_runner(|| Job::CreateVolume { id: id.into() })
            .await
    }

    async fn delete_volume(&self, id: &str) -> Result<(), RunnerError> {
        self.on_every_runner(|| Job::DeleteVolume { id: id.into() })
            .await
    }
}

impl Fleet {
    fn availability_threshold(&self) -> Threshold {
        Threshold {
            setting: "RUNNER_AVAILABILITY_SCORE_THRESHOLD",
            score: self.settings.availability_score_threshold,
        }
    }

    /// Archives live in object storage that every runner reaches (`AWS_*`), so any runner can
    /// look one up or delete it.
    async fn any_alive(&self) -> Result<RemoteRunner<'_>, RunnerError> {
        let runner = self
            .alive_runners()
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                RunnerError::Unavailable("no runner is available to reach object storage".into())
            })?;
        Ok(self.remote(runner))
    }

    /// Volumes are directories on each runner: every runner that can take work gets the job.
    async fn on_every_runner(&self, job: impl Fn() -> Job) -> Result<(), RunnerError> {
        let runners = self.alive_runners().await?;
        if runners.is_empty() {
            return Err(RunnerError::Unavailable(
                "no runner is available for volumes".into(),
            ));
        }
        for runner in runners {
            self.remote(runner).run::<()>(job()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_for_a_runner_is_explained_at_once_then_every_half_minute() {
        let secs = Duration::from_secs;
        assert!(
            wait_notice_due(None, secs(0)),
            "the first round explains the wait"
        );
        assert!(!wait_notice_due(Some(secs(0)), secs(29)));
        assert!(wait_notice_due(Some(secs(0)), secs(30)));
        assert!(!wait_notice_due(Some(secs(30)), secs(45)));
    }

    #[test]
    fn the_waiting_line_names_the_threshold_its_setting_the_scores_and_the_time() {
        let threshold = Threshold {
            setting: "RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD",
            score: 70,
        };
        let line = waiting_line(
            threshold,
            "r1 (default) scores 42",
            Duration::from_secs(31),
            Duration::from_secs(600),
        );
        for part in [
            "at least 70",
            "RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD",
            "r1 (default) scores 42",
            "waited 31s",
            "600s",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line:?}");
        }
    }
}
