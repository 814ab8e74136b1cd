//! HTTP and WebSocket handlers for `/process/pty/...`.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{
        Path, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{PtyError, PtyEvent, PtyOptions, PtySession, PtySessionInfo};
use crate::{
    error::{ApiError, ApiJson, ApiQuery, ErrorCode},
    process::shell::resolve_cwd,
    server::AppState,
};

/// Subprotocol asking for the `exited` control message and a JSON close reason.
pub const EXIT_CONTROL_PROTOCOL: &str = "X-Daytona-Pty-Exit-Control";
/// Subprotocol carrying the session's extra environment as base64url JSON.
pub const ENVS_PROTOCOL_PREFIX: &str = "X-Daytona-Pty-Envs~";
/// Subprotocol browsers send with the SDK version.
pub const SDK_VERSION_PROTOCOL_PREFIX: &str = "X-Daytona-SDK-Version~";

impl From<PtyError> for ApiError {
    fn from(err: PtyError) -> Self {
        let message = err.to_string();
        match err {
            PtyError::Exists(_) => ApiError::conflict(message),
            PtyError::NotFound(_) => ApiError::not_found(message),
            PtyError::Exited(_) => ApiError::gone(ErrorCode::Gone, message),
            PtyError::Invalid(_) => ApiError::bad_request(message),
            PtyError::Spawn(_) | PtyError::Io(_) => ApiError::internal(message),
        }
    }
}

/// The subprotocols the client offered, in order.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The offered token to echo: Node's `ws` aborts if none is selected. Never the envs token
/// (it may carry secrets and is not a protocol name).
pub fn selected_protocol(offered: &[String]) -> Option<String> {
    offered
        .iter()
        .find(|p| p.starts_with(SDK_VERSION_PROTOCOL_PREFIX))
        .or_else(|| offered.iter().find(|p| *p == EXIT_CONTROL_PROTOCOL))
        .cloned()
}

/// Decodes `X-Daytona-Pty-Envs~<base64url JSON object>`.
pub fn envs_from_protocols(offered: &[String]) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(encoded) = offered
        .iter()
        .find_map(|p| p.strip_prefix(ENVS_PROTOCOL_PREFIX))
    else {
        return Ok(BTreeMap::new());
    };
    let json = URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|e| {
            ApiError::bad_request(format!("{ENVS_PROTOCOL_PREFIX}: not base64url: {e}"))
        })?;
    serde_json::from_slice(&json).map_err(|e| {
        ApiError::bad_request(format!(
            "{ENVS_PROTOCOL_PREFIX}: not a JSON object of strings: {e}"
        ))
    })
}

fn upgrade_with_protocol(upgrade: WebSocketUpgrade, offered: &[String]) -> WebSocketUpgrade {
    match selected_protocol(offered) {
        Some(protocol) => upgrade.protocols([protocol]),
        None => upgrade,
    }
}

#[derive(Debug, Deserialize)]
pub struct CreateConnectQuery {
    pub id: String,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    pub cwd: Option<String>,
}

/// `GET /process/pty/create-connect`: creates the session, then upgrades. Creation errors
/// (duplicate id, bad size or cwd) are HTTP answers, which the SDK maps by status.
pub async fn create_connect(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<CreateConnectQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let offered = offered_protocols(&headers);
    let envs = envs_from_protocols(&offered)?;
    let session = state.ptys().create(PtyOptions {
        id: query.id,
        cwd: resolve_cwd(&state.config().work_dir, query.cwd.as_deref()),
        envs,
        cols: query.cols.unwrap_or(80),
        rows: query.rows.unwrap_or(24),
        // The shell starts when this client attaches, so it sees the first prompt.
        lazy_start: true,
    })?;
    let exit_control = offered.iter().any(|p| p == EXIT_CONTROL_PROTOCOL);
    Ok(upgrade_with_protocol(upgrade, &offered)
        .on_upgrade(move |socket| attach(socket, state, session, exit_control)))
}

pub async fn connect(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let session = state.ptys().get(&id)?;
    if session.exit_info().is_some() {
        return Err(PtyError::Exited(id).into());
    }
    let offered = offered_protocols(&headers);
    let exit_control = offered.iter().any(|p| p == EXIT_CONTROL_PROTOCOL);
    Ok(upgrade_with_protocol(upgrade, &offered)
        .on_upgrade(move |socket| attach(socket, state, session, exit_control)))
}

fn control(status: &str, extra: Value) -> Message {
    let mut body = json!({ "type": "control", "status": status });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    Message::Text(body.to_string().into())
}

fn close(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn attach(socket: WebSocket, state: AppState, session: Arc<PtySession>, exit_control: bool) {
    let (mut sink, mut incoming) = socket.split();
    let mut events = match session.attach(state.ptys().env()) {
        Ok(events) => events,
        Err(e) => {
            let message = e.to_string();
            let _ = sink
                .send(control("error", json!({ "error": message })))
                .await;
            let _ = sink.send(close(1011, message)).await;
            state.ptys().kill(session.id()).ok();
            return;
        }
    };
    if sink.send(control("connected", json!({}))).await.is_err() {
        return;
    }
    let input_session = session.clone();
    let mut input = tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Text(text) => text.as_bytes().to_vec().into(),
                Message::Close(_) => break,
                _ => continue,
            };
            if let Err(e) = input_session.write(&data).await {
                tracing::debug!(id = %input_session.id(), "PTY input dropped: {e}");
                break;
            }
        }
    });
    // A client attaching after the exit still gets the exit message.
    let pending_exit = session.exit_info();
    loop {
        let event = match pending_exit.clone() {
            Some(info) => Ok(PtyEvent::Exited(info)),
            None => tokio::select! {
                event = events.recv() => event,
                _ = &mut input => return,
            },
        };
        match event {
            Ok(PtyEvent::Output(data)) => {
                if sink.send(Message::Binary(data)).await.is_err() {
                    break;
                }
            }
            Ok(PtyEvent::Exited(info)) => {
                let reason = serde_json::to_value(&info).unwrap_or_default();
                if exit_control {
                    let _ = sink.send(control("exited", reason.clone())).await;
                }
                let code = if info.exit_code == 0 { 1000 } else { 1011 };
                let _ = sink.send(close(code, reason.to_string())).await;
                break;
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::warn!(id = %session.id(), skipped, "slow PTY client lost output");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    input.abort();
}

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "sessions": state.ptys().list() }))
}

pub async fn info(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PtySessionInfo>, ApiError> {
    Ok(Json(state.ptys().get(&id)?.info()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRequest {
    pub id: String,
    pub cwd: Option<String>,
    pub envs: Option<BTreeMap<String, String>>,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    pub lazy_start: Option<bool>,
}

/// Legacy `POST /process/pty` (SDKs before create-connect): create, then `/connect`.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let session = state.ptys().create(PtyOptions {
        id: request.id,
        cwd: resolve_cwd(&state.config().work_dir, request.cwd.as_deref()),
        envs: request.envs.unwrap_or_default(),
        cols: request.cols.unwrap_or(80),
        rows: request.rows.unwrap_or(24),
        lazy_start: request.lazy_start.unwrap_or(false),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "sessionId": session.id() })),
    ))
}

#[derive(Debug, Deserialize)]
pub struct ResizeRequest {
    pub cols: u16,
    pub rows: u16,
}

pub async fn resize(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ResizeRequest>,
) -> Result<Json<PtySessionInfo>, ApiError> {
    let session = state.ptys().get(&id)?;
    Ok(Json(session.resize(request.cols, request.rows).await?))
}

pub async fn kill(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.ptys().kill(&id)?;
    Ok(Json(
        json!({ "message": format!("PTY session {id} killed") }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_sdk_version_then_exit_control_never_envs() {
        let envs = format!(
            "{ENVS_PROTOCOL_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(br#"{"A":"1"}"#)
        );
        let offered = vec![EXIT_CONTROL_PROTOCOL.to_owned(), envs.clone()];
        assert_eq!(
            selected_protocol(&offered).as_deref(),
            Some(EXIT_CONTROL_PROTOCOL)
        );
        let browser = vec![
            envs.clone(),
            EXIT_CONTROL_PROTOCOL.to_owned(),
            "X-Daytona-SDK-Version~0.218.0".to_owned(),
        ];
        assert_eq!(
            selected_protocol(&browser).as_deref(),
            Some("X-Daytona-SDK-Version~0.218.0")
        );
        assert_eq!(selected_protocol(std::slice::from_ref(&envs)), None);
        let decoded = envs_from_protocols(&offered).unwrap();
        assert_eq!(decoded.get("A").map(String::as_str), Some("1"));
    }

    #[test]
    fn bad_envs_token_is_rejected() {
        let offered = vec![format!("{ENVS_PROTOCOL_PREFIX}!!!")];
        assert!(envs_from_protocols(&offered).is_err());
        let not_object = vec![format!(
            "{ENVS_PROTOCOL_PREFIX}{}",
            URL_SAFE_NO_PAD.encode("[1]")
        )];
        assert!(envs_from_protocols(&not_object).is_err());
    }
}
