//! One command run in a session: its multiplexed log, exit code and stdin.
//!
//! The session shell runs the command with stdout and stderr redirected to two FIFOs that the
//! daemon reads. The daemon writes every line into `output.log` behind a stream marker
//! (`\x01\x01\x01` stdout, `\x02\x02\x02` stderr) and the exit code into `exit_code` once the
//! output written before the command ended has been logged.

use std::{
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Mutex,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::unix::pipe,
    sync::{oneshot, watch},
};

pub const STDOUT_MARKER: &[u8] = b"\x01\x01\x01";
pub const STDERR_MARKER: &[u8] = b"\x02\x02\x02";

pub const LOG_FILE: &str = "output.log";
const EXIT_CODE_FILE: &str = "exit_code";
pub const STDOUT_FIFO: &str = "stdout";
pub const STDERR_FIFO: &str = "stderr";
pub const STDIN_FIFO: &str = "stdin";
pub const SCRIPT_FILE: &str = "command.sh";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn marker(self) -> &'static [u8] {
        match self {
            Stream::Stdout => STDOUT_MARKER,
            Stream::Stderr => STDERR_MARKER,
        }
    }
}

/// Writes stream chunks into the log, putting a marker at each line start and stream switch.
#[derive(Debug)]
struct LogMux {
    file: File,
    last: Option<Stream>,
    at_line_start: bool,
}

impl LogMux {
    fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<usize> {
        let mut written = 0;
        while !data.is_empty() {
            if self.at_line_start || self.last != Some(stream) {
                self.file.write_all(stream.marker())?;
                written += stream.marker().len();
                self.last = Some(stream);
            }
            let end = data
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| i + 1);
            self.file.write_all(&data[..end])?;
            written += end;
            self.at_line_start = data[end - 1] == b'\n';
            data = &data[end..];
        }
        Ok(written)
    }
}

/// A command of a session, shared by the pump task and the HTTP handlers.
#[derive(Debug)]
pub struct SessionCommand {
    pub id: String,
    pub command: String,
    dir: PathBuf,
    log: Mutex<LogMux>,
    /// Bytes in the log so far; followers wake on changes.
    log_len: watch::Sender<u64>,
    /// Set once the command ended and its output up to that point is logged.
    exit_code: watch::Sender<Option<i32>>,
    /// Write end of the command's stdin FIFO (async commands only).
    input: tokio::sync::Mutex<Option<pipe::Sender>>,
    echo_input: bool,
}

impl SessionCommand {
    /// Creates the command directory with its script, log and FIFOs.
    pub fn create(id: String, command: String, dir: PathBuf, echo_input: bool) -> io::Result<Self> {
        std::fs::create_dir(&dir)?;
        let mut script = command.clone();
        if !script.ends_with('\n') {
            script.push('\n');
        }
        std::fs::write(dir.join(SCRIPT_FILE), script)?;
        for fifo in [STDOUT_FIFO, STDERR_FIFO, STDIN_FIFO] {
            nix::unistd::mkfifo(&dir.join(fifo), nix::sys::stat::Mode::S_IRWXU)
                .map_err(io::Error::from)?;
        }
        let file = File::create(dir.join(LOG_FILE))?;
        Ok(Self {
            id,
            command,
            dir,
            log: Mutex::new(LogMux {
                file,
                last: None,
                at_line_start: true,
            }),
            log_len: watch::channel(0).0,
            exit_code: watch::channel(None).0,
            input: tokio::sync::Mutex::new(None),
            echo_input,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    pub fn exit_code(&self) -> Option<i32> {
        *self.exit_code.borrow()
    }

    pub fn subscribe_exit(&self) -> watch::Receiver<Option<i32>> {
        self.exit_code.subscribe()
    }

    pub fn subscribe_log(&self) -> watch::Receiver<u64> {
        self.log_len.subscribe()
    }

    /// Waits until the command ended and its output is logged.
    pub async fn wait(&self) -> i32 {
        let mut rx = self.exit_code.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(-1),
            // The sender lives in `self`, so it cannot be gone while we borrow it.
            Err(_) => -1,
        }
    }

    pub async fn read_log(&self) -> io::Result<Vec<u8>> {
        tokio::fs::read(self.log_path()).await
    }

    fn append(&self, stream: Stream, data: &[u8]) {
        // Writes go to the page cache; a blocking-pool hop per chunk would cost more.
        let result = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(stream, data);
        match result {
            Ok(n) => self.log_len.send_modify(|len| *len += n as u64),
            Err(e) => tracing::warn!(command = %self.id, "cannot write command log: {e}"),
        }
    }

    fn finish(&self, code: i32) {
        if let Err(e) = std::fs::write(self.dir.join(EXIT_CODE_FILE), code.to_string()) {
            tracing::warn!(command = %self.id, "cannot write exit code file: {e}");
        }
        self.exit_code.send_replace(Some(code));
    }

    /// Keeps the stdin FIFO open so the command reads what `/input` sends.
    pub async fn attach_input(&self, sender: pipe::Sender) {
        *self.input.lock().await = Some(sender);
    }

    /// Sends `data` to the command's stdin, echoing it into the log unless suppressed.
    pub async fn send_input(&self, data: &str) -> Result<(), InputError> {
        if self.exit_code().is_some() {
            return Err(InputError::Completed);
        }
        let mut input = self.input.lock().await;
        let sender = input.as_mut().ok_or(InputError::NoStdin)?;
        // Echo first: the command may answer before the write call returns.
        if self.echo_input {
            self.append(Stream::Stdout, data.as_bytes());
        }
        sender
            .write_all(data.as_bytes())
            .await
            .map_err(InputError::Io)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("command already completed")]
    Completed,
    #[error("command was not started with runAsync, so it has no stdin to write to")]
    NoStdin,
    #[error("cannot write to the command's stdin: {0}")]
    Io(io::Error),
}

/// Read ends of a command's output FIFOs plus the write ends the daemon holds so that reads
/// never see EOF before the shell opened them.
pub struct OutputPipes {
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    keepalive: (pipe::Sender, pipe::Sender),
}

impl OutputPipes {
    /// Opens the FIFOs in `dir`; the read end is opened first so our write ends can open
    /// without blocking and the reader later sees EOF once every writer is gone.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let reader = pipe::OpenOptions::new();
        let stdout = reader.open_receiver(dir.join(STDOUT_FIFO))?;
        let stderr = reader.open_receiver(dir.join(STDERR_FIFO))?;
        let writer = pipe::OpenOptions::new();
        let keepalive = (
            writer.open_sender(dir.join(STDOUT_FIFO))?,
            writer.open_sender(dir.join(STDERR_FIFO))?,
        );
        Ok(Self {
            stdout,
            stderr,
            keepalive,
        })
    }
}

/// Copies the command's output into its log until every writer is gone; records the exit code
/// as soon as `done` reports it and the output written so far is logged.
///
/// Background jobs that inherited the FIFOs keep appending after the exit code is known, as
/// they would to a log file.
pub async fn pump(
    command: std::sync::Arc<SessionCommand>,
    pipes: OutputPipes,
    done: oneshot::Receiver<i32>,
) {
    let OutputPipes {
        stdout,
        stderr,
        keepalive,
    } = pipes;
    let mut keepalive = Some(keepalive);
    let mut done = done;
    let mut finished = false;
    let (mut out_open, mut err_open) = (true, true);
    let mut out_buf = vec![0u8; 64 * 1024];
    let mut err_buf = vec![0u8; 64 * 1024];
    let mut stdout = stdout;
    let mut stderr = stderr;

    while !finished || out_open || err_open {
        tokio::select! {
            read = stdout.read(&mut out_buf), if out_open => match read {
                Ok(n) if n > 0 => command.append(Stream::Stdout, &out_buf[..n]),
                _ => out_open = false,
            },
            read = stderr.read(&mut err_buf), if err_open => match read {
                Ok(n) if n > 0 => command.append(Stream::Stderr, &err_buf[..n]),
                _ => err_open = false,
            },
            code = &mut done, if !finished => {
                // Everything the command wrote before it ended is already in the pipes.
                if out_open {
                    out_open = drain(&stdout, &mut out_buf, |d| command.append(Stream::Stdout, d));
                }
                if err_open {
                    err_open = drain(&stderr, &mut err_buf, |d| command.append(Stream::Stderr, d));
                }
                finished = true;
                keepalive = None;
                command.finish(code.unwrap_or(-1));
            }
        }
    }
    drop(keepalive);
}

/// Reads what is buffered without waiting; returns whether the pipe is still open.
fn drain(receiver: &pipe::Receiver, buf: &mut [u8], mut sink: impl FnMut(&[u8])) -> bool {
    loop {
        match receiver.try_read(buf) {
            Ok(0) => return false,
            Ok(n) => sink(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Splits a marked log into (stdout, stderr). Bytes before any marker count as stdout.
pub fn demux(log: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut current = Stream::Stdout;
    let mut i = 0;
    while i < log.len() {
        let rest = &log[i..];
        if rest.starts_with(STDOUT_MARKER) {
            current = Stream::Stdout;
            i += STDOUT_MARKER.len();
        } else if rest.starts_with(STDERR_MARKER) {
            current = Stream::Stderr;
            i += STDERR_MARKER.len();
        } else {
            let next = rest
                .iter()
                .position(|&b| b == STDOUT_MARKER[0] || b == STDERR_MARKER[0])
                .map_or(rest.len(), |p| p.max(1));
            match current {
                Stream::Stdout => out.extend_from_slice(&rest[..next]),
                Stream::Stderr => err.extend_from_slice(&rest[..next]),
            }
            i += next;
        }
    }
    (out, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mux_marks_lines_and_switches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut mux = LogMux {
            file: File::create(&path).unwrap(),
            last: None,
            at_line_start: true,
        };
        mux.write(Stream::Stdout, b"a\nb").unwrap();
        mux.write(Stream::Stderr, b"e\n").unwrap();
        mux.write(Stream::Stdout, b"c\n").unwrap();
        let log = std::fs::read(&path).unwrap();
        assert_eq!(
            log,
            b"\x01\x01\x01a\n\x01\x01\x01b\x02\x02\x02e\n\x01\x01\x01c\n"
        );
        let (out, err) = demux(&log);
        assert_eq!(out, b"a\nbc\n");
        assert_eq!(err, b"e\n");
    }

    #[test]
    fn demux_keeps_lone_marker_bytes() {
        let (out, err) = demux(b"\x01x\x02\x02\x02y");
        assert_eq!(out, b"\x01x");
        assert_eq!(err, b"y");
    }
}
