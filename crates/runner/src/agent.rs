//! A runner as its own process: it reports its health to the API at `DAYTONA_API_URL`
//! with `DAYTONA_RUNNER_TOKEN`, long-polls for jobs, runs them on the local [`Runner`] and
//! reports each outcome. Only the runner connects (no API → runner calls), so a runner works
//! behind NAT and either side may restart: jobs live in the API's store, a result that cannot
//! be delivered is retried, and on start the runner runs again the jobs it had taken.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::image::build::BuildLog;
use crate::jobs::{
    self, Healthcheck, Job, JobDto, JobLogLines, Metrics, PollJobsResponse, ReportedSandbox,
    UpdateJobStatus, status,
};
use crate::sandbox::{Runner, SandboxRunner};

/// How the runner reaches the API and what it tells it.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// `DAYTONA_API_URL`, e.g. `http://api:3000/api`.
    pub api_url: String,
    /// `DAYTONA_RUNNER_TOKEN`
    pub token: String,
    /// `POLL_TIMEOUT`: how long one poll waits for work.
    pub poll_timeout: Duration,
    /// `POLL_LIMIT`: jobs taken per poll.
    pub poll_limit: u32,
    /// `HEALTHCHECK_INTERVAL`
    pub healthcheck_interval: Duration,
    /// `HEALTHCHECK_TIMEOUT`: one health check's limit.
    pub healthcheck_timeout: Duration,
    /// `VERSION`
    pub app_version: String,
    /// `RUNNER_DOMAIN`
    pub domain: Option<String>,
    /// Where this runner serves (`http://<RUNNER_DOMAIN or bind>:<API_PORT>`).
    pub own_url: Option<String>,
    /// The data directory, whose filesystem's use is reported as disk usage.
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The API refused the token: retrying cannot help.
    #[error("the API at {api_url} refused DAYTONA_RUNNER_TOKEN: {message}")]
    Refused { api_url: String, message: String },
    #[error("cannot reach the API at {api_url}: {reason}")]
    Unreachable { api_url: String, reason: String },
    #[error("the API answered {status} to {what}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
}

pub struct Agent {
    settings: AgentSettings,
    client: reqwest::Client,
    runner: Arc<Runner>,
    /// Jobs this process is running, so a job listed again is not started twice.
    running: Mutex<HashSet<String>>,
    /// `/proc/stat` totals at the previous health check (cpu usage is the change since).
    cpu_sample: Mutex<Option<(u64, u64)>>,
}

/// Pause after a failed call before the next attempt; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Agent {
    /// `http` carries the deployment's proxies and trusted CAs (`daytona_outbound`).
    pub fn new(
        settings: AgentSettings,
        runner: Arc<Runner>,
        http: reqwest::ClientBuilder,
    ) -> Result<Arc<Agent>, AgentError> {
        let client = http
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| AgentError::Unreachable {
                api_url: settings.api_url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Arc::new(Agent {
            settings,
            client,
            runner,
            running: Mutex::new(HashSet::new()),
            cpu_sample: Mutex::new(None),
        }))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.api_url.trim_end_matches('/'))
    }

    /// The first health check: registers the runner, and fails at once on a refused token.
    pub async fn register(&self) -> Result<(), AgentError> {
        self.healthcheck().await
    }

    /// Runs until the process ends: health checks every `HEALTHCHECK_INTERVAL`, the jobs taken
    /// before a restart, then the poll loop. Returns only when the API refuses the token.
    pub async fn run(self: Arc<Self>) -> Result<(), AgentError> {
        let heartbeat = {
            let this = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(this.settings.healthcheck_interval).await;
                    let span = tracing::info_span!("healthcheck");
                    if let Err(e) = this.healthcheck().instrument(span).await {
                        tracing::warn!(error = %e, "health check failed");
                    }
                }
            })
        };
        let result = self.clone().work().await;
        heartbeat.abort();
        result
    }

    async fn work(self: Arc<Self>) -> Result<(), AgentError> {
        let mut backoff = FIRST_BACKOFF;
        // Jobs taken before a restart are run again (every job is idempotent).
        loop {
            match self
                .get::<Vec<JobDto>>(&format!("/jobs?status={}", status::IN_PROGRESS), None)
                .await
            {
                Ok(jobs) => {
                    if !jobs.is_empty() {
                        tracing::info!(count = jobs.len(), "resuming jobs taken before a restart");
                    }
                    self.spawn_jobs(jobs);
                    break;
                }
                Err(e @ AgentError::Refused { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list unfinished jobs; retrying");
                    backoff = pause(backoff).await;
                }
            }
        }
        let timeout = self.settings.poll_timeout;
        let path = format!(
            "/jobs/poll?timeout={}&limit={}",
            timeout.as_secs(),
            self.settings.poll_limit
        );
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self
                .get::<PollJobsResponse>(&path, Some(timeout + Duration::from_secs(10)))
                .await
            {
                Ok(response) => {
                    backoff = FIRST_BACKOFF;
                    self.spawn_jobs(response.jobs);
                }
                Err(e @ AgentError::Refused { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "poll failed; retrying");
                    backoff = pause(backoff).await;
                }
            }
        }
    }

    fn spawn_jobs(self: &Arc<Self>, jobs: Vec<JobDto>) {
        for job in jobs {
            if !self.running.lock().expect("job set").insert(job.id.clone()) {
                continue;
            }
            let this = self.clone();
            // The job's run and the report of its outcome continue the trace of the request
            // that created it (a trace of their own when it carried none).
            let span = tracing::info_span!("job", otel.name = %format!("job {}", job.job_type), job = %job.id);
            daytona_telemetry::continue_trace(&span, &job.trace_context);
            tokio::spawn(
                async move {
                    let id = job.id.clone();
                    this.run_job(job).await;
                    this.running.lock().expect("job set").remove(&id);
                }
                .instrument(span),
            );
        }
    }

    async fn run_job(&self, job: JobDto) {
        let started = std::time::Instant::now();
        let outcome = match Job::decode(&job.job_type, job.payload.as_deref().unwrap_or("")) {
            Ok(decoded) => {
                // A build's lines reach the API while it runs, so its log can be followed.
                let live = matches!(decoded, Job::BuildSnapshot(_)).then(|| {
                    StreamedLog::start(
                        self.client.clone(),
                        self.url(&format!("/jobs/{}/logs", job.id)),
                        self.settings.token.clone(),
                    )
                });
                let outcome = jobs::execute(
                    self.runner.as_ref() as &dyn SandboxRunner,
                    decoded,
                    live.clone().map(|l| l as Arc<dyn BuildLog>),
                )
                .await
                .map_err(|e| e.to_string());
                if let Some(live) = live {
                    live.finish().await;
                }
                outcome
            }
            Err(e) => Err(e.to_string()),
        };
        tracing::info!(
            job = %job.id, job_type = %job.job_type, resource = %job.resource_id,
            ok = outcome.is_ok(), ms = started.elapsed().as_millis() as u64, "job finished"
        );
        let update = match outcome {
            Ok(result) => UpdateJobStatus {
                status: status::COMPLETED.into(),
                error_message: None,
                result_metadata: Some(result.to_string()),
            },
            Err(message) => UpdateJobStatus {
                status: status::FAILED.into(),
                error_message: Some(message),
                result_metadata: None,
            },
        };
        // The outcome must reach the API: retried until it is accepted or refused for good.
        let mut backoff = FIRST_BACKOFF;
        loop {
            let sent = self
                .client
                .post(self.url(&format!("/jobs/{}/status", job.id)))
                .bearer_auth(&self.settings.token)
                .header("X-Daytona-Source", "runner")
                .headers(daytona_telemetry::trace_headers())
                .json(&update)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return,
                // The job is gone or already finished (another attempt's report got through).
                Ok(r) if matches!(r.status(), StatusCode::NOT_FOUND | StatusCode::CONFLICT) => {
                    tracing::info!(job = %job.id, status = %r.status(), "job outcome not needed anymore");
                    return;
                }
                Ok(r) => {
                    tracing::warn!(job = %job.id, status = %r.status(), "job outcome refused; retrying")
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot report job outcome; retrying")
                }
            }
            backoff = pause(backoff).await;
        }
    }

    /// Sends one health check with metrics and the sandboxes this runner holds.
    pub async fn healthcheck(&self) -> Result<(), AgentError> {
        let (metrics, sandboxes) = self.measure().await;
        let contact = self
            .settings
            .poll_timeout
            .max(Duration::from_secs(1))
            .min(self.settings.healthcheck_interval);
        let body = Healthcheck {
            app_version: self.settings.app_version.clone(),
            domain: self.settings.domain.clone(),
            api_url: self.settings.own_url.clone(),
            proxy_url: self.settings.own_url.clone(),
            region: None,
            metrics: Some(metrics),
            contact_interval_seconds: Some(contact.as_secs().max(1)),
            sandboxes,
        };
        let response = self
            .client
            .post(self.url("/runners/healthcheck"))
            .bearer_auth(&self.settings.token)
            .header("X-Daytona-Source", "runner")
            .headers(daytona_telemetry::trace_headers())
            .timeout(self.settings.healthcheck_timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check("POST /runners/healthcheck", response)
            .await
            .map(|_| ())
    }

    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Option<Duration>,
    ) -> Result<T, AgentError> {
        let mut request = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.settings.token)
            .header("X-Daytona-Source", "runner")
            .headers(daytona_telemetry::trace_headers());
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let response = self.check(&format!("GET {path}"), response).await?;
        response.json().await.map_err(|e| AgentError::Status {
            what: format!("GET {path}"),
            status: 200,
            message: format!("unreadable answer: {e}"),
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> AgentError {
        AgentError::Unreachable {
            api_url: self.settings.api_url.clone(),
            reason: e.to_string(),
        }
    }

    async fn check(
        &self,
        what: &str,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, AgentError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or(body);
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(AgentError::Refused {
                api_url: self.settings.api_url.clone(),
                message,
            });
        }
        Err(AgentError::Status {
            what: what.to_owned(),
            status: status.as_u16(),
            message,
        })
    }

    /// Capacity, usage and allocation of this host and runner, and its sandboxes.
    async fn measure(&self) -> (Metrics, Vec<ReportedSandbox>) {
        let host = host_usage(&self.settings.data_dir);
        let cpu_usage = {
            let now = read_cpu_times();
            let mut previous = self.cpu_sample.lock().expect("cpu sample");
            let usage = match (*previous, now) {
                (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                    (busy1.saturating_sub(busy0)) as f64 * 100.0 / (total1 - total0) as f64
                }
                _ => 0.0,
            };
            *previous = now;
            usage
        };
        let mut metrics = Metrics {
            current_cpu_load_average: host.load_average,
            current_cpu_usage_percentage: round2(cpu_usage),
            current_memory_usage_percentage: round2(host.memory_used_percent),
            current_disk_usage_percentage: round2(host.disk_used_percent),
            cpu: host.cpus as f64,
            memory_gib: round2(host.memory_gib),
            disk_gib: round2(host.disk_gib),
            ..Metrics::default()
        };
        let mut sandboxes = Vec::new();
        match self.runner.inventory().await {
            Ok(inventory) => {
                metrics.current_snapshot_count = inventory.images as f64;
                for (spec, status) in inventory.sandboxes {
                    use daytona_runtime::RuntimeState;
                    let state = status.as_ref().map(|s| s.state);
                    let running = matches!(state, Some(RuntimeState::Running));
                    metrics.current_allocated_disk_gib += f64::from(spec.disk_gib);
                    if running || matches!(state, Some(RuntimeState::Paused)) {
                        metrics.current_allocated_cpu += f64::from(spec.cpu);
                        metrics.current_allocated_memory_gib += f64::from(spec.memory_gib);
                    }
                    if running {
                        metrics.current_started_sandboxes += 1.0;
                    }
                    sandboxes.push(ReportedSandbox {
                        id: spec.id.clone(),
                        state: match state {
                            Some(RuntimeState::Running) => "started",
                            Some(RuntimeState::Paused) => "paused",
                            _ => "stopped",
                        }
                        .into(),
                        daemon_address: status
                            .as_ref()
                            .filter(|_| running)
                            .and_then(|s| s.ip)
                            .map(|ip| (ip, daytona_runtime::DAEMON_PORT).into()),
                        oom_kills: status.map_or(0, |s| s.oom_kills),
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list sandboxes for the health check"),
        }
        (metrics, sandboxes)
    }
}

/// A build job's log lines on their way to the API (`POST /jobs/{id}/logs`), sent in order in
/// batches of what is queued. Delivery is best effort: the job's outcome carries every line
/// again, and the API stores each numbered line once.
struct StreamedLog {
    sender: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
    sending: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Attempts per batch before it is left to the job's outcome.
const LOG_ATTEMPTS: u32 = 3;
/// How long a finished job waits for its last lines to be delivered.
const LOG_FLUSH: Duration = Duration::from_secs(10);

impl StreamedLog {
    fn start(client: reqwest::Client, url: String, token: String) -> Arc<Self> {
        let (sender, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let sending = tokio::spawn(async move {
            let mut offset = 0u64;
            while let Some(line) = lines.recv().await {
                let mut batch = vec![line];
                while let Ok(line) = lines.try_recv() {
                    batch.push(line);
                }
                let body = JobLogLines {
                    offset,
                    lines: batch,
                };
                offset += body.lines.len() as u64;
                let mut backoff = FIRST_BACKOFF;
                for attempt in 1..=LOG_ATTEMPTS {
                    let sent = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("X-Daytona-Source", "runner")
                        .timeout(Duration::from_secs(10))
                        .json(&body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => break,
                        Ok(r) => {
                            tracing::debug!(status = %r.status(), attempt, "build log lines refused")
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, attempt, "cannot send build log lines")
                        }
                    }
                    backoff = pause(backoff).await;
                }
            }
        });
        Arc::new(StreamedLog {
            sender: Mutex::new(Some(sender)),
            sending: Mutex::new(Some(sending)),
        })
    }

    /// Takes no more lines; waits (a while) until those queued are delivered.
    async fn finish(&self) {
        drop(self.sender.lock().expect("log sender").take());
        let sending = self.sending.lock().expect("log sender").take();
        if let Some(sending) = sending
            && tokio::time::timeout(LOG_FLUSH, sending).await.is_err()
        {
            tracing::warn!("build log lines still undelivered; the job's outcome carries them");
        }
    }
}

impl BuildLog for StreamedLog {
    fn line(&self, line: &str) {
        if let Some(sender) = self.sender.lock().expect("log sender").as_ref() {
            let _ = sender.send(line.to_owned());
        }
    }
}

async fn pause(backoff: Duration) -> Duration {
    tokio::time::sleep(backoff).await;
    (backoff * 2).min(MAX_BACKOFF)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

struct HostUsage {
    cpus: usize,
    load_average: f64,
    memory_gib: f64,
    memory_used_percent: f64,
    disk_gib: f64,
    disk_used_percent: f64,
}

const GIB: f64 = (1u64 << 30) as f64;

fn host_usage(data_dir: &std::path::Path) -> HostUsage {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> f64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let (total, available) = (kib("MemTotal:"), kib("MemAvailable:"));
    let (disk_total, disk_free) = filesystem_bytes(data_dir).unwrap_or((0, 0));
    HostUsage {
        cpus,
        load_average,
        memory_gib: total * 1024.0 / GIB,
        memory_used_percent: if total > 0.0 {
            (total - available) * 100.0 / total
        } else {
            0.0
        },
        disk_gib: disk_total as f64 / GIB,
        disk_used_percent: if disk_total > 0 {
            (disk_total - disk_free) as f64 * 100.0 / disk_total as f64
        } else {
            0.0
        },
    }
}

/// Size and free bytes (for unprivileged users) of the filesystem holding `path`.
fn filesystem_bytes(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; c_path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
}

/// Busy and total jiffies of all cpus, from `/proc/stat`.
fn read_cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle + iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}
