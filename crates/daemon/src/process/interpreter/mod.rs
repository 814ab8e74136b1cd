//! Interpreter contexts: long-lived Python processes whose state persists across executions.
//!
//! Each context runs `worker.py`. Requests go to its stdin; program output is read from its
//! stdout/stderr pipes and control messages (errors, completion) from a third pipe on fd 3.
//! Executions in one context are queued FIFO (a fair async mutex around the worker). A timeout
//! or a vanished client interrupts the code with SIGINT; only if it ignores that for
//! [`INTERRUPT_GRACE`] is the process killed and replaced, which loses the context's state and
//! is reported in an error frame.

pub mod routes;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines},
    net::unix::pipe,
    process::{Child, ChildStdin, Command},
    sync::mpsc,
    time::Instant,
};

use crate::{environment::ProcessEnv, ids::random_id};

const WORKER: &str = include_str!("worker.py");
/// How long interrupted code may take to stop before its process is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
pub const DEFAULT_CONTEXT: &str = "default";
/// The fd the worker writes control messages to.
const CONTROL_FD: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum InterpreterError {
    #[error("context not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot start python3 for the context: {0}")]
    Spawn(io::Error),
}

/// One message to the client; every frame carries all five keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub traceback: String,
}

impl Frame {
    pub fn output(kind: &str, data: &[u8]) -> Self {
        Self {
            kind: kind.to_owned(),
            text: String::from_utf8_lossy(data).into_owned(),
            ..Self::default()
        }
    }

    pub fn control(text: &str) -> Self {
        Self {
            kind: "control".to_owned(),
            text: text.to_owned(),
            ..Self::default()
        }
    }

    pub fn error(name: &str, value: String) -> Self {
        Self {
            kind: "error".to_owned(),
            name: name.to_owned(),
            value,
            ..Self::default()
        }
    }
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Interrupted by the client going away.
    Interrupted,
    TimedOut,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextInfo {
    pub id: String,
    pub cwd: String,
    pub created_at: String,
    pub active: bool,
    pub language: String,
}

/// A running worker process.
#[derive(Debug)]
struct Worker {
    child: Child,
    pid: Pid,
    stdin: ChildStdin,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    control: Lines<BufReader<pipe::Receiver>>,
}

impl Worker {
    fn spawn(cwd: &PathBuf, env: &ProcessEnv) -> io::Result<Self> {
        let (stdout_rx, stdout_tx) = io::pipe()?;
        let (stderr_rx, stderr_tx) = io::pipe()?;
        let (control_rx, control_tx) = io::pipe()?;
        let control_fd = control_tx.as_raw_fd();
        let mut command = Command::new("python3");
        env.apply(&mut command);
        command
            .args(["-u", "-c", WORKER])
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(stdout_tx)
            .stderr(stderr_tx)
            // Own group: an interrupt or kill reaches what the code started, not the daemon.
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if control_fd == CONTROL_FD {
                    // Already in place; dup2 would be a no-op that keeps close-on-exec.
                    if libc::fcntl(CONTROL_FD, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(control_fd, CONTROL_FD) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        // Our copies of the write ends must go, or the readers never see EOF.
        drop(command);
        drop(control_tx);
        let pid = Pid::from_raw(
            child
                .id()
                .ok_or_else(|| io::Error::other("python3 exited at once"))? as i32,
        );
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin pipe"))?;
        let receiver = |fd: io::PipeReader| pipe::Receiver::from_owned_fd(OwnedFd::from(fd));
        Ok(Self {
            child,
            pid,
            stdin,
            stdout: receiver(stdout_rx)?,
            stderr: receiver(stderr_rx)?,
            control: BufReader::new(receiver(control_rx)?).lines(),
        })
    }

    fn kill(&mut self) {
        let _ = killpg(self.pid, Signal::SIGKILL);
        let _ = self.child.start_kill();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads whatever is already in a pipe without waiting (and without relying on the async
/// reactor having seen it yet): the worker flushes before every control message, so this
/// delivers all output printed before it.
fn drain_now(receiver: &pipe::Receiver, kind: &str, frames: &mut Vec<Frame>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match nix::unistd::read(receiver, &mut buf) {
            Ok(0) => return,
            Ok(n) => frames.push(Frame::output(kind, &buf[..n])),
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

#[derive(Debug, Serialize)]
struct Request<'a> {
    code: &'a str,
    envs: &'a BTreeMap<String, String>,
}

/// One interpreter context.
#[derive(Debug)]
pub struct Context {
    id: String,
    cwd: PathBuf,
    created_at: String,
    env: Arc<ProcessEnv>,
    /// `None` until first use or after the process had to be killed.
    worker: tokio::sync::Mutex<Option<Worker>>,
}

impl Context {
    pub fn info(&self) -> ContextInfo {
        ContextInfo {
            id: self.id.clone(),
            cwd: self.cwd.to_string_lossy().into_owned(),
            created_at: self.created_at.clone(),
            active: true,
            language: "python".to_owned(),
        }
    }

    /// Runs `code` after every earlier execution in this context, sending frames to `frames`.
    /// A closed `frames` means the client left, which interrupts the code.
    pub async fn execute(
        &self,
        code: &str,
        envs: &BTreeMap<String, String>,
        timeout: Option<Duration>,
        frames: mpsc::Sender<Frame>,
    ) -> Outcome {
        let mut slot = self.worker.lock().await;
        if let Some(worker) = slot.as_mut()
            && let Ok(Some(status)) = worker.child.try_wait()
        {
            tracing::warn!(context = %self.id, %status, "interpreter process had exited");
            *slot = None;
            let _ = frames
                .send(Frame::error(
                    "ContextRestarted",
                    format!(
                        "the context's Python process had exited ({status}); it was restarted and earlier state is lost"
                    ),
                ))
                .await;
        }
        if slot.is_none() {
            match Worker::spawn(&self.cwd, &self.env) {
                Ok(worker) => *slot = Some(worker),
                Err(e) => {
                    let _ = frames
                        .send(Frame::error(
                            "InterpreterUnavailable",
                            format!("cannot start python3: {e}"),
                        ))
                        .await;
                    return Outcome::Completed;
                }
            }
        }
        let worker = slot.as_mut().expect("worker started above");
        let (outcome, healthy) = run_on(worker, code, envs, timeout, &frames).await;
        if !healthy {
            *slot = None;
            let _ = frames
                .send(Frame::error(
                    "ContextRestarted",
                    format!(
                        "the code did not stop within {}s of the interrupt, so the context's Python process was killed; \
                         it restarts on the next execution and earlier state is lost",
                        INTERRUPT_GRACE.as_secs()
                    ),
                ))
                .await;
        }
        outcome
    }
}

/// Drives one execution; the bool is false when the worker had to be killed or died.
async fn run_on(
    worker: &mut Worker,
    code: &str,
    envs: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    frames: &mpsc::Sender<Frame>,
) -> (Outcome, bool) {
    let mut line = serde_json::to_vec(&Request { code, envs }).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = worker.stdin.write_all(&line).await {
        let _ = frames
            .send(Frame::error(
                "ContextRestarted",
                format!("the context's Python process is gone: {e}"),
            ))
            .await;
        return (Outcome::Completed, false);
    }
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut deadline = timeout.map_or(far, |t| Instant::now() + t);
    let mut interrupted: Option<Outcome> = None;
    let mut out_buf = vec![0u8; 32 * 1024];
    let mut err_buf = vec![0u8; 32 * 1024];
    loop {
        let mut pending = Vec::new();
        tokio::select! {
            message = worker.control.next_line() => {
                drain_now(&worker.stdout, "stdout", &mut pending);
                drain_now(&worker.stderr, "stderr", &mut pending);
                for frame in pending.drain(..) {
                    let _ = frames.send(frame).await;
                }
                match message {
                    Ok(Some(text)) => match serde_json::from_str::<Frame>(&text) {
                        Ok(frame) if frame.kind == "done" => {
                            let outcome = interrupted.unwrap_or(Outcome::Completed);
                            let status = if outcome == Outcome::Completed { "completed" } else { "interrupted" };
                            let _ = frames.send(Frame::control(status)).await;
                            return (outcome, true);
                        }
                        Ok(frame) => { let _ = frames.send(frame).await; }
                        Err(e) => tracing::warn!("unreadable interpreter control message: {e}"),
                    },
                    // The worker died mid-execution (e.g. os._exit or the OOM killer).
                    _ => return (interrupted.unwrap_or(Outcome::Completed), false),
                }
            }
            read = worker.stdout.read(&mut out_buf) => {
                if let Ok(n @ 1..) = read {
                    let _ = frames.send(Frame::output("stdout", &out_buf[..n])).await;
                }
            }
            read = worker.stderr.read(&mut err_buf) => {
                if let Ok(n @ 1..) = read {
                    let _ = frames.send(Frame::output("stderr", &err_buf[..n])).await;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if interrupted.is_some() {
                    worker.kill();
                    return (interrupted.unwrap_or(Outcome::TimedOut), false);
                }
                interrupted = Some(Outcome::TimedOut);
                let _ = kill(worker.pid, Signal::SIGINT);
                deadline = Instant::now() + INTERRUPT_GRACE;
            }
            _ = frames.closed(), if interrupted.is_none() => {
                interrupted = Some(Outcome::Interrupted);
                let _ = kill(worker.pid, Signal::SIGINT);
                deadline = Instant::now() + INTERRUPT_GRACE;
            }
        }
    }
}

/// All contexts, including the lazily created `default`.
#[derive(Debug)]
pub struct InterpreterManager {
    work_dir: PathBuf,
    env: Arc<ProcessEnv>,
    contexts: Mutex<HashMap<String, Arc<Context>>>,
}

impl InterpreterManager {
    pub fn new(work_dir: PathBuf, env: Arc<ProcessEnv>) -> Self {
        Self {
            work_dir,
            env,
            contexts: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Context>>> {
        self.contexts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_context(&self, id: String, cwd: PathBuf) -> Arc<Context> {
        Arc::new(Context {
            id,
            cwd,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            env: self.env.clone(),
            worker: tokio::sync::Mutex::new(None),
        })
    }

    /// Creates a context and starts its process, so a missing python3 is reported now.
    pub async fn create(
        &self,
        cwd: Option<&str>,
        language: Option<&str>,
    ) -> Result<ContextInfo, InterpreterError> {
        if let Some(language) = language.filter(|l| !l.is_empty() && *l != "python") {
            return Err(InterpreterError::Invalid(format!(
                "language: unsupported language {language:?} (only python has contexts)"
            )));
        }
        let cwd = super::shell::resolve_cwd(&self.work_dir, cwd);
        if !cwd.is_dir() {
            return Err(InterpreterError::Invalid(format!(
                "cwd: not a directory: {}",
                cwd.display()
            )));
        }
        let context = self.new_context(random_id(), cwd);
        let worker = Worker::spawn(&context.cwd, &self.env).map_err(InterpreterError::Spawn)?;
        *context.worker.lock().await = Some(worker);
        self.map().insert(context.id.clone(), context.clone());
        Ok(context.info())
    }

    /// The context to run in: `default` (created on first use) when none is named.
    pub fn resolve(&self, id: Option<&str>) -> Result<Arc<Context>, InterpreterError> {
        let id = id.filter(|i| !i.is_empty()).unwrap_or(DEFAULT_CONTEXT);
        let mut contexts = self.map();
        if let Some(context) = contexts.get(id) {
            return Ok(context.clone());
        }
        if id != DEFAULT_CONTEXT {
            return Err(InterpreterError::NotFound(id.to_owned()));
        }
        let context = self.new_context(DEFAULT_CONTEXT.to_owned(), self.work_dir.clone());
        contexts.insert(id.to_owned(), context.clone());
        Ok(context)
    }

    /// User-created contexts (not `default`), oldest first.
    pub fn list(&self) -> Vec<ContextInfo> {
        let mut list: Vec<_> = self
            .map()
            .values()
            .filter(|c| c.id != DEFAULT_CONTEXT)
            .map(|c| c.info())
            .collect();
        list.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        list
    }

    /// Forgets the context; its process is killed when the last execution using it ends.
    pub fn delete(&self, id: &str) -> Result<(), InterpreterError> {
        if id == DEFAULT_CONTEXT {
            return Err(InterpreterError::Invalid(
                "the default context cannot be deleted".to_owned(),
            ));
        }
        let context = self
            .map()
            .remove(id)
            .ok_or_else(|| InterpreterError::NotFound(id.to_owned()))?;
        // Kill now if idle; a running execution holds the lock and the drop kills it later.
        if let Ok(mut worker) = context.worker.try_lock() {
            worker.take();
        }
        Ok(())
    }

    pub fn shutdown(&self) {
        for context in self.map().drain().map(|(_, c)| c) {
            if let Ok(mut worker) = context.worker.try_lock() {
                worker.take();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager() -> InterpreterManager {
        InterpreterManager::new(std::env::temp_dir(), Arc::new(ProcessEnv::from_process()))
    }

    async fn run(
        context: &Context,
        code: &str,
        timeout: Option<Duration>,
    ) -> (Vec<Frame>, Outcome) {
        let (tx, mut rx) = mpsc::channel(64);
        let collector = tokio::spawn(async move {
            let mut frames = Vec::new();
            while let Some(frame) = rx.recv().await {
                frames.push(frame);
            }
            frames
        });
        let outcome = context.execute(code, &BTreeMap::new(), timeout, tx).await;
        (collector.await.unwrap(), outcome)
    }

    fn text(frames: &[Frame], kind: &str) -> String {
        frames
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.text.as_str())
            .collect()
    }

    #[tokio::test]
    async fn state_persists_and_errors_are_reported() {
        let manager = manager();
        let context = manager.resolve(None).unwrap();
        let (frames, _) = run(&context, "x = 41\nprint('set')", None).await;
        assert_eq!(text(&frames, "stdout"), "set\n");
        let (frames, outcome) = run(&context, "print('before')\nx + 1", None).await;
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(text(&frames, "stdout"), "before\n42\n");
        assert_eq!(frames.last().unwrap(), &Frame::control("completed"));
        let (frames, _) = run(
            &context,
            "import sys\nprint('out')\nprint('err', file=sys.stderr)\n1/0",
            None,
        )
        .await;
        assert_eq!(text(&frames, "stderr"), "err\n");
        let error = frames
            .iter()
            .find(|f| f.kind == "error")
            .expect("error frame");
        assert_eq!(error.name, "ZeroDivisionError");
        assert!(error.traceback.contains("<cell "), "{}", error.traceback);
        assert!(error.traceback.contains("1/0"), "{}", error.traceback);
        assert!(!error.traceback.contains("in _run"), "{}", error.traceback);
        // Output printed before the error arrives before it.
        let out_at = frames.iter().position(|f| f.kind == "stdout").unwrap();
        let err_at = frames.iter().position(|f| f.kind == "error").unwrap();
        assert!(out_at < err_at);
    }

    #[tokio::test]
    async fn timeout_interrupts_without_losing_state() {
        let manager = manager();
        let context = manager.resolve(None).unwrap();
        run(&context, "kept = 'yes'", None).await;
        let (frames, outcome) = run(
            &context,
            "import time\nwhile True: time.sleep(0.05)",
            Some(Duration::from_millis(300)),
        )
        .await;
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(
            frames.iter().any(|f| f.name == "KeyboardInterrupt"),
            "{frames:?}"
        );
        let (frames, _) = run(&context, "print(kept)", None).await;
        assert_eq!(text(&frames, "stdout"), "yes\n");
    }

    #[tokio::test]
    async fn code_ignoring_interrupts_is_killed_and_restarted() {
        let manager = manager();
        let context = manager.resolve(None).unwrap();
        run(&context, "kept = 1", None).await;
        let stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.05)";
        let (frames, outcome) = run(&context, stubborn, Some(Duration::from_millis(200))).await;
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(
            frames.iter().any(|f| f.name == "ContextRestarted"),
            "{frames:?}"
        );
        let (frames, _) = run(&context, "print('kept' in globals())", None).await;
        assert_eq!(text(&frames, "stdout"), "False\n");
    }

    #[tokio::test]
    async fn unknown_and_default_contexts() {
        let manager = manager();
        assert!(matches!(
            manager.resolve(Some("nope")),
            Err(InterpreterError::NotFound(_))
        ));
        assert!(matches!(
            manager.delete(DEFAULT_CONTEXT),
            Err(InterpreterError::Invalid(_))
        ));
        let info = manager.create(None, Some("python")).await.unwrap();
        assert_eq!(manager.list().len(), 1);
        manager.resolve(None).unwrap();
        assert_eq!(manager.list().len(), 1, "default is not listed");
        manager.delete(&info.id).unwrap();
        assert!(manager.list().is_empty());
        assert!(manager.create(None, Some("ruby")).await.is_err());
    }
}
