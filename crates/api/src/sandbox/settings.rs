//! Routes that change a sandbox's settings after create: labels, public flag, auto intervals,
//! TTL, network settings, and activity.

use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::dto::Sandbox;
use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::store::SandboxSetting;
use daytona_runner::{NetworkPolicy, RunnerError};
use daytona_runtime::RuntimeError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(labels))
        .routes(routes!(public))
        .routes(routes!(autostop))
        .routes(routes!(autoarchive))
        .routes(routes!(autodelete))
        .routes(routes!(autopause))
        .routes(routes!(ttl))
        .routes(routes!(network_settings))
        .routes(routes!(last_activity))
}

/// Parses an integer path segment, naming it in the error.
fn int_param(name: &str, raw: &str, min: i64) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|v| *v >= min)
        .ok_or_else(|| ApiError::BadRequest(format!("{name}: '{raw}' is not an integer >= {min}")))
}

/// Applies one setting to the caller's sandbox and returns the updated DTO.
async fn apply(
    state: &AppState,
    ctx: &AuthContext,
    id: &str,
    setting: SandboxSetting,
) -> ApiResult<Sandbox> {
    ctx.require("write:sandboxes")?;
    let row = state.sandboxes.find(ctx, id).await?;
    state
        .store
        .update_sandbox_setting(&row.id, &setting)
        .await?;
    // The public flag is what a split proxy keeps; the others cost it one lookup.
    state.sandboxes.invalidations().sandbox(&row.id);
    let row = state.sandboxes.find(ctx, &row.id).await?;
    Ok(state.sandboxes.to_dto(row))
}

#[derive(Deserialize)]
struct LabelsBody {
    labels: BTreeMap<String, String>,
}

#[utoipa::path(put, path = "/sandbox/{id}/labels", tag = "sandbox", operation_id = "sandbox_settings_labels", params(("id" = String, Path)))]
async fn labels(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<LabelsBody>,
) -> ApiResult<Json<Sandbox>> {
    let json = serde_json::to_string(&body.labels).expect("string map serializes");
    Ok(Json(
        apply(&state, &ctx, &id, SandboxSetting::Labels(json)).await?,
    ))
}

#[utoipa::path(post, path = "/sandbox/{id}/public/{value}", tag = "sandbox", operation_id = "sandbox_settings_public", params(("id" = String, Path), ("value" = String, Path)))]
async fn public(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((id, value)): Path<(String, String)>,
) -> ApiResult<Json<Sandbox>> {
    let value = match value.as_str() {
        "true" => true,
        "false" => false,
        _ => {
            return Err(ApiError::BadRequest(format!(
                "isPublic: '{value}' is not true or false"
            )));
        }
    };
    Ok(Json(
        apply(&state, &ctx, &id, SandboxSetting::Public(value)).await?,
    ))
}

/// The minute-valued settings, one route each.
#[derive(Debug, Clone, Copy)]
enum Interval {
    AutoStop,
    AutoArchive,
    AutoDelete,
    AutoPause,
    Ttl,
}
/// Handlers that set one of the sandbox's intervals (`{minutes}`) and return the updated
/// sandbox: one function per path, as the OpenAPI document describes each route by its handler.
macro_rules! interval_handlers {
    ($($name:ident: $kind:ident at $path:literal,)*) => {$(
        #[utoipa::path(post, path = $path, tag = "sandbox", operation_id = concat!("sandbox_", stringify!($name)),
            params(("id" = String, Path), ("minutes" = String, Path)))]
        async fn $name(
            State(state): State<AppState>,
            ctx: AuthContext,
            Path((id, minutes)): Path<(String, String)>,
        ) -> ApiResult<Json<Sandbox>> {
            let setting = interval_setting(&state, Interval::$kind, &minutes)?;
            apply(&state, &ctx, &id, setting).await.map(Json)
        }
    )*};
}

interval_handlers! {
    autostop: AutoStop at "/sandbox/{id}/autostop/{minutes}",
    autoarchive: AutoArchive at "/sandbox/{id}/autoarchive/{minutes}",
    autodelete: AutoDelete at "/sandbox/{id}/autodelete/{minutes}",
    autopause: AutoPause at "/sandbox/{id}/autopause/{minutes}",
    ttl: Ttl at "/sandbox/{id}/ttl/{minutes}",
}

/// Validates `raw` minutes for `kind` (0 disables, except: auto-archive 0 = the maximum,
/// auto-delete -1 disables and 0 = delete on stop) and turns it into the stored setting.
fn interval_setting(state: &AppState, kind: Interval, raw: &str) -> ApiResult<SandboxSetting> {
    Ok(match kind {
        Interval::AutoStop => SandboxSetting::AutoStop(int_param("interval", raw, 0)?),
        Interval::AutoPause => SandboxSetting::AutoPause(int_param("interval", raw, 0)?),
        Interval::AutoDelete => SandboxSetting::AutoDelete(int_param("interval", raw, -1)?),
        Interval::AutoArchive => {
            let max = state.sandboxes.max_auto_archive_minutes();
            match int_param("interval", raw, 0)? {
                0 => SandboxSetting::AutoArchive(max),
                m if m > max => {
                    return Err(ApiError::BadRequest(format!(
                        "interval: {m} exceeds the maximum auto-archive interval of {max} minutes"
                    )));
                }
                m => SandboxSetting::AutoArchive(m),
            }
        }
        Interval::Ttl => {
            let minutes = int_param("ttlMinutes", raw, 0)?;
            SandboxSetting::AutoDestroyAt((minutes > 0).then(|| {
                (chrono::Utc::now() + chrono::Duration::minutes(minutes))
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }))
        }
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkSettingsBody {
    network_block_all: Option<bool>,
    network_allow_list: Option<String>,
    domain_allow_list: Option<String>,
}

/// The egress policy for these settings; a bad allow list is a 400 naming the entry.
pub fn network_policy(block_all: bool, allow_list: Option<&str>) -> ApiResult<NetworkPolicy> {
    let allow_list = NetworkPolicy::parse_allow_list(allow_list.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("networkAllowList: {e}")))?;
    Ok(NetworkPolicy {
        block_all,
        allow_list,
    })
}

#[utoipa::path(post, path = "/sandbox/{id}/network-settings", tag = "sandbox", operation_id = "sandbox_settings_network_settings", params(("id" = String, Path)))]
async fn network_settings(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NetworkSettingsBody>,
) -> ApiResult<Json<Sandbox>> {
    ctx.require("write:sandboxes")?;
    let row = state.sandboxes.find(&ctx, &id).await?;
    // An allow list implies "not blocking all"; `networkBlockAll: false` alone restores general
    // access and clears stored allow lists (the SDK documents both).
    let allows = body.network_allow_list.is_some() || body.domain_allow_list.is_some();
    let setting = match (body.network_block_all, allows) {
        (_, true) => SandboxSetting::Network {
            block_all: false,
            allow_list: body.network_allow_list.or(row.network_allow_list),
            domain_allow_list: body.domain_allow_list.or(row.domain_allow_list),
        },
        (Some(block_all), false) => SandboxSetting::Network {
            block_all,
            allow_list: None,
            domain_allow_list: None,
        },
        (None, false) => {
            return Err(ApiError::BadRequest(
                "at least one of networkBlockAll, networkAllowList or domainAllowList must be set"
                    .into(),
            ));
        }
    };
    if let SandboxSetting::Network {
        block_all,
        allow_list,
        ..
    } = &setting
    {
        let policy = network_policy(*block_all, allow_list.as_deref())?;
        // The runner applies it first (live when running); only then is it recorded.
        if row.state != "destroyed" {
            state
                .sandboxes
                .runner()
                .update_network(&row.id, &policy)
                .await
                .or_else(|e| match e {
                    // Not on the runner yet (still being created, or failed before): the stored
                    // policy is what create uses.
                    RunnerError::Runtime(RuntimeError::NotFound(_)) => Ok(()),
                    e => Err(ApiError::Internal(format!(
                        "could not apply the network policy: {e}"
                    ))),
                })?;
        }
    }
    Ok(Json(apply(&state, &ctx, &row.id, setting).await?))
}

#[utoipa::path(post, path = "/sandbox/{id}/last-activity", tag = "sandbox", operation_id = "sandbox_settings_last_activity", params(("id" = String, Path)))]
async fn last_activity(
    State(state): State<AppState>,
    caller: crate::internal::Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    use crate::internal::Caller;
    let id = match caller {
        Caller::User(ctx) => {
            ctx.require("write:sandboxes")?;
            state.sandboxes.find(&ctx, &id).await?.id
        }
        // The split proxy and SSH gateway report traffic to any sandbox (they throttle).
        Caller::Service(_) => {
            state
                .store
                .sandbox_by_id(&id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("Sandbox {id} not found")))?
                .id
        }
    };
    state.store.touch_sandbox(&id).await?;
    Ok(StatusCode::CREATED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_validation_names_the_bad_entry() {
        assert_eq!(
            network_policy(false, Some("100.64.0.0/10, 1.2.3.4/32"))
                .unwrap()
                .allow_list
                .len(),
            2
        );
        assert!(network_policy(true, None).unwrap().block_all);
        let err = network_policy(false, Some("100.64.0.0/10,banana"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("banana"), "{err}");
        assert!(network_policy(false, Some("100.64.0.1/10")).is_err());
    }

    #[test]
    fn integer_params() {
        assert_eq!(int_param("interval", "15", 0).unwrap(), 15);
        assert_eq!(int_param("interval", "-1", -1).unwrap(), -1);
        assert!(int_param("interval", "-2", -1).is_err());
        assert!(int_param("interval", "x", 0).is_err());
    }
}
