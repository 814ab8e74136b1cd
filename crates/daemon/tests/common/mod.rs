//! An in-process daemon on 127.0.0.1 for the integration tests.

#![allow(dead_code)]

use std::path::Path;

use daytona_daemon::{DaemonConfig, Server};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

pub struct TestDaemon {
    pub base: String,
    pub client: Client,
    work: TempDir,
    _state: TempDir,
    _stop: oneshot::Sender<()>,
}

impl TestDaemon {
    pub async fn start() -> Self {
        let work = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let config = DaemonConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            work_dir: work.path().to_path_buf(),
            home_dir: work.path().to_path_buf(),
            state_dir: state.path().to_path_buf(),
        };
        let server = Server::bind(config).await.unwrap();
        let address = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            base: format!("http://{address}"),
            client: Client::new(),
            work,
            _state: state,
            _stop: stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn work(&self) -> &Path {
        self.work.path()
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn exec(&self, body: Value) -> (StatusCode, Value) {
        self.post_json("/process/execute", body).await
    }
}
