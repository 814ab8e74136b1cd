//! One error type for every handler, rendered once into the daemon's JSON error body.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` only records status, code and message in the
//! response extensions. The [`render_errors`] middleware, which knows the request path and method,
//! turns that (and any plain-text error axum produces itself, e.g. 405) into
//! `{"statusCode","message","code","timestamp","path","method","source":"DAYTONA_DAEMON"}`.

use std::io;

use axum::{
    body::Body,
    extract::{
        Request,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// Domain error codes understood by SDK 0.226 (`code` field of the error body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    BadRequest,
    InvalidRequestBody,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    RequestTimeout,
    Gone,
    PayloadTooLarge,
    UnprocessableEntity,
    InternalServerError,
    NotImplemented,
    FileNotFound,
    FileAccessDenied,
    InvalidFilePath,
    FileReadFailed,
    ProcessExecutionTimeout,
    SessionEnded,
    CommandAlreadyCompleted,
    Unauthorized,
    BadGateway,
    GitAuthFailed,
    GitRepoNotFound,
    GitBranchNotFound,
    GitBranchExists,
    GitPushRejected,
    GitDirtyWorktree,
    GitMergeConflict,
    GitTransportFailed,
    GitRemoteRejected,
    LspServerNotInitialized,
}

impl ErrorCode {
    /// Generic code for a status when nothing more specific is known.
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST => Self::BadRequest,
            StatusCode::UNAUTHORIZED => Self::Unauthorized,
            StatusCode::BAD_GATEWAY => Self::BadGateway,
            StatusCode::FORBIDDEN => Self::Forbidden,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::CONFLICT => Self::Conflict,
            StatusCode::REQUEST_TIMEOUT => Self::RequestTimeout,
            StatusCode::GONE => Self::Gone,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::UnprocessableEntity
            }
            StatusCode::NOT_IMPLEMENTED => Self::NotImplemented,
            _ => Self::InternalServerError,
        }
    }
}

/// An error answered to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    pub fn gone(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalServerError,
            message,
        )
    }

    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            ErrorCode::NotImplemented,
            message,
        )
    }

    pub fn invalid_path(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidFilePath, message)
    }

    /// Maps a filesystem error on `path` to the status and file code the SDK expects.
    pub fn from_fs(err: &io::Error, path: &str) -> Self {
        match err.kind() {
            io::ErrorKind::NotFound => Self::new(
                StatusCode::NOT_FOUND,
                ErrorCode::FileNotFound,
                format!("file not found: {path}"),
            ),
            io::ErrorKind::PermissionDenied => Self::new(
                StatusCode::FORBIDDEN,
                ErrorCode::FileAccessDenied,
                format!("permission denied: {path}"),
            ),
            io::ErrorKind::AlreadyExists => Self::conflict(format!("file already exists: {path}")),
            io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory => {
                Self::invalid_path(format!("{path}: {err}"))
            }
            io::ErrorKind::DirectoryNotEmpty => Self::conflict(format!("{path}: {err}")),
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => {
                Self::invalid_path(format!("{path}: {err}"))
            }
            _ => Self::internal(format!("{path}: {err}")),
        }
    }

    /// The JSON body for this error, for a request at `path` with `method`.
    pub fn body(&self, path: &str, method: &str) -> ErrorBody {
        ErrorBody {
            status_code: self.status.as_u16(),
            message: self.message.clone(),
            code: self.code,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            path: path.to_owned(),
            method: method.to_owned(),
            source: "DAYTONA_DAEMON",
        }
    }
}

/// Wire form of an error.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub status_code: u16,
    pub message: String,
    pub code: ErrorCode,
    pub timestamp: String,
    pub path: String,
    pub method: String,
    pub source: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequestBody,
            rejection.body_text(),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

/// Largest plain-text error body the middleware will read to reuse as a message.
const MAX_PLAIN_ERROR: usize = 16 * 1024;

/// Renders every error response as the daemon's JSON error body.
pub async fn render_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;

    let error = if let Some(error) = response.extensions().get::<ApiError>() {
        error.clone()
    } else if response.status().is_client_error() || response.status().is_server_error() {
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        // Upgrade failures, 405s and similar come from axum as plain text.
        if is_json {
            return response;
        }
        let status = response.status();
        let text = axum::body::to_bytes(response.into_body(), MAX_PLAIN_ERROR)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .unwrap_or_default();
        let message = if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            text
        };
        ApiError::new(status, ErrorCode::for_status(status), message)
    } else {
        return response;
    };

    let body = serde_json::to_vec(&error.body(&path, &method)).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = error.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// `Json` extractor whose rejection is a 400 naming the offending field.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query` extractor whose rejection is a 400 naming the offending parameter.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// A JSON body whatever its `Content-Type` (the SDK's `/env` and `/init` calls send none);
/// an empty body reads as `{}`.
#[derive(Debug)]
pub struct AnyJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for AnyJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(body).map(AnyJson).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequestBody,
                format!("invalid JSON body: {e}"),
            )
        })
    }
}
