//! Invitations: owners invite an email address with a member role and assigned roles; the user
//! with that email lists, accepts (becoming a member) or declines them; owners list, update
//! and cancel pending ones. Invitations expire (7 days unless `expiresAt` says otherwise).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::members::parse_member_role;
use super::roles::{RoleDto, resolve_role_ids};
use super::scope;
use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::store::{InvitationRow, NewInvitation, now};

const DEFAULT_EXPIRY_DAYS: i64 = 7;
/// Upstream's default assignment: the Developer role.
const DEVELOPER_ROLE: &str = "00000000-0000-0000-0000-000000000001";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_mine))
        .routes(routes!(count_mine))
        .routes(routes!(accept))
        .routes(routes!(decline))
        .routes(routes!(list_for_org, create))
        .routes(routes!(update))
        .routes(routes!(cancel))
}

/// `OrganizationInvitation`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InvitationDto {
    id: String,
    email: String,
    invited_by: String,
    organization_id: String,
    organization_name: String,
    expires_at: String,
    status: String,
    role: String,
    assigned_roles: Vec<RoleDto>,
    created_at: String,
    updated_at: String,
}

async fn to_dto(state: &AppState, row: InvitationRow) -> ApiResult<InvitationDto> {
    let roles = state.store.invitation_roles(&row.id).await?;
    Ok(InvitationDto {
        assigned_roles: roles.into_iter().map(RoleDto::from).collect(),
        id: row.id,
        email: row.email,
        invited_by: row.invited_by,
        organization_id: row.organization_id,
        organization_name: row.organization_name,
        expires_at: row.expires_at,
        status: row.status,
        role: row.role,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

async fn to_dtos(state: &AppState, rows: Vec<InvitationRow>) -> ApiResult<Vec<InvitationDto>> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(to_dto(state, row).await?);
    }
    Ok(out)
}

/// Emails are compared without case.
fn normalize_email(raw: &str) -> ApiResult<String> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 320
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.contains(char::is_whitespace);
    if valid {
        Ok(email)
    } else {
        Err(ApiError::BadRequest(format!(
            "email: '{raw}' is not an email address"
        )))
    }
}

fn expiry(raw: Option<&str>) -> ApiResult<String> {
    let at = match raw {
        None => chrono::Utc::now() + chrono::Duration::days(DEFAULT_EXPIRY_DAYS),
        Some(raw) => chrono::DateTime::parse_from_rfc3339(raw)
            .map_err(|e| {
                ApiError::BadRequest(format!("expiresAt: '{raw}' is not an RFC 3339 time ({e})"))
            })?
            .with_timezone(&chrono::Utc),
    };
    if at <= chrono::Utc::now() {
        return Err(ApiError::BadRequest(
            "expiresAt: must be in the future".into(),
        ));
    }
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn default_roles() -> Vec<String> {
    vec![DEVELOPER_ROLE.to_string()]
}

/// The caller's email: invitations are addressed to it.
async fn my_email(state: &AppState, ctx: &AuthContext) -> ApiResult<Option<String>> {
    Ok(state
        .store
        .user(&ctx.user_id)
        .await?
        .and_then(|u| u.email)
        .map(|e| e.to_lowercase()))
}

#[utoipa::path(
    get,
    path = "/organizations/invitations",
    tag = "organizations",
    operation_id = "organization_invitations_list_mine"
)]
async fn list_mine(
    State(state): State<AppState>,
    ctx: AuthContext,
) -> ApiResult<Json<Vec<InvitationDto>>> {
    let Some(email) = my_email(&state, &ctx).await? else {
        return Ok(Json(Vec::new()));
    };
    let rows = state.store.pending_invitations_for(&email, &now()).await?;
    Ok(Json(to_dtos(&state, rows).await?))
}

#[utoipa::path(
    get,
    path = "/organizations/invitations/count",
    tag = "organizations",
    operation_id = "organization_invitations_count_mine"
)]
async fn count_mine(State(state): State<AppState>, ctx: AuthContext) -> ApiResult<Json<usize>> {
    let Some(email) = my_email(&state, &ctx).await? else {
        return Ok(Json(0));
    };
    let rows = state.store.pending_invitations_for(&email, &now()).await?;
    Ok(Json(rows.len()))
}

/// A pending, unexpired invitation addressed to the caller. Others' invitations are 404.
async fn mine(state: &AppState, ctx: &AuthContext, id: &str) -> ApiResult<InvitationRow> {
    let not_found = || ApiError::NotFound(format!("Invitation {id} not found"));
    let email = my_email(state, ctx).await?.ok_or_else(not_found)?;
    let row = state
        .store
        .invitation(id)
        .await?
        .filter(|i| i.email == email)
        .ok_or_else(not_found)?;
    if row.status != "pending" {
        return Err(ApiError::Conflict(format!(
            "Invitation {id} is {}, not pending",
            row.status
        )));
    }
    if row.expires_at <= now() {
        return Err(ApiError::BadRequest(format!(
            "Invitation {id} expired at {}",
            row.expires_at
        )));
    }
    Ok(row)
}

#[utoipa::path(post, path = "/organizations/invitations/{invitation_id}/accept", tag = "organizations", operation_id = "organization_invitations_accept", params(("invitation_id" = String, Path)))]
async fn accept(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(invitation_id): Path<String>,
) -> ApiResult<Json<InvitationDto>> {
    let row = mine(&state, &ctx, &invitation_id).await?;
    if state
        .store
        .member_role(&row.organization_id, &ctx.user_id)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "You are already a member of organization {}",
            row.organization_id
        )));
    }
    if !state.store.accept_invitation(&row, &ctx.user_id).await? {
        return Err(ApiError::Conflict(format!(
            "Invitation {invitation_id} is no longer pending"
        )));
    }
    let row = state
        .store
        .invitation(&invitation_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Invitation {invitation_id} not found")))?;
    Ok(Json(to_dto(&state, row).await?))
}

#[utoipa::path(post, path = "/organizations/invitations/{invitation_id}/decline", tag = "organizations", operation_id = "organization_invitations_decline", params(("invitation_id" = String, Path)))]
async fn decline(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(invitation_id): Path<String>,
) -> ApiResult<StatusCode> {
    let row = mine(&state, &ctx, &invitation_id).await?;
    if !state.store.close_invitation(&row.id, "declined").await? {
        return Err(ApiError::Conflict(format!(
            "Invitation {invitation_id} is no longer pending"
        )));
    }
    Ok(StatusCode::OK)
}

#[utoipa::path(get, path = "/organizations/{organization_id}/invitations", tag = "organizations", operation_id = "organization_invitations_list_for_org", params(("organization_id" = String, Path)))]
async fn list_for_org(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
) -> ApiResult<Json<Vec<InvitationDto>>> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    scoped.require_owner("see its invitations")?;
    let rows = state.store.pending_invitations_of_org(&org.id).await?;
    Ok(Json(to_dtos(&state, rows).await?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInvitation {
    email: String,
    #[serde(default = "member")]
    role: String,
    #[serde(default = "default_roles")]
    assigned_role_ids: Vec<String>,
    expires_at: Option<String>,
}

fn member() -> String {
    "member".into()
}

#[utoipa::path(post, path = "/organizations/{organization_id}/invitations", tag = "organizations", operation_id = "organization_invitations_create", params(("organization_id" = String, Path)))]
async fn create(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
    JsonBody(body): JsonBody<CreateInvitation>,
) -> ApiResult<(StatusCode, Json<InvitationDto>)> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    scoped.require_owner("invite members")?;
    if org.personal {
        return Err(ApiError::Forbidden(
            "Nobody can be invited to a personal organization".into(),
        ));
    }
    let email = normalize_email(&body.email)?;
    let role = parse_member_role(&body.role)?;
    let roles = resolve_role_ids(&state, &org.id, &body.assigned_role_ids).await?;
    let expires_at = expiry(body.expires_at.as_deref())?;
    if state
        .store
        .members(&org.id)
        .await?
        .iter()
        .any(|m| m.email.as_deref().map(str::to_lowercase).as_deref() == Some(email.as_str()))
    {
        return Err(ApiError::Conflict(format!(
            "{email} is already a member of organization {}",
            org.id
        )));
    }
    if state
        .store
        .pending_invitations_of_org(&org.id)
        .await?
        .iter()
        .any(|i| i.email == email)
    {
        return Err(ApiError::Conflict(format!(
            "{email} already has a pending invitation to organization {}",
            org.id
        )));
    }
    let inviter = state
        .store
        .user(&ctx.user_id)
        .await?
        .map(|u| u.email.unwrap_or(u.name))
        .unwrap_or_else(|| ctx.user_id.clone());
    let role_ids: Vec<String> = roles.into_iter().map(|r| r.id).collect();
    let id = state
        .store
        .create_invitation(NewInvitation {
            organization_id: &org.id,
            email: &email,
            invited_by: &inviter,
            role: role.as_str(),
            role_ids: &role_ids,
            expires_at: &expires_at,
        })
        .await?;
    let row = org_invitation(&state, &org.id, &id).await?;
    if let Some(mailer) = state.organizations.mailer.clone() {
        // In the background: a slow or failing mail server does not fail the invitation, which
        // the invitee also sees through the API.
        let (row, organization) = (row.clone(), org.name.clone());
        tokio::spawn(async move {
            let mail = crate::mail::Invitation {
                id: &row.id,
                email: &row.email,
                organization: &organization,
                role: &row.role,
                invited_by: &row.invited_by,
                expires_at: &row.expires_at,
            };
            match mailer.send_invitation(&mail).await {
                Ok(()) => tracing::info!(invitation = %row.id, "invitation mail sent"),
                Err(e) => {
                    tracing::warn!(invitation = %row.id, error = %e, "invitation mail not sent")
                }
            }
        });
    }
    Ok((StatusCode::CREATED, Json(to_dto(&state, row).await?)))
}

/// An invitation of `organization_id`; one of another organization is 404.
async fn org_invitation(
    state: &AppState,
    organization_id: &str,
    id: &str,
) -> ApiResult<InvitationRow> {
    state
        .store
        .invitation(id)
        .await?
        .filter(|i| i.organization_id == organization_id)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "Invitation {id} not found in organization {organization_id}"
            ))
        })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateInvitation {
    role: String,
    assigned_role_ids: Vec<String>,
    expires_at: Option<String>,
}

#[utoipa::path(put, path = "/organizations/{organization_id}/invitations/{invitation_id}", tag = "organizations", operation_id = "organization_invitations_update", params(("organization_id" = String, Path), ("invitation_id" = String, Path)))]
async fn update(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((organization_id, invitation_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateInvitation>,
) -> ApiResult<Json<InvitationDto>> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    scoped.require_owner("change invitations")?;
    let row = org_invitation(&state, &org.id, &invitation_id).await?;
    if row.status != "pending" {
        return Err(ApiError::Conflict(format!(
            "Invitation {invitation_id} is {}, not pending",
            row.status
        )));
    }
    let role = parse_member_role(&body.role)?;
    let roles = resolve_role_ids(&state, &org.id, &body.assigned_role_ids).await?;
    let expires_at = match body.expires_at.as_deref() {
        Some(raw) => expiry(Some(raw))?,
        None => row.expires_at.clone(),
    };
    let role_ids: Vec<String> = roles.into_iter().map(|r| r.id).collect();
    state
        .store
        .update_invitation(&row.id, role.as_str(), &role_ids, &expires_at)
        .await?;
    let row = org_invitation(&state, &org.id, &invitation_id).await?;
    Ok(Json(to_dto(&state, row).await?))
}

#[utoipa::path(post, path = "/organizations/{organization_id}/invitations/{invitation_id}/cancel", tag = "organizations", operation_id = "organization_invitations_cancel", params(("organization_id" = String, Path), ("invitation_id" = String, Path)))]
async fn cancel(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((organization_id, invitation_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let org = &scoped.row;
    scoped.require_owner("cancel invitations")?;
    let row = org_invitation(&state, &org.id, &invitation_id).await?;
    if !state.store.close_invitation(&row.id, "cancelled").await? {
        return Err(ApiError::Conflict(format!(
            "Invitation {invitation_id} is {}, not pending",
            row.status
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email(" Bob@Example.COM ").unwrap(),
            "bob@example.com"
        );
        for bad in [
            "",
            "bob",
            "@example.com",
            "bob@localhost",
            "b ob@example.com",
        ] {
            let err = normalize_email(bad).unwrap_err().to_string();
            assert!(err.starts_with("email:"), "{bad}: {err}");
        }
    }

    #[test]
    fn expiry_defaults_to_a_week_and_refuses_the_past() {
        let default = chrono::DateTime::parse_from_rfc3339(&expiry(None).unwrap()).unwrap();
        let days = (default.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
        assert!((167..=168).contains(&days), "{days}");
        assert!(
            expiry(Some("2001-01-01T00:00:00Z"))
                .unwrap_err()
                .to_string()
                .contains("future")
        );
        assert!(
            expiry(Some("tomorrow"))
                .unwrap_err()
                .to_string()
                .contains("RFC 3339")
        );
    }
}
