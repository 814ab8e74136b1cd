//! The control plane: REST API under `/api`, authentication, the sandbox state machine and the
//! store. It drives runners through [`daytona_runner::SandboxRunner`] and answers the proxy's
//! toolbox lookups through [`daytona_proxy::SandboxDirectory`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};

pub mod api_keys;
pub mod auth;
pub mod error;
pub mod events;
mod json;
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
}

/// The API's router; every route lives under `/api`, including the Socket.IO event gateway.
/// Must be called inside a Tokio runtime (the gateway spawns its event forwarder).
pub fn router(state: AppState) -> Router {
    let events = events::socketio::layer(&state);
    let api = Router::new()
        .route("/health", get(health))
        .merge(sandbox::routes::router())
        .merge(sandbox::settings::router())
        .merge(snapshot::router())
        .merge(api_keys::router())
        .fallback(not_found);
    Router::new()
        .nest("/api", api)
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

#[async_trait::async_trait]
impl daytona_proxy::SandboxDirectory for AppState {
    async fn toolbox_target(
        &self,
        token: &str,
        sandbox_id: &str,
    ) -> Result<SocketAddr, daytona_proxy::ProxyError> {
        use daytona_proxy::ProxyError;
        let ctx = auth::authenticate(&self.store, token)
            .await
            .map_err(|e| match e {
                ApiError::Unauthorized(m) => ProxyError::Unauthorized(m),
                other => ProxyError::Unavailable(other.to_string()),
            })?;
        let row = self
            .store
            .sandbox_by_id(sandbox_id)
            .await
            .map_err(|e| ProxyError::Unavailable(e.to_string()))?
            .filter(|row| row.organization_id == ctx.organization_id)
            .ok_or_else(|| ProxyError::NotFound(format!("Sandbox {sandbox_id} not found")))?;
        if row.state != "started" {
            return Err(ProxyError::NotRunning(format!(
                "Sandbox {sandbox_id} is not started (state: {})",
                row.state
            )));
        }
        self.sandboxes
            .runner()
            .daemon_address(sandbox_id)
            .await
            .map_err(|e| ProxyError::Unavailable(e.to_string()))?
            .ok_or_else(|| ProxyError::NotRunning(format!("Sandbox {sandbox_id} is not running")))
    }
}
