//! The HTTP calls the official SDK makes for the operations we measure (see the SDK contract):
//! the control plane under `{api_url}` and the toolbox under `{toolboxProxyUrl}/{sandboxId}`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::error::{BenchError, Result};

/// How long a sandbox may take to reach `started` or `destroyed`.
const STATE_TIMEOUT: Duration = Duration::from_secs(180);
/// Poll interval while waiting for a state (the SDK waits on Socket.IO events instead; a short
/// poll keeps the wait from adding to the measured time).
const POLL: Duration = Duration::from_millis(10);
/// Upper bound for one control-plane or toolbox call (transfers have none: 1 GB takes a while).
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
/// Read size when streaming a file from disk into an upload.
const UPLOAD_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDto {
    pub id: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub error_reason: Option<String>,
    pub toolbox_proxy_url: String,
}

/// A started sandbox and where its toolbox is.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    /// `{toolboxProxyUrl}/{id}`: prefix of every toolbox path.
    pub toolbox: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    pub exit_code: i64,
    pub result: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PreviewUrl {
    pub url: String,
    pub token: String,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    api_url: String,
    api_key: String,
}

impl Client {
    pub fn new(api_url: &str, api_key: &str) -> Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|source| BenchError::Http {
                what: "building the HTTP client".into(),
                source,
            })?;
        Ok(Client {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(&self.api_key)
            .header("X-Daytona-Source", "daytona-bench")
    }

    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, &format!("{}{path}", self.api_url))
            .timeout(CALL_TIMEOUT)
    }

    /// `GET /health`: whether the API answers at all (a clear first error for a wrong URL).
    pub async fn health(&self) -> Result<()> {
        let what = format!("GET {}/health", self.api_url);
        send(self.api(reqwest::Method::GET, "/health"), &what).await?;
        Ok(())
    }

    /// `POST /sandbox` as `Daytona.create()` sends it (default snapshot, python language label).
    pub async fn create_sandbox(&self, label: &str) -> Result<SandboxDto> {
        let body = json!({ "labels": { "code-toolbox-language": "python", "bench": label } });
        let req = self.api(reqwest::Method::POST, "/sandbox").json(&body);
        json_of(req, "POST /sandbox").await
    }

    /// `GET /sandbox/{id}`; `None` once it is gone (404).
    pub async fn sandbox(&self, id: &str) -> Result<Option<SandboxDto>> {
        let what = format!("GET /sandbox/{id}");
        let resp = self
            .api(reqwest::Method::GET, &format!("/sandbox/{id}"))
            .send()
            .await
            .map_err(|source| BenchError::Http {
                what: what.clone(),
                source,
            })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(parse_json(checked(resp, &what).await?, &what).await?))
    }

    /// Waits (polling) until the sandbox is `started`; fails on `error`/`build_failed`.
    pub async fn wait_started(&self, mut dto: SandboxDto) -> Result<Sandbox> {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            match dto.state.as_deref() {
                Some("started") => {
                    return Ok(Sandbox {
                        toolbox: format!(
                            "{}/{}",
                            dto.toolbox_proxy_url.trim_end_matches('/'),
                            dto.id
                        ),
                        id: dto.id,
                    });
                }
                Some(state @ ("error" | "build_failed")) => {
                    return Err(BenchError::SandboxFailed {
                        id: dto.id.clone(),
                        state: state.to_string(),
                        reason: dto.error_reason.clone().unwrap_or_default(),
                    });
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout {
                    what: format!("sandbox {} reaching started", dto.id),
                    after: STATE_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL).await;
            dto = self
                .sandbox(&dto.id)
                .await?
                .ok_or_else(|| BenchError::SandboxFailed {
                    id: dto.id.clone(),
                    state: "destroyed".into(),
                    reason: "deleted while starting".into(),
                })?;
        }
    }

    pub async fn create_started(&self, label: &str) -> Result<Sandbox> {
        let dto = self.create_sandbox(label).await?;
        self.wait_started(dto).await
    }

    /// `DELETE /sandbox/{id}`, then (like `delete(wait=True)`) polls until it is destroyed.
    pub async fn delete_sandbox(&self, id: &str) -> Result<()> {
        let what = format!("DELETE /sandbox/{id}");
        send(
            self.api(reqwest::Method::DELETE, &format!("/sandbox/{id}")),
            &what,
        )
        .await?;
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            match self.sandbox(id).await? {
                None => return Ok(()),
                Some(dto) if dto.state.as_deref() == Some("destroyed") => return Ok(()),
                Some(dto) if dto.state.as_deref() == Some("error") => {
                    return Err(BenchError::SandboxFailed {
                        id: id.to_string(),
                        state: "error".into(),
                        reason: dto.error_reason.unwrap_or_default(),
                    });
                }
                Some(_) if Instant::now() > deadline => {
                    return Err(BenchError::Timeout {
                        what: format!("sandbox {id} reaching destroyed"),
                        after: STATE_TIMEOUT,
                    });
                }
                Some(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    fn toolbox(
        &self,
        sb: &Sandbox,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.request(method, &format!("{}{path}", sb.toolbox))
    }

    /// `process.exec(command)`: `POST /process/execute`.
    pub async fn exec(&self, sb: &Sandbox, command: &str) -> Result<ExecResult> {
        let req = self
            .toolbox(sb, reqwest::Method::POST, "/process/execute")
            .timeout(CALL_TIMEOUT)
            .json(&json!({ "command": command }));
        json_of(req, &format!("exec {command:?} in {}", sb.id)).await
    }

    /// `exec` that must exit 0.
    pub async fn exec_ok(&self, sb: &Sandbox, command: &str) -> Result<String> {
        let r = self.exec(sb, command).await?;
        if r.exit_code != 0 {
            return Err(BenchError::Response {
                what: format!("exec {command:?} in {}", sb.id),
                detail: format!("exit code {}: {}", r.exit_code, r.result.trim()),
            });
        }
        Ok(r.result)
    }

    /// `process.code_run(code)` for Python: `POST /process/code-run`.
    pub async fn code_run(&self, sb: &Sandbox, code: &str) -> Result<ExecResult> {
        let req = self
            .toolbox(sb, reqwest::Method::POST, "/process/code-run")
            .timeout(CALL_TIMEOUT)
            .json(&json!({ "code": code, "language": "python" }));
        json_of(req, &format!("code-run in {}", sb.id)).await
    }

    /// `fs.upload_file(local_path, remote)`: `POST /files/bulk-upload`, the file streamed from disk.
    pub async fn upload_file(&self, sb: &Sandbox, local: &Path, remote: &str) -> Result<u64> {
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| BenchError::io(format!("open {}", local.display()), e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| BenchError::io(format!("stat {}", local.display()), e))?
            .len();
        let body = reqwest::Body::wrap_stream(ReaderStream::with_capacity(file, UPLOAD_CHUNK));
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name(remote.to_string())
            .mime_str("application/octet-stream")
            .expect("static mime type parses");
        let form = reqwest::multipart::Form::new()
            .text("files[0].path", remote.to_string())
            .part("files[0].file", part);
        let req = self
            .toolbox(sb, reqwest::Method::POST, "/files/bulk-upload")
            .multipart(form);
        send(req, &format!("upload {remote} to {}", sb.id)).await?;
        Ok(len)
    }

    /// `fs.download_file(remote, local_path)`: `POST /files/bulk-download`; the multipart answer
    /// is parsed as it arrives and written to disk.
    pub async fn download_file(&self, sb: &Sandbox, remote: &str, local: &Path) -> Result<u64> {
        let what = format!("download {remote} from {}", sb.id);
        let req = self
            .toolbox(sb, reqwest::Method::POST, "/files/bulk-download")
            .header(reqwest::header::ACCEPT, "multipart/form-data")
            .json(&json!({ "paths": [remote] }));
        let resp = send(req, &what).await?;
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let boundary = multer::parse_boundary(&content_type).map_err(|e| BenchError::Response {
            what: what.clone(),
            detail: format!("content type {content_type:?}: {e}"),
        })?;
        let bad = |e: multer::Error| BenchError::Response {
            what: what.clone(),
            detail: format!("multipart body: {e}"),
        };
        let mut parts = multer::Multipart::new(resp.bytes_stream(), boundary);
        let mut field =
            parts
                .next_field()
                .await
                .map_err(bad)?
                .ok_or_else(|| BenchError::Response {
                    what: what.clone(),
                    detail: "no part in the answer".into(),
                })?;
        if field.name() != Some("file") {
            let text = field.text().await.map_err(bad)?;
            return Err(BenchError::Response {
                what,
                detail: format!("error part: {text}"),
            });
        }
        let mut out = tokio::fs::File::create(local)
            .await
            .map_err(|e| BenchError::io(format!("create {}", local.display()), e))?;
        let mut written = 0u64;
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            out.write_all(&chunk)
                .await
                .map_err(|e| BenchError::io(format!("write {}", local.display()), e))?;
            written += chunk.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| BenchError::io(format!("write {}", local.display()), e))?;
        Ok(written)
    }

    /// Starts `command` in the background through a session (`process.execute_session_command`
    /// with `run_async`), as the SDK starts long-running servers.
    pub async fn start_background(&self, sb: &Sandbox, session: &str, command: &str) -> Result<()> {
        let req = self
            .toolbox(sb, reqwest::Method::POST, "/process/session")
            .timeout(CALL_TIMEOUT)
            .json(&json!({ "sessionId": session }));
        send(req, &format!("create session {session} in {}", sb.id)).await?;
        let req = self
            .toolbox(
                sb,
                reqwest::Method::POST,
                &format!("/process/session/{session}/exec"),
            )
            .timeout(CALL_TIMEOUT)
            .json(&json!({ "command": command, "runAsync": true }));
        send(req, &format!("start {command:?} in {}", sb.id)).await?;
        Ok(())
    }

    /// `GET /sandbox/{id}/ports/{port}/preview-url`.
    pub async fn preview_url(&self, sb: &Sandbox, port: u16) -> Result<PreviewUrl> {
        let req = self.api(
            reqwest::Method::GET,
            &format!("/sandbox/{}/ports/{port}/preview-url", sb.id),
        );
        json_of(req, &format!("preview URL of {}:{port}", sb.id)).await
    }
}

async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response> {
    let resp = req.send().await.map_err(|source| BenchError::Http {
        what: what.to_string(),
        source,
    })?;
    checked(resp, what).await
}

async fn checked(resp: reqwest::Response, what: &str) -> Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Err(BenchError::Status {
        what: what.to_string(),
        status,
        body: body.chars().take(500).collect(),
    })
}

async fn json_of<T: DeserializeOwned>(req: reqwest::RequestBuilder, what: &str) -> Result<T> {
    parse_json(send(req, what).await?, what).await
}

async fn parse_json<T: DeserializeOwned>(resp: reqwest::Response, what: &str) -> Result<T> {
    let bytes = resp.bytes().await.map_err(|source| BenchError::Http {
        what: what.to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| BenchError::Response {
        what: what.to_string(),
        detail: format!(
            "{e}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        ),
    })
}
