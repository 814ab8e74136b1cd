//! `/process/stream`: the WebSocket the SSH gateway runs shells, commands and SFTP through.

use std::time::Duration;

use daytona_daemon::{DaemonConfig, Server};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn daemon() -> (String, tempfile::TempDir, oneshot::Sender<()>) {
    let work = tempfile::tempdir().unwrap();
    let config = DaemonConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        work_dir: work.path().to_path_buf(),
        home_dir: work.path().to_path_buf(),
        state_dir: work.path().join("state"),
    };
    let server = Server::bind(config).await.unwrap();
    let url = format!("ws://{}/process/stream", server.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    (url, work, stop)
}

async fn open(url: &str, start: Value) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(start.to_string())).await.unwrap();
    ws
}

/// Collects (stdout, stderr, exit code) until the daemon closes.
async fn drain(ws: &mut Ws) -> (Vec<u8>, Vec<u8>, Option<i64>) {
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    let collect = async {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Binary(b) if b.first() == Some(&2) => err.extend_from_slice(&b[1..]),
                Message::Binary(b) => out.extend_from_slice(&b[1..]),
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["type"], "exit");
                    code = v["code"].as_i64();
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), collect)
        .await
        .expect("stream ended");
    (out, err, code)
}

#[tokio::test]
async fn command_with_stdin_streams_and_exit_status() {
    let (url, _work, _stop) = daemon().await;
    let mut ws = open(&url, json!({ "command": "cat; echo done >&2; exit 3" })).await;
    ws.send(Message::binary(b"hello ".to_vec())).await.unwrap();
    ws.send(Message::binary(b"world".to_vec())).await.unwrap();
    ws.send(Message::text(r#"{"type":"eof"}"#)).await.unwrap();
    let (out, err, code) = drain(&mut ws).await;
    assert_eq!(
        (out.as_slice(), err.as_slice(), code),
        (&b"hello world"[..], &b"done\n"[..], Some(3))
    );

    // A quick command: its output closes before the exit is seen; the status still arrives.
    let mut ws = open(&url, json!({ "command": "true" })).await;
    assert_eq!(drain(&mut ws).await.2, Some(0));
}

#[tokio::test]
async fn terminal_session_has_a_tty_and_resizes() {
    let (url, _work, _stop) = daemon().await;
    let mut ws = open(&url, json!({ "command": "sleep 0.3; stty size; tty; exit 4", "pty": { "cols": 100, "rows": 30 } })).await;
    ws.send(Message::text(r#"{"type":"resize","cols":120,"rows":40}"#))
        .await
        .unwrap();
    let (out, _, code) = drain(&mut ws).await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("40 120") && out.contains("/dev/pts/"), "{out}");
}

#[tokio::test]
async fn closing_the_socket_kills_the_process() {
    let (url, work, _stop) = daemon().await;
    let pid_file = work.path().join("pid");
    let mut ws = open(
        &url,
        json!({ "command": format!("echo $$ > {}; exec sleep 1000", pid_file.display()) }),
    )
    .await;
    let mut pid = None;
    for _ in 0..100 {
        if let Ok(p) = std::fs::read_to_string(&pid_file)
            && let Ok(p) = p.trim().parse::<i32>()
        {
            pid = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = pid.expect("the command started");
    ws.close(None).await.unwrap();
    drop(ws);
    for _ in 0..100 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.is_empty() || state.split_whitespace().nth(2) == Some("Z") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} survived its stream");
}
