//! Users: `GET /users/me`, and for system administrators `/admin/users` (list, create, get).
//! Every user gets a personal organization when it is created.
//!
//! Users who log in through OIDC are created at their first request (`oidc.rs`) and create their
//! own keys; for deployments without an issuer, administrators issue a user's keys:
//! `POST /admin/users/{id}/api-keys` (this server's addition) creates one for the user in one of
//! its organizations (the personal one unless `organizationId` says otherwise).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api_keys::{self, ApiKeyDto};
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::store::{NewUser, OrgQuotas, UserRow};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(list, create))
        .routes(routes!(get_one))
        .routes(routes!(create_key))
}

/// `UserPublicKey`.
#[derive(Debug, Serialize)]
struct PublicKey {
    name: String,
    key: String,
}

/// `User`. This server stores no SSH public keys for users (the SSH gateway uses tokens).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UserDto {
    id: String,
    name: String,
    email: String,
    public_keys: Vec<PublicKey>,
    created_at: String,
}

impl From<UserRow> for UserDto {
    fn from(row: UserRow) -> Self {
        UserDto {
            id: row.id,
            name: row.name,
            email: row.email.unwrap_or_default(),
            public_keys: Vec::new(),
            created_at: row.created_at,
        }
    }
}

async fn user_or_404(state: &AppState, id: &str) -> ApiResult<UserRow> {
    state
        .store
        .user(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("User {id} not found")))
}

#[utoipa::path(get, path = "/users/me", tag = "users", operation_id = "users_me")]
async fn me(State(state): State<AppState>, ctx: AuthContext) -> ApiResult<Json<UserDto>> {
    Ok(Json(user_or_404(&state, &ctx.user_id).await?.into()))
}

#[utoipa::path(get, path = "/admin/users", tag = "users", operation_id = "users_list")]
async fn list(State(state): State<AppState>, ctx: AuthContext) -> ApiResult<Json<Vec<UserDto>>> {
    ctx.require_system_admin()?;
    let users = state.store.users().await?;
    Ok(Json(users.into_iter().map(UserDto::from).collect()))
}

#[utoipa::path(get, path = "/admin/users/{user_id}", tag = "users", operation_id = "users_get_one", params(("user_id" = String, Path)))]
async fn get_one(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(user_id): Path<String>,
) -> ApiResult<Json<UserDto>> {
    ctx.require_system_admin()?;
    Ok(Json(user_or_404(&state, &user_id).await?.into()))
}

/// `CreateOrganizationQuota`: unset values come from `DEFAULT_ORG_QUOTA_*`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QuotaOverrides {
    total_cpu_quota: Option<i64>,
    total_memory_quota: Option<i64>,
    total_disk_quota: Option<i64>,
    max_cpu_per_sandbox: Option<i64>,
    max_memory_per_sandbox: Option<i64>,
    max_disk_per_sandbox: Option<i64>,
    snapshot_quota: Option<i64>,
    max_snapshot_size: Option<i64>,
    volume_quota: Option<i64>,
}

impl QuotaOverrides {
    fn over(&self, d: &OrgQuotas) -> ApiResult<OrgQuotas> {
        let pick = |field: &str, v: Option<i64>, default: i64| match v {
            None => Ok(default),
            Some(v) if v >= 0 => Ok(v),
            Some(v) => Err(ApiError::BadRequest(format!(
                "personalOrganizationQuota.{field}: must be 0 (unlimited) or more, got {v}"
            ))),
        };
        Ok(OrgQuotas {
            total_cpu_quota: pick("totalCpuQuota", self.total_cpu_quota, d.total_cpu_quota)?,
            total_memory_quota: pick(
                "totalMemoryQuota",
                self.total_memory_quota,
                d.total_memory_quota,
            )?,
            total_disk_quota: pick("totalDiskQuota", self.total_disk_quota, d.total_disk_quota)?,
            max_cpu_per_sandbox: pick(
                "maxCpuPerSandbox",
                self.max_cpu_per_sandbox,
                d.max_cpu_per_sandbox,
            )?,
            max_memory_per_sandbox: pick(
                "maxMemoryPerSandbox",
                self.max_memory_per_sandbox,
                d.max_memory_per_sandbox,
            )?,
            max_disk_per_sandbox: pick(
                "maxDiskPerSandbox",
                self.max_disk_per_sandbox,
                d.max_disk_per_sandbox,
            )?,
            snapshot_quota: pick("snapshotQuota", self.snapshot_quota, d.snapshot_quota)?,
            max_snapshot_size: pick(
                "maxSnapshotSize",
                self.max_snapshot_size,
                d.max_snapshot_size,
            )?,
            volume_quota: pick("volumeQuota", self.volume_quota, d.volume_quota)?,
        })
    }
}

/// `CreateUser`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateUser {
    id: String,
    name: String,
    email: Option<String>,
    role: Option<String>,
    #[serde(default)]
    personal_organization_quota: QuotaOverrides,
    personal_organization_default_region_id: Option<String>,
    // Accepted for compatibility; this server does not verify emails.
    #[serde(rename = "emailVerified")]
    _email_verified: Option<bool>,
}

fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '|'))
}

#[utoipa::path(
    post,
    path = "/admin/users",
    tag = "users",
    operation_id = "users_create"
)]
async fn create(
    State(state): State<AppState>,
    ctx: AuthContext,
    JsonBody(body): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserDto>)> {
    ctx.require_system_admin()?;
    let role = match body.role.as_deref().unwrap_or("user") {
        r @ ("admin" | "user") => r,
        other => {
            return Err(ApiError::BadRequest(format!(
                "role: '{other}' is not one of admin, user"
            )));
        }
    };
    let quotas = body
        .personal_organization_quota
        .over(&state.organizations.default_quotas)?;
    let region = match body.personal_organization_default_region_id.as_deref() {
        Some(region) => {
            crate::organization::known_region(
                &state,
                &ctx.organization_id,
                "personalOrganizationDefaultRegionId",
                region,
            )
            .await?
        }
        None => state.organizations.default_region.clone(),
    };
    let user = provision(
        &state,
        NewUser {
            id: &body.id,
            name: &body.name,
            email: body.email.as_deref(),
            role,
            quotas: &quotas,
            default_region: Some(&region),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// Creates a user with its personal organization: users created by an administrator and users
/// logging in through OIDC for the first time. Checks the id, name and email (which it
/// lower-cases) and refuses an id or email that is taken.
pub(crate) async fn provision(state: &AppState, user: NewUser<'_>) -> ApiResult<UserRow> {
    if !valid_user_id(user.id) {
        return Err(ApiError::BadRequest(format!(
            "id: '{}' must be 1-128 characters of letters, digits, '-', '_', '.', '@' or '|'",
            user.id
        )));
    }
    let name = user.name.trim();
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::BadRequest(
            "name: must be 1-255 characters".into(),
        ));
    }
    let email = user
        .email
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e.contains('@') && !e.contains(char::is_whitespace) {
                Ok(e.to_lowercase())
            } else {
                Err(ApiError::BadRequest(format!(
                    "email: '{e}' is not an email address"
                )))
            }
        })
        .transpose()?;
    if state.store.user(user.id).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "User {} already exists",
            user.id
        )));
    }
    if let Some(email) = &email
        && state
            .store
            .users()
            .await?
            .iter()
            .any(|u| u.email.as_deref() == Some(email))
    {
        return Err(ApiError::Conflict(format!(
            "A user with email {email} already exists"
        )));
    }
    state
        .store
        .create_user(NewUser {
            name,
            email: email.as_deref(),
            ..user
        })
        .await?;
    user_or_404(state, user.id).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateUserKey {
    name: String,
    /// Defaults to every permission (narrowed at use to what the user holds).
    permissions: Option<Vec<String>>,
    organization_id: Option<String>,
    expires_at: Option<String>,
}

#[utoipa::path(post, path = "/admin/users/{user_id}/api-keys", tag = "users", operation_id = "users_create_key", params(("user_id" = String, Path)))]
async fn create_key(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<CreateUserKey>,
) -> ApiResult<(StatusCode, Json<ApiKeyDto>)> {
    ctx.require_system_admin()?;
    let user = user_or_404(&state, &user_id).await?;
    let org = match body.organization_id {
        Some(org) => org,
        None => personal_organization(&state, &user.id).await?,
    };
    if state.store.member_role(&org, &user.id).await?.is_none() {
        return Err(ApiError::BadRequest(format!(
            "organizationId: user {} is not a member of organization {org}",
            user.id
        )));
    }
    let permissions = match &body.permissions {
        Some(list) => {
            api_keys::validate_permissions(list)?;
            list.join(",")
        }
        None => "*".to_string(),
    };
    let dto = api_keys::issue(
        &state,
        &org,
        &user.id,
        &body.name,
        &permissions,
        body.expires_at.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(dto)))
}

/// The id of the organization made for `user_id` at sign-up (its default when none is named).
pub(crate) async fn personal_organization(state: &AppState, user_id: &str) -> ApiResult<String> {
    state
        .store
        .organizations_of(user_id)
        .await?
        .into_iter()
        .find(|o| o.personal && o.created_by == user_id)
        .map(|o| o.id)
        .ok_or_else(|| ApiError::NotFound(format!("User {user_id} has no personal organization")))
}
