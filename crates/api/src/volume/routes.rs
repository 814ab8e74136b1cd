//! HTTP routes of `/api/volumes`.

use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::VolumeDto;
use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;

#[derive(Debug, Deserialize)]
pub struct CreateVolume {
    pub name: String,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/volumes", get(list).post(create))
        .route("/volumes/{id}", get(get_one).delete(delete))
        .route("/volumes/by-name/{name}", get(by_name))
}

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

async fn delete(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<VolumeDto>> {
    ctx.require("delete:volumes")?;
    let volumes = state.sandboxes.volumes();
    Ok(Json(volumes.delete(&ctx.organization_id, &id).await?))
}
