//! Drives a daemon started in-process over real HTTP on 127.0.0.1.

mod common;

use std::time::Duration;

use common::TestDaemon;
use futures::StreamExt;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_endpoints() {
    let daemon = TestDaemon::start().await;
    let (status, body) = daemon.get_json("/version").await;
    assert_eq!(status, 200);
    assert!(body["version"].is_string());
    let (_, body) = daemon.get_json("/work-dir").await;
    assert_eq!(body["dir"], daemon.work().to_str().unwrap());
    let (_, body) = daemon.get_json("/user-home-dir").await;
    assert_eq!(body["dir"], daemon.work().to_str().unwrap());

    let (status, body) = daemon.get_json("/computeruse/status").await;
    assert_eq!(status, 501);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("computer use is not supported"),
        "{body}"
    );
    assert_eq!(body["code"], "NOT_IMPLEMENTED");
    assert_eq!(body["source"], "DAYTONA_DAEMON");
    let (status, body) = daemon.get_json("/nowhere").await;
    assert_eq!(status, 404);
    assert_eq!(body["path"], "/nowhere");
    assert_eq!(body["method"], "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_reports_exit_codes_cwd_and_env() {
    let daemon = TestDaemon::start().await;
    let (status, body) = daemon
        .exec(json!({"command": "echo out; echo err >&2; exit 3"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["exitCode"], 3);
    assert_eq!(body["result"], "out\nerr\n");

    std::fs::create_dir(daemon.work().join("sub")).unwrap();
    let (_, body) = daemon
        .exec(json!({"command": "pwd; echo \"$GREETING\"", "cwd": "sub", "envs": {"GREETING": "hi there"}}))
        .await;
    assert_eq!(body["exitCode"], 0);
    let expected = format!("{}\nhi there\n", daemon.work().join("sub").display());
    assert_eq!(body["result"], expected);

    let (status, body) = daemon
        .exec(json!({"command": "true", "envs": {"1BAD": "x"}}))
        .await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("1BAD"));

    let (status, body) = daemon.exec(json!({"cmd": "true"})).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("command"));

    let (status, body) = daemon
        .exec(json!({"command": "true", "cwd": "does/not/exist"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["exitCode"], -1);
}

fn process_gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return true;
    }
    // A zombie waiting for its (re)parent to reap it no longer runs.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_timeout_kills_the_process_tree() {
    let daemon = TestDaemon::start().await;
    let started = std::time::Instant::now();
    let (status, body) = daemon
        .exec(json!({
            "command": "echo $$ > pids; sleep 100 & echo $! >> pids; sleep 100 & echo $! >> pids; wait",
            "timeout": 1
        }))
        .await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["code"], "PROCESS_EXECUTION_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(10));

    let pids: Vec<i32> = std::fs::read_to_string(daemon.work().join("pids"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    for _ in 0..50 {
        if pids.iter().all(|&p| process_gone(p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("processes survived the timeout: {pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_run_moves_chart_markers_into_artifacts() {
    let daemon = TestDaemon::start().await;
    let code = r#"import json, os, sys
print("args", sys.argv[1:], os.environ["MODE"])
chart = {"type": "line", "title": "t", "elements": [{"label": "a", "points": [[1, 2]]}]}
print("dtn_artifact_k39fd2:" + json.dumps({"type": "chart", "value": chart}))
print("done")
"#;
    let (status, body) = daemon
        .post_json(
            "/process/code-run",
            json!({"code": code, "language": "python", "argv": ["x y", "z"], "envs": {"MODE": "test"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["exitCode"], 0);
    assert_eq!(body["result"], "args ['x y', 'z'] test\ndone\n");
    assert_eq!(body["artifacts"]["charts"][0]["title"], "t");
    assert_eq!(
        body["artifacts"]["charts"][0]["elements"][0]["points"][0][1],
        2
    );

    let (_, body) = daemon
        .post_json(
            "/process/code-run",
            json!({"code": "import sys; sys.exit(4)", "language": "python"}),
        )
        .await;
    assert_eq!(body["exitCode"], 4);
    assert!(body.get("artifacts").is_none());

    let (status, _) = daemon
        .post_json(
            "/process/code-run",
            json!({"code": "while True: pass", "language": "python", "timeout": 1}),
        )
        .await;
    assert_eq!(status, 408);
}

/// One part of a multipart response.
#[derive(Debug)]
struct ResponsePart {
    headers: String,
    body: Vec<u8>,
}

fn split_multipart(content_type: &str, body: &[u8]) -> Vec<ResponsePart> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("boundary")
        .trim();
    let delimiter = format!("--{boundary}");
    let closing = format!("--{boundary}--\r\n");
    assert!(body.ends_with(closing.as_bytes()), "no closing boundary");
    let mut parts = Vec::new();
    let mut rest = &body[..body.len() - closing.len()];
    while !rest.is_empty() {
        assert!(rest.starts_with(delimiter.as_bytes()));
        rest = &rest[delimiter.len() + 2..];
        let header_end = find(rest, b"\r\n\r\n").expect("end of part headers");
        let headers = String::from_utf8(rest[..header_end].to_vec()).unwrap();
        let length: usize = headers
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("content length")
            .parse()
            .unwrap();
        let body_start = header_end + 4;
        parts.push(ResponsePart {
            headers,
            body: rest[body_start..body_start + length].to_vec(),
        });
        rest = &rest[body_start + length + 2..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_upload_and_download_round_trip() {
    let daemon = TestDaemon::start().await;
    let text = b"hello\nworld\n".to_vec();
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let large: Vec<u8> = (0..50 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let absolute = daemon.work().join("abs/deep/bin.dat");

    // Sync-Python order: every path first, then every file.
    let form = Form::new()
        .text("files[0].path", "notes/a.txt")
        .text("files[1].path", absolute.to_string_lossy().into_owned())
        .text("files[2].path", "large.bin")
        .part(
            "files[0].file",
            Part::bytes(text.clone()).file_name("notes/a.txt"),
        )
        .part(
            "files[1].file",
            Part::bytes(binary.clone()).file_name(absolute.to_string_lossy().into_owned()),
        )
        .part(
            "files[2].file",
            Part::bytes(large.clone()).file_name("large.bin"),
        );
    let response = daemon
        .client
        .post(daemon.url("/files/bulk-upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["files"].as_array().unwrap().len(), 3);
    assert_eq!(body["files"][2]["bytes"], large.len());
    assert_eq!(
        std::fs::read(daemon.work().join("notes/a.txt")).unwrap(),
        text
    );
    assert_eq!(std::fs::read(&absolute).unwrap(), binary);

    // Async order (interleaved) overwrites.
    let form = Form::new().text("files[0].path", "notes/a.txt").part(
        "files[0].file",
        Part::bytes(b"new".to_vec()).file_name("notes/a.txt"),
    );
    let response = daemon
        .client
        .post(daemon.url("/files/bulk-upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        std::fs::read(daemon.work().join("notes/a.txt")).unwrap(),
        b"new"
    );

    let requested = [
        "notes/a.txt".to_string(),
        absolute.to_string_lossy().into_owned(),
        "large.bin".to_string(),
        "missing file ü.txt".to_string(),
        "notes".to_string(),
    ];
    let response = daemon
        .client
        .post(daemon.url("/files/bulk-download"))
        .json(&json!({ "paths": requested }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("multipart/form-data; boundary="));
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.unwrap());
    }
    let parts = split_multipart(&content_type, &body);
    assert_eq!(parts.len(), 5);
    assert_eq!(parts[0].body, b"new");
    assert!(parts[0].headers.contains("Content-Type: text/plain"));
    assert!(
        parts[0]
            .headers
            .contains(r#"name="file"; filename="notes/a.txt""#)
    );
    assert_eq!(parts[1].body, binary);
    assert!(parts[2].body == large, "large file differs");

    let missing = &parts[3];
    assert!(missing.headers.contains(r#"name="error""#));
    assert!(
        missing
            .headers
            .contains("filename*=utf-8''missing%20file%20%C3%BC.txt")
    );
    let error: Value = serde_json::from_slice(&missing.body).unwrap();
    assert_eq!(error["code"], "FILE_NOT_FOUND");
    assert_eq!(error["statusCode"], 404);
    let directory: Value = serde_json::from_slice(&parts[4].body).unwrap();
    assert_eq!(directory["code"], "INVALID_FILE_PATH");

    let (status, _) = daemon
        .post_json("/files/bulk-download", json!({"paths": []}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_info_and_file_operations() {
    let daemon = TestDaemon::start().await;
    let work = daemon.work();
    std::fs::create_dir_all(work.join("d/inner")).unwrap();
    std::fs::write(work.join("d/b.txt"), "12345").unwrap();
    std::fs::write(work.join("d/inner/c.txt"), "").unwrap();
    std::os::unix::fs::symlink("b.txt", work.join("d/link")).unwrap();

    let (status, list) = daemon.get_json("/files?path=d").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b.txt", "inner", "link"]);
    let file = &list[0];
    assert_eq!(file["size"], 5);
    assert_eq!(file["isDir"], false);
    assert_eq!(file["mode"].as_str().unwrap().len(), 10);
    assert!(file["mode"].as_str().unwrap().starts_with('-'));
    assert_eq!(file["path"], work.join("d/b.txt").to_str().unwrap());
    assert!(file["modTime"].as_str().unwrap().ends_with(" +0000 UTC"));
    assert!(file["modifiedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        file["owner"],
        nix::unistd::geteuid().as_raw().to_string().as_str()
    );
    assert!(list[2]["mode"].as_str().unwrap().starts_with('L'));

    let (_, deep) = daemon.get_json("/files?path=d&depth=2").await;
    assert_eq!(deep.as_array().unwrap().len(), 4);
    assert_eq!(deep[2]["name"], "c.txt");

    let (status, info) = daemon.get_json("/files/info?path=d/inner").await;
    assert_eq!(status, 200);
    assert_eq!(info["isDir"], true);
    assert!(info["mode"].as_str().unwrap().starts_with('d'));
    assert_eq!(info["name"], "inner");
    assert!(info["permissions"].as_str().unwrap().starts_with('0'));

    let (status, error) = daemon.get_json("/files/info?path=nope").await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], "FILE_NOT_FOUND");
    let (status, _) = daemon.get_json("/files?path=d/b.txt").await;
    assert_eq!(status, 400);
    let (status, error) = daemon.get_json("/files/info").await;
    assert_eq!(status, 400);
    assert!(error["message"].as_str().unwrap().contains("path"));

    let client = &daemon.client;
    let response = client
        .post(daemon.url("/files/folder?path=new/nested&mode=0700"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let (_, info) = daemon.get_json("/files/info?path=new/nested").await;
    assert_eq!(info["permissions"], "0700");

    let response = client
        .post(daemon.url("/files/move?source=d/b.txt&destination=new/b.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(work.join("new/b.txt").exists());
    let response = client
        .post(daemon.url("/files/move?source=new/b.txt&destination=d/inner/c.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);

    let response = client
        .delete(daemon.url("/files?path=d"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = client
        .delete(daemon.url("/files?path=d&recursive=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(!work.join("d").exists());
    let response = client
        .delete(daemon.url("/files?path=d"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

async fn session_exec(daemon: &TestDaemon, session: &str, command: &str) -> Value {
    let (status, body) = daemon
        .post_json(
            &format!("/process/session/{session}/exec"),
            json!({ "command": command }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_shell_state_and_run_heredocs() {
    let daemon = TestDaemon::start().await;
    let (status, _) = daemon
        .post_json("/process/session", json!({"sessionId": "s1"}))
        .await;
    assert_eq!(status, 201);
    let (status, body) = daemon
        .post_json("/process/session", json!({"sessionId": "s1"}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "CONFLICT");

    session_exec(&daemon, "s1", "mkdir -p sub && cd sub && export FOO=bar").await;
    let body = session_exec(&daemon, "s1", "pwd; echo \"$FOO\"; echo oops >&2; false").await;
    assert_eq!(body["exitCode"], 1);
    let expected = format!("{}\nbar\n", daemon.work().join("sub").display());
    assert_eq!(body["stdout"], expected);
    assert_eq!(body["stderr"], "oops\n");
    assert!(
        body["output"]
            .as_str()
            .unwrap()
            .contains("\u{1}\u{1}\u{1}bar\n")
    );
    assert!(
        body["output"]
            .as_str()
            .unwrap()
            .contains("\u{2}\u{2}\u{2}oops\n")
    );

    let heredoc = "cat <<'EOF' > notes.txt\nline $1 'quoted'\n}\nEOF\ncat notes.txt";
    let body = session_exec(&daemon, "s1", heredoc).await;
    assert_eq!(body["exitCode"], 0);
    assert_eq!(body["stdout"], "line $1 'quoted'\n}\n");

    // A syntax error fails the command, not the session.
    let body = session_exec(&daemon, "s1", "if then").await;
    assert_ne!(body["exitCode"], 0);
    let body = session_exec(&daemon, "s1", "echo still $FOO").await;
    assert_eq!(body["stdout"], "still bar\n");

    let (_, session) = daemon.get_json("/process/session/s1").await;
    assert_eq!(session["sessionId"], "s1");
    assert_eq!(session["commands"].as_array().unwrap().len(), 5);
    assert_eq!(session["commands"][1]["exitCode"], 1);
    let (_, sessions) = daemon.get_json("/process/session").await;
    assert_eq!(sessions.as_array().unwrap().len(), 1);

    let response = daemon
        .client
        .delete(daemon.url("/process/session/s1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, body) = daemon.get_json("/process/session/s1").await;
    assert_eq!(status, 404);
    assert_eq!(body["source"], "DAYTONA_DAEMON");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_session_commands_stream_logs_and_take_input() {
    let daemon = TestDaemon::start().await;
    daemon
        .post_json("/process/session", json!({"sessionId": "bg"}))
        .await;
    let (status, body) = daemon
        .post_json(
            "/process/session/bg/exec",
            json!({"command": "for i in 1 2 3; do echo line $i; echo warn $i >&2; sleep 0.2; done", "runAsync": true}),
        )
        .await;
    assert_eq!(status, 202);
    let command_id = body["cmdId"].as_str().unwrap().to_owned();
    let command_path = format!("/process/session/bg/command/{command_id}");

    let (_, command) = daemon.get_json(&command_path).await;
    assert_eq!(command["id"], command_id.as_str());
    assert!(command.get("exitCode").is_none_or(Value::is_null));

    let ws_url = format!(
        "{}{command_path}/logs?follow=true",
        daemon.base.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let mut streamed = Vec::new();
    let close = loop {
        match socket
            .next()
            .await
            .expect("stream ended without close")
            .unwrap()
        {
            Message::Binary(data) => streamed.extend_from_slice(&data),
            Message::Close(frame) => break frame,
            _ => {}
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
    let streamed = String::from_utf8(streamed).unwrap();
    assert!(streamed.contains("\u{1}\u{1}\u{1}line 3\n"), "{streamed:?}");
    assert!(streamed.contains("\u{2}\u{2}\u{2}warn 1\n"), "{streamed:?}");

    let (_, command) = daemon.get_json(&command_path).await;
    assert_eq!(command["exitCode"], 0);
    let (_, logs) = daemon.get_json(&format!("{command_path}/logs")).await;
    assert_eq!(logs["stdout"], "line 1\nline 2\nline 3\n");
    assert_eq!(logs["stderr"], "warn 1\nwarn 2\nwarn 3\n");
    assert_eq!(logs["output"], streamed.as_str());

    // Input reaches a waiting command and is echoed into its log.
    let (_, body) = daemon
        .post_json(
            "/process/session/bg/exec",
            json!({"command": "read name; echo \"hello $name\"", "runAsync": true}),
        )
        .await;
    let reader_path = format!(
        "/process/session/bg/command/{}",
        body["cmdId"].as_str().unwrap()
    );
    let response = daemon
        .client
        .post(daemon.url(&format!("{reader_path}/input")))
        .json(&json!({"data": "daytona\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let mut finished = Value::Null;
    for _ in 0..50 {
        let (_, command) = daemon.get_json(&reader_path).await;
        if !command["exitCode"].is_null() {
            finished = command;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(finished["exitCode"], 0);
    let (_, logs) = daemon.get_json(&format!("{reader_path}/logs")).await;
    assert_eq!(logs["stdout"], "daytona\nhello daytona\n");
    let response = daemon
        .client
        .post(daemon.url(&format!("{reader_path}/input")))
        .json(&json!({"data": "late\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 410);

    // A long-running command does not block reading its logs.
    let (_, body) = daemon
        .post_json(
            "/process/session/bg/exec",
            json!({"command": "echo started; sleep 30", "runAsync": true}),
        )
        .await;
    let sleeper = format!(
        "/process/session/bg/command/{}",
        body["cmdId"].as_str().unwrap()
    );
    let mut logs = Value::Null;
    for _ in 0..50 {
        (_, logs) = daemon.get_json(&format!("{sleeper}/logs")).await;
        if logs["stdout"] == "started\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logs["stdout"], "started\n");
    let response = daemon
        .client
        .delete(daemon.url("/process/session/bg"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}
