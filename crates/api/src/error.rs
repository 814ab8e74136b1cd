//! The one place where domain errors become HTTP responses.
//!
//! Body shape follows upstream's API (`statusCode`, `message`, `error`, `timestamp`, `path`) plus
//! `code` and `source`, which SDK 0.226 reads to pick its exception class.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    /// A service another host provides (the identity provider) failed.
    #[error("{0}")]
    BadGateway(String),
    /// A feature this deployment has not turned on; the message names the setting.
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BAD_REQUEST",
            ApiError::Unauthorized(_) => "UNAUTHORIZED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::RateLimited { .. } => "TOO_MANY_REQUESTS",
            ApiError::Unavailable(_) => "SERVICE_UNAVAILABLE",
            ApiError::BadGateway(_) => "BAD_GATEWAY",
            ApiError::NotImplemented(_) => "NOT_IMPLEMENTED",
            ApiError::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }
}

/// Runner failures that reach a request directly (placement); the others end in a sandbox's
/// `errorReason`.
impl From<daytona_runner::RunnerError> for ApiError {
    fn from(e: daytona_runner::RunnerError) -> Self {
        match e {
            daytona_runner::RunnerError::Unavailable(reason) => ApiError::Unavailable(reason),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The identity provider's refusals of the user's request keep their status; failures of the
/// provider itself or of this server's credentials for it are the gateway's.
impl From<crate::oidc_management::ManagementError> for ApiError {
    fn from(e: crate::oidc_management::ManagementError) -> Self {
        use crate::oidc_management::ManagementError;
        let message = e.to_string();
        match e {
            ManagementError::Refused {
                status: 400 | 422, ..
            } => ApiError::BadRequest(message),
            ManagementError::Refused { status: 404, .. } => ApiError::NotFound(message),
            ManagementError::Refused { status: 409, .. } => ApiError::Conflict(message),
            ManagementError::Refused { status: 429, .. } => ApiError::Unavailable(message),
            ManagementError::Refused { .. }
            | ManagementError::Credentials(_)
            | ManagementError::Upstream { .. } => ApiError::BadGateway(message),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError::Internal(format!("database error: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        }
        let body = json!({
            "statusCode": status.as_u16(),
            "message": self.to_string(),
            "error": status.canonical_reason().unwrap_or("Error"),
            "code": self.code(),
            "source": "DAYTONA_API",
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry_after_secs.into());
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
