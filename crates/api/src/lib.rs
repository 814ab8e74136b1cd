//! The control plane: REST API under `/api`, authentication, the sandbox state machine and the
//! store. It drives runners through [`daytona_runner::SandboxRunner`] and answers the proxy's
//! toolbox and preview lookups through [`daytona_proxy::SandboxDirectory`] (`sandbox/access.rs`).

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod error;
pub mod events;
mod json;
pub mod object_storage;
pub mod quota;
pub mod rate_limit;
pub mod sandbox;
pub mod snapshot;
pub mod store;

pub use sandbox::{SandboxService, SandboxSettings};
pub use store::Store;

use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub sandboxes: Arc<SandboxService>,
    pub snapshots: Arc<snapshot::SnapshotService>,
    pub rate_limits: Arc<rate_limit::RateLimitPolicy>,
    pub access: Arc<sandbox::access::AccessService>,
    /// Where the SDK uploads build contexts (and the embedded S3 endpoint, if any).
    pub push_access: Arc<object_storage::PushAccess>,
}

/// The API's router; every route lives under `/api`, including the Socket.IO event gateway,
/// except the embedded S3 endpoint's bucket (`/<bucket>`, see [`object_storage`]).
/// Must be called inside a Tokio runtime (the gateway spawns its event forwarder).
pub fn router(state: AppState) -> Router {
    let events = events::socketio::layer(&state);
    let api = Router::new()
        .route("/health", get(health))
        .merge(sandbox::routes::router())
        .merge(sandbox::settings::router())
        .merge(snapshot::router())
        .merge(api_keys::router())
        .merge(sandbox::access::router())
        .merge(audit::router())
        .merge(object_storage::router())
        // After routing, so the audit knows each call's route template.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .fallback(not_found);
    // The embedded S3 endpoint signs and routes by path, so it lives beside `/api`, not in it.
    let s3 = state.push_access.s3_routes();
    Router::new()
        .nest("/api", api)
        .merge(s3)
        .fallback(not_found)
        .layer(events)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("Cannot find route {}", uri.path()))
}
