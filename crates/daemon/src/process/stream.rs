//! `GET /process/stream` (WebSocket): one process with live stdin/stdout/stderr, optionally on a
//! pseudo-terminal. The SSH gateway runs shells, commands and the SFTP server through it.
//!
//! Protocol: the client's first message is a text frame with a JSON [`StreamStart`]. Then client
//! binary frames are stdin; client text frames are JSON controls (`{"type":"resize","cols":..,
//! "rows":..}`, `{"type":"eof"}`). The daemon sends binary frames whose first byte names the
//! stream (1 stdout, 2 stderr; a terminal has only 1) and, when the process has exited and its
//! output is drained, a text frame `{"type":"exit","code":N}` before closing. Closing the socket
//! early kills the process group.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use nix::pty::{Winsize, openpty};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::shell;
use crate::server::AppState;

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// Output still collected after the process exited (background jobs may hold the pipes).
const OUTPUT_GRACE: Duration = Duration::from_millis(300);
const CHUNK: usize = 32 * 1024;

#[derive(Debug, Deserialize)]
pub struct StreamStart {
    /// Run with `$SHELL -c`; `None` starts an interactive login shell.
    pub command: Option<String>,
    /// Allocate a terminal of this size.
    pub pty: Option<PtySize>,
    #[serde(default)]
    pub env: HashMap<String, String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Control {
    Resize { cols: u16, rows: u16 },
    Eof,
}

pub async fn stream(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| async move {
        if let Err(e) = run(state, socket).await {
            tracing::debug!(error = %e, "process stream ended with an error");
        }
    })
}

fn winsize(size: PtySize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);

enum Input {
    Data(Vec<u8>),
    Eof,
}

async fn run(state: AppState, socket: WebSocket) -> std::io::Result<()> {
    let (mut tx, mut rx) = socket.split();
    let start: StreamStart = loop {
        match rx.next().await {
            Some(Ok(Message::Text(text))) => {
                break serde_json::from_str(&text).map_err(std::io::Error::other)?;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return Ok(()),
        }
    };
    shell::validate_env(start.env.keys()).map_err(|e| std::io::Error::other(e.to_string()))?;

    let sh = shell::find_shell();
    let mut cmd = Command::new(&sh);
    match &start.command {
        Some(c) => cmd.arg("-c").arg(c),
        None => cmd.arg("-l"),
    };
    // The sandbox's environment (including `POST /env` changes), then the caller's.
    state.env().apply(&mut cmd);
    cmd.current_dir(&state.config().home_dir)
        .env("SHELL", &sh)
        .envs(&start.env)
        .kill_on_drop(true);

    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    let mut master_for_resize: Option<OwnedFd> = None;
    let mut child = if let Some(size) = start.pty {
        let pty = openpty(Some(&winsize(size)), None).map_err(std::io::Error::from)?;
        let slave = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        if !start.env.contains_key("TERM") {
            cmd.env("TERM", "xterm-256color");
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let reader = tokio::fs::File::from_std(std::fs::File::from(pty.master.try_clone()?));
        let writer = tokio::fs::File::from_std(std::fs::File::from(pty.master.try_clone()?));
        master_for_resize = Some(pty.master);
        tokio::spawn(pump_output(reader, STDOUT, out_tx));
        tokio::spawn(pump_input(writer, in_rx, Some(EOT)));
        child
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        if let (Some(stdin), Some(stdout), Some(stderr)) = (stdin, stdout, stderr) {
            tokio::spawn(pump_output(stdout, STDOUT, out_tx.clone()));
            tokio::spawn(pump_output(stderr, STDERR, out_tx));
            tokio::spawn(pump_input(stdin, in_rx, None));
        }
        child
    };
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));

    let mut exit: Option<i32> = None;
    let mut output_open = true;
    let mut client_open = true;
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    // Until the process has exited and its output is drained (or the grace period is over).
    while exit.is_none() || output_open {
        tokio::select! {
            status = child.wait(), if exit.is_none() => {
                exit = Some(status.map(shell::exit_code).unwrap_or(-1));
                grace.as_mut().reset(tokio::time::Instant::now() + OUTPUT_GRACE);
            }
            chunk = out_rx.recv(), if output_open => match chunk {
                Some((stream, mut data)) => {
                    data.insert(0, stream);
                    if tx.send(Message::Binary(data.into())).await.is_err() {
                        client_open = false;
                        break;
                    }
                }
                None => output_open = false,
            },
            msg = rx.next(), if client_open => match msg {
                Some(Ok(Message::Binary(data))) => { let _ = in_tx.send(Input::Data(data.to_vec())).await; }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Control>(&text) {
                    Ok(Control::Eof) => { let _ = in_tx.send(Input::Eof).await; }
                    Ok(Control::Resize { cols, rows }) => {
                        if let Some(master) = &master_for_resize {
                            // SAFETY: a valid pty master fd and a valid Winsize.
                            let _ = unsafe { set_winsize(master.as_raw_fd(), &winsize(PtySize { cols, rows })) };
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring unknown control message"),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => { client_open = false; break; }
            },
            () = &mut grace, if exit.is_some() => break,
        }
    }
    if !client_open || exit.is_none() {
        // The client went away: the process and everything it started go too.
        if let Some(pgid) = pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        return Ok(());
    }
    let code = exit.unwrap_or(-1);
    let _ = tx
        .send(Message::Text(
            serde_json::json!({ "type": "exit", "code": code })
                .to_string()
                .into(),
        ))
        .await;
    let _ = tx.send(Message::Close(None)).await;
    Ok(())
}

async fn pump_output(
    mut from: impl AsyncRead + Unpin,
    stream: u8,
    to: mpsc::Sender<(u8, Vec<u8>)>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            // A terminal reports EIO once the last process holding it is gone.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send((stream, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// ^D: end of input for a terminal in canonical mode.
const EOT: u8 = 0x04;

/// Writes stdin. At EOF a pipe is closed; a terminal (`eof_byte`) gets ^D instead, since closing
/// the master would hang up the whole session.
async fn pump_input(
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut from: mpsc::Receiver<Input>,
    eof_byte: Option<u8>,
) {
    while let Some(input) = from.recv().await {
        let data = match input {
            Input::Data(data) => data,
            Input::Eof => match eof_byte {
                Some(b) => vec![b],
                None => return,
            },
        };
        if to.write_all(&data).await.is_err() || to.flush().await.is_err() {
            return;
        }
    }
}
