//! HTTP routes of `/api/warm-pools`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{CreateWarmPool, UpdateWarmPool, WarmPool};
use crate::AppState;
use crate::auth::AuthContext;
use crate::error::ApiResult;
use crate::json::JsonBody;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(update, delete))
}

#[utoipa::path(
    get,
    path = "/warm-pools",
    tag = "warm-pools",
    operation_id = "list_warm_pools"
)]
async fn list(State(state): State<AppState>, ctx: AuthContext) -> ApiResult<Json<Vec<WarmPool>>> {
    Ok(Json(super::list(&state.store, &ctx).await?))
}

#[utoipa::path(
    post,
    path = "/warm-pools",
    tag = "warm-pools",
    operation_id = "create_warm_pool"
)]
async fn create(
    State(state): State<AppState>,
    ctx: AuthContext,
    JsonBody(body): JsonBody<CreateWarmPool>,
) -> ApiResult<(StatusCode, Json<WarmPool>)> {
    ctx.require("write:sandboxes")?;
    let pool = super::create(
        &state.store,
        &ctx,
        body,
        &state.organizations.default_region,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(pool)))
}

#[utoipa::path(
    patch,
    path = "/warm-pools/{id}",
    tag = "warm-pools",
    operation_id = "update_warm_pool",
    params(("id" = String, Path))
)]
async fn update(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateWarmPool>,
) -> ApiResult<Json<WarmPool>> {
    ctx.require("write:sandboxes")?;
    Ok(Json(super::update(&state.store, &ctx, &id, body).await?))
}

#[utoipa::path(
    delete,
    path = "/warm-pools/{id}",
    tag = "warm-pools",
    operation_id = "delete_warm_pool",
    params(("id" = String, Path))
)]
async fn delete(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.require("delete:sandboxes")?;
    super::delete(&state.sandboxes, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
