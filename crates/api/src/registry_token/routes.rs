//! `GET /docker-registry/registry-push-access` and the token realm `GET /docker-registry/token`.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Access, RegistryPushAccess, RegistryTokens, TokenResponse};
use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(push_access))
        .routes(routes!(token))
}

fn token_server(state: &AppState) -> ApiResult<&RegistryTokens> {
    state.registry_tokens.as_deref().ok_or_else(|| {
        ApiError::Unavailable(
            "the registry token server is not configured (DAYTONA_REGISTRY_TOKEN_REALM)".into(),
        )
    })
}

#[utoipa::path(
    get,
    path = "/docker-registry/registry-push-access",
    tag = "docker-registry",
    operation_id = "getTransientPushAccess",
    params(("regionId" = Option<String>, Query, description = "accepted for compatibility: the transient registry serves every region")),
    responses((status = 200, body = RegistryPushAccess))
)]
async fn push_access(
    State(state): State<AppState>,
    ctx: AuthContext,
) -> ApiResult<Json<RegistryPushAccess>> {
    ctx.require("write:registries")?;
    let tokens = token_server(&state)?;
    Ok(Json(
        tokens
            .push_access(&ctx.organization_id, &ctx.user_id)
            .await?,
    ))
}

/// The registry's token realm (Docker registry v2 token authentication): basic auth with a
/// registry credential, `service` and `scope` (repeatable, space-separated) in the query.
#[utoipa::path(
    get,
    path = "/docker-registry/token",
    tag = "docker-registry",
    operation_id = "registry_token",
    params(
        ("service" = Option<String>, Query),
        ("scope" = Option<String>, Query, description = "type:name:actions, repeatable"),
    ),
    responses((status = 200, body = TokenResponse))
)]
async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<TokenResponse>> {
    let tokens = token_server(&state)?;
    let mut service = None;
    let mut requested = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "service" => service = Some(value.into_owned()),
            "scope" => {
                for scope in value.split_whitespace() {
                    requested.push(Access::parse(scope)?);
                }
            }
            _ => {}
        }
    }
    let (username, password) = basic_credentials(&headers)?;
    let principal = tokens.authenticate(&username, &password).await?;
    let granted = tokens.grant(&principal, &requested);
    tracing::debug!(?principal, ?requested, ?granted, "registry token");
    Ok(Json(tokens.issue(
        &principal,
        service.as_deref(),
        &granted,
    )?))
}

fn basic_credentials(headers: &HeaderMap) -> ApiResult<(String, String)> {
    let missing = || ApiError::Unauthorized("registry credentials (basic auth) required".into());
    let value = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let (scheme, encoded) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(missing());
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::Unauthorized("malformed basic credentials".into()))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| ApiError::Unauthorized("malformed basic credentials".into()))?;
    Ok((username.to_owned(), password.to_owned()))
}
