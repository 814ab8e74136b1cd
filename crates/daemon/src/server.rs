//! The HTTP server: shared state, the route table and the listener.

use std::{future::Future, io, net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::Uri,
    middleware,
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{
    config::DaemonConfig,
    error::{ApiError, render_errors},
    fs::{self, transfer},
    process::{execute, session, session::SessionManager},
};

/// Largest JSON request body (commands and code can be long; files go through multipart).
const JSON_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// State shared by all handlers.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    config: DaemonConfig,
    sessions: SessionManager,
}

impl AppState {
    /// Prepares the daemon's state directory (emptied: leftovers are from a previous run).
    pub fn new(config: DaemonConfig) -> io::Result<Self> {
        let sessions =
            SessionManager::new(config.state_dir.join("sessions"), config.work_dir.clone())?;
        Ok(Self(Arc::new(Inner { config, sessions })))
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.0.config
    }

    pub fn sessions(&self) -> &SessionManager {
        &self.0.sessions
    }
}

/// The toolbox API.
pub fn router(state: AppState) -> Router {
    let sessions = Router::new()
        .route(
            "/process/session",
            get(session::routes::list_sessions).post(session::routes::create_session),
        )
        .route(
            "/process/session/{session_id}",
            get(session::routes::get_session).delete(session::routes::delete_session),
        )
        .route(
            "/process/session/{session_id}/exec",
            post(session::routes::execute),
        )
        .route(
            "/process/session/{session_id}/command/{command_id}",
            get(session::routes::get_command),
        )
        .route(
            "/process/session/{session_id}/command/{command_id}/logs",
            get(session::routes::command_logs),
        )
        .route(
            "/process/session/{session_id}/command/{command_id}/input",
            post(session::routes::send_input),
        );
    Router::new()
        .route("/version", get(version))
        .route("/work-dir", get(work_dir))
        .route("/user-home-dir", get(user_home_dir))
        .route("/files", get(fs::list_files).delete(fs::delete_file))
        .route("/files/", get(fs::list_files))
        .route("/files/info", get(fs::file_info))
        .route("/files/folder", post(fs::create_folder))
        .route("/files/move", post(fs::move_file))
        .route(
            "/files/bulk-upload",
            post(transfer::bulk_upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/files/bulk-download", post(transfer::bulk_download))
        .route("/process/execute", post(execute::execute))
        .route("/process/code-run", post(execute::code_run))
        .route("/process/stream", get(crate::process::stream::stream))
        .merge(sessions)
        .fallback(unrouted)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(middleware::from_fn(render_errors))
        .with_state(state)
}

async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

async fn work_dir(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "dir": state.config().work_dir }))
}

async fn user_home_dir(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "dir": state.config().home_dir }))
}

/// Toolbox areas of the upstream API this daemon does not serve yet.
const NOT_IMPLEMENTED_PREFIXES: [&str; 12] = [
    "/files/",
    "/git/",
    "/lsp/",
    "/computeruse/",
    "/process/pty",
    "/process/interpreter",
    "/process/session/entrypoint",
    "/port",
    "/env",
    "/system/",
    "/init",
    "/proxy/",
];

async fn unrouted(uri: Uri) -> ApiError {
    let path = uri.path();
    if NOT_IMPLEMENTED_PREFIXES.iter().any(|p| path.starts_with(p)) {
        ApiError::not_implemented(format!("{path} is not implemented by this daemon"))
    } else {
        ApiError::not_found(format!("no such endpoint: {path}"))
    }
}

/// A bound, not yet serving daemon.
pub struct Server {
    listener: TcpListener,
    state: AppState,
}

impl Server {
    pub async fn bind(config: DaemonConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let state = AppState::new(config)?;
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then kills all sessions and drains connections.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let state = self.state.clone();
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(async move {
                shutdown.await;
                state.sessions().shutdown();
            })
            .await
    }
}
