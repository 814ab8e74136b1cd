//! Running a script in the sandbox shell with interleaved output and a group-wide timeout.

use std::{
    collections::BTreeMap,
    env,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::unix::pipe,
    process::Command,
};

use crate::error::ApiError;

/// Shells tried in order; the first that exists runs commands (as upstream's daemon does).
const SHELL_CANDIDATES: [&str; 4] = ["/usr/bin/zsh", "/bin/zsh", "/usr/bin/bash", "/bin/bash"];

/// How long output is still collected after the shell exited: background jobs that inherited
/// the output pipe would otherwise hold the request open forever.
const OUTPUT_GRACE: Duration = Duration::from_millis(300);

/// The shell commands run in: zsh, bash, `$SHELL`, then `sh`.
pub fn find_shell() -> PathBuf {
    SHELL_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            env::var_os("SHELL")
                .map(PathBuf::from)
                .filter(|p| !p.as_os_str().is_empty() && p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("sh"))
}

/// The shell sessions run in: bash, else `sh`. Not zsh: its `command` builtin only runs
/// external programs, which the session wrapper's `command .` relies on not doing.
pub fn find_session_shell() -> PathBuf {
    ["/usr/bin/bash", "/bin/bash"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("sh"))
}

/// Environment variable names the daemon accepts from clients.
pub fn validate_env<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), ApiError> {
    names
        .into_iter()
        .try_for_each(|name| validate_env_name(name))
}

/// A name must match `^[A-Za-z_][A-Za-z0-9_]*$`.
pub fn validate_env_name(name: &str) -> Result<(), ApiError> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if valid_start && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "envs: invalid environment variable name {name:?} (must match ^[A-Za-z_][A-Za-z0-9_]*$)"
        )))
    }
}

/// Quotes `s` as one POSIX shell word.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Converts a wait status to the number a shell would report (`128 + n` for signal `n`).
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// A script fed to the shell on stdin.
#[derive(Debug, Clone)]
pub struct ShellJob {
    pub script: String,
    pub cwd: PathBuf,
    /// The complete environment of the shell.
    pub envs: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
pub enum JobOutcome {
    Exited {
        exit_code: i32,
        output: Vec<u8>,
    },
    /// The whole process group was killed when the timeout expired.
    TimedOut {
        output: Vec<u8>,
    },
}

/// Runs `job` in its own process group, stdout and stderr interleaved in one buffer.
///
/// Errors only when the shell cannot be started.
pub async fn run(job: ShellJob) -> std::io::Result<JobOutcome> {
    let (reader, writer) = std::io::pipe()?;
    let mut command = Command::new(find_shell());
    command
        .current_dir(&job.cwd)
        .env_clear()
        .envs(&job.envs)
        .stdin(Stdio::piped())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    let mut child = command.spawn()?;
    // Our copies of the write end must go, or the reader never sees EOF.
    drop(command);
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));

    if let Some(mut stdin) = child.stdin.take() {
        let script = job.script;
        tokio::spawn(async move {
            // A shell that exits early closes stdin; losing the rest of the script is fine then.
            let _ = stdin.write_all(script.as_bytes()).await;
        });
    }

    let output = Arc::new(Mutex::new(Vec::new()));
    let mut collector = tokio::spawn(collect(
        pipe::Receiver::from_owned_fd(reader.into())?,
        output.clone(),
    ));

    let waited = match job.timeout {
        Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
        None => Some(child.wait().await),
    };
    let outcome = match waited {
        Some(status) => JobOutcome::Exited {
            exit_code: exit_code(status?),
            output: Vec::new(),
        },
        None => {
            if let Some(pgid) = pgid {
                // ESRCH only means the group is already gone.
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            child.wait().await?;
            JobOutcome::TimedOut { output: Vec::new() }
        }
    };
    if tokio::time::timeout(OUTPUT_GRACE, &mut collector)
        .await
        .is_err()
    {
        collector.abort();
    }
    let collected = std::mem::take(&mut *output.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(match outcome {
        JobOutcome::Exited { exit_code, .. } => JobOutcome::Exited {
            exit_code,
            output: collected,
        },
        JobOutcome::TimedOut { .. } => JobOutcome::TimedOut { output: collected },
    })
}

async fn collect(mut receiver: pipe::Receiver, output: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = receiver.read(&mut buf).await {
        if n == 0 {
            break;
        }
        output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&buf[..n]);
    }
}

/// Resolves an optional client cwd against the work dir.
pub fn resolve_cwd(work_dir: &Path, cwd: Option<&str>) -> PathBuf {
    match cwd.filter(|c| !c.is_empty()) {
        Some(c) => work_dir.join(c),
        None => work_dir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn env_names_are_validated() {
        let ok: HashMap<_, _> = [("A_1".to_string(), "x".to_string())].into();
        assert!(validate_env(ok.keys()).is_ok());
        for bad in ["1A", "A-B", "", "A B"] {
            let envs: HashMap<_, _> = [(bad.to_string(), "x".to_string())].into();
            assert!(validate_env(envs.keys()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
