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
    environment::ProcessEnv,
    error::{ApiError, render_errors},
    fs::{self, search, transfer},
    git,
    lsp::{self, LspManager},
    process::{
        execute,
        interpreter::{self, InterpreterManager},
        pty::{self, PtyManager},
        session,
        session::SessionManager,
    },
    system,
};

/// Largest JSON request body (commands and code can be long; files go through multipart).
const JSON_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// State shared by all handlers.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    config: DaemonConfig,
    env: Arc<ProcessEnv>,
    sessions: SessionManager,
    ptys: PtyManager,
    interpreters: InterpreterManager,
    lsp: LspManager,
}

impl AppState {
    /// Prepares the daemon's state directory (emptied: leftovers are from a previous run).
    pub fn new(config: DaemonConfig) -> io::Result<Self> {
        let env = Arc::new(ProcessEnv::from_process());
        let sessions = SessionManager::new(
            config.state_dir.join("sessions"),
            config.work_dir.clone(),
            env.clone(),
        )?;
        Ok(Self(Arc::new(Inner {
            ptys: PtyManager::new(env.clone()),
            interpreters: InterpreterManager::new(config.work_dir.clone(), env.clone()),
            lsp: LspManager::new(config.work_dir.clone(), env.clone()),
            config,
            env,
            sessions,
        })))
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.0.config
    }

    /// The environment spawned processes start with.
    pub fn env(&self) -> &ProcessEnv {
        &self.0.env
    }

    pub fn sessions(&self) -> &SessionManager {
        &self.0.sessions
    }

    pub fn ptys(&self) -> &PtyManager {
        &self.0.ptys
    }

    pub fn interpreters(&self) -> &InterpreterManager {
        &self.0.interpreters
    }

    pub fn lsp(&self) -> &LspManager {
        &self.0.lsp
    }
}

/// The toolbox API.
pub fn router(state: AppState) -> Router {
    let sessions = Router::new()
        // Literal routes win over `{session_id}`: the entrypoint is not an ordinary session.
        .route(
            "/process/session/entrypoint",
            get(session::routes::entrypoint),
        )
        .route(
            "/process/session/entrypoint/logs",
            get(session::routes::entrypoint),
        )
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
    let ptys = Router::new()
        .route(
            "/process/pty",
            get(pty::routes::list).post(pty::routes::create),
        )
        .route(
            "/process/pty/create-connect",
            get(pty::routes::create_connect),
        )
        .route(
            "/process/pty/{id}",
            get(pty::routes::info).delete(pty::routes::kill),
        )
        .route("/process/pty/{id}/connect", get(pty::routes::connect))
        .route("/process/pty/{id}/resize", post(pty::routes::resize));
    let git = Router::new()
        .route("/git/clone", post(git::routes::clone))
        .route("/git/status", get(git::routes::status))
        .route("/git/add", post(git::routes::add))
        .route("/git/commit", post(git::routes::commit))
        .route(
            "/git/branches",
            get(git::routes::branches)
                .post(git::routes::create_branch)
                .delete(git::routes::delete_branch),
        )
        .route("/git/checkout", post(git::routes::checkout))
        .route("/git/pull", post(git::routes::pull))
        .route("/git/push", post(git::routes::push))
        .route("/git/history", get(git::routes::history))
        .route("/git/init", post(git::routes::init))
        .route("/git/reset", post(git::routes::reset))
        .route("/git/restore", post(git::routes::restore))
        .route(
            "/git/remotes",
            get(git::routes::list_remotes).post(git::routes::add_remote),
        )
        .route(
            "/git/config",
            get(git::routes::get_config).post(git::routes::set_config),
        )
        .route("/git/config/user", post(git::routes::configure_user))
        .route("/git/credentials", post(git::routes::authenticate));
    Router::new()
        .route("/version", get(version))
        .route("/work-dir", get(work_dir))
        .route("/user-home-dir", get(user_home_dir))
        .route("/files", get(fs::list_files).delete(fs::delete_file))
        .route("/files/", get(fs::list_files))
        .route("/files/info", get(fs::file_info))
        .route("/files/find", get(search::find_in_files))
        .route("/files/search", get(search::search_files))
        .route("/files/replace", post(search::replace_in_files))
        .route("/files/permissions", post(search::set_permissions))
        .route("/files/folder", post(fs::create_folder))
        .route("/files/move", post(fs::move_file))
        .route(
            "/files/bulk-upload",
            post(transfer::bulk_upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/files/bulk-download", post(transfer::bulk_download))
        .route("/files/download", get(transfer::download))
        .route(
            "/files/upload-v2",
            post(transfer::upload_v2).layer(DefaultBodyLimit::disable()),
        )
        .route("/process/execute", post(execute::execute))
        .route("/process/code-run", post(execute::code_run))
        .route("/port", get(system::ports))
        .route("/port/{port}/in-use", get(system::port_in_use))
        .route("/init", post(system::initialize))
        .route("/env", post(system::update_env))
        .route("/system/metrics", get(system::metrics))
        .route("/process/stream", get(crate::process::stream::stream))
        .merge(sessions)
        .merge(ptys)
        .merge(git)
        .route("/lsp/start", post(lsp::routes::start))
        .route("/lsp/stop", post(lsp::routes::stop))
        .route("/lsp/did-open", post(lsp::routes::did_open))
        .route("/lsp/did-close", post(lsp::routes::did_close))
        .route("/lsp/completions", post(lsp::routes::completions))
        .route("/lsp/document-symbols", get(lsp::routes::document_symbols))
        .route("/lsp/workspacesymbols", get(lsp::routes::workspace_symbols))
        .route(
            "/process/interpreter/context",
            get(interpreter::routes::list_contexts).post(interpreter::routes::create_context),
        )
        .route(
            "/process/interpreter/context/{id}",
            axum::routing::delete(interpreter::routes::delete_context),
        )
        .route(
            "/process/interpreter/execute",
            get(interpreter::routes::execute),
        )
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

/// Toolbox areas of the upstream API this daemon does not serve: the old single-file upload and
/// the desktop features.
async fn unrouted(uri: Uri) -> ApiError {
    let path = uri.path();
    if let Some(feature) = system::unsupported_feature(path) {
        ApiError::not_implemented(format!(
            "{feature} is not supported by this image/server (no desktop environment): {path}"
        ))
    } else if path == "/files/upload" {
        ApiError::not_implemented(format!(
            "{path} is not implemented by this daemon; use /files/bulk-upload or /files/upload-v2"
        ))
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
                state.ptys().shutdown();
                state.interpreters().shutdown();
            })
            .await
    }
}
