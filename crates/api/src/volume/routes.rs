//! HTTP routes of `/api/volumes`.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::VolumeDto;
use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;

#[derive(Debug, Deserialize)]
pub struct CreateVolume {
    pub name: String,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, delete))
        .routes(routes!(by_name))
}

#[utoipa::path(
    post,
    path = "/volumes",
    tag = "volumes",
    operation_id = "volume_routes_create"
)]
async fn create(
    State(state): State<AppState>,
    ctx: AuthContext,
    JsonBody(body): JsonBody<CreateVolume>,
) -> ApiResult<Json<VolumeDto>> {
    ctx.require("write:volumes")?;
    let volumes = state.sandboxes.volumes();
    Ok(Json(
        volumes.create(&ctx.organization_id, &body.name).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/volumes",
    tag = "volumes",
    operation_id = "volume_routes_list"
)]
async fn list(
    State(state): State<AppState>,
    ctx: AuthContext,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Vec<VolumeDto>>> {
    ctx.require("read:volumes")?;
    let mut include_deleted = false;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == "includeDeleted" {
            include_deleted = match value.as_ref() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "includeDeleted: '{value}' is not true or false"
                    )));
                }
            };
        }
    }
    let volumes = state.sandboxes.volumes();
    Ok(Json(
        volumes.list(&ctx.organization_id, include_deleted).await?,
    ))
}

#[utoipa::path(get, path = "/volumes/{id}", tag = "volumes", operation_id = "volume_routes_get_one", params(("id" = String, Path)))]
async fn get_one(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<VolumeDto>> {
    ctx.require("read:volumes")?;
    Ok(Json(
        state
            .sandboxes
            .volumes()
            .get(&ctx.organization_id, &id)
            .await?,
    ))
}

#[utoipa::path(get, path = "/volumes/by-name/{name}", tag = "volumes", operation_id = "volume_routes_by_name", params(("name" = String, Path)))]
async fn by_name(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Json<VolumeDto>> {
    ctx.require("read:volumes")?;
    let volumes = state.sandboxes.volumes();
    Ok(Json(
        volumes.get_by_name(&ctx.organization_id, &name).await?,
    ))
}

#[utoipa::path(delete, path = "/volumes/{id}", tag = "volumes", operation_id = "volume_routes_delete", params(("id" = String, Path)))]
async fn delete(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<VolumeDto>> {
    ctx.require("delete:volumes")?;
    let volumes = state.sandboxes.volumes();
    Ok(Json(volumes.delete(&ctx.organization_id, &id).await?))
}
