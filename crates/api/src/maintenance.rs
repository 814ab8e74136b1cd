//! `MAINTENANCE_MODE=true`: as upstream, the scheduled jobs do not run (the server does not start
//! them, see `cli/src/server.rs`), `GET /config` reports the mode so clients can show it, and the
//! API refuses every change with 503 while it still answers reads. Runners keep reporting and
//! finishing the jobs they hold, and the proxy and SSH gateway keep resolving sandboxes, so work
//! that was accepted before the switch still ends.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

pub const REFUSAL: &str =
    "the service is under maintenance: changes are refused until MAINTENANCE_MODE is turned off";

/// Route layer of the `/api` router (paths here are relative to `/api`).
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.configuration.maintanance_mode && is_change(request.method(), request.uri().path()) {
        return ApiError::Unavailable(REFUSAL.into()).into_response();
    }
    next.run(request).await
}

/// A request that changes state and is not part of the service protocols that must go on.
fn is_change(method: &Method, path: &str) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    const SERVICE_ROUTES: [&str; 4] = ["/runners/healthcheck", "/jobs", "/internal", "/preview"];
    !SERVICE_ROUTES.iter().any(|route| {
        path.strip_prefix(route)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_service_protocols_pass_changes_do_not() {
        assert!(!is_change(&Method::GET, "/sandbox"));
        assert!(!is_change(&Method::HEAD, "/sandbox/x"));
        assert!(!is_change(&Method::POST, "/runners/healthcheck"));
        assert!(!is_change(&Method::POST, "/jobs/j1/status"));
        assert!(!is_change(&Method::POST, "/internal/sandbox/s/activity"));
        assert!(is_change(&Method::POST, "/sandbox"));
        assert!(is_change(&Method::DELETE, "/sandbox/s1"));
        assert!(is_change(&Method::PATCH, "/organizations/o/quota"));
        assert!(is_change(&Method::POST, "/runners"));
        assert!(is_change(&Method::POST, "/jobsx"));
    }
}
