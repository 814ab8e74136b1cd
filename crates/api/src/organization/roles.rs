//! `/organizations/{id}/roles`: permission sets assigned to members. Global roles (fixed ids,
//! seeded by the migration) exist in every organization and cannot be changed; owners manage
//! their organization's own roles.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::scope;
use crate::AppState;
use crate::api_keys::PERMISSIONS;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::store::RoleRow;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(update, delete))
}

/// `OrganizationRole`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleDto {
    id: String,
    name: String,
    description: String,
    permissions: Vec<String>,
    is_global: bool,
    created_at: String,
    updated_at: String,
}

impl From<RoleRow> for RoleDto {
    fn from(row: RoleRow) -> Self {
        RoleDto {
            is_global: row.organization_id.is_none(),
            permissions: row
                .permissions
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            id: row.id,
            name: row.name,
            description: row.description,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The roles `ids` name among those `organization_id` can assign, or 400 naming the unknown one.
pub(crate) async fn resolve_role_ids(
    state: &AppState,
    organization_id: &str,
    ids: &[String],
) -> ApiResult<Vec<RoleRow>> {
    let available = state.store.roles(organization_id).await?;
    let mut out: Vec<RoleRow> = Vec::new();
    for id in ids {
        let role = available.iter().find(|r| &r.id == id).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "assignedRoleIds: no role {id} in organization {organization_id}"
            ))
        })?;
        if !out.iter().any(|r| r.id == role.id) {
            out.push(role.clone());
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
struct RoleBody {
    name: String,
    #[serde(default)]
    description: String,
    permissions: Vec<String>,
}

/// Validated name and comma-joined permissions.
fn validate(body: &RoleBody) -> ApiResult<(String, String)> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::BadRequest(
            "name: must be 1-255 characters".into(),
        ));
    }
    if let Some(bad) = body
        .permissions
        .iter()
        .find(|p| !PERMISSIONS.contains(&p.as_str()))
    {
        return Err(ApiError::BadRequest(format!(
            "permissions: '{bad}' is not one of {}",
            PERMISSIONS.join(", ")
        )));
    }
    let mut permissions = body.permissions.clone();
    permissions.sort();
    permissions.dedup();
    Ok((name.to_string(), permissions.join(",")))
}

#[utoipa::path(get, path = "/organizations/{organization_id}/roles", tag = "organizations", operation_id = "organization_roles_list", params(("organization_id" = String, Path)))]
async fn list(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
) -> ApiResult<Json<Vec<RoleDto>>> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    let roles = state.store.roles(&org.id).await?;
    Ok(Json(roles.into_iter().map(RoleDto::from).collect()))
}

#[utoipa::path(post, path = "/organizations/{organization_id}/roles", tag = "organizations", operation_id = "organization_roles_create", params(("organization_id" = String, Path)))]
async fn create(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
    JsonBody(body): JsonBody<RoleBody>,
) -> ApiResult<(StatusCode, Json<RoleDto>)> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    scoped.require_owner("manage roles")?;
    let (name, permissions) = validate(&body)?;
    let id = state
        .store
        .create_role(&org.id, &name, body.description.trim(), &permissions)
        .await?;
    let role = own_role(&state, &org.id, &id).await?;
    Ok((StatusCode::CREATED, Json(role.into())))
}

/// One of the organization's own roles; a global role is 403, anything else 404.
async fn own_role(state: &AppState, organization_id: &str, role_id: &str) -> ApiResult<RoleRow> {
    let role = state
        .store
        .roles(organization_id)
        .await?
        .into_iter()
        .find(|r| r.id == role_id)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "Role {role_id} not found in organization {organization_id}"
            ))
        })?;
    if role.organization_id.is_none() {
        return Err(ApiError::Forbidden(format!(
            "Role {role_id} ({}) is a global role and cannot be changed",
            role.name
        )));
    }
    Ok(role)
}

#[utoipa::path(put, path = "/organizations/{organization_id}/roles/{role_id}", tag = "organizations", operation_id = "organization_roles_update", params(("organization_id" = String, Path), ("role_id" = String, Path)))]
async fn update(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((organization_id, role_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<RoleBody>,
) -> ApiResult<Json<RoleDto>> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    scoped.require_owner("manage roles")?;
    own_role(&state, &org.id, &role_id).await?;
    let (name, permissions) = validate(&body)?;
    state
        .store
        .update_role(&role_id, &name, body.description.trim(), &permissions)
        .await?;
    Ok(Json(own_role(&state, &org.id, &role_id).await?.into()))
}

#[utoipa::path(delete, path = "/organizations/{organization_id}/roles/{role_id}", tag = "organizations", operation_id = "organization_roles_delete", params(("organization_id" = String, Path), ("role_id" = String, Path)))]
async fn delete(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((organization_id, role_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    scoped.require_owner("manage roles")?;
    own_role(&state, &org.id, &role_id).await?;
    state.store.delete_role(&role_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
