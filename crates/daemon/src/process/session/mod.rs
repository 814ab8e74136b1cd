//! Sessions: long-lived shells whose state (`cd`, `export`, functions) persists across commands.
//!
//! Each command is written to `<session dir>/<command id>/command.sh` and the shell is told,
//! on its stdin, to source it with stdout/stderr on FIFOs read by the daemon, then to print
//! `<token> <command id> <status>` on its own stdout, which the daemon watches. Sourcing keeps
//! the command in the shell process (so state persists) and heredocs and quoting intact;
//! `{ command . file; } <redirections>` makes syntax and redirection errors fail the command
//! instead of exiting the shell (a POSIX shell exits on errors of a bare special built-in).

mod command;
pub mod routes;

use std::{
    collections::HashMap,
    io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::unix::pipe,
    process::{Child, ChildStdin, Command},
    sync::{oneshot, watch},
};

pub use command::{InputError, STDERR_MARKER, STDOUT_MARKER, SessionCommand, demux};
use command::{OutputPipes, SCRIPT_FILE, STDERR_FIFO, STDIN_FIFO, STDOUT_FIFO};

use super::shell::{self, quote};
use crate::{environment::ProcessEnv, error::ApiError, ids::random_id};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session already exists: {0}")]
    Exists(String),
    #[error("session not found: {0}")]
    NotFound(String),
    #[error("command not found: {0}")]
    CommandNotFound(String),
    #[error("session {0} has ended; its shell exited")]
    Ended(String),
    #[error("invalid session id: {0}")]
    InvalidId(String),
    #[error("session I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> Self {
        use crate::error::ErrorCode;
        let message = err.to_string();
        match err {
            SessionError::Exists(_) => ApiError::conflict(message),
            SessionError::NotFound(_) | SessionError::CommandNotFound(_) => {
                ApiError::not_found(message)
            }
            SessionError::Ended(_) => ApiError::gone(ErrorCode::SessionEnded, message),
            SessionError::InvalidId(_) => ApiError::bad_request(message),
            SessionError::Io(_) => ApiError::internal(message),
        }
    }
}

/// All sessions of the daemon.
#[derive(Debug)]
pub struct SessionManager {
    root: PathBuf,
    work_dir: PathBuf,
    env: Arc<ProcessEnv>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl SessionManager {
    /// Uses `root` (created 0700, emptied first: leftovers belong to a previous daemon).
    pub fn new(root: PathBuf, work_dir: PathBuf, env: Arc<ProcessEnv>) -> io::Result<Self> {
        match std::fs::remove_dir_all(&root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)?;
        Ok(Self {
            root,
            work_dir,
            env,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn create(&self, id: &str) -> Result<(), SessionError> {
        if id.is_empty() || id.len() > 256 || id.contains('/') {
            return Err(SessionError::InvalidId(id.to_owned()));
        }
        let mut sessions = self.map();
        if sessions.contains_key(id) {
            return Err(SessionError::Exists(id.to_owned()));
        }
        let session = Session::start(id, self.root.join(random_id()), &self.work_dir, &self.env)?;
        sessions.insert(id.to_owned(), session);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))
    }

    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut sessions: Vec<_> = self.map().values().cloned().collect();
        sessions.sort_by(|a, b| a.id.cmp(&b.id));
        sessions
    }

    pub fn delete(&self, id: &str) -> Result<(), SessionError> {
        let session = self
            .map()
            .remove(id)
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        session.terminate();
        Ok(())
    }

    /// Kills every session (daemon shutdown).
    pub fn shutdown(&self) {
        for (_, session) in self.map().drain() {
            session.terminate();
        }
    }
}

/// A long-lived shell.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    dir: PathBuf,
    /// Random per session so command output can never fake a completion line.
    token: String,
    pgid: Option<Pid>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    commands: Mutex<Vec<Arc<SessionCommand>>>,
    /// Completion senders of commands the shell has not finished yet.
    pending: Mutex<HashMap<String, oneshot::Sender<i32>>>,
    /// The shell's exit status once it has exited.
    ended: watch::Sender<Option<i32>>,
}

impl Session {
    fn start(id: &str, dir: PathBuf, work_dir: &Path, env: &ProcessEnv) -> io::Result<Arc<Self>> {
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let mut shell = Command::new(shell::find_session_shell());
        env.apply(&mut shell);
        let mut child = shell
            .current_dir(work_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        let session = Arc::new(Self {
            id: id.to_owned(),
            dir,
            token: format!("__daytona_done_{}", random_id()),
            pgid,
            stdin: tokio::sync::Mutex::new(child.stdin.take()),
            commands: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            ended: watch::channel(None).0,
        });
        tokio::spawn(watch_shell(session.clone(), child));
        Ok(session)
    }

    pub fn commands(&self) -> Vec<Arc<SessionCommand>> {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn command(&self, id: &str) -> Result<Arc<SessionCommand>, SessionError> {
        self.commands()
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| SessionError::CommandNotFound(id.to_owned()))
    }

    /// Queues `command_text` on the shell; returns once the shell has it.
    ///
    /// `interactive` keeps the command's stdin open for `/input` (async commands); otherwise
    /// stdin is `/dev/null`.
    pub async fn exec(
        &self,
        command_text: String,
        interactive: bool,
        echo_input: bool,
    ) -> Result<Arc<SessionCommand>, SessionError> {
        if self.ended.borrow().is_some() {
            return Err(SessionError::Ended(self.id.clone()));
        }
        let id = random_id();
        let command = Arc::new(SessionCommand::create(
            id.clone(),
            command_text,
            self.dir.join(&id),
            echo_input,
        )?);
        let pipes = OutputPipes::open(command.dir())?;
        let stdin_path = if interactive {
            // Read-write keeps the FIFO openable by the shell without waiting for a writer.
            let sender = pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(command.dir().join(STDIN_FIFO))?;
            command.attach_input(sender).await;
            command.dir().join(STDIN_FIFO)
        } else {
            PathBuf::from("/dev/null")
        };

        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(command::pump(command.clone(), pipes, done_rx));

        let dir = command.dir();
        let line = format!(
            "{{ command . {script}; }} < {stdin} > {stdout} 2> {stderr}; printf '%s %s %d\\n' {token} {id} \"$?\"\n",
            script = quote_path(&dir.join(SCRIPT_FILE)),
            stdin = quote_path(&stdin_path),
            stdout = quote_path(&dir.join(STDOUT_FIFO)),
            stderr = quote_path(&dir.join(STDERR_FIFO)),
            token = self.token,
        );
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), done_tx);
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command.clone());

        let mut stdin = self.stdin.lock().await;
        let written = match stdin.as_mut() {
            Some(stdin) => stdin.write_all(line.as_bytes()).await,
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        if written.is_err() {
            // The shell is gone; watch_shell completes the pending command.
            self.complete(&id, self.ended.borrow().unwrap_or(-1));
            return Err(SessionError::Ended(self.id.clone()));
        }
        Ok(command)
    }

    fn complete(&self, command_id: &str, code: i32) {
        let sender = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(command_id);
        if let Some(sender) = sender {
            let _ = sender.send(code);
        }
    }

    /// Kills the shell and everything it started, and removes the session's files.
    fn terminate(&self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let dir = self.dir.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                tracing::debug!("cannot remove session dir {}: {e}", dir.display());
            }
        });
    }
}

fn quote_path(path: &Path) -> String {
    quote(&path.to_string_lossy())
}

/// Completes commands as the shell reports them; when the shell exits, completes the rest
/// with its exit status.
async fn watch_shell(session: Arc<Session>, mut child: Child) {
    if let Some(mut stderr) = child.stderr.take() {
        let id = session.id.clone();
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            if !text.is_empty() {
                tracing::debug!(session = %id, "session shell stderr: {}", text.trim_end());
            }
        });
    }
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut fields = line.split(' ');
            if let (Some(token), Some(command_id), Some(code)) =
                (fields.next(), fields.next(), fields.next())
                && token == session.token
            {
                session.complete(command_id, code.trim().parse().unwrap_or(-1));
            }
        }
    }
    let status = child.wait().await.map(shell::exit_code).unwrap_or(-1);
    session.ended.send_replace(Some(status));
    *session.stdin.lock().await = None;
    let pending: Vec<_> = session
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for (_, sender) in pending {
        let _ = sender.send(status);
    }
}
