//! `/api/api-keys`: a user's API keys in the current organization. A key's value is shown once,
//! at creation; afterwards only its prefix.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{self, AuthContext};
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::store::{ApiKeyRow, NewApiKey};

/// Permissions a key can carry (upstream's set).
pub const PERMISSIONS: [&str; 15] = [
    "write:registries",
    "delete:registries",
    "write:snapshots",
    "delete:snapshots",
    "write:sandboxes",
    "delete:sandboxes",
    "read:volumes",
    "write:volumes",
    "delete:volumes",
    "write:regions",
    "delete:regions",
    "read:runners",
    "write:runners",
    "delete:runners",
    "read:audit_logs",
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateApiKey {
    pub name: String,
    pub permissions: Vec<String>,
    pub expires_at: Option<String>,
}

/// `ApiKeyList` / `ApiKeyResponse` (the latter is the list form with the full value).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyDto {
    pub name: String,
    pub value: String,
    pub created_at: String,
    pub permissions: Vec<String>,
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
    pub user_id: String,
}

fn permissions_of(row: &ApiKeyRow) -> Vec<String> {
    if row.permissions == "*" {
        PERMISSIONS.iter().map(|p| p.to_string()).collect()
    } else {
        row.permissions
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl ApiKeyDto {
    fn masked(row: ApiKeyRow) -> Self {
        ApiKeyDto {
            permissions: permissions_of(&row),
            value: format!("{}********", row.key_prefix),
            name: row.name,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            expires_at: row.expires_at,
            user_id: row.user_id,
        }
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(current))
        .routes(routes!(get_one, delete))
}

#[utoipa::path(
    get,
    path = "/api-keys",
    tag = "api-keys",
    operation_id = "api_keys_list"
)]
async fn list(State(state): State<AppState>, ctx: AuthContext) -> ApiResult<Json<Vec<ApiKeyDto>>> {
    let rows = state
        .store
        .api_keys_of(&ctx.organization_id, &ctx.user_id)
        .await?;
    Ok(Json(rows.into_iter().map(ApiKeyDto::masked).collect()))
}

#[utoipa::path(
    post,
    path = "/api-keys",
    tag = "api-keys",
    operation_id = "api_keys_create"
)]
async fn create(
    State(state): State<AppState>,
    ctx: AuthContext,
    JsonBody(body): JsonBody<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<ApiKeyDto>)> {
    validate_permissions(&body.permissions)?;
    // A key never grants more than the key that creates it.
    for permission in &body.permissions {
        ctx.require(permission)?;
    }
    let dto = issue(
        &state,
        &ctx.organization_id,
        &ctx.user_id,
        &body.name,
        &body.permissions.join(","),
        body.expires_at.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(dto)))
}

/// 400 naming the first permission that is not one of [`PERMISSIONS`].
pub(crate) fn validate_permissions(permissions: &[String]) -> ApiResult<()> {
    match permissions
        .iter()
        .find(|p| !PERMISSIONS.contains(&p.as_str()))
    {
        Some(bad) => Err(ApiError::BadRequest(format!(
            "permissions: '{bad}' is not one of {}",
            PERMISSIONS.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Creates a key for `user` in `org` (permissions comma-separated, `*` for all) and returns it
/// with its value, the only time the value is shown.
pub(crate) async fn issue(
    state: &AppState,
    org: &str,
    user: &str,
    name: &str,
    permissions: &str,
    expires_at: Option<&str>,
) -> ApiResult<ApiKeyDto> {
    let name = name.trim();
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::BadRequest(
            "name: must be 1-255 characters".into(),
        ));
    }
    let expires_at = match expires_at {
        None => None,
        Some(raw) => {
            let t = chrono::DateTime::parse_from_rfc3339(raw).map_err(|e| {
                ApiError::BadRequest(format!("expiresAt: '{raw}' is not an RFC 3339 time ({e})"))
            })?;
            if t < chrono::Utc::now() {
                return Err(ApiError::BadRequest(
                    "expiresAt: must be in the future".into(),
                ));
            }
            Some(
                t.with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            )
        }
    };
    if state
        .store
        .api_key_by_name(org, user, name)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "API key with name {name} already exists"
        )));
    }
    let value = auth::generate_key();
    let prefix: String = value.chars().take(8).collect();
    state
        .store
        .insert_api_key(NewApiKey {
            organization_id: org,
            user_id: user,
            name,
            key_hash: &auth::hash_key(&value),
            key_prefix: &prefix,
            permissions,
            expires_at: expires_at.as_deref(),
        })
        .await?;
    let row = state
        .store
        .api_key_by_name(org, user, name)
        .await?
        .ok_or_else(|| ApiError::Internal("API key vanished after insert".into()))?;
    let mut dto = ApiKeyDto::masked(row);
    dto.value = value;
    Ok(dto)
}

#[utoipa::path(
    get,
    path = "/api-keys/current",
    tag = "api-keys",
    operation_id = "api_keys_current"
)]
async fn current(State(state): State<AppState>, ctx: AuthContext) -> ApiResult<Json<ApiKeyDto>> {
    let rows = state
        .store
        .api_keys_of(&ctx.organization_id, &ctx.user_id)
        .await?;
    let row = rows
        .into_iter()
        .find(|r| ctx.api_key_id.as_ref() == Some(&r.id))
        .ok_or_else(|| ApiError::NotFound("The current credential is not an API key".into()))?;
    Ok(Json(ApiKeyDto::masked(row)))
}

#[utoipa::path(get, path = "/api-keys/{name}", tag = "api-keys", operation_id = "api_keys_get_one", params(("name" = String, Path)))]
async fn get_one(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<Json<ApiKeyDto>> {
    let row = state
        .store
        .api_key_by_name(&ctx.organization_id, &ctx.user_id, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("API key {name} not found")))?;
    Ok(Json(ApiKeyDto::masked(row)))
}

#[utoipa::path(delete, path = "/api-keys/{name}", tag = "api-keys", operation_id = "api_keys_delete", params(("name" = String, Path)))]
async fn delete(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let row = state
        .store
        .api_key_by_name(&ctx.organization_id, &ctx.user_id, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("API key {name} not found")))?;
    state.store.delete_api_key(&row.id).await?;
    state.sandboxes.invalidations().credentials();
    Ok(StatusCode::NO_CONTENT)
}
