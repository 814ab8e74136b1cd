//! HTTP routes of remote runners (upstream's shapes): what runners call with their token
//! (`/runners/healthcheck`, `/runners/me`, `/jobs/poll`, `/jobs`, `/jobs/{jobId}/status`) and
//! the administrators' `/admin/runners`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use daytona_runner::egress::EgressGrantDto;
use daytona_runner::jobs::{
    Healthcheck, JobDto, JobLogLines, Metrics, PollJobsResponse, UpdateJobStatus, status,
};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Fleet;
use crate::AppState;
use crate::auth::{AuthContext, bearer, generate_key, hash_key};
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::store::{JobRow, RunnerRow, now};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthcheck))
        .routes(routes!(me))
        .routes(routes!(sandbox_egress))
        .routes(routes!(poll))
        .routes(routes!(list_jobs))
        .routes(routes!(update_status))
        .routes(routes!(append_log))
        .routes(routes!(admin_list, admin_create))
        .routes(routes!(admin_get, admin_delete))
        .routes(routes!(admin_scheduling))
        .routes(routes!(scheduling))
        .routes(routes!(draining))
}

/// The runner a request comes from, by its bearer token.
pub struct RunnerCaller(pub RunnerRow);

impl FromRequestParts<AppState> for RunnerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::Unauthorized("runner routes need the runner's token as a bearer token".into())
        })?;
        state
            .store
            .runner_by_token_hash(&hash_key(token))
            .await?
            .map(RunnerCaller)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "runner token is not valid: it is neither DEFAULT_RUNNER_API_KEY nor the key \
                     of a runner created through POST /api/admin/runners"
                        .into(),
                )
            })
    }
}

fn fleet(state: &AppState) -> ApiResult<&Arc<Fleet>> {
    state.runners.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "this server runs its runner in-process (DAYTONA_ROLES includes runner); remote \
             runners join an API started without the runner role"
                .into(),
        )
    })
}

#[utoipa::path(
    post,
    path = "/runners/healthcheck",
    tag = "runners",
    operation_id = "runner_healthcheck"
)]
async fn healthcheck(
    State(state): State<AppState>,
    RunnerCaller(runner): RunnerCaller,
    JsonBody(body): JsonBody<Healthcheck>,
) -> ApiResult<StatusCode> {
    fleet(&state)?.healthcheck(&runner, &body).await?;
    Ok(StatusCode::OK)
}

#[utoipa::path(get, path = "/runners/me", tag = "runners", operation_id = "runner_me")]
async fn me(RunnerCaller(runner): RunnerCaller) -> Json<RunnerDto> {
    Json(RunnerDto::from(runner))
}

/// `GET /runners/sandboxes/{sandboxId}/egress`: the network policy and mounted secrets (with
/// their values) of a sandbox on the calling runner, for its egress proxy; 404 for a sandbox
/// that is not on that runner.
#[utoipa::path(get, path = "/runners/sandboxes/{sandboxId}/egress", tag = "runners", operation_id = "runner_sandbox_egress", params(("sandboxId" = String, Path)))]
async fn sandbox_egress(
    State(state): State<AppState>,
    RunnerCaller(runner): RunnerCaller,
    Path(sandbox_id): Path<String>,
) -> ApiResult<Json<EgressGrantDto>> {
    use daytona_egress::EgressDirectory;
    let not_here = || ApiError::NotFound(format!("Sandbox {sandbox_id} not found on this runner"));
    let record = state.store.sandbox_record(&sandbox_id).await?;
    if record.and_then(|r| r.runner_id).as_deref() != Some(runner.id.as_str()) {
        return Err(not_here());
    }
    let grant = state
        .secrets
        .grant(&sandbox_id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or_else(not_here)?;
    Ok(Json(EgressGrantDto::from(&grant)))
}

#[derive(Debug, Deserialize)]
struct PollQuery {
    timeout: Option<u64>,
    limit: Option<i64>,
}

/// Longest poll (upstream's limit).
const MAX_POLL: Duration = Duration::from_secs(60);

#[utoipa::path(get, path = "/jobs/poll", tag = "jobs", operation_id = "jobs_poll")]
async fn poll(
    State(state): State<AppState>,
    RunnerCaller(runner): RunnerCaller,
    Query(query): Query<PollQuery>,
) -> ApiResult<Json<PollJobsResponse>> {
    let fleet = fleet(&state)?;
    let limit = query.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit: {limit} is not between 1 and 100"
        )));
    }
    let timeout = Duration::from_secs(query.timeout.unwrap_or(30)).min(MAX_POLL);
    // A poll is contact: the runner is alive even between health checks.
    state.store.touch_runner(&runner.id).await?;
    let jobs = fleet
        .hub()
        .poll(&state.store, &runner.id, limit, timeout)
        .await?;
    Ok(Json(PollJobsResponse {
        jobs: jobs.into_iter().map(job_dto).collect(),
    }))
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    status: Option<String>,
}

#[utoipa::path(get, path = "/jobs", tag = "jobs", operation_id = "jobs_list")]
async fn list_jobs(
    State(state): State<AppState>,
    RunnerCaller(runner): RunnerCaller,
    Query(query): Query<JobsQuery>,
) -> ApiResult<Json<Vec<JobDto>>> {
    let wanted = match query.status.as_deref() {
        None => None,
        Some(s @ (status::PENDING | status::IN_PROGRESS | status::COMPLETED | status::FAILED)) => {
            Some(s)
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "status: '{other}' is not one of PENDING, IN_PROGRESS, COMPLETED, FAILED"
            )));
        }
    };
    let jobs = state.store.runner_jobs(&runner.id, wanted, 1000).await?;
    Ok(Json(jobs.into_iter().map(job_dto).collect()))
}

#[utoipa::path(post, path = "/jobs/{jobId}/status", tag = "jobs", operation_id = "jobs_update_status", params(("jobId" = String, Path)))]
async fn update_status(
    State(state): State<AppState>,
    RunnerCaller(runner): RunnerCaller,
    Path(job_id): Path<String>,
    JsonBody(body): JsonBody<UpdateJobStatus>,
) -> ApiResult<StatusCode> {
    let fleet = fleet(&state)?;
    let job = state
        .store
        .job_by_id(&job_id)
        .await?
        .filter(|j| j.runner_id == runner.id)
        .ok_or_else(|| ApiError::NotFound(format!("Job {job_id} not found")))?;
    let succeeded = match body.status.as_str() {
        status::COMPLETED => true,
        status::FAILED => false,
        // Jobs are marked in progress when a poll hands them out.
        status::IN_PROGRESS if job.state == status::IN_PROGRESS => return Ok(StatusCode::OK),
        other => {
            return Err(ApiError::BadRequest(format!(
                "status: '{other}' is not COMPLETED or FAILED (job {job_id} is {})",
                job.state
            )));
        }
    };
    let finished = fleet
        .hub()
        .finish(
            &state.store,
            &job_id,
            &runner.id,
            succeeded,
            body.result_metadata.as_deref(),
            body.error_message.as_deref(),
        )
        .await?;
    if !finished {
        return Err(ApiError::Conflict(format!(
            "Job {job_id} is already {}",
            job.state
        )));
    }
    Ok(StatusCode::OK)
}

/// Lines of a build job's log while it runs, from the runner that holds the job.
#[utoipa::path(post, path = "/jobs/{jobId}/logs", tag = "jobs", operation_id = "jobs_append_log", params(("jobId" = String, Path)))]
async fn append_log(
    State(state): State<AppState>,
    RunnerCaller(runner): RunnerCaller,
    Path(job_id): Path<String>,
    JsonBody(body): JsonBody<JobLogLines>,
) -> ApiResult<StatusCode> {
    fleet(&state)?;
    let job = state
        .store
        .job_by_id(&job_id)
        .await?
        .filter(|j| j.runner_id == runner.id)
        .ok_or_else(|| ApiError::NotFound(format!("Job {job_id} not found")))?;
    if job.job_type != "BUILD_SNAPSHOT" {
        return Err(ApiError::BadRequest(format!(
            "job {job_id} is a {} job; only BUILD_SNAPSHOT jobs have a log",
            job.job_type
        )));
    }
    state
        .snapshots
        .record_runner_log(&job.resource_id, &job.id, body.offset, &body.lines)
        .await?;
    Ok(StatusCode::OK)
}

fn job_dto(job: JobRow) -> JobDto {
    JobDto {
        id: job.id,
        job_type: job.job_type,
        status: job.state,
        resource_type: "SANDBOX".into(),
        resource_id: job.resource_id,
        payload: Some(job.payload),
        error_message: job.error_message,
        created_at: job.created_at,
        updated_at: job.updated_at,
        // Written by `JobHub::submit` as a string map; anything else is no context.
        trace_context: serde_json::from_value(job.trace_context).unwrap_or_default(),
    }
}

/// A runner as administrators see it (upstream's `RunnerFull`, without the key: only its
/// digest is stored).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerDto {
    id: String,
    name: String,
    region: String,
    state: String,
    domain: Option<String>,
    api_url: Option<String>,
    proxy_url: Option<String>,
    app_version: Option<String>,
    api_version: &'static str,
    cpu: f64,
    memory: f64,
    disk: f64,
    gpu: u32,
    current_cpu_load_average: f64,
    current_cpu_usage_percentage: f64,
    current_memory_usage_percentage: f64,
    current_disk_usage_percentage: f64,
    current_allocated_cpu: f64,
    #[serde(rename = "currentAllocatedMemoryGiB")]
    current_allocated_memory_gib: f64,
    #[serde(rename = "currentAllocatedDiskGiB")]
    current_allocated_disk_gib: f64,
    current_snapshot_count: f64,
    current_started_sandboxes: f64,
    availability_score: i64,
    last_checked: Option<String>,
    unschedulable: bool,
    draining: bool,
    created_at: String,
    updated_at: String,
}

impl From<RunnerRow> for RunnerDto {
    fn from(r: RunnerRow) -> Self {
        let m: Metrics = serde_json::from_str(&r.metrics).unwrap_or_default();
        RunnerDto {
            id: r.id,
            name: r.name,
            region: r.region,
            state: r.state,
            domain: r.domain,
            api_url: r.api_url,
            proxy_url: r.proxy_url,
            app_version: r.app_version,
            api_version: "2",
            cpu: m.cpu,
            memory: m.memory_gib,
            disk: m.disk_gib,
            gpu: 0,
            current_cpu_load_average: m.current_cpu_load_average,
            current_cpu_usage_percentage: m.current_cpu_usage_percentage,
            current_memory_usage_percentage: m.current_memory_usage_percentage,
            current_disk_usage_percentage: m.current_disk_usage_percentage,
            current_allocated_cpu: m.current_allocated_cpu,
            current_allocated_memory_gib: m.current_allocated_memory_gib,
            current_allocated_disk_gib: m.current_allocated_disk_gib,
            current_snapshot_count: m.current_snapshot_count,
            current_started_sandboxes: m.current_started_sandboxes,
            availability_score: r.availability_score,
            last_checked: r.last_checked,
            unschedulable: r.unschedulable,
            draining: r.draining,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegionQuery {
    region_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/admin/runners",
    tag = "admin",
    operation_id = "admin_runners_list"
)]
async fn admin_list(
    State(state): State<AppState>,
    ctx: AuthContext,
    Query(query): Query<RegionQuery>,
) -> ApiResult<Json<Vec<RunnerDto>>> {
    ctx.require_system_admin()?;
    let runners = state.store.list_runners(query.region_id.as_deref()).await?;
    Ok(Json(runners.into_iter().map(RunnerDto::from).collect()))
}

/// `POST /admin/runners` (upstream's `AdminCreateRunner`; capacity fields are accepted and
/// superseded by what the runner reports).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct CreateRunner {
    region_id: String,
    name: String,
    /// The runner's token; generated when absent.
    api_key: Option<String>,
    api_version: Option<String>,
    domain: Option<String>,
    api_url: Option<String>,
    proxy_url: Option<String>,
    cpu: Option<f64>,
    #[serde(rename = "memoryGiB")]
    memory_gib: Option<f64>,
    #[serde(rename = "diskGiB")]
    disk_gib: Option<f64>,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateRunnerResponse {
    id: String,
    api_key: String,
}

#[utoipa::path(
    post,
    path = "/admin/runners",
    tag = "admin",
    operation_id = "admin_runners_create"
)]
async fn admin_create(
    State(state): State<AppState>,
    ctx: AuthContext,
    JsonBody(body): JsonBody<CreateRunner>,
) -> ApiResult<(StatusCode, Json<CreateRunnerResponse>)> {
    ctx.require_system_admin()?;
    if body.name.trim().is_empty() || body.name.len() > 255 {
        return Err(ApiError::BadRequest(
            "name: must be 1-255 characters".into(),
        ));
    }
    if let Some(v) = body.api_version.as_deref().filter(|v| *v != "2") {
        return Err(ApiError::BadRequest(format!(
            "apiVersion: '{v}' is not supported; runners here speak the job protocol (2)"
        )));
    }
    if state
        .store
        .region(&ctx.organization_id, &body.region_id)
        .await?
        .is_none()
    {
        return Err(ApiError::BadRequest(format!(
            "regionId: region {} does not exist",
            body.region_id
        )));
    }
    let api_key = match body.api_key {
        Some(key) if key.len() < 16 => {
            return Err(ApiError::BadRequest(
                "apiKey: must be at least 16 characters".into(),
            ));
        }
        Some(key) => key,
        None => generate_key(),
    };
    let ts = now();
    let row = RunnerRow {
        id: uuid::Uuid::new_v4().to_string(),
        name: body.name.trim().to_owned(),
        region: body.region_id,
        token_hash: hash_key(&api_key),
        state: "initializing".into(),
        domain: body.domain,
        api_url: body.api_url,
        proxy_url: body.proxy_url,
        app_version: None,
        metrics: "{}".into(),
        availability_score: 0,
        contact_interval_seconds: 30,
        last_checked: None,
        created_at: ts.clone(),
        updated_at: ts,
        unschedulable: false,
        draining: false,
    };
    state.store.insert_runner(&row).await.map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => ApiError::Conflict(format!(
            "a runner named {} already exists in region {}, or this apiKey is taken",
            row.name, row.region
        )),
        e => e.into(),
    })?;
    tracing::info!(runner = %row.id, name = %row.name, region = %row.region, "runner registered");
    Ok((
        StatusCode::CREATED,
        Json(CreateRunnerResponse {
            id: row.id,
            api_key,
        }),
    ))
}

#[utoipa::path(get, path = "/admin/runners/{id}", tag = "admin", operation_id = "admin_runners_get", params(("id" = String, Path)))]
async fn admin_get(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<RunnerDto>> {
    ctx.require_system_admin()?;
    let runner = state
        .store
        .runner_by_id(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Runner {id} not found")))?;
    Ok(Json(runner.into()))
}

#[utoipa::path(delete, path = "/admin/runners/{id}", tag = "admin", operation_id = "admin_runners_delete", params(("id" = String, Path)))]
async fn admin_delete(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.require_system_admin()?;
    let holding = state.store.sandboxes_on_runner(&id).await?;
    if !holding.is_empty() {
        return Err(ApiError::Conflict(format!(
            "Runner {id} still holds {} sandbox(es); delete or archive them first",
            holding.len()
        )));
    }
    if !state.store.delete_runner(&id).await? {
        return Err(ApiError::NotFound(format!("Runner {id} not found")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /runners/{id}/scheduling` and its admin twin's body.
#[derive(Debug, Deserialize)]
struct Scheduling {
    unschedulable: bool,
}

/// `PATCH /runners/{id}/draining`'s body.
#[derive(Debug, Deserialize)]
struct Draining {
    draining: bool,
}

/// Sets an operator's flag on runner `id` (system administrators only: runners here are the
/// platform's, not an organization's).
async fn set_flags(
    state: &AppState,
    ctx: &AuthContext,
    id: &str,
    unschedulable: Option<bool>,
    draining: Option<bool>,
) -> ApiResult<RunnerDto> {
    ctx.require_system_admin()?;
    let runner = state
        .store
        .set_runner_flags(id, unschedulable, draining)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Runner {id} not found")))?;
    tracing::info!(
        runner = %runner.id,
        unschedulable = runner.unschedulable,
        draining = runner.draining,
        "runner scheduling changed"
    );
    Ok(runner.into())
}

/// Takes a runner out of placement (`{"unschedulable": true}`) or puts it back.
#[utoipa::path(patch, path = "/runners/{id}/scheduling", tag = "runners", operation_id = "runners_update_scheduling", params(("id" = String, Path)))]
async fn scheduling(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Scheduling>,
) -> ApiResult<Json<RunnerDto>> {
    Ok(Json(
        set_flags(&state, &ctx, &id, Some(body.unschedulable), None).await?,
    ))
}

/// Marks a runner as draining (`{"draining": true}`): it gets no new sandboxes.
#[utoipa::path(patch, path = "/runners/{id}/draining", tag = "runners", operation_id = "runners_update_draining", params(("id" = String, Path)))]
async fn draining(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Draining>,
) -> ApiResult<Json<RunnerDto>> {
    Ok(Json(
        set_flags(&state, &ctx, &id, None, Some(body.draining)).await?,
    ))
}

#[utoipa::path(patch, path = "/admin/runners/{id}/scheduling", tag = "admin", operation_id = "admin_runners_update_scheduling", params(("id" = String, Path)))]
async fn admin_scheduling(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Scheduling>,
) -> ApiResult<StatusCode> {
    set_flags(&state, &ctx, &id, Some(body.unschedulable), None).await?;
    Ok(StatusCode::NO_CONTENT)
}
