//! Git through the `git` CLI: it behaves exactly as it does for users of the sandbox
//! (config, hooks, credential helpers, protocols) and supports push, unlike pure-Rust libraries.
//!
//! Credentials given with a request never reach argv, the URL or `.git/config`: they are
//! passed in the git process's environment and handed to git by a one-shot inline credential
//! helper that reads them from there.

pub mod routes;
pub mod status;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
};

use axum::http::StatusCode;
use tokio::{io::AsyncWriteExt, process::Command};

use crate::{
    environment::ProcessEnv,
    error::{ApiError, ErrorCode},
};

const USERNAME_VAR: &str = "DAYTONA_GIT_USERNAME";
const PASSWORD_VAR: &str = "DAYTONA_GIT_PASSWORD";
/// Answers git's `get` with the request's credentials; ignores `store`/`erase`.
const INLINE_HELPER: &str = "credential.helper=!f() { test \"$1\" = get || exit 0; \
     echo \"username=${DAYTONA_GIT_USERNAME}\"; echo \"password=${DAYTONA_GIT_PASSWORD}\"; }; f";

/// Username and password (or token) for one remote operation.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// Both or neither: a password without a username is a client mistake worth naming.
    pub fn from_parts(
        username: Option<String>,
        password: Option<String>,
    ) -> Result<Option<Self>, ApiError> {
        match (
            username.filter(|u| !u.is_empty()),
            password.filter(|p| !p.is_empty()),
        ) {
            (None, None) => Ok(None),
            (Some(username), Some(password)) => Ok(Some(Self { username, password })),
            // A token alone works for most hosts when sent with any username.
            (None, Some(password)) => Ok(Some(Self {
                username: "x-access-token".to_owned(),
                password,
            })),
            (Some(_), None) => Err(ApiError::bad_request(
                "password: required when username is given",
            )),
        }
    }
}

/// One git invocation.
#[derive(Debug, Default)]
pub struct GitCommand {
    pub dir: Option<PathBuf>,
    pub args: Vec<String>,
    pub credentials: Option<Credentials>,
    pub config: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub stdin: Option<String>,
}

impl GitCommand {
    pub fn new<I, S>(dir: Option<&Path>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            dir: dir.map(Path::to_path_buf),
            args: args.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    pub fn credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// A `-c key=value` for this invocation only.
    pub fn config(mut self, setting: impl Into<String>) -> Self {
        self.config.push(setting.into());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.envs.insert(key.to_owned(), value.into());
        self
    }

    pub fn stdin(mut self, input: impl Into<String>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Runs git; a non-zero exit becomes a classified [`GitFailure`].
    pub async fn run(self, env: &ProcessEnv) -> Result<String, GitFailure> {
        let mut command = Command::new("git");
        env.apply(&mut command);
        command
            // Stable English messages to classify; never wait for a terminal prompt.
            .env("LC_ALL", "C")
            .env("LANGUAGE", "")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS", "")
            .envs(&self.envs)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &self.dir {
            command.arg("-C").arg(dir);
        }
        if let Some(credentials) = &self.credentials {
            command
                .env(USERNAME_VAR, &credentials.username)
                .env(PASSWORD_VAR, &credentials.password)
                // Clear configured helpers first so ours is asked, and asked only.
                .args(["-c", "credential.helper=", "-c", INLINE_HELPER]);
        }
        for setting in &self.config {
            command.arg("-c").arg(setting);
        }
        command.args(&self.args);
        let mut child = command.spawn().map_err(|e| GitFailure {
            stderr: format!("cannot run git: {e}"),
            exit_code: None,
        })?;
        if let (Some(input), Some(mut stdin)) = (self.stdin, child.stdin.take()) {
            let _ = stdin.write_all(input.as_bytes()).await;
        }
        let output = child.wait_with_output().await.map_err(|e| GitFailure {
            stderr: format!("git failed: {e}"),
            exit_code: None,
        })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            if stderr.is_empty() {
                stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            }
            Err(GitFailure {
                stderr,
                exit_code: output.status.code(),
            })
        }
    }
}

/// A git command that did not succeed.
#[derive(Debug, Clone)]
pub struct GitFailure {
    pub stderr: String,
    pub exit_code: Option<i32>,
}

impl GitFailure {
    /// The error for the client: domain code and status from git's message.
    pub fn into_api(self, operation: &str) -> ApiError {
        let (status, code) = classify(&self.stderr);
        ApiError::new(
            status,
            code,
            format!("git {operation} failed: {}", self.stderr),
        )
    }
}

/// Maps git's (C-locale) error text to a status and domain code.
pub fn classify(stderr: &str) -> (StatusCode, ErrorCode) {
    let text = stderr.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&[
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "access denied",
        "returned error: 401",
        "returned error: 403",
        "permission denied (publickey",
        "invalid username or password",
    ]) {
        (StatusCode::UNAUTHORIZED, ErrorCode::GitAuthFailed)
    } else if has(&["[remote rejected]", "pre-receive hook declined"]) {
        // The SDK's GitRemoteRejected error is a 422.
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::GitRemoteRejected,
        )
    } else if has(&[
        "[rejected]",
        "non-fast-forward",
        "fetch first",
        "failed to push some refs",
    ]) {
        (StatusCode::CONFLICT, ErrorCode::GitPushRejected)
    } else if has(&[
        "remote branch",
        "couldn't find remote ref",
        "did not match any file(s) known to git",
        "invalid reference",
        "not a valid branch name",
        "not a valid object name",
        "unknown revision",
    ]) || (text.contains("branch '") && text.contains("not found"))
    {
        (StatusCode::NOT_FOUND, ErrorCode::GitBranchNotFound)
    } else if has(&["a branch named", "already exists"]) && text.contains("branch") {
        (StatusCode::CONFLICT, ErrorCode::GitBranchExists)
    } else if (text.contains("repository '") && text.contains("' not found"))
        || has(&[
            "repository not found",
            "does not appear to be a git repository",
            "not a git repository",
            "returned error: 404",
            "does not exist",
        ])
    {
        (StatusCode::NOT_FOUND, ErrorCode::GitRepoNotFound)
    } else if has(&[
        "would be overwritten",
        "please commit your changes or stash them",
        "you have unstaged changes",
    ]) {
        (StatusCode::CONFLICT, ErrorCode::GitDirtyWorktree)
    } else if has(&["conflict", "automatic merge failed", "unmerged files"]) {
        (StatusCode::CONFLICT, ErrorCode::GitMergeConflict)
    } else if has(&[
        "could not resolve host",
        "connection refused",
        "failed to connect",
        "unable to access",
        "connection timed out",
        "operation timed out",
        "network is unreachable",
        "ssl certificate problem",
    ]) {
        (StatusCode::BAD_GATEWAY, ErrorCode::GitTransportFailed)
    } else if has(&[
        "already exists and is not an empty directory",
        "already exists",
    ]) {
        (StatusCode::CONFLICT, ErrorCode::Conflict)
    } else {
        (StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_messages_map_to_domain_codes() {
        let cases = [
            (
                "fatal: Authentication failed for 'http://10.0.0.1/repo.git/'",
                ErrorCode::GitAuthFailed,
            ),
            (
                "fatal: could not read Username for 'https://h': terminal prompts disabled",
                ErrorCode::GitAuthFailed,
            ),
            (
                "fatal: repository 'http://h/x.git/' not found\nfatal: Repository not found.",
                ErrorCode::GitRepoNotFound,
            ),
            (
                "fatal: repository 'http://100.64.0.1:8000/missing.git/' not found",
                ErrorCode::GitRepoNotFound,
            ),
            (
                "fatal: not a git repository (or any of the parent directories): .git",
                ErrorCode::GitRepoNotFound,
            ),
            (
                "warning: Could not find remote branch nope to clone.\nfatal: Remote branch nope not found in upstream origin",
                ErrorCode::GitBranchNotFound,
            ),
            (
                "error: pathspec 'nope' did not match any file(s) known to git",
                ErrorCode::GitBranchNotFound,
            ),
            (
                "error: branch 'nope' not found",
                ErrorCode::GitBranchNotFound,
            ),
            (
                "fatal: a branch named 'feature' already exists",
                ErrorCode::GitBranchExists,
            ),
            (
                " ! [rejected]        main -> main (fetch first)\nerror: failed to push some refs",
                ErrorCode::GitPushRejected,
            ),
            (
                " ! [remote rejected] main -> main (pre-receive hook declined)",
                ErrorCode::GitRemoteRejected,
            ),
            (
                "error: Your local changes to the following files would be overwritten by checkout:",
                ErrorCode::GitDirtyWorktree,
            ),
            (
                "CONFLICT (content): Merge conflict in a.txt\nAutomatic merge failed",
                ErrorCode::GitMergeConflict,
            ),
            (
                "fatal: unable to access 'http://h/': Failed to connect to h port 80: Connection refused",
                ErrorCode::GitTransportFailed,
            ),
            (
                "fatal: destination path 'x' already exists and is not an empty directory.",
                ErrorCode::Conflict,
            ),
        ];
        for (message, code) in cases {
            assert_eq!(classify(message).1, code, "{message}");
        }
        assert_eq!(classify("fatal: something odd").0, StatusCode::BAD_REQUEST);
        assert_eq!(
            classify("Authentication failed").0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn credentials_need_a_password() {
        assert!(Credentials::from_parts(None, None).unwrap().is_none());
        assert!(Credentials::from_parts(Some("u".into()), None).is_err());
        let token_only = Credentials::from_parts(None, Some("t".into()))
            .unwrap()
            .unwrap();
        assert_eq!(token_only.password, "t");
    }
}
