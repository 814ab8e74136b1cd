//! A minimal LSP client: JSON-RPC 2.0 with `Content-Length` framing over a child's stdio.

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::{mpsc, oneshot},
};

/// How long one request may take (the first completion request of pylsp imports jedi).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("language server is not running: {0}")]
    Gone(String),
    #[error("language server error {code}: {message}")]
    Server { code: i64, message: String },
    #[error("language server did not answer {0} within {1:?}")]
    Timeout(String, Duration),
}

type Pending = Arc<Mutex<HashMap<i64, oneshot::Sender<Result<Value, RpcError>>>>>;

/// A running language server process.
#[derive(Debug)]
pub struct RpcClient {
    outgoing: mpsc::UnboundedSender<Value>,
    pending: Pending,
    next_id: AtomicI64,
    child: Mutex<Option<Child>>,
}

/// Frames one message.
pub fn encode(message: &Value) -> Vec<u8> {
    let body = message.to_string();
    let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    frame.extend_from_slice(body.as_bytes());
    frame
}

/// Reads one framed message; `None` at end of stream.
pub async fn read_message<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<Value>> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            if length.is_some() {
                break;
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0u8; length.unwrap_or(0)];
    reader.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

impl RpcClient {
    /// Starts `command` (stdio already configured by this function).
    pub fn spawn(mut command: Command) -> std::io::Result<Self> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let pending: Pending = Arc::default();
        let (outgoing, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(stdin, queue));
        tokio::spawn(read_loop(
            BufReader::new(stdout),
            pending.clone(),
            outgoing.clone(),
        ));
        Ok(Self {
            outgoing,
            pending,
            next_id: AtomicI64::new(1),
            child: Mutex::new(Some(child)),
        })
    }

    pub async fn request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let message = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        if self.outgoing.send(message).is_err() {
            return Err(RpcError::Gone("its input is closed".into()));
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RpcError::Gone("it exited".into())),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(RpcError::Timeout(method.to_owned(), REQUEST_TIMEOUT))
            }
        }
    }

    pub fn notify(&self, method: &str, params: Value) -> Result<(), RpcError> {
        let message = json!({ "jsonrpc": "2.0", "method": method, "params": params });
        self.outgoing
            .send(message)
            .map_err(|_| RpcError::Gone("its input is closed".into()))
    }

    /// Polite shutdown, then kill whatever is left.
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            self.request("shutdown", Value::Null),
        )
        .await;
        let _ = self.notify("exit", Value::Null);
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child
            && tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

async fn write_loop(mut stdin: ChildStdin, mut queue: mpsc::UnboundedReceiver<Value>) {
    while let Some(message) = queue.recv().await {
        if stdin.write_all(&encode(&message)).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

async fn read_loop<R: tokio::io::AsyncBufRead + Unpin>(
    mut reader: R,
    pending: Pending,
    outgoing: mpsc::UnboundedSender<Value>,
) {
    while let Ok(Some(message)) = read_message(&mut reader).await {
        let id = message.get("id").cloned();
        let method = message.get("method").and_then(Value::as_str);
        match (id, method) {
            // A request from the server: answer so it does not wait forever.
            (Some(id), Some(method)) => {
                let result = server_request_result(method, message.get("params"));
                let _ = outgoing.send(json!({ "jsonrpc": "2.0", "id": id, "result": result }));
            }
            (Some(id), None) => {
                let Some(id) = id.as_i64() else { continue };
                let sender = pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let Some(sender) = sender {
                    let result = match message.get("error") {
                        Some(error) => Err(RpcError::Server {
                            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                            message: error
                                .get("message")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                        }),
                        None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                    };
                    let _ = sender.send(result);
                }
            }
            // Notifications (diagnostics, logs) are not surfaced by the toolbox API.
            _ => {}
        }
    }
    // Fail everything still waiting.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Answers for requests servers send to clients.
fn server_request_result(method: &str, params: Option<&Value>) -> Value {
    match method {
        // One (empty) setting per requested item.
        "workspace/configuration" => {
            let items = params
                .and_then(|p| p.get("items"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            Value::Array(vec![Value::Null; items])
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let first = json!({"jsonrpc": "2.0", "id": 1, "result": {"x": "é"}});
        let second = json!({"jsonrpc": "2.0", "method": "n"});
        let mut bytes = encode(&first);
        bytes.extend(encode(&second));
        let mut reader = BufReader::new(&bytes[..]);
        assert_eq!(read_message(&mut reader).await.unwrap(), Some(first));
        assert_eq!(read_message(&mut reader).await.unwrap(), Some(second));
        assert_eq!(read_message(&mut reader).await.unwrap(), None);
    }

    #[test]
    fn configuration_requests_get_one_answer_per_item() {
        let params = json!({"items": [{}, {}]});
        assert_eq!(
            server_request_result("workspace/configuration", Some(&params)),
            json!([null, null])
        );
        assert_eq!(
            server_request_result("client/registerCapability", None),
            Value::Null
        );
    }
}
