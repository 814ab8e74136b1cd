//! PTY sessions: an interactive shell on a pseudo-terminal, attached over WebSockets.
//!
//! A session is registered first and its shell starts when the first client attaches (or at
//! once for a non-lazy legacy `POST /process/pty`), so the first prompt is not lost between
//! spawning and subscribing. Output goes to every attached client through one broadcast
//! channel that also carries the exit, so clients see all output before the exit message.

pub mod routes;

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::ExitStatus,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::broadcast,
};

use crate::environment::ProcessEnv;

/// Chunks of output buffered per attached client before a slow one starts losing output.
const OUTPUT_BACKLOG: usize = 1024;
/// Output still read after the shell exited (background jobs may hold the terminal open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);
const MAX_DIMENSION: u16 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("PTY session already exists: {0}")]
    Exists(String),
    #[error("PTY session not found: {0}")]
    NotFound(String),
    #[error("PTY session {0} has exited")]
    Exited(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot start the PTY shell: {0}")]
    Spawn(String),
    #[error("PTY I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How the shell ended, as the SDK's exit control message reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    pub exit_code: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
}

impl ExitInfo {
    pub fn from_status(status: ExitStatus) -> Self {
        if let Some(signal) = status.signal() {
            let reason = match Signal::try_from(signal) {
                Ok(Signal::SIGINT) => "Ctrl+C".to_owned(),
                Ok(Signal::SIGKILL) => "SIGKILL".to_owned(),
                Ok(Signal::SIGTERM) => "SIGTERM".to_owned(),
                _ => format!("signal {signal}"),
            };
            return Self {
                exit_code: 128 + signal,
                exit_reason: Some(reason),
            };
        }
        let exit_code = status.code().unwrap_or(-1);
        Self {
            exit_code,
            exit_reason: (exit_code != 0).then(|| "non-zero exit".to_owned()),
        }
    }
}

/// What attached clients receive.
#[derive(Debug, Clone)]
pub enum PtyEvent {
    Output(Bytes),
    Exited(ExitInfo),
}

/// Settings a session is created with.
#[derive(Debug, Clone)]
pub struct PtyOptions {
    pub id: String,
    pub cwd: PathBuf,
    /// Extra variables on top of the daemon's process environment.
    pub envs: BTreeMap<String, String>,
    pub cols: u16,
    pub rows: u16,
    pub lazy_start: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PtySessionInfo {
    pub id: String,
    pub cwd: String,
    pub envs: BTreeMap<String, String>,
    pub cols: u16,
    pub rows: u16,
    pub created_at: String,
    pub active: bool,
    pub lazy_start: bool,
}

#[derive(Debug)]
enum Shell {
    NotStarted,
    Running {
        writer: Arc<tokio::sync::Mutex<pty_process::OwnedWritePty>>,
        pgid: Pid,
    },
    Exited(ExitInfo),
}

pub struct PtySession {
    options: PtyOptions,
    created_at: String,
    size: Mutex<(u16, u16)>,
    shell: Mutex<Shell>,
    events: broadcast::Sender<PtyEvent>,
}

impl std::fmt::Debug for PtySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtySession")
            .field("id", &self.options.id)
            .finish_non_exhaustive()
    }
}

/// Checks terminal dimensions (1..=1000, as upstream).
pub fn validate_size(cols: u16, rows: u16) -> Result<(), PtyError> {
    for (name, value) in [("cols", cols), ("rows", rows)] {
        if value == 0 || value > MAX_DIMENSION {
            return Err(PtyError::Invalid(format!(
                "{name}: must be between 1 and {MAX_DIMENSION}, got {value}"
            )));
        }
    }
    Ok(())
}

impl PtySession {
    fn lock_shell(&self) -> std::sync::MutexGuard<'_, Shell> {
        self.shell.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn id(&self) -> &str {
        &self.options.id
    }

    pub fn info(&self) -> PtySessionInfo {
        let (cols, rows) = *self.size.lock().unwrap_or_else(|e| e.into_inner());
        PtySessionInfo {
            id: self.options.id.clone(),
            cwd: self.options.cwd.to_string_lossy().into_owned(),
            envs: self.options.envs.clone(),
            cols,
            rows,
            created_at: self.created_at.clone(),
            active: !matches!(*self.lock_shell(), Shell::Exited(_)),
            lazy_start: self.options.lazy_start,
        }
    }

    pub fn exit_info(&self) -> Option<ExitInfo> {
        match &*self.lock_shell() {
            Shell::Exited(info) => Some(info.clone()),
            _ => None,
        }
    }

    /// Subscribes to output, starting the shell if nobody has yet. The receiver sees
    /// everything the shell prints from its start (for the first client) or from now.
    pub fn attach(
        self: &Arc<Self>,
        env: &ProcessEnv,
    ) -> Result<broadcast::Receiver<PtyEvent>, PtyError> {
        let receiver = self.events.subscribe();
        self.start(env)?;
        Ok(receiver)
    }

    /// Starts the shell unless it already runs or ran.
    pub fn start(self: &Arc<Self>, env: &ProcessEnv) -> Result<(), PtyError> {
        let mut shell = self.lock_shell();
        if !matches!(*shell, Shell::NotStarted) {
            return Ok(());
        }
        let (pty, pts) = pty_process::open().map_err(|e| PtyError::Spawn(e.to_string()))?;
        let (cols, rows) = *self.size.lock().unwrap_or_else(|e| e.into_inner());
        pty.resize(pty_process::Size::new(rows, cols))
            .map_err(|e| PtyError::Spawn(e.to_string()))?;
        let mut command = tokio::process::Command::new(super::shell::find_session_shell());
        env.apply(&mut command);
        command
            .arg("-i")
            .current_dir(&self.options.cwd)
            .env("TERM", "xterm-256color")
            .envs(&self.options.envs)
            .kill_on_drop(false);
        let mut child = pty_process::Command::from(command)
            .spawn(pts)
            .map_err(|e| PtyError::Spawn(e.to_string()))?;
        let pid = child.id().map(|p| Pid::from_raw(p as i32));
        let Some(pgid) = pid else {
            return Err(PtyError::Spawn("the shell exited at once".into()));
        };
        let (mut reader, writer) = pty.into_split();
        *shell = Shell::Running {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            pgid,
        };
        drop(shell);

        let session = self.clone();
        tokio::spawn(async move {
            let events = session.events.clone();
            let mut pump = tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                // EIO once the last process holding the terminal exits.
                while let Ok(n) = reader.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = events.send(PtyEvent::Output(Bytes::copy_from_slice(&buf[..n])));
                }
            });
            let info = match child.wait().await {
                Ok(status) => ExitInfo::from_status(status),
                Err(e) => {
                    tracing::warn!(id = %session.options.id, "cannot wait for PTY shell: {e}");
                    ExitInfo {
                        exit_code: -1,
                        exit_reason: Some(format!("wait failed: {e}")),
                    }
                }
            };
            if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut pump)
                .await
                .is_err()
            {
                pump.abort();
            }
            tracing::info!(id = %session.options.id, code = info.exit_code, "PTY shell exited");
            *session.lock_shell() = Shell::Exited(info.clone());
            let _ = session.events.send(PtyEvent::Exited(info));
        });
        Ok(())
    }

    /// Writes client input to the terminal.
    pub async fn write(&self, data: &[u8]) -> Result<(), PtyError> {
        let writer = match &*self.lock_shell() {
            Shell::Running { writer, .. } => writer.clone(),
            Shell::NotStarted => return Err(PtyError::Invalid("PTY shell not started".into())),
            Shell::Exited(_) => return Err(PtyError::Exited(self.options.id.clone())),
        };
        let mut writer = writer.lock().await;
        writer.write_all(data).await?;
        writer.flush().await?;
        Ok(())
    }

    pub async fn resize(&self, cols: u16, rows: u16) -> Result<PtySessionInfo, PtyError> {
        validate_size(cols, rows)?;
        let writer = match &*self.lock_shell() {
            Shell::Running { writer, .. } => Some(writer.clone()),
            Shell::NotStarted => None,
            Shell::Exited(_) => return Err(PtyError::Exited(self.options.id.clone())),
        };
        if let Some(writer) = writer {
            writer
                .lock()
                .await
                .resize(pty_process::Size::new(rows, cols))
                .map_err(|e| PtyError::Io(std::io::Error::other(e.to_string())))?;
        }
        *self.size.lock().unwrap_or_else(|e| e.into_inner()) = (cols, rows);
        Ok(self.info())
    }

    fn kill(&self) {
        if let Shell::Running { pgid, .. } = &*self.lock_shell() {
            // The shell is a session leader: its group holds the jobs it started in the foreground.
            let _ = killpg(*pgid, Signal::SIGKILL);
        }
    }
}

/// All PTY sessions of the daemon.
#[derive(Debug)]
pub struct PtyManager {
    env: Arc<ProcessEnv>,
    sessions: Mutex<HashMap<String, Arc<PtySession>>>,
}

impl PtyManager {
    pub fn new(env: Arc<ProcessEnv>) -> Self {
        Self {
            env,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub fn env(&self) -> &ProcessEnv {
        &self.env
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<PtySession>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session (an exited one with the same id is replaced); a non-lazy one
    /// starts its shell at once.
    pub fn create(&self, options: PtyOptions) -> Result<Arc<PtySession>, PtyError> {
        let id = &options.id;
        if id.is_empty() || id.len() > 256 || id.contains('/') {
            return Err(PtyError::Invalid(format!(
                "id: invalid PTY session id {id:?}"
            )));
        }
        validate_size(options.cols, options.rows)?;
        super::shell::validate_env(options.envs.keys())
            .map_err(|e| PtyError::Invalid(e.message))?;
        if !options.cwd.is_dir() {
            return Err(PtyError::Invalid(format!(
                "cwd: not a directory: {}",
                options.cwd.display()
            )));
        }
        let session = {
            let mut sessions = self.map();
            if sessions.get(id).is_some_and(|s| s.exit_info().is_none()) {
                return Err(PtyError::Exists(id.clone()));
            }
            let session = Arc::new(PtySession {
                created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                size: Mutex::new((options.cols, options.rows)),
                shell: Mutex::new(Shell::NotStarted),
                events: broadcast::channel(OUTPUT_BACKLOG).0,
                options,
            });
            sessions.insert(session.options.id.clone(), session.clone());
            session
        };
        if !session.options.lazy_start
            && let Err(e) = session.start(&self.env)
        {
            self.map().remove(session.id());
            return Err(e);
        }
        Ok(session)
    }

    pub fn get(&self, id: &str) -> Result<Arc<PtySession>, PtyError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| PtyError::NotFound(id.to_owned()))
    }

    pub fn list(&self) -> Vec<PtySessionInfo> {
        let mut sessions: Vec<_> = self.map().values().map(|s| s.info()).collect();
        sessions.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        sessions
    }

    /// Kills the shell's process group and forgets the session.
    pub fn kill(&self, id: &str) -> Result<(), PtyError> {
        let session = self
            .map()
            .remove(id)
            .ok_or_else(|| PtyError::NotFound(id.to_owned()))?;
        session.kill();
        Ok(())
    }

    pub fn shutdown(&self) {
        for session in self.map().drain().map(|(_, s)| s) {
            session.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_follow_the_sdk() {
        let exited = |raw: i32| ExitInfo::from_status(ExitStatus::from_raw(raw));
        assert_eq!(
            exited(0),
            ExitInfo {
                exit_code: 0,
                exit_reason: None
            }
        );
        assert_eq!(exited(3 << 8).exit_reason.as_deref(), Some("non-zero exit"));
        assert_eq!(exited(3 << 8).exit_code, 3);
        assert_eq!(exited(9).exit_reason.as_deref(), Some("SIGKILL"));
        assert_eq!(exited(9).exit_code, 137);
        assert_eq!(exited(2).exit_reason.as_deref(), Some("Ctrl+C"));
        assert_eq!(exited(15).exit_reason.as_deref(), Some("SIGTERM"));
        assert_eq!(exited(10).exit_reason.as_deref(), Some("signal 10"));
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(validate_size(80, 24).is_ok());
        assert!(validate_size(0, 24).is_err());
        assert!(validate_size(80, 1001).is_err());
    }

    #[tokio::test]
    async fn shell_round_trip_broadcasts_and_reports_exit() {
        let manager = PtyManager::new(Arc::new(ProcessEnv::from_process()));
        let session = manager
            .create(PtyOptions {
                id: "t".into(),
                cwd: std::env::temp_dir(),
                envs: [("PTY_TEST_VAR".to_string(), "hello-pty".to_string())].into(),
                cols: 80,
                rows: 24,
                lazy_start: true,
            })
            .unwrap();
        assert!(matches!(
            manager.create(PtyOptions {
                id: "t".into(),
                cwd: std::env::temp_dir(),
                envs: BTreeMap::new(),
                cols: 80,
                rows: 24,
                lazy_start: true,
            }),
            Err(PtyError::Exists(_))
        ));
        let mut first = session.attach(manager.env()).unwrap();
        let mut second = session.attach(manager.env()).unwrap();
        session.resize(100, 30).await.unwrap();
        session
            .write(b"stty size; echo \"v=$PTY_TEST_VAR\"; exit 3\n")
            .await
            .unwrap();
        for receiver in [&mut first, &mut second] {
            let mut output = Vec::new();
            let info = loop {
                match tokio::time::timeout(Duration::from_secs(10), receiver.recv())
                    .await
                    .expect("pty output")
                    .expect("channel open")
                {
                    PtyEvent::Output(b) => output.extend_from_slice(&b),
                    PtyEvent::Exited(info) => break info,
                }
            };
            let text = String::from_utf8_lossy(&output);
            assert!(text.contains("v=hello-pty"), "{text}");
            assert!(text.contains("30 100"), "{text}");
            assert_eq!(info.exit_code, 3);
        }
        assert!(!session.info().active);
        assert!(matches!(
            session.resize(80, 24).await,
            Err(PtyError::Exited(_))
        ));
    }
}
