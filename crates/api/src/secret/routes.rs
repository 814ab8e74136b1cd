//! HTTP routes of `/api/secret` and `PUT /api/sandbox/{id}/secrets`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{CreateSecret, SecretDto, UpdateSecret};
use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::sandbox::dto::Sandbox;
use crate::sandbox::routes::{decode_cursor, encode_cursor};
use crate::store::{SecretFilter, SecretSort};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_all, create))
        .routes(routes!(list_paginated))
        .routes(routes!(get_one, update, delete))
        .routes(routes!(update_sandbox_secrets))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretPage {
    items: Vec<SecretDto>,
    total: i64,
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SandboxSecrets {
    secrets: Vec<BTreeMap<String, String>>,
}

/// Parses the paginated listing's query (`cursor`, `limit`, `name`, `sort`, `order`).
fn list_filter(query: Option<&str>) -> ApiResult<SecretFilter> {
    let mut f = SecretFilter {
        name: None,
        sort: SecretSort::CreatedAt,
        descending: true,
        offset: 0,
        limit: DEFAULT_PAGE,
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "cursor" if !value.is_empty() => f.offset = decode_cursor(&value)?,
            "limit" => f.limit = crate::sandbox::routes::page_limit(&value, MAX_PAGE)?,
            "name" if !value.is_empty() => f.name = Some(value),
            "sort" => {
                f.sort = SecretSort::parse(&value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "sort: '{value}' is not one of name, createdAt, updatedAt"
                    ))
                })?
            }
            "order" => f.descending = crate::sandbox::routes::descending_order(&value)?,
            _ => {}
        }
    }
    Ok(f)
}

#[utoipa::path(
    get,
    path = "/secret/paginated",
    tag = "secret",
    operation_id = "secret_routes_list_paginated"
)]
async fn list_paginated(
    State(state): State<AppState>,
    ctx: AuthContext,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<SecretPage>> {
    ctx.require("read:secrets")?;
    let filter = list_filter(query.as_deref())?;
    let (items, total, more) = state.secrets.list(&ctx.organization_id, &filter).await?;
    let next_cursor = more.then(|| encode_cursor(filter.offset + items.len() as i64));
    Ok(Json(SecretPage {
        items,
        total,
        next_cursor,
    }))
}

/// Every secret of the organization, newest first.
#[utoipa::path(
    get,
    path = "/secret",
    tag = "secret",
    operation_id = "secret_routes_list_all"
)]
async fn list_all(
    State(state): State<AppState>,
    ctx: AuthContext,
) -> ApiResult<Json<Vec<SecretDto>>> {
    ctx.require("read:secrets")?;
    let mut filter = list_filter(None)?;
    filter.limit = i64::MAX - 1;
    let (items, _, _) = state.secrets.list(&ctx.organization_id, &filter).await?;
    Ok(Json(items))
}

#[utoipa::path(
    post,
    path = "/secret",
    tag = "secret",
    operation_id = "secret_routes_create"
)]
async fn create(
    State(state): State<AppState>,
    ctx: AuthContext,
    JsonBody(body): JsonBody<CreateSecret>,
) -> ApiResult<(StatusCode, Json<SecretDto>)> {
    ctx.require("write:secrets")?;
    let secret = state.secrets.create(&ctx.organization_id, body).await?;
    Ok((StatusCode::CREATED, Json(secret)))
}

#[utoipa::path(get, path = "/secret/{id}", tag = "secret", operation_id = "secret_routes_get_one", params(("id" = String, Path)))]
async fn get_one(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<SecretDto>> {
    ctx.require("read:secrets")?;
    Ok(Json(state.secrets.get(&ctx.organization_id, &id).await?))
}

#[utoipa::path(patch, path = "/secret/{id}", tag = "secret", operation_id = "secret_routes_update", params(("id" = String, Path)))]
async fn update(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateSecret>,
) -> ApiResult<Json<SecretDto>> {
    ctx.require("write:secrets")?;
    Ok(Json(
        state
            .secrets
            .update(&ctx.organization_id, &id, body)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/secret/{id}", tag = "secret", operation_id = "secret_routes_delete", params(("id" = String, Path)))]
async fn delete(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.require("delete:secrets")?;
    state.secrets.delete(&ctx.organization_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the secrets the sandbox mounts: applied at once to a running sandbox (processes
/// started from then on), otherwise from its next start.
#[utoipa::path(put, path = "/sandbox/{id}/secrets", tag = "sandbox", operation_id = "secret_routes_update_sandbox_secrets", params(("id" = String, Path)))]
async fn update_sandbox_secrets(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SandboxSecrets>,
) -> ApiResult<Json<Sandbox>> {
    ctx.require("write:sandboxes")?;
    Ok(Json(
        state
            .sandboxes
            .update_secrets(&ctx, &id, &body.secrets)
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_query() {
        let f = list_filter(Some("limit=5&name=ab&sort=name&order=asc")).unwrap();
        assert_eq!(
            (f.limit, f.name.as_deref(), f.sort, f.descending),
            (5, Some("ab"), SecretSort::Name, false)
        );
        let d = list_filter(None).unwrap();
        assert_eq!(
            (d.limit, d.sort, d.descending),
            (DEFAULT_PAGE, SecretSort::CreatedAt, true)
        );
        for bad in [
            "limit=0",
            "limit=201",
            "sort=value",
            "order=up",
            "cursor=%%",
        ] {
            assert!(list_filter(Some(bad)).is_err(), "{bad}");
        }
    }
}
