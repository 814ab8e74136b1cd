//! `/organizations/{id}/users`: members with their role (owner or member) and assigned roles.
//! Members see the list; only owners change access or remove members.

use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::roles::{RoleDto, resolve_role_ids};
use super::scope;
use crate::AppState;
use crate::auth::{AuthContext, MemberRole};
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::store::MemberRow;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(update_access))
        .routes(routes!(remove))
}

/// `OrganizationUser`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberDto {
    user_id: String,
    organization_id: String,
    name: String,
    email: String,
    role: String,
    assigned_roles: Vec<RoleDto>,
    created_at: String,
    updated_at: String,
}

fn to_dto(row: MemberRow, assigned_roles: Vec<RoleDto>) -> MemberDto {
    let created_at = row.created_at.unwrap_or_default();
    MemberDto {
        updated_at: row.updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
        user_id: row.user_id,
        organization_id: row.organization_id,
        name: row.name,
        email: row.email.unwrap_or_default(),
        role: row.role,
        assigned_roles,
    }
}

#[utoipa::path(get, path = "/organizations/{organization_id}/users", tag = "organizations", operation_id = "organization_members_list", params(("organization_id" = String, Path)))]
async fn list(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
) -> ApiResult<Json<Vec<MemberDto>>> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    let mut assigned: HashMap<String, Vec<RoleDto>> = HashMap::new();
    for (user, role) in state.store.role_assignments(&org.id).await? {
        assigned.entry(user).or_default().push(RoleDto::from(role));
    }
    let members = state.store.members(&org.id).await?;
    Ok(Json(
        members
            .into_iter()
            .map(|m| {
                let roles = assigned.remove(&m.user_id).unwrap_or_default();
                to_dto(m, roles)
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateAccess {
    role: String,
    #[serde(default)]
    assigned_role_ids: Vec<String>,
}

pub(crate) fn parse_member_role(raw: &str) -> ApiResult<MemberRole> {
    MemberRole::parse(raw)
        .ok_or_else(|| ApiError::BadRequest(format!("role: '{raw}' is not one of owner, member")))
}

/// Refuses when `user` is the organization's last owner (an organization always has one).
pub(crate) async fn ensure_owner_remains(
    state: &AppState,
    organization_id: &str,
    user: &str,
) -> ApiResult<()> {
    let role = state.store.member_role(organization_id, user).await?;
    if role.as_deref() == Some("owner") && state.store.owner_count(organization_id).await? <= 1 {
        return Err(ApiError::Forbidden(format!(
            "User {user} is the last owner of organization {organization_id}; make another member \
             an owner first"
        )));
    }
    Ok(())
}

#[utoipa::path(post, path = "/organizations/{organization_id}/users/{user_id}/access", tag = "organizations", operation_id = "organization_members_update_access", params(("organization_id" = String, Path), ("user_id" = String, Path)))]
async fn update_access(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((organization_id, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateAccess>,
) -> ApiResult<Json<MemberDto>> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    scoped.require_owner("change member access")?;
    let role = parse_member_role(&body.role)?;
    let member = state
        .store
        .member(&org.id, &user_id)
        .await?
        .ok_or_else(|| member_not_found(&org.id, &user_id))?;
    if role == MemberRole::Member {
        ensure_owner_remains(&state, &org.id, &member.user_id).await?;
    }
    let roles = resolve_role_ids(&state, &org.id, &body.assigned_role_ids).await?;
    let role_ids: Vec<String> = roles.iter().map(|r| r.id.clone()).collect();
    state
        .store
        .set_member_access(&org.id, &member.user_id, role.as_str(), &role_ids)
        .await?;
    let member = state
        .store
        .member(&org.id, &member.user_id)
        .await?
        .ok_or_else(|| member_not_found(&org.id, &user_id))?;
    Ok(Json(to_dto(
        member,
        roles.into_iter().map(RoleDto::from).collect(),
    )))
}

#[utoipa::path(delete, path = "/organizations/{organization_id}/users/{user_id}", tag = "organizations", operation_id = "organization_members_remove", params(("organization_id" = String, Path), ("user_id" = String, Path)))]
async fn remove(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((organization_id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    scoped.require_owner("remove members")?;
    if org.personal {
        return Err(ApiError::Forbidden(
            "Members cannot be removed from a personal organization".into(),
        ));
    }
    if state.store.member(&org.id, &user_id).await?.is_none() {
        return Err(member_not_found(&org.id, &user_id));
    }
    ensure_owner_remains(&state, &org.id, &user_id).await?;
    state.store.remove_member(&org.id, &user_id).await?;
    state.sandboxes.invalidations().credentials();
    Ok(StatusCode::NO_CONTENT)
}

fn member_not_found(organization_id: &str, user_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "User {user_id} is not a member of organization {organization_id}"
    ))
}
