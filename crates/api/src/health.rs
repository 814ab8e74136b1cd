//! Liveness (`GET /health`, open to anyone) and readiness (`GET /health/ready`, only with
//! `HEALTH_CHECK_API_KEY`): the database and, when configured, Redis are asked for an answer.
//! Shapes follow upstream (NestJS terminus): `{status, info, error, details}` with one entry per
//! component, 200 when every component is up, 503 otherwise.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{bearer, hash_key};
use crate::error::ApiError;

/// How long one component may take to answer before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What readiness checks, and the key that may ask.
pub struct Readiness {
    /// SHA-256 of `HEALTH_CHECK_API_KEY`, so the comparison does not leak by timing.
    key_digest: String,
    /// `REDIS_HOST:REDIS_PORT`, when Redis is configured.
    redis: Option<String>,
}

impl Readiness {
    pub fn new(health_check_api_key: &str, redis: Option<&daytona_config::RedisConfig>) -> Self {
        Self {
            key_digest: hash_key(health_check_api_key),
            redis: redis.map(|r| format!("{}:{}", r.host, r.port)),
        }
    }

    fn admits(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|token| hash_key(token) == self.key_digest)
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(live))
        .routes(routes!(ready))
}

#[utoipa::path(get, path = "/health", tag = "health", operation_id = "health",
    responses((status = 200, description = "The API process answers")))]
async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// One component's state, as terminus reports it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ComponentHealth {
    /// `up` or `down`
    status: &'static str,
    /// Why the component is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadinessReport {
    /// `ok` when every component is up, else `error`.
    status: &'static str,
    info: BTreeMap<&'static str, ComponentHealth>,
    error: BTreeMap<&'static str, ComponentHealth>,
    details: BTreeMap<&'static str, ComponentHealth>,
}

impl ReadinessReport {
    fn new(components: Vec<(&'static str, Result<(), String>)>) -> Self {
        let mut report = Self {
            status: "ok",
            info: BTreeMap::new(),
            error: BTreeMap::new(),
            details: BTreeMap::new(),
        };
        for (name, result) in components {
            let health = match result {
                Ok(()) => ComponentHealth {
                    status: "up",
                    message: None,
                },
                Err(message) => ComponentHealth {
                    status: "down",
                    message: Some(message),
                },
            };
            if health.message.is_some() {
                report.status = "error";
                report.error.insert(name, health.clone());
            } else {
                report.info.insert(name, health.clone());
            }
            report.details.insert(name, health);
        }
        report
    }
}

#[utoipa::path(get, path = "/health/ready", tag = "health", operation_id = "healthReady",
    responses(
        (status = 200, description = "Every component is up", body = ReadinessReport),
        (status = 401, description = "Missing or wrong HEALTH_CHECK_API_KEY"),
        (status = 503, description = "A component is down", body = ReadinessReport),
    ))]
async fn ready(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.readiness.admits(&headers) {
        return ApiError::Unauthorized(
            "readiness needs `Authorization: Bearer <HEALTH_CHECK_API_KEY>`".into(),
        )
        .into_response();
    }
    let mut components = vec![("database", within_timeout(state.store.ping()).await)];
    if let Some(address) = &state.readiness.redis {
        components.push(("redis", within_timeout(redis_ping(address)).await));
    }
    let report = ReadinessReport::new(components);
    let status = if report.error.is_empty() {
        StatusCode::OK
    } else {
        tracing::warn!(down = ?report.error.keys().collect::<Vec<_>>(), "not ready");
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

async fn within_timeout<E: std::fmt::Display>(
    check: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    }
}

/// `PING` in Redis's wire protocol; the answer must be `+PONG`.
async fn redis_ping(address: &str) -> Result<(), String> {
    let mut conn = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    conn.write_all(b"*1\r\n$4\r\nPING\r\n")
        .await
        .map_err(|e| format!("cannot send PING to {address}: {e}"))?;
    let mut answer = [0u8; 64];
    let n = conn
        .read(&mut answer)
        .await
        .map_err(|e| format!("no answer from {address}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer[..n]);
    if answer.starts_with("+PONG") {
        Ok(())
    } else {
        Err(format!(
            "{address} answered {:?} to PING",
            answer.trim_end()
        ))
    }
}
