//! Sandbox resource metrics: a worker samples every running sandbox's CPU, memory and disk use
//! through the runner (cgroup counters read from the host, so sandboxes are not woken) and keeps
//! the samples in the store for a retention period; `GET /sandbox/{id}/telemetry/metrics` serves
//! them as the series the SDK's `Sandbox.get_metrics()` pivots by timestamp.
//!
//! Upstream exports OTEL from each sandbox's daemon into ClickHouse; the metric names and
//! meanings here are the ones the SDK reads.

use crate::cluster::lease_for;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use daytona_runner::{RunnerError, SandboxUsage};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::service::SandboxService;
use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::store::{MetricSample, Store};

/// The metrics, in the order the route lists them, with how each is read from a sample.
/// Reads one metric's value from a sample.
type Reading = fn(&MetricSample) -> f64;

const METRICS: [(&str, Reading); 7] = [
    ("daytona.sandbox.cpu.utilization", |s| s.cpu_utilization),
    ("daytona.sandbox.cpu.limit", |s| s.cpu_limit),
    ("daytona.sandbox.memory.usage", |s| s.memory_usage as f64),
    ("daytona.sandbox.memory.limit", |s| s.memory_limit as f64),
    ("daytona.sandbox.memory.cache", |s| s.memory_cache as f64),
    ("daytona.sandbox.filesystem.usage", |s| {
        s.filesystem_usage as f64
    }),
    ("daytona.sandbox.filesystem.total", |s| {
        s.filesystem_total as f64
    }),
];

/// Most samples one request returns (a day at the default interval is 5 760).
const MAX_SAMPLES: i64 = 10_000;

/// Samples every running sandbox once per `interval` and drops samples older than `retention`,
/// until the process ends.
pub fn spawn(
    service: Arc<SandboxService>,
    interval: Duration,
    retention: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sampler = Sampler::default();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // One API process at a time, so each round stores one sample per sandbox.
            if !service.cluster().lead("metrics", lease_for(interval)).await {
                continue;
            }
            if let Err(e) = sampler.round(&service, retention).await {
                tracing::warn!(error = %e, "sandbox metrics round failed");
            }
        }
    })
}

/// The previous CPU counter of each sandbox: utilization is the growth between two rounds.
#[derive(Default)]
struct Sampler {
    previous: HashMap<String, (Instant, u64)>,
    unsupported_logged: bool,
}

impl Sampler {
    async fn round(&mut self, service: &SandboxService, retention: Duration) -> ApiResult<()> {
        let started = Instant::now();
        let store = service.store();
        let ids = store.started_sandbox_ids().await?;
        let sampled_at = crate::store::now();
        let mut samples = Vec::with_capacity(ids.len());
        for id in &ids {
            let usage = match service.runner().usage(id).await {
                Ok(Some(usage)) => usage,
                // Stopped between the listing and now.
                Ok(None) => continue,
                Err(RunnerError::Unsupported(what)) => {
                    if !self.unsupported_logged {
                        tracing::info!(what, "the runner reports no usage; no sandbox metrics");
                        self.unsupported_logged = true;
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(sandbox = %id, error = %e, "cannot read sandbox usage");
                    continue;
                }
            };
            let now = Instant::now();
            let previous = self.previous.insert(id.clone(), (now, usage.cpu_ns));
            // The first reading of a sandbox is only the baseline of the next one.
            if let Some(previous) = previous {
                samples.push(sample(id, &sampled_at, &usage, previous, now));
            }
        }
        let live: BTreeSet<&String> = ids.iter().collect();
        self.previous.retain(|id, _| live.contains(id));
        store.insert_metric_samples(&samples).await?;
        let cutoff = Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::hours(6));
        let pruned = store
            .prune_metric_samples(&cutoff.to_rfc3339_opts(SecondsFormat::Millis, true))
            .await?;
        tracing::debug!(
            sandboxes = samples.len(),
            pruned,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "sandbox metrics round"
        );
        Ok(())
    }
}

fn sample(
    id: &str,
    sampled_at: &str,
    usage: &SandboxUsage,
    (then, cpu_then): (Instant, u64),
    now: Instant,
) -> MetricSample {
    let cores = usage.cpu_limit.unwrap_or_else(host_cpus);
    let wall_ns = now.duration_since(then).as_nanos() as f64;
    // A counter that went back means the sandbox restarted: its cgroup counts from zero.
    let used_ns = usage.cpu_ns.checked_sub(cpu_then).unwrap_or(usage.cpu_ns) as f64;
    let utilization = if wall_ns > 0.0 && cores > 0.0 {
        (used_ns / (wall_ns * cores) * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    MetricSample {
        sandbox_id: id.to_owned(),
        sampled_at: sampled_at.to_owned(),
        cpu_utilization: (utilization * 100.0).round() / 100.0,
        cpu_limit: cores,
        memory_usage: clamp_i64(usage.memory_bytes),
        memory_limit: clamp_i64(usage.memory_limit_bytes.unwrap_or_else(host_memory)),
        memory_cache: clamp_i64(usage.memory_cache_bytes),
        filesystem_usage: clamp_i64(usage.disk_used_bytes),
        filesystem_total: clamp_i64(usage.disk_total_bytes),
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An unlimited sandbox may use every CPU of the host.
fn host_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// An unlimited sandbox may use all of the host's memory.
fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricDataPoint {
    timestamp: String,
    value: f64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricSeries {
    metric_name: String,
    data_points: Vec<MetricDataPoint>,
}

#[derive(Serialize, ToSchema)]
pub struct MetricsResponse {
    series: Vec<MetricSeries>,
}

/// The time range and names of a metrics request.
#[derive(Debug, PartialEq)]
struct MetricsQuery {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// Empty: every metric.
    names: BTreeSet<String>,
}

impl MetricsQuery {
    /// `from` and `to` (ISO 8601, required) and `metricNames`, repeated or comma-separated.
    fn parse(raw: Option<&str>) -> ApiResult<Self> {
        let (mut from, mut to, mut names) = (None, None, BTreeSet::new());
        for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "from" => from = Some(parse_time("from", &value)?),
                "to" => to = Some(parse_time("to", &value)?),
                "metricNames" => names.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned),
                ),
                _ => {}
            }
        }
        let from = from.ok_or_else(|| missing("from"))?;
        let to = to.ok_or_else(|| missing("to"))?;
        if to < from {
            return Err(ApiError::BadRequest(format!(
                "to: {} is before from: {}",
                to.to_rfc3339(),
                from.to_rfc3339()
            )));
        }
        if let Some(unknown) = names.iter().find(|n| !METRICS.iter().any(|(m, _)| m == n)) {
            let known: Vec<&str> = METRICS.iter().map(|(m, _)| *m).collect();
            return Err(ApiError::BadRequest(format!(
                "metricNames: unknown metric '{unknown}' (known: {})",
                known.join(", ")
            )));
        }
        Ok(Self { from, to, names })
    }
}

fn missing(name: &str) -> ApiError {
    ApiError::BadRequest(format!("{name}: required (an ISO 8601 date-time)"))
}

/// ISO 8601 as clients send it: RFC 3339, `+0000` offsets (Python's `%z`), or no offset (UTC).
fn parse_time(name: &str, value: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .or_else(|_| DateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{name}: '{value}' is not an ISO 8601 date-time (e.g. 2026-01-02T15:04:05Z)"
            ))
        })
}

#[utoipa::path(
    get,
    path = "/sandbox/{id}/telemetry/metrics",
    tag = "sandbox",
    operation_id = "sandbox_telemetry_metrics",
    params(
        ("id" = String, Path, description = "Id or name of the sandbox"),
        ("from" = String, Query, description = "Start of the time range (ISO 8601)"),
        ("to" = String, Query, description = "End of the time range (ISO 8601)"),
        ("metricNames" = Option<Vec<String>>, Query, description = "Metric names (repeated or comma-separated); all when absent"),
    ),
    responses((status = 200, body = MetricsResponse))
)]
async fn metrics(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<MetricsResponse>> {
    let query = MetricsQuery::parse(raw.as_deref())?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(series(&state.store, &row.id, &query).await?))
}

async fn series(
    store: &Store,
    sandbox_id: &str,
    query: &MetricsQuery,
) -> ApiResult<MetricsResponse> {
    let format = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let samples = store
        .metric_samples(
            sandbox_id,
            &format(&query.from),
            &format(&query.to),
            MAX_SAMPLES,
        )
        .await?;
    let series = METRICS
        .iter()
        .filter(|(name, _)| query.names.is_empty() || query.names.contains(*name))
        .map(|(name, read)| MetricSeries {
            metric_name: (*name).to_owned(),
            data_points: samples
                .iter()
                .map(|s| MetricDataPoint {
                    timestamp: s.sampled_at.clone(),
                    value: read(s),
                })
                .collect(),
        })
        .collect();
    Ok(MetricsResponse { series })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_accepts_what_clients_send() {
        let q = MetricsQuery::parse(Some(
            "from=2026-11-29T10%3A00%3A00.123456%2B0000&to=2026-11-29T11:00:00Z\
             &metricNames=daytona.sandbox.cpu.utilization&metricNames=daytona.sandbox.memory.usage,daytona.sandbox.cpu.limit",
        ))
        .unwrap();
        assert_eq!(q.from.to_rfc3339(), "2026-11-29T10:00:00.123456+00:00");
        assert_eq!(q.to.to_rfc3339(), "2026-11-29T11:00:00+00:00");
        assert_eq!(q.names.len(), 3);
        let naive =
            MetricsQuery::parse(Some("from=2026-11-29T10:00:00&to=2026-11-29T10:00:00")).unwrap();
        assert_eq!(naive.from, naive.to);
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let message = |raw: &str| match MetricsQuery::parse(Some(raw)) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        };
        assert!(message("to=2026-11-29T10:00:00Z").starts_with("from: required"));
        assert!(message("from=yesterday&to=2026-11-29T10:00:00Z").starts_with("from: 'yesterday'"));
        assert!(message("from=2026-11-29T11:00:00Z&to=2026-11-29T10:00:00Z").starts_with("to: "));
        assert!(
            message("from=2026-11-29T10:00:00Z&to=2026-11-29T11:00:00Z&metricNames=cpu")
                .contains("unknown metric 'cpu'")
        );
    }

    #[test]
    fn utilization_is_the_counter_growth_over_wall_time_and_cores() {
        let then = Instant::now();
        let now = then + Duration::from_secs(10);
        let usage = SandboxUsage {
            cpu_ns: 15_000_000_000,
            cpu_limit: Some(2.0),
            memory_limit_bytes: Some(1 << 30),
            ..SandboxUsage::default()
        };
        // 10 s of CPU time over 10 s on 2 cores: half the limit.
        let s = sample("a", "t", &usage, (then, 5_000_000_000), now);
        assert_eq!(s.cpu_utilization, 50.0);
        assert_eq!(s.cpu_limit, 2.0);
        assert_eq!(s.memory_limit, 1 << 30);
        // A restarted sandbox counts from zero again.
        let s = sample("a", "t", &usage, (then, 20_000_000_000), now);
        assert_eq!(s.cpu_utilization, 75.0);
    }
}
