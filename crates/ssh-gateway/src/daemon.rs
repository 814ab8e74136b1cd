//! Client side of the daemon's `/process/stream` WebSocket (see the daemon's `process/stream.rs`
//! for the protocol).

use std::collections::HashMap;

use daytona_proxy::route::{SandboxStream, dial};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::{DAEMON_PORT, SshTarget};

type Ws = WebSocketStream<SandboxStream>;

#[derive(Debug, Serialize)]
pub(crate) struct Start {
    pub command: Option<String>,
    pub pty: Option<PtySize>,
    pub env: HashMap<String, String>,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub(crate) struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

pub(crate) enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
}

pub(crate) struct Input(SplitSink<Ws, Message>);
pub(crate) struct Outputs(SplitStream<Ws>);

pub(crate) async fn start(target: &SshTarget, start: &Start) -> Result<(Input, Outputs), String> {
    let stream = dial(&target.sandbox_id, &target.route, DAEMON_PORT)
        .await
        .map_err(|e| format!("cannot reach the sandbox daemon: {e}"))?;
    let url = format!("ws://daemon:{DAEMON_PORT}/process/stream");
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| format!("cannot reach the sandbox daemon: {e}"))?;
    let (mut sink, stream) = ws.split();
    let start = serde_json::to_string(start).map_err(|e| e.to_string())?;
    sink.send(Message::text(start))
        .await
        .map_err(|e| format!("cannot start the process: {e}"))?;
    Ok((Input(sink), Outputs(stream)))
}

impl Input {
    pub async fn data(&mut self, data: &[u8]) -> bool {
        self.0.send(Message::binary(data.to_vec())).await.is_ok()
    }

    pub async fn eof(&mut self) -> bool {
        self.0
            .send(Message::text(r#"{"type":"eof"}"#))
            .await
            .is_ok()
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) -> bool {
        let msg = serde_json::json!({ "type": "resize", "cols": cols, "rows": rows });
        self.0.send(Message::text(msg.to_string())).await.is_ok()
    }
}

impl Outputs {
    /// The next output of the process; `None` when the stream ended without an exit status.
    pub async fn next(&mut self) -> Option<Output> {
        loop {
            match self.0.next().await? {
                Ok(Message::Binary(data)) => match data.split_first() {
                    Some((2, rest)) => return Some(Output::Stderr(rest.to_vec())),
                    Some((_, rest)) => return Some(Output::Stdout(rest.to_vec())),
                    None => continue,
                },
                Ok(Message::Text(text)) => {
                    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                    if v["type"] == "exit" {
                        return Some(Output::Exit(v["code"].as_i64().unwrap_or(-1) as i32));
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}
