//! Audit log: every mutating call (POST, PUT, PATCH, DELETE) by an authenticated caller is recorded
//! with who made it, what it targeted and how it ended; `GET /audit/organizations/{id}` lists an
//! organization's entries (permission `read:audit_logs`).
//!
//! The middleware runs after routing (so it knows the route template) and learns the caller
//! through an [`AuditSlot`] that the [`AuthContext`] extractor fills: no second authentication.

use std::sync::{Arc, OnceLock};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Json;
use axum::body::{Body, HttpBody, to_bytes};
use axum::extract::{MatchedPath, Path, Query, RawPathParams, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::auth::{AuthContext, client_address};
use crate::error::{ApiError, ApiResult};
use crate::json::bounded;
use crate::store::{AuditEntry, AuditSelection, NewAuditEntry};

/// Response bodies larger than this are not inspected (for a created id or an error message).
const INSPECT_LIMIT: usize = 64 * 1024;
const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 200;

/// Filled by the [`AuthContext`] extractor when a request authenticates.
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<OnceLock<AuthContext>>);

impl AuditSlot {
    pub fn record(&self, ctx: &AuthContext) {
        let _ = self.0.set(ctx.clone());
    }
}

/// What a route template says about a call: its action and the kind of thing it targets.
fn describe(method: &Method, template: &str) -> (String, String) {
    let mut literals = template
        .split('/')
        .filter(|s| !s.is_empty() && !s.starts_with('{'));
    let resource = literals.next().unwrap_or("api");
    let target_type = match resource {
        "sandbox" => "sandbox",
        "snapshots" => "snapshot",
        "api-keys" => "api_key",
        "volumes" => "volume",
        "warm-pools" => "warm_pool",
        "organizations" => "organization",
        other => other,
    }
    .to_string();
    let tail: Vec<String> = literals.map(|s| s.replace('-', "_")).collect();
    let action = if tail.is_empty() {
        match *method {
            Method::POST => "create",
            Method::DELETE => "delete",
            _ => "update",
        }
        .to_string()
    } else {
        tail.join("_")
    };
    (action, target_type)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(512).collect())
}

/// Records the call after it ran. Reads the response body only when it is small JSON.
pub async fn record(
    State(state): State<AppState>,
    matched: MatchedPath,
    params: RawPathParams,
    mut req: Request,
    next: Next,
) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let slot = AuditSlot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();
    // The route template without the `/api` prefix the router is nested under.
    let template = matched.as_str().trim_start_matches("/api").to_string();
    let first_param = params.iter().next().map(|(_, v)| v.to_string());
    let ip = client_address(req.extensions());
    let user_agent = header_text(req.headers(), "user-agent");
    let source = header_text(req.headers(), "x-daytona-source");

    let response = next.run(req).await;
    let Some(ctx) = slot.0.get().cloned() else {
        return response; // not authenticated: nothing to attribute
    };

    let status = response.status();
    let small_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
        && response
            .body()
            .size_hint()
            .upper()
            .is_some_and(|n| n <= INSPECT_LIMIT as u64);
    let (parts, body) = response.into_parts();
    let (body, json) = if small_json {
        match to_bytes(body, INSPECT_LIMIT).await {
            Ok(bytes) => {
                let json = serde_json::from_slice::<Value>(&bytes).ok();
                (Body::from(bytes), json)
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit: response body unreadable");
                (Body::empty(), None)
            }
        }
    } else {
        (body, None)
    };
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (action, target_type) = describe(&method, &template);
    let target_id = first_param.or_else(|| status.is_success().then(|| field("id")).flatten());
    let error_message = (!status.is_success()).then(|| field("message")).flatten();
    let metadata = serde_json::json!({ "method": method.as_str(), "route": template });

    let entry = NewAuditEntry {
        organization_id: &ctx.organization_id,
        user_id: &ctx.user_id,
        api_key_id: ctx.api_key_id.as_deref(),
        action: &action,
        target_type: &target_type,
        target_id: target_id.as_deref(),
        status_code: status.as_u16(),
        error_message: error_message.as_deref(),
        ip_address: &ip,
        user_agent: user_agent.as_deref(),
        source: source.as_deref(),
        metadata: &metadata,
    };
    let result = state.store.insert_audit_entry(&entry).await;
    if let Err(e) = result {
        tracing::warn!(error = %e, %action, "audit: entry not recorded");
    }
    Response::from_parts(parts, body)
}

// --- listing ----------------------------------------------------------------------------------

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    page: Option<String>,
    limit: Option<String>,
    from: Option<String>,
    to: Option<String>,
    next_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditPage {
    items: Vec<AuditEntry>,
    total: i64,
    page: u64,
    total_pages: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

fn timestamp(name: &str, raw: Option<&str>) -> ApiResult<Option<String>> {
    raw.map(|raw| {
        chrono::DateTime::parse_from_rfc3339(raw)
            .map(|t| {
                t.with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
            .map_err(|_| {
                ApiError::BadRequest(format!("{name}: '{raw}' is not an ISO 8601 date-time"))
            })
    })
    .transpose()
}

/// A cursor is the `(created_at, id)` of the last entry of the previous page.
fn encode_cursor(entry: &AuditEntry) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", entry.created_at, entry.id))
}

fn decode_cursor(raw: &str) -> ApiResult<(String, String)> {
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once('|')
                .map(|(t, id)| (t.to_string(), id.to_string()))
        })
        .ok_or_else(|| ApiError::BadRequest("nextToken: not a token this server issued".into()))
}

#[utoipa::path(get, path = "/audit/organizations/{organization_id}", tag = "audit", operation_id = "audit_list", params(("organization_id" = String, Path)))]
async fn list(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<AuditPage>> {
    ctx.require("read:audit_logs")?;
    if organization_id != ctx.organization_id {
        return Err(ApiError::NotFound(format!(
            "Organization {organization_id} not found"
        )));
    }
    let page = bounded("page", query.page.as_deref(), 1, u64::from(u32::MAX))?;
    // Both fit i64: page ≤ u32::MAX, limit ≤ MAX_LIMIT.
    let limit = bounded("limit", query.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let from = timestamp("from", query.from.as_deref())?;
    let to = timestamp("to", query.to.as_deref())?;
    let cursor = query.next_token.as_deref().map(decode_cursor).transpose()?;

    let selection = AuditSelection {
        organization_id: &organization_id,
        from: from.as_deref(),
        to: to.as_deref(),
        before: cursor.as_ref().map(|(t, id)| (t.as_str(), id.as_str())),
    };
    let total = state.store.count_audit_entries(&selection).await?;
    // A cursor takes precedence over the page number.
    let offset = if cursor.is_some() {
        0
    } else {
        (page as i64 - 1) * limit as i64
    };
    let mut items = state
        .store
        .audit_entries(&selection, offset, limit as i64 + 1)
        .await?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_token = more.then(|| items.last().map(encode_cursor)).flatten();
    let limit = limit as i64;
    Ok(Json(AuditPage {
        items,
        total,
        page,
        total_pages: (total + limit - 1) / limit,
        next_token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_actions_and_targets() {
        let d = |m: Method, t: &str| describe(&m, t);
        assert_eq!(
            d(Method::POST, "/sandbox"),
            ("create".into(), "sandbox".into())
        );
        assert_eq!(
            d(Method::DELETE, "/sandbox/{id}"),
            ("delete".into(), "sandbox".into())
        );
        assert_eq!(
            d(Method::POST, "/sandbox/{id}/start"),
            ("start".into(), "sandbox".into())
        );
        assert_eq!(
            d(Method::POST, "/sandbox/{id}/autostop/{interval}"),
            ("autostop".into(), "sandbox".into())
        );
        assert_eq!(
            d(Method::POST, "/sandbox/{id}/signing-key/rotate"),
            ("signing_key_rotate".into(), "sandbox".into())
        );
        assert_eq!(
            d(Method::POST, "/api-keys"),
            ("create".into(), "api_key".into())
        );
        assert_eq!(
            d(Method::PUT, "/snapshots/{id}"),
            ("update".into(), "snapshot".into())
        );
    }
}
