//! Regions: `GET /regions` (those the caller's organization may use), `GET /regions/{id}` and
//! the public `GET /shared-regions`. This server runs one shared region, the configured
//! `DEFAULT_REGION_*`; sandboxes report it as their `target`.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::store::RegionRow;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(shared))
}

/// `Region`. The URLs are null: the deployment-wide proxy and SSH gateway serve it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RegionDto {
    id: String,
    name: String,
    organization_id: Option<String>,
    region_type: String,
    proxy_url: Option<String>,
    ssh_gateway_url: Option<String>,
    snapshot_manager_url: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<RegionRow> for RegionDto {
    fn from(row: RegionRow) -> Self {
        RegionDto {
            id: row.id,
            name: row.name,
            organization_id: row.organization_id,
            region_type: row.region_type,
            proxy_url: None,
            ssh_gateway_url: None,
            snapshot_manager_url: None,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[utoipa::path(
    get,
    path = "/regions",
    tag = "regions",
    operation_id = "organization_regions_list"
)]
async fn list(State(state): State<AppState>, ctx: AuthContext) -> ApiResult<Json<Vec<RegionDto>>> {
    let rows = state.store.regions(&ctx.organization_id).await?;
    Ok(Json(rows.into_iter().map(RegionDto::from).collect()))
}

#[utoipa::path(get, path = "/regions/{region_id}", tag = "regions", operation_id = "organization_regions_get_one", params(("region_id" = String, Path)))]
async fn get_one(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(region_id): Path<String>,
) -> ApiResult<Json<RegionDto>> {
    let row = state
        .store
        .region(&ctx.organization_id, &region_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Region {region_id} not found")))?;
    Ok(Json(row.into()))
}

#[utoipa::path(
    get,
    path = "/shared-regions",
    tag = "regions",
    operation_id = "organization_regions_shared"
)]
async fn shared(State(state): State<AppState>) -> ApiResult<Json<Vec<RegionDto>>> {
    let rows = state.store.shared_regions().await?;
    Ok(Json(rows.into_iter().map(RegionDto::from).collect()))
}
