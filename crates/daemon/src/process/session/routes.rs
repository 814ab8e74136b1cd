//! HTTP and WebSocket handlers for `/process/session/...`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{
        Path, State,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
        },
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{InputError, Session, SessionCommand, demux};
use crate::{
    error::{ApiError, ApiJson, ApiQuery, ErrorCode},
    server::AppState,
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSessionRequest {
    pub session_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionExecuteRequest {
    pub command: String,
    pub run_async: Option<bool>,
    /// Deprecated spelling of `runAsync`.
    #[serde(rename = "async")]
    pub legacy_async: Option<bool>,
    pub suppress_input_echo: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct SendInputRequest {
    pub data: String,
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    pub follow: Option<bool>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub session_id: String,
    pub commands: Vec<CommandView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    pub id: String,
    pub command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteResult {
    pub cmd_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Serialize)]
pub struct CommandLogs {
    pub output: String,
    pub stdout: String,
    pub stderr: String,
}

impl CommandLogs {
    fn from_log(log: &[u8]) -> Self {
        let (stdout, stderr) = demux(log);
        Self {
            output: String::from_utf8_lossy(log).into_owned(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

fn command_view(command: &SessionCommand) -> CommandView {
    CommandView {
        id: command.id.clone(),
        command: command.command.clone(),
        exit_code: command.exit_code(),
    }
}

fn session_view(session: &Session) -> SessionView {
    SessionView {
        session_id: session.id.clone(),
        commands: session.commands().iter().map(|c| command_view(c)).collect(),
    }
}

pub async fn create_session(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateSessionRequest>,
) -> Result<StatusCode, ApiError> {
    state.sessions().create(&request.session_id)?;
    Ok(StatusCode::CREATED)
}

pub async fn list_sessions(State(state): State<AppState>) -> Json<Vec<SessionView>> {
    Json(
        state
            .sessions()
            .list()
            .iter()
            .map(|s| session_view(s))
            .collect(),
    )
}

pub async fn get_session(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let session = state.sessions().get(&session_id)?;
    Ok(Json(session_view(&session)))
}

pub async fn delete_session(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.sessions().delete(&session_id)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn execute(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
    ApiJson(request): ApiJson<SessionExecuteRequest>,
) -> Result<Response, ApiError> {
    if request.command.trim().is_empty() {
        return Err(ApiError::bad_request("command: must not be empty"));
    }
    let session = state.sessions().get(&session_id)?;
    let run_async = request.run_async.or(request.legacy_async).unwrap_or(false);
    let echo_input = !request.suppress_input_echo.unwrap_or(false);
    let command = session.exec(request.command, run_async, echo_input).await?;
    if run_async {
        let body = ExecuteResult {
            cmd_id: command.id.clone(),
            output: None,
            stdout: None,
            stderr: None,
            exit_code: None,
        };
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let exit_code = command.wait().await;
    let log = command
        .read_log()
        .await
        .map_err(|e| ApiError::internal(format!("cannot read command log: {e}")))?;
    let logs = CommandLogs::from_log(&log);
    Ok(Json(ExecuteResult {
        cmd_id: command.id.clone(),
        output: Some(logs.output),
        stdout: Some(logs.stdout),
        stderr: Some(logs.stderr),
        exit_code: Some(exit_code),
    })
    .into_response())
}

pub async fn get_command(
    State(state): State<AppState>,
    Path((session_id, command_id)): Path<(String, String)>,
) -> Result<Json<CommandView>, ApiError> {
    let command = state.sessions().get(&session_id)?.command(&command_id)?;
    Ok(Json(command_view(&command)))
}

pub async fn send_input(
    State(state): State<AppState>,
    Path((session_id, command_id)): Path<(String, String)>,
    ApiJson(request): ApiJson<SendInputRequest>,
) -> Result<StatusCode, ApiError> {
    let command = state.sessions().get(&session_id)?.command(&command_id)?;
    command
        .send_input(&request.data)
        .await
        .map_err(|e| match e {
            InputError::Completed => {
                ApiError::gone(ErrorCode::CommandAlreadyCompleted, e.to_string())
            }
            InputError::NoStdin => ApiError::bad_request(e.to_string()),
            InputError::Io(_) => ApiError::internal(e.to_string()),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// JSON logs, or with a WebSocket upgrade the raw marked log as binary frames
/// (following new output until the command ends when `follow=true`).
pub async fn command_logs(
    State(state): State<AppState>,
    Path((session_id, command_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<LogsQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let command = state.sessions().get(&session_id)?.command(&command_id)?;
    if let Ok(upgrade) = upgrade {
        let follow = query.follow.unwrap_or(false);
        let upgrade = match sdk_version_protocol(&headers) {
            Some(protocol) => upgrade.protocols([protocol]),
            None => upgrade,
        };
        return Ok(upgrade.on_upgrade(move |socket| stream_log(socket, command, follow)));
    }
    let log = command
        .read_log()
        .await
        .map_err(|e| ApiError::internal(format!("cannot read command log: {e}")))?;
    Ok(Json(CommandLogs::from_log(&log)).into_response())
}

/// Browser clients offer `X-Daytona-SDK-Version~<v>` and abort unless it is echoed.
fn sdk_version_protocol(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.starts_with("X-Daytona-SDK-Version~"))
        .map(str::to_owned)
}

const FRAME_SIZE: usize = 64 * 1024;

async fn stream_log(socket: WebSocket, command: Arc<SessionCommand>, follow: bool) {
    let (mut sink, mut incoming) = socket.split();
    // Reading keeps pings answered and tells us when the client leaves.
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
        let _ = gone_tx.send(());
    });

    let mut file = match tokio::fs::File::open(command.log_path()).await {
        Ok(file) => file,
        Err(e) => {
            let _ = sink
                .send(close(1011, &format!("cannot open log: {e}")))
                .await;
            return;
        }
    };
    let mut log_rx = command.subscribe_log();
    let mut exit_rx = command.subscribe_exit();
    let mut offset = 0u64;
    let mut buf = vec![0u8; FRAME_SIZE];
    loop {
        let finished = exit_rx.borrow_and_update().is_some();
        // Read after `finished`: the exit code is published only once the log is complete.
        let len = *log_rx.borrow_and_update();
        while offset < len {
            let want = ((len - offset) as usize).min(FRAME_SIZE);
            let read = match file.seek(std::io::SeekFrom::Start(offset)).await {
                Ok(_) => file.read(&mut buf[..want]).await,
                Err(e) => Err(e),
            };
            let n = match read {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = sink
                        .send(close(1011, &format!("cannot read log: {e}")))
                        .await;
                    return;
                }
            };
            if sink
                .send(Message::Binary(buf[..n].to_vec().into()))
                .await
                .is_err()
            {
                return;
            }
            offset += n as u64;
        }
        if finished || !follow {
            let _ = sink.send(close(1000, "")).await;
            return;
        }
        tokio::select! {
            _ = log_rx.changed() => {}
            _ = exit_rx.changed() => {}
            _ = &mut gone_rx => return,
        }
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// `GET /process/session/entrypoint[/logs]`. Sandboxes here start the daemon itself as PID 1,
/// with no image entrypoint running beside it, so there is never an entrypoint session; all
/// three entrypoint calls (session, logs, followed logs) answer the same 404 before any upgrade.
pub async fn entrypoint() -> ApiError {
    ApiError::not_found("session not found: entrypoint (this sandbox runs no entrypoint command)")
}
