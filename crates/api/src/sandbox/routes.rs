//! `/api/sandbox` routes.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::{CreateSandbox, Sandbox, SandboxPage};
use super::service::parse_label_filter;
use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::rate_limit::Kind;
use crate::store::{SandboxFilter, SandboxSort};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, delete))
        .routes(routes!(start))
        .routes(routes!(stop))
        .routes(routes!(recover))
        .routes(routes!(pause))
        .routes(routes!(resize))
        .routes(routes!(snapshot))
        .routes(routes!(fork))
        .routes(routes!(archive))
        .routes(routes!(backup))
        .routes(routes!(forks))
        .routes(routes!(parent))
        .routes(routes!(toolbox_proxy_url))
}

#[utoipa::path(
    post,
    path = "/sandbox",
    tag = "sandbox",
    operation_id = "sandbox_routes_create"
)]
async fn create(
    State(state): State<AppState>,
    ctx: AuthContext,
    JsonBody(body): JsonBody<CreateSandbox>,
) -> ApiResult<Json<Sandbox>> {
    ctx.require("write:sandboxes")?;
    state
        .rate_limits
        .check(Kind::SandboxCreate, &ctx.organization_id)
        .await?;
    Ok(Json(state.sandboxes.create(&ctx, body).await?))
}

#[utoipa::path(get, path = "/sandbox/{id}", tag = "sandbox", operation_id = "sandbox_routes_get_one", params(("id" = String, Path)))]
async fn get_one(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    let row = state.sandboxes.find(&ctx, &id).await?;
    let running = matches!(row.state.as_str(), "started" | "paused");
    let mut dto = state.sandboxes.to_dto(row);
    if running {
        // Best effort: a sandbox whose status cannot be read still answers.
        if let Ok(kills) = state.sandboxes.runner().oom_kills(&dto.id).await {
            dto.oom_kills = Some(kills);
            dto.oom_reason = (kills > 0).then(|| {
                format!(
                    "{kills} process(es) were killed by the out-of-memory killer (exit code 137): the sandbox \
                     reached its memory limit of {} GiB",
                    dto.memory
                )
            });
        }
    }
    Ok(Json(dto))
}

/// What every lifecycle call checks first: the caller's permission, then the organization's
/// lifecycle rate limit.
async fn lifecycle_call(state: &AppState, ctx: &AuthContext, permission: &str) -> ApiResult<()> {
    ctx.require(permission)?;
    state
        .rate_limits
        .check(Kind::SandboxLifecycle, &ctx.organization_id)
        .await?;
    Ok(())
}

#[utoipa::path(post, path = "/sandbox/{id}/start", tag = "sandbox", operation_id = "sandbox_routes_start", params(("id" = String, Path)))]
async fn start(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    lifecycle_call(&state, &ctx, "write:sandboxes").await?;
    Ok(Json(state.sandboxes.start(&ctx, &id).await?))
}

#[utoipa::path(post, path = "/sandbox/{id}/stop", tag = "sandbox", operation_id = "sandbox_routes_stop", params(("id" = String, Path)))]
async fn stop(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    lifecycle_call(&state, &ctx, "write:sandboxes").await?;
    Ok(Json(state.sandboxes.stop(&ctx, &id).await?))
}

#[utoipa::path(post, path = "/sandbox/{id}/pause", tag = "sandbox", operation_id = "sandbox_routes_pause", params(("id" = String, Path)))]
async fn pause(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    lifecycle_call(&state, &ctx, "write:sandboxes").await?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(state.sandboxes.pause_sandbox(row).await?))
}

#[derive(serde::Deserialize)]
struct ResizeBody {
    cpu: Option<u32>,
    memory: Option<u32>,
    disk: Option<u32>,
    gpu: Option<u32>,
}

#[utoipa::path(post, path = "/sandbox/{id}/resize", tag = "sandbox", operation_id = "sandbox_routes_resize", params(("id" = String, Path)))]
async fn resize(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ResizeBody>,
) -> ApiResult<Json<Sandbox>> {
    ctx.require("write:sandboxes")?;
    if body.gpu.unwrap_or(0) > 0 {
        return Err(ApiError::BadRequest("gpu: this server has no GPUs".into()));
    }
    if body.cpu.is_none() && body.memory.is_none() && body.disk.is_none() {
        return Err(ApiError::BadRequest(
            "at least one of cpu, memory or disk must be set".into(),
        ));
    }
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(
        state
            .sandboxes
            .resize_sandbox(row, body.cpu, body.memory, body.disk)
            .await?,
    ))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotBody {
    name: String,
    #[serde(default)]
    include_memory: bool,
}

/// The sandbox's files become a new snapshot (`sandbox.create_snapshot(name)`).
#[utoipa::path(post, path = "/sandbox/{id}/snapshot", tag = "sandbox", operation_id = "sandbox_routes_snapshot", params(("id" = String, Path)))]
async fn snapshot(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SnapshotBody>,
) -> ApiResult<Json<Sandbox>> {
    ctx.require("write:sandboxes")?;
    ctx.require("write:snapshots")?;
    if body.include_memory {
        return Err(ApiError::BadRequest(
            "includeMemory: memory snapshots are not supported; snapshots capture files only"
                .into(),
        ));
    }
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(
        state.sandboxes.snapshot_sandbox(row, &body.name).await?,
    ))
}

#[derive(serde::Deserialize)]
struct ForkBody {
    name: Option<String>,
}

/// A new sandbox with a copy of this one's files (`sandbox.fork(name)`); answers with the fork.
#[utoipa::path(post, path = "/sandbox/{id}/fork", tag = "sandbox", operation_id = "sandbox_routes_fork", params(("id" = String, Path)))]
async fn fork(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ForkBody>,
) -> ApiResult<Json<Sandbox>> {
    ctx.require("write:sandboxes")?;
    state
        .rate_limits
        .check(Kind::SandboxCreate, &ctx.organization_id)
        .await?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(state.sandboxes.fork_sandbox(row, body.name).await?))
}

/// Moves a stopped sandbox's files to object storage; `start` brings it back.
#[utoipa::path(post, path = "/sandbox/{id}/archive", tag = "sandbox", operation_id = "sandbox_routes_archive", params(("id" = String, Path)))]
async fn archive(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    lifecycle_call(&state, &ctx, "write:sandboxes").await?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(state.sandboxes.archive_sandbox(row).await?))
}

/// Asks for a backup of a stopped sandbox's files (kept on its runner too); `backupState`
/// follows it.
#[utoipa::path(post, path = "/sandbox/{id}/backup", tag = "sandbox", operation_id = "sandbox_routes_backup", params(("id" = String, Path)))]
async fn backup(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    lifecycle_call(&state, &ctx, "write:sandboxes").await?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(state.sandboxes.request_backup(row).await?))
}

#[utoipa::path(get, path = "/sandbox/{id}/forks", tag = "sandbox", operation_id = "sandbox_routes_forks", params(("id" = String, Path)))]
async fn forks(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Sandbox>>> {
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(state.sandboxes.forks(&row).await?))
}

#[utoipa::path(get, path = "/sandbox/{id}/parent", tag = "sandbox", operation_id = "sandbox_routes_parent", params(("id" = String, Path)))]
async fn parent(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(state.sandboxes.parent(&row).await?))
}

/// Recovers a sandbox in `error` by starting it again (its files are kept).
#[utoipa::path(post, path = "/sandbox/{id}/recover", tag = "sandbox", operation_id = "sandbox_routes_recover", params(("id" = String, Path)))]
async fn recover(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    lifecycle_call(&state, &ctx, "write:sandboxes").await?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    if row.state != "error" {
        return Err(ApiError::BadRequest(format!(
            "Sandbox {} is not in an error state (state: {})",
            row.id, row.state
        )));
    }
    Ok(Json(state.sandboxes.start_sandbox(row).await?))
}

#[utoipa::path(delete, path = "/sandbox/{id}", tag = "sandbox", operation_id = "sandbox_routes_delete", params(("id" = String, Path)))]
async fn delete(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Sandbox>> {
    lifecycle_call(&state, &ctx, "delete:sandboxes").await?;
    Ok(Json(state.sandboxes.delete(&ctx, &id).await?))
}

#[utoipa::path(get, path = "/sandbox/{id}/toolbox-proxy-url", tag = "sandbox", operation_id = "sandbox_routes_toolbox_proxy_url", params(("id" = String, Path)))]
async fn toolbox_proxy_url(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let row = state.sandboxes.find(&ctx, &id).await?;
    Ok(Json(
        serde_json::json!({ "url": state.sandboxes.to_dto(row).toolbox_proxy_url }),
    ))
}

/// The `limit` query parameter of a listing: 1 to `max` items.
pub(crate) fn page_limit(value: &str, max: i64) -> ApiResult<i64> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::BadRequest(format!("limit: expected an integer from 1 to {max}")))
}

/// The `order` query parameter of a listing: whether it is `desc`.
pub(crate) fn descending_order(value: &str) -> ApiResult<bool> {
    match value {
        "asc" => Ok(false),
        "desc" => Ok(true),
        _ => Err(ApiError::BadRequest(format!(
            "order: '{value}' is not asc or desc"
        ))),
    }
}

pub(crate) fn encode_cursor(offset: i64) -> String {
    URL_SAFE_NO_PAD.encode(offset.to_string())
}

pub(crate) fn decode_cursor(cursor: &str) -> ApiResult<i64> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "cursor: '{cursor}' is not a cursor returned by this API"
            ))
        })
}

/// Parses the list query. Arrays arrive as repeated keys (`states=a&states=b`).
fn list_filter(query: Option<&str>) -> ApiResult<SandboxFilter> {
    let mut f = SandboxFilter {
        limit: DEFAULT_PAGE,
        ..Default::default()
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "cursor" if !value.is_empty() => f.offset = decode_cursor(&value)?,
            "limit" => f.limit = page_limit(&value, MAX_PAGE)?,
            "id" => f.id = Some(value),
            "name" => f.name = Some(value),
            "labels" => f.labels = parse_label_filter(&value)?,
            "states" => f.states.push(value),
            "includeWarm" => {
                f.include_warm = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(ApiError::BadRequest(format!("includeWarm: '{value}' is not true or false"))),
                }
            }
            "sort" => {
                f.sort = Some(SandboxSort::parse(&value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "sort: '{value}' is not one of name, cpu, memoryGib, diskGib, lastActivityAt, createdAt"
                    ))
                })?)
            }
            "order" => {
                f.descending = descending_order(&value)?
            }
            _ => {}
        }
    }
    Ok(f)
}

#[utoipa::path(
    get,
    path = "/sandbox",
    tag = "sandbox",
    operation_id = "sandbox_routes_list"
)]
async fn list(
    State(state): State<AppState>,
    ctx: AuthContext,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<SandboxPage>> {
    let filter = list_filter(query.as_deref())?;
    let (rows, more) = state.sandboxes.list(&ctx, &filter).await?;
    let next_cursor = more.then(|| encode_cursor(filter.offset + rows.len() as i64));
    let items = rows
        .into_iter()
        .map(|r| state.sandboxes.to_dto(r).into_list_item())
        .collect();
    Ok(Json(SandboxPage { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_parsing() {
        let f = list_filter(Some("states=started&states=stopped&labels=%7B%22a%22%3A%22b%22%7D&limit=5&sort=name&order=desc"))
            .unwrap();
        assert_eq!(f.states, ["started", "stopped"]);
        assert_eq!(f.labels, [("a".to_string(), "b".to_string())]);
        assert_eq!(
            (f.limit, f.descending, f.sort),
            (5, true, Some(SandboxSort::Name))
        );
        assert!(list_filter(Some("limit=0")).is_err());
        assert!(list_filter(Some("labels=notjson")).is_err());
        assert!(list_filter(Some("cursor=%%%")).is_err());
        let c = encode_cursor(42);
        assert_eq!(
            list_filter(Some(&format!("cursor={c}"))).unwrap().offset,
            42
        );
    }
}
