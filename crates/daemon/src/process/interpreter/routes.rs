//! HTTP and WebSocket handlers for `/process/interpreter/...`.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Json,
    extract::{
        Path, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    response::Response,
};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{ContextInfo, Frame, InterpreterError, Outcome};
use crate::{
    error::{AnyJson, ApiError},
    server::AppState,
};

/// Server-side limit when the client sends no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Close code the SDK maps to a timeout error.
const CLOSE_TIMEOUT: u16 = 4008;

impl From<InterpreterError> for ApiError {
    fn from(err: InterpreterError) -> Self {
        let message = err.to_string();
        match err {
            InterpreterError::NotFound(_) => ApiError::not_found(message),
            InterpreterError::Invalid(_) => ApiError::bad_request(message),
            InterpreterError::Spawn(_) => ApiError::internal(message),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct CreateContextRequest {
    pub cwd: Option<String>,
    pub language: Option<String>,
}

pub async fn create_context(
    State(state): State<AppState>,
    AnyJson(request): AnyJson<CreateContextRequest>,
) -> Result<Json<ContextInfo>, ApiError> {
    Ok(Json(
        state
            .interpreters()
            .create(request.cwd.as_deref(), request.language.as_deref())
            .await?,
    ))
}

pub async fn list_contexts(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "contexts": state.interpreters().list() }))
}

pub async fn delete_context(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.interpreters().delete(&id)?;
    Ok(Json(json!({ "message": format!("context {id} deleted") })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecuteRequest {
    code: String,
    context_id: Option<String>,
    envs: Option<BTreeMap<String, String>>,
    timeout: Option<i64>,
}

pub async fn execute(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| run_socket(socket, state))
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn run_socket(socket: WebSocket, state: AppState) {
    let (mut sink, mut incoming) = socket.split();
    let first = loop {
        match incoming.next().await {
            Some(Ok(Message::Text(text))) => break text.to_string(),
            Some(Ok(Message::Binary(data))) => break String::from_utf8_lossy(&data).into_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return,
        }
    };
    let request: ExecuteRequest = match serde_json::from_str(&first) {
        Ok(request) => request,
        Err(e) => {
            let _ = sink
                .send(close(1002, &format!("invalid request: {e}")))
                .await;
            return;
        }
    };
    let timeout = match request.timeout {
        None => Some(DEFAULT_TIMEOUT),
        Some(0) => None,
        Some(secs) if secs > 0 => Some(Duration::from_secs(secs as u64)),
        Some(_) => {
            let _ = sink
                .send(close(1008, "timeout: must not be negative"))
                .await;
            return;
        }
    };
    if request.code.trim().is_empty() {
        let _ = sink.send(close(1008, "code: must not be empty")).await;
        return;
    }
    let envs = request.envs.unwrap_or_default();
    if let Err(e) = crate::process::shell::validate_env(envs.keys()) {
        let _ = sink.send(close(1008, &e.message)).await;
        return;
    }
    let context = match state.interpreters().resolve(request.context_id.as_deref()) {
        Ok(context) => context,
        Err(e) => {
            let _ = sink.send(close(1008, &e.to_string())).await;
            return;
        }
    };

    let (frames_tx, mut frames_rx) = mpsc::channel::<Frame>(256);
    let forward = tokio::spawn(async move {
        loop {
            tokio::select! {
                frame = frames_rx.recv() => {
                    let Some(frame) = frame else { return Some(sink) };
                    let text = serde_json::to_string(&frame).unwrap_or_default();
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        return None;
                    }
                }
                // The client closing or vanishing drops the receiver, which interrupts the code.
                message = incoming.next() => {
                    if !matches!(message, Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_) | Message::Binary(_)))) {
                        return None;
                    }
                }
            }
        }
    });
    let outcome = context
        .execute(&request.code, &envs, timeout, frames_tx)
        .await;
    if let Ok(Some(mut sink)) = forward.await {
        let message = match outcome {
            Outcome::TimedOut => close(
                CLOSE_TIMEOUT,
                &format!(
                    "execution timed out after {}s",
                    timeout.unwrap_or_default().as_secs()
                ),
            ),
            Outcome::Completed | Outcome::Interrupted => close(1000, ""),
        };
        let _ = sink.send(message).await;
    }
}
