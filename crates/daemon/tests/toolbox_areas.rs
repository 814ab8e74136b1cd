//! Files search, system info, PTY, interpreter and git endpoints of an in-process daemon.

mod common;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use common::TestDaemon;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

fn ws_url(daemon: &TestDaemon, path: &str) -> String {
    format!("{}{path}", daemon.base.replace("http://", "ws://"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_search_replace_and_permissions() {
    let daemon = TestDaemon::start().await;
    let root = daemon.work().join("proj");
    std::fs::create_dir_all(root.join("src/deep")).unwrap();
    std::fs::write(root.join("src/a.py"), "import os\nTODO: fix\nprint(1)\n").unwrap();
    std::fs::write(root.join("src/deep/b.py"), "x = 1  # TODO later\n").unwrap();
    std::fs::write(root.join("src/deep/c.txt"), "nothing\n").unwrap();
    std::fs::write(root.join("blob.bin"), b"TODO\0binary").unwrap();

    let (status, matches) = daemon.get_json("/files/find?path=proj&pattern=TODO").await;
    assert_eq!(status, 200, "{matches}");
    let found: Vec<(String, u64)> = matches
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let file = m["file"].as_str().unwrap();
            let rel = file
                .strip_prefix(root.to_str().unwrap())
                .unwrap()
                .to_owned();
            (rel, m["line"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("/src/a.py".to_owned(), 2),
            ("/src/deep/b.py".to_owned(), 1)
        ]
    );
    assert_eq!(matches[0]["content"], "TODO: fix");

    let (status, body) = daemon
        .get_json("/files/search?path=proj&pattern=*.py")
        .await;
    assert_eq!(status, 200);
    let files: Vec<&str> = body["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.ends_with(".py") && f.starts_with('/'))
    );
    let (status, body) = daemon
        .get_json("/files/search?path=missing&pattern=*")
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "FILE_NOT_FOUND");

    let (status, results) = daemon
        .post_json(
            "/files/replace",
            json!({"files": ["proj/src/a.py", "proj/nope.py"], "pattern": "print(1)", "newValue": "print(2)"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(results[0]["success"], true);
    assert_eq!(results[1]["success"], false);
    assert!(results[1]["error"].as_str().unwrap().contains("not found"));
    let text = std::fs::read_to_string(root.join("src/a.py")).unwrap();
    assert!(text.contains("print(2)") && !text.contains("print(1)"));

    let uid = nix::unistd::geteuid().as_raw();
    let response = daemon
        .client
        .post(daemon.url(&format!(
            "/files/permissions?path=proj/src/a.py&mode=0640&owner={uid}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mode = std::fs::metadata(root.join("src/a.py"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640);
    let response = daemon
        .client
        .post(daemon.url("/files/permissions?path=proj/src/a.py&owner=no-such-user-x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("no-such-user-x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_env_metrics_and_entrypoint() {
    let daemon = TestDaemon::start().await;
    let port: u16 = daemon.base.rsplit(':').next().unwrap().parse().unwrap();
    let (_, body) = daemon.get_json("/port").await;
    assert!(
        body["ports"].as_array().unwrap().contains(&json!(port)),
        "{body}"
    );
    let (_, body) = daemon.get_json(&format!("/port/{port}/in-use")).await;
    assert_eq!(body["isInUse"], true);
    let (status, _) = daemon.get_json("/port/0/in-use").await;
    assert_eq!(status, 400);

    let (status, body) = daemon
        .post_json(
            "/env",
            json!({"set": {"TOOLBOX_T": "v1"}, "unset": ["HOSTNAME_NOT_SET"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, out) = daemon.exec(json!({"command": "echo $TOOLBOX_T"})).await;
    assert_eq!(out["result"], "v1\n");
    daemon
        .post_json("/process/session", json!({"sessionId": "envs"}))
        .await;
    let (_, out) = daemon
        .post_json(
            "/process/session/envs/exec",
            json!({"command": "echo $TOOLBOX_T"}),
        )
        .await;
    assert_eq!(out["stdout"], "v1\n");
    daemon
        .post_json("/env", json!({"unset": ["TOOLBOX_T"]}))
        .await;
    let (_, out) = daemon
        .exec(json!({"command": "echo \"[$TOOLBOX_T]\""}))
        .await;
    assert_eq!(out["result"], "[]\n");
    let (status, _) = daemon
        .post_json("/env", json!({"set": {"1BAD": "x"}}))
        .await;
    assert_eq!(status, 400);

    let (status, metrics) = daemon.get_json("/system/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics["cpuCount"].as_u64().unwrap() >= 1);
    assert!(metrics["memTotal"].as_u64().unwrap() > 0);
    assert!(metrics["diskTotal"].as_u64().unwrap() >= metrics["diskFree"].as_u64().unwrap());
    assert!(metrics["timestampUnix"].as_i64().unwrap() > 1_700_000_000);

    let (status, body) = daemon.post_json("/init", json!({"token": "t"})).await;
    assert_eq!(status, 200);
    assert!(body["message"].is_string());

    for path in [
        "/process/session/entrypoint",
        "/process/session/entrypoint/logs",
    ] {
        let (status, body) = daemon.get_json(path).await;
        assert_eq!(status, 404, "{path}");
        assert!(body["message"].as_str().unwrap().contains("entrypoint"));
    }
}

/// Reads PTY frames until the close, returning (text output, control messages, close frame).
async fn read_pty<S>(socket: &mut S) -> (String, Vec<Value>, Option<(u16, String)>)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut output = Vec::new();
    let mut controls = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .expect("pty frame")
            .expect("socket open")
            .unwrap();
        match message {
            Message::Binary(data) => output.extend_from_slice(&data),
            Message::Text(text) => controls.push(serde_json::from_str(&text).unwrap()),
            Message::Close(frame) => {
                let close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                return (
                    String::from_utf8_lossy(&output).into_owned(),
                    controls,
                    close,
                );
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_create_connect_round_trip() {
    let daemon = TestDaemon::start().await;
    let envs = base64_url(r#"{"PTY_GREETING":"hi-from-envs"}"#);
    let mut request = ws_url(
        &daemon,
        "/process/pty/create-connect?id=term&cols=90&rows=20",
    )
    .into_client_request()
    .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!(
            "X-Daytona-Pty-Exit-Control, X-Daytona-Pty-Envs~{envs}"
        ))
        .unwrap(),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request.clone())
        .await
        .unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "X-Daytona-Pty-Exit-Control"
    );
    let first = socket.next().await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(first.to_text().unwrap()).unwrap(),
        json!({"type": "control", "status": "connected"})
    );

    // A second client on the same terminal sees the same output.
    let mut watcher_request = ws_url(&daemon, "/process/pty/term/connect")
        .into_client_request()
        .unwrap();
    watcher_request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("X-Daytona-Pty-Exit-Control"),
    );
    let (mut watcher, _) = tokio_tungstenite::connect_async(watcher_request)
        .await
        .unwrap();
    watcher.next().await.unwrap().unwrap();

    // Duplicate ids fail before the upgrade with 409.
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 409)
        }
        other => panic!("expected 409, got {other:?}"),
    }

    let (_, info) = daemon
        .post_json("/process/pty/term/resize", json!({"cols": 120, "rows": 40}))
        .await;
    assert_eq!(
        (info["cols"].as_u64(), info["rows"].as_u64()),
        (Some(120), Some(40))
    );
    let (_, list) = daemon.get_json("/process/pty").await;
    assert_eq!(list["sessions"][0]["id"], "term");
    assert_eq!(list["sessions"][0]["active"], true);
    assert_eq!(list["sessions"][0]["envs"]["PTY_GREETING"], "hi-from-envs");

    socket
        .send(Message::Binary(
            b"echo \"g=$PTY_GREETING\"; stty size; exit 7\n"
                .to_vec()
                .into(),
        ))
        .await
        .unwrap();
    for client in [&mut socket, &mut watcher] {
        let (output, controls, close) = read_pty(client).await;
        assert!(output.contains("g=hi-from-envs"), "{output}");
        assert!(output.contains("40 120"), "{output}");
        assert_eq!(
            controls.last().unwrap(),
            &json!({"type": "control", "status": "exited", "exitCode": 7, "exitReason": "non-zero exit"})
        );
        let (code, reason) = close.expect("close frame");
        assert_eq!(code, 1011);
        assert_eq!(
            serde_json::from_str::<Value>(&reason).unwrap(),
            json!({"exitCode": 7, "exitReason": "non-zero exit"})
        );
    }
    let (status, info) = daemon.get_json("/process/pty/term").await;
    assert_eq!(status, 200);
    assert_eq!(info["active"], false);
    let (status, _) = daemon
        .post_json("/process/pty/term/resize", json!({"cols": 80, "rows": 24}))
        .await;
    assert_eq!(status, 410);

    // Legacy create, then kill through REST: attached clients get SIGKILL as the reason.
    let (status, body) = daemon
        .post_json("/process/pty", json!({"id": "legacy", "lazyStart": true}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["sessionId"], "legacy");
    let mut request = ws_url(&daemon, "/process/pty/legacy/connect")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("X-Daytona-SDK-Version~0.218.0, X-Daytona-Pty-Exit-Control"),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "X-Daytona-SDK-Version~0.218.0"
    );
    socket.next().await.unwrap().unwrap();
    let response = daemon
        .client
        .delete(daemon.url("/process/pty/legacy"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, controls, close) = read_pty(&mut socket).await;
    assert_eq!(controls.last().unwrap()["exitReason"], "SIGKILL");
    assert_eq!(close.unwrap().0, 1011);
    let (status, _) = daemon.get_json("/process/pty/legacy").await;
    assert_eq!(status, 404);
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Runs one interpreter execution; returns (frames, close code).
async fn interpret(daemon: &TestDaemon, request: Value) -> (Vec<Value>, u16) {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(ws_url(daemon, "/process/interpreter/execute"))
            .await
            .unwrap();
    socket
        .send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("interpreter frame")
        {
            Some(Ok(Message::Text(text))) => frames.push(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                return (frames, frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            other => panic!("socket ended without close: {other:?}"),
        }
    }
}

fn stdout_of(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["type"] == "stdout")
        .map(|f| f["text"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interpreter_contexts_keep_state_across_timeouts() {
    let daemon = TestDaemon::start().await;
    let (_, close) = interpret(&daemon, json!({"code": "counter = 10"})).await;
    assert_eq!(close, 1000);
    let (frames, _) = interpret(&daemon, json!({"code": "counter += 1\nprint(counter)"})).await;
    assert_eq!(stdout_of(&frames), "11\n");
    for frame in &frames {
        for key in ["type", "text", "name", "value", "traceback"] {
            assert!(frame.get(key).is_some(), "{frame} lacks {key}");
        }
    }

    let (status, context) = daemon
        .post_json(
            "/process/interpreter/context",
            json!({"language": "python"}),
        )
        .await;
    assert_eq!(status, 200, "{context}");
    let id = context["id"].as_str().unwrap().to_owned();
    let (frames, _) = interpret(
        &daemon,
        json!({"code": "print('counter' in globals())", "contextId": id}),
    )
    .await;
    assert_eq!(stdout_of(&frames), "False\n", "contexts are separate");

    let (frames, close) = interpret(
        &daemon,
        json!({"code": "import time\nwhile True: time.sleep(0.1)", "timeout": 1}),
    )
    .await;
    assert_eq!(close, 4008);
    assert!(
        frames.iter().any(|f| f["name"] == "KeyboardInterrupt"),
        "{frames:?}"
    );
    let (frames, _) = interpret(&daemon, json!({"code": "print(counter)"})).await;
    assert_eq!(
        stdout_of(&frames),
        "11\n",
        "the timeout kept the default context"
    );

    let (frames, _) = interpret(
        &daemon,
        json!({"code": "raise ValueError('bad')", "envs": {"A": "1"}}),
    )
    .await;
    let error = frames.iter().find(|f| f["type"] == "error").unwrap();
    assert_eq!(
        (error["name"].as_str(), error["value"].as_str()),
        (Some("ValueError"), Some("bad"))
    );

    let (_, close) = interpret(&daemon, json!({"code": "1", "contextId": "nope"})).await;
    assert_eq!(close, 1008);
    let (_, list) = daemon.get_json("/process/interpreter/context").await;
    assert_eq!(list["contexts"].as_array().unwrap().len(), 1);
    let response = daemon
        .client
        .delete(daemon.url("/process/interpreter/context/default"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = daemon
        .client
        .delete(daemon.url(&format!("/process/interpreter/context/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_commit_push_and_errors() {
    let daemon = TestDaemon::start().await;
    // Keep `git config --global` away from the real home.
    let home = daemon.work().join("home");
    std::fs::create_dir_all(&home).unwrap();
    daemon
        .post_json(
            "/env",
            json!({"set": {"HOME": home.to_str().unwrap(), "GIT_CONFIG_NOSYSTEM": "1"}}),
        )
        .await;

    let (status, body) = daemon
        .post_json(
            "/git/init",
            json!({"path": "origin.git", "bare": true, "initial_branch": "main"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let origin = daemon.work().join("origin.git");
    let (status, body) = daemon
        .post_json(
            "/git/clone",
            json!({"url": origin.to_str().unwrap(), "path": "repo"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    std::fs::write(daemon.work().join("repo/hello.txt"), "hello\n").unwrap();

    let (_, status_body) = daemon.get_json("/git/status?path=repo").await;
    assert_eq!(status_body["currentBranch"], "main");
    assert_eq!(
        status_body["fileStatus"],
        json!([{"name": "hello.txt", "staging": "Untracked", "worktree": "Untracked", "extra": ""}])
    );
    let (status, _) = daemon
        .post_json("/git/add", json!({"path": "repo", "files": ["."]}))
        .await;
    assert_eq!(status, 200);
    let (_, status_body) = daemon.get_json("/git/status?path=repo").await;
    assert_eq!(status_body["fileStatus"][0]["staging"], "Added");
    let (status, commit) = daemon
        .post_json(
            "/git/commit",
            json!({"path": "repo", "message": "first", "author": "Ada", "email": "ada@example.org"}),
        )
        .await;
    assert_eq!(status, 200, "{commit}");
    let hash = commit["hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 40);
    let (status, body) = daemon
        .post_json("/git/push", json!({"path": "repo", "set_upstream": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, history) = daemon.get_json("/git/history?path=repo").await;
    assert_eq!(history[0]["hash"], hash.as_str());
    assert_eq!(history[0]["author"], "Ada");
    assert_eq!(history[0]["email"], "ada@example.org");
    assert_eq!(history[0]["message"], "first");
    let (_, status_body) = daemon.get_json("/git/status?path=repo").await;
    assert_eq!(status_body["upstream"], "origin/main");
    assert_eq!(status_body["ahead"], 0);

    let (status, _) = daemon
        .post_json("/git/branches", json!({"path": "repo", "name": "feature"}))
        .await;
    assert_eq!(status, 201);
    let (_, branches) = daemon.get_json("/git/branches?path=repo").await;
    assert_eq!(
        branches,
        json!({"branches": ["feature", "main"], "current": "feature"})
    );
    let (status, body) = daemon
        .post_json("/git/branches", json!({"path": "repo", "name": "feature"}))
        .await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (409, Some("GIT_BRANCH_EXISTS"))
    );
    let (status, body) = daemon
        .post_json("/git/checkout", json!({"path": "repo", "branch": "nope"}))
        .await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (404, Some("GIT_BRANCH_NOT_FOUND"))
    );
    daemon
        .post_json("/git/checkout", json!({"path": "repo", "branch": "main"}))
        .await;
    let response = daemon
        .client
        .delete(daemon.url("/git/branches"))
        .json(&json!({"path": "repo", "name": "feature"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    // A second clone commits and pushes; the first is then behind and its push is rejected.
    daemon
        .post_json(
            "/git/clone",
            json!({"url": origin.to_str().unwrap(), "path": "other"}),
        )
        .await;
    std::fs::write(daemon.work().join("other/b.txt"), "b\n").unwrap();
    daemon
        .post_json("/git/add", json!({"path": "other", "files": ["b.txt"]}))
        .await;
    daemon
        .post_json(
            "/git/commit",
            json!({"path": "other", "message": "b", "author": "Bob", "email": "b@x.org"}),
        )
        .await;
    let (status, _) = daemon
        .post_json("/git/push", json!({"path": "other"}))
        .await;
    assert_eq!(status, 200);
    daemon
        .post_json("/git/commit", json!({"path": "repo", "message": "empty", "author": "Ada", "email": "a@x.org", "allow_empty": true}))
        .await;
    let (status, body) = daemon.post_json("/git/push", json!({"path": "repo"})).await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (409, Some("GIT_PUSH_REJECTED")),
        "{body}"
    );
    // A merging pull needs an identity for the merge commit.
    let (status, _) = daemon
        .post_json(
            "/git/config/user",
            json!({"name": "Sandbox User", "email": "s@x.org"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = daemon.post_json("/git/pull", json!({"path": "repo"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(daemon.work().join("repo/b.txt").exists());

    let (status, body) = daemon
        .post_json(
            "/git/clone",
            json!({"url": daemon.work().join("missing.git").to_str().unwrap(), "path": "x"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (404, Some("GIT_REPO_NOT_FOUND")),
        "{body}"
    );
    let (status, body) = daemon.get_json("/git/status?path=home").await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (404, Some("GIT_REPO_NOT_FOUND"))
    );

    let (_, remotes) = daemon.get_json("/git/remotes?path=repo").await;
    assert_eq!(remotes["remotes"][0]["name"], "origin");
    let (_, value) = daemon.get_json("/git/config?key=user.name").await;
    assert_eq!(value["value"], "Sandbox User");
    let (_, value) = daemon.get_json("/git/config?key=no.such").await;
    assert_eq!(value["value"], Value::Null);
}

#[tokio::test]
async fn inline_credential_helper_answers_from_the_environment() {
    use daytona_daemon::{
        environment::ProcessEnv,
        git::{Credentials, GitCommand},
    };
    let home = tempfile::tempdir().unwrap();
    let env = ProcessEnv::new(
        [
            ("PATH".to_string(), std::env::var("PATH").unwrap()),
            (
                "HOME".to_string(),
                home.path().to_str().unwrap().to_string(),
            ),
        ]
        .into(),
    );
    let output = GitCommand::new(None, ["credential", "fill"])
        .credentials(Some(Credentials {
            username: "robot".into(),
            password: "s3cret pass".into(),
        }))
        .stdin("protocol=https\nhost=git.example\n\n")
        .run(&env)
        .await
        .unwrap();
    assert!(output.contains("username=robot\n"), "{output}");
    assert!(output.contains("password=s3cret pass\n"), "{output}");
    // Without credentials git must fail instead of prompting.
    let failure = GitCommand::new(None, ["credential", "fill"])
        .stdin("protocol=https\nhost=git.example\n\n")
        .run(&env)
        .await
        .unwrap_err();
    assert!(
        failure.stderr.contains("terminal prompts disabled"),
        "{}",
        failure.stderr
    );
}
