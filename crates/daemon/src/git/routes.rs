//! HTTP handlers for `/git/...` (request keys are snake_case, as the SDK sends them).

use std::path::PathBuf;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Credentials, GitCommand, status};
use crate::{
    error::{ApiError, ApiJson, ApiQuery},
    fs::resolve,
    server::AppState,
};

/// The repository directory of a request; it must exist.
fn repo_dir(state: &AppState, path: &str) -> Result<PathBuf, ApiError> {
    let dir = resolve(&state.config().work_dir, path)?;
    if !dir.is_dir() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            crate::error::ErrorCode::GitRepoNotFound,
            format!("repository not found: {path} is not a directory"),
        ));
    }
    Ok(dir)
}

async fn git(state: &AppState, operation: &str, command: GitCommand) -> Result<String, ApiError> {
    command
        .run(state.env())
        .await
        .map_err(|failure| failure.into_api(operation))
}

fn require(value: &str, name: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{name}: must not be empty")));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct CloneRequest {
    pub url: String,
    pub path: String,
    pub branch: Option<String>,
    pub commit_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub insecure_skip_tls: Option<bool>,
    pub depth: Option<u32>,
}

pub async fn clone(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CloneRequest>,
) -> Result<(), ApiError> {
    require(&request.url, "url")?;
    let target = resolve(&state.config().work_dir, &request.path)?;
    let credentials = Credentials::from_parts(request.username, request.password)?;
    let mut args = vec!["clone".to_owned()];
    if let Some(branch) = request.branch.filter(|b| !b.is_empty()) {
        args.extend(["--branch".to_owned(), branch]);
    }
    if let Some(depth) = request.depth.filter(|d| *d > 0) {
        args.extend(["--depth".to_owned(), depth.to_string()]);
    }
    args.extend([
        "--".to_owned(),
        request.url,
        target.to_string_lossy().into_owned(),
    ]);
    let mut command = GitCommand::new(None, args).credentials(credentials);
    if request.insecure_skip_tls.unwrap_or(false) {
        command = command.config("http.sslVerify=false");
    }
    git(&state, "clone", command).await?;
    if let Some(commit) = request.commit_id.filter(|c| !c.is_empty()) {
        let checkout = GitCommand::new(Some(&target), ["checkout", "--detach", &commit]);
        git(&state, "checkout", checkout).await?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct PathQuery {
    pub path: String,
}

pub async fn status(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<Json<status::GitStatus>, ApiError> {
    let dir = repo_dir(&state, &query.path)?;
    let command = GitCommand::new(
        Some(&dir),
        [
            "status",
            "--porcelain=v2",
            "--branch",
            "-z",
            "--untracked-files=all",
        ],
    );
    Ok(Json(status::parse(&git(&state, "status", command).await?)))
}

#[derive(Debug, Deserialize)]
pub struct AddRequest {
    pub path: String,
    pub files: Vec<String>,
}

pub async fn add(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AddRequest>,
) -> Result<(), ApiError> {
    let dir = repo_dir(&state, &request.path)?;
    if request.files.is_empty() {
        return Err(ApiError::bad_request("files: must name at least one file"));
    }
    let mut args = vec!["add".to_owned(), "--".to_owned()];
    args.extend(request.files);
    git(&state, "add", GitCommand::new(Some(&dir), args)).await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct CommitRequest {
    pub path: String,
    pub message: String,
    pub author: Option<String>,
    pub email: Option<String>,
    pub allow_empty: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct CommitResponse {
    pub hash: String,
}

pub async fn commit(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CommitRequest>,
) -> Result<Json<CommitResponse>, ApiError> {
    let dir = repo_dir(&state, &request.path)?;
    require(&request.message, "message")?;
    let mut args = vec!["commit", "-m", &request.message];
    if request.allow_empty.unwrap_or(false) {
        args.push("--allow-empty");
    }
    let mut command = GitCommand::new(Some(&dir), args);
    // The request's identity wins over the repository's config for this commit only.
    if let Some(author) = request.author.as_deref().filter(|a| !a.is_empty()) {
        command = command
            .env("GIT_AUTHOR_NAME", author)
            .env("GIT_COMMITTER_NAME", author);
    }
    if let Some(email) = request.email.as_deref().filter(|e| !e.is_empty()) {
        command = command
            .env("GIT_AUTHOR_EMAIL", email)
            .env("GIT_COMMITTER_EMAIL", email);
    }
    git(&state, "commit", command).await?;
    let hash = git(
        &state,
        "rev-parse",
        GitCommand::new(Some(&dir), ["rev-parse", "HEAD"]),
    )
    .await?;
    Ok(Json(CommitResponse {
        hash: hash.trim().to_owned(),
    }))
}

#[derive(Debug, Serialize)]
pub struct BranchList {
    pub branches: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

pub async fn branches(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<Json<BranchList>, ApiError> {
    let dir = repo_dir(&state, &query.path)?;
    let list = git(
        &state,
        "branch",
        GitCommand::new(
            Some(&dir),
            ["for-each-ref", "--format=%(refname:short)", "refs/heads"],
        ),
    )
    .await?;
    // Fails on a detached HEAD, which has no current branch.
    let current = GitCommand::new(Some(&dir), ["symbolic-ref", "--short", "-q", "HEAD"])
        .run(state.env())
        .await
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    Ok(Json(BranchList {
        branches: list.lines().map(str::to_owned).collect(),
        current,
    }))
}

#[derive(Debug, Deserialize)]
pub struct BranchRequest {
    pub path: String,
    pub name: String,
}

/// Creates the branch and switches to it (as upstream does).
pub async fn create_branch(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<BranchRequest>,
) -> Result<StatusCode, ApiError> {
    let dir = repo_dir(&state, &request.path)?;
    require(&request.name, "name")?;
    let command = GitCommand::new(Some(&dir), ["checkout", "-b", &request.name]);
    git(&state, "branch", command).await?;
    Ok(StatusCode::CREATED)
}

pub async fn delete_branch(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<BranchRequest>,
) -> Result<StatusCode, ApiError> {
    let dir = repo_dir(&state, &request.path)?;
    require(&request.name, "name")?;
    let command = GitCommand::new(Some(&dir), ["branch", "-D", "--", &request.name]);
    git(&state, "branch -D", command).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct CheckoutRequest {
    pub path: String,
    pub branch: String,
}

pub async fn checkout(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CheckoutRequest>,
) -> Result<(), ApiError> {
    let dir = repo_dir(&state, &request.path)?;
    require(&request.branch, "branch")?;
    let command = GitCommand::new(Some(&dir), ["checkout", &request.branch]);
    git(&state, "checkout", command).await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct RemoteRequest {
    pub path: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub remote: Option<String>,
    pub branch: Option<String>,
    pub set_upstream: Option<bool>,
}

pub async fn pull(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RemoteRequest>,
) -> Result<(), ApiError> {
    let dir = repo_dir(&state, &request.path)?;
    let credentials = Credentials::from_parts(request.username, request.password)?;
    let mut args = vec!["pull".to_owned(), "--no-rebase".to_owned()];
    let branch = request.branch.filter(|b| !b.is_empty());
    let remote = request.remote.filter(|r| !r.is_empty());
    if remote.is_some() || branch.is_some() {
        args.push(remote.unwrap_or_else(|| "origin".to_owned()));
        args.extend(branch);
    }
    git(
        &state,
        "pull",
        GitCommand::new(Some(&dir), args).credentials(credentials),
    )
    .await?;
    Ok(())
}

pub async fn push(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RemoteRequest>,
) -> Result<(), ApiError> {
    let dir = repo_dir(&state, &request.path)?;
    let credentials = Credentials::from_parts(request.username, request.password)?;
    let branch = match request.branch.filter(|b| !b.is_empty()) {
        Some(branch) => branch,
        None => git(
            &state,
            "push",
            GitCommand::new(Some(&dir), ["symbolic-ref", "--short", "HEAD"]),
        )
        .await?
        .trim()
        .to_owned(),
    };
    let mut args = vec!["push".to_owned()];
    if request.set_upstream.unwrap_or(false) {
        args.push("--set-upstream".to_owned());
    }
    args.push(
        request
            .remote
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "origin".to_owned()),
    );
    args.push(branch);
    git(
        &state,
        "push",
        GitCommand::new(Some(&dir), args).credentials(credentials),
    )
    .await?;
    Ok(())
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CommitInfo {
    pub hash: String,
    pub author: String,
    pub email: String,
    pub message: String,
    pub timestamp: String,
}

const FIELD: char = '\x1f';
const RECORD: char = '\x1e';

pub fn parse_log(output: &str) -> Vec<CommitInfo> {
    output
        .split(RECORD)
        .filter_map(|record| {
            let mut fields = record.trim_start_matches('\n').splitn(5, FIELD);
            Some(CommitInfo {
                hash: fields.next().filter(|h| !h.is_empty())?.to_owned(),
                author: fields.next()?.to_owned(),
                email: fields.next()?.to_owned(),
                timestamp: fields.next()?.to_owned(),
                message: fields.next()?.trim_end().to_owned(),
            })
        })
        .collect()
}

pub async fn history(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<Json<Vec<CommitInfo>>, ApiError> {
    let dir = repo_dir(&state, &query.path)?;
    // An unborn branch has no history: that is an empty list, not an error.
    let has_commits = GitCommand::new(Some(&dir), ["rev-parse", "--verify", "-q", "HEAD"])
        .run(state.env())
        .await
        .is_ok();
    if !has_commits {
        git(
            &state,
            "log",
            GitCommand::new(Some(&dir), ["rev-parse", "--git-dir"]),
        )
        .await?;
        return Ok(Json(Vec::new()));
    }
    let format = "--format=%H%x1f%an%x1f%ae%x1f%aI%x1f%B%x1e";
    let output = git(&state, "log", GitCommand::new(Some(&dir), ["log", format])).await?;
    Ok(Json(parse_log(&output)))
}

#[derive(Debug, Deserialize)]
pub struct InitRequest {
    pub path: String,
    pub bare: Option<bool>,
    pub initial_branch: Option<String>,
}

pub async fn init(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<InitRequest>,
) -> Result<StatusCode, ApiError> {
    let dir = resolve(&state.config().work_dir, &request.path)?;
    let mut args = vec!["init".to_owned()];
    if request.bare.unwrap_or(false) {
        args.push("--bare".to_owned());
    }
    if let Some(branch) = request.initial_branch.filter(|b| !b.is_empty()) {
        args.push(format!("--initial-branch={branch}"));
    }
    args.extend(["--".to_owned(), dir.to_string_lossy().into_owned()]);
    git(&state, "init", GitCommand::new(None, args)).await?;
    Ok(StatusCode::CREATED)
}

#[derive(Debug, Deserialize)]
pub struct ResetRequest {
    pub path: String,
    pub mode: Option<String>,
    pub target: Option<String>,
    pub files: Option<Vec<String>>,
}

pub async fn reset(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ResetRequest>,
) -> Result<(), ApiError> {
    let dir = repo_dir(&state, &request.path)?;
    let files = request.files.unwrap_or_default();
    let mut args = vec!["reset".to_owned()];
    if let Some(mode) = request.mode.filter(|m| !m.is_empty()) {
        if !["soft", "mixed", "hard", "merge", "keep"].contains(&mode.as_str()) {
            return Err(ApiError::bad_request(format!(
                "mode: must be soft, mixed, hard, merge or keep, got {mode:?}"
            )));
        }
        if !files.is_empty() && mode != "mixed" {
            return Err(ApiError::bad_request(format!(
                "mode: {mode} cannot be combined with files"
            )));
        }
        if files.is_empty() {
            args.push(format!("--{mode}"));
        }
    }
    args.push(
        request
            .target
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "HEAD".to_owned()),
    );
    if !files.is_empty() {
        args.push("--".to_owned());
        args.extend(files);
    }
    git(&state, "reset", GitCommand::new(Some(&dir), args)).await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct RestoreRequest {
    pub path: String,
    pub files: Vec<String>,
    pub source: Option<String>,
    pub staged: Option<bool>,
    pub worktree: Option<bool>,
}

pub async fn restore(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RestoreRequest>,
) -> Result<(), ApiError> {
    let dir = repo_dir(&state, &request.path)?;
    if request.files.is_empty() {
        return Err(ApiError::bad_request("files: must name at least one file"));
    }
    let mut args = vec!["restore".to_owned()];
    if let Some(source) = request.source.filter(|s| !s.is_empty()) {
        args.push(format!("--source={source}"));
    }
    if request.staged.unwrap_or(false) {
        args.push("--staged".to_owned());
    }
    if request.worktree.unwrap_or(false) {
        args.push("--worktree".to_owned());
    }
    args.push("--".to_owned());
    args.extend(request.files);
    git(&state, "restore", GitCommand::new(Some(&dir), args)).await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct AddRemoteRequest {
    pub path: String,
    pub name: String,
    pub url: String,
    pub fetch: Option<bool>,
    pub overwrite: Option<bool>,
}

pub async fn add_remote(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AddRemoteRequest>,
) -> Result<StatusCode, ApiError> {
    let dir = repo_dir(&state, &request.path)?;
    require(&request.name, "name")?;
    require(&request.url, "url")?;
    let exists = GitCommand::new(Some(&dir), ["remote", "get-url", "--", &request.name])
        .run(state.env())
        .await
        .is_ok();
    let args = if exists && request.overwrite.unwrap_or(false) {
        vec!["remote", "set-url", "--", &request.name, &request.url]
    } else {
        vec!["remote", "add", "--", &request.name, &request.url]
    };
    git(&state, "remote", GitCommand::new(Some(&dir), args)).await?;
    if request.fetch.unwrap_or(false) {
        git(
            &state,
            "fetch",
            GitCommand::new(Some(&dir), ["fetch", "--", &request.name]),
        )
        .await?;
    }
    Ok(StatusCode::CREATED)
}

pub async fn list_remotes(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PathQuery>,
) -> Result<Json<Value>, ApiError> {
    let dir = repo_dir(&state, &query.path)?;
    let output = git(
        &state,
        "remote",
        GitCommand::new(Some(&dir), ["remote", "-v"]),
    )
    .await?;
    let remotes: Vec<Value> = output
        .lines()
        .filter(|line| line.ends_with("(fetch)"))
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some(json!({ "name": parts.next()?, "url": parts.next()? }))
        })
        .collect();
    Ok(Json(json!({ "remotes": remotes })))
}

/// `--global` (default), `--system`, or `--local` in the repository at `path`.
fn scope_args(
    state: &AppState,
    scope: Option<&str>,
    path: Option<&str>,
) -> Result<(Option<PathBuf>, &'static str), ApiError> {
    match scope.filter(|s| !s.is_empty()).unwrap_or("global") {
        "global" => Ok((None, "--global")),
        "system" => Ok((None, "--system")),
        "local" => {
            let path = path
                .filter(|p| !p.is_empty())
                .ok_or_else(|| ApiError::bad_request("path: required for the local scope"))?;
            Ok((Some(repo_dir(state, path)?), "--local"))
        }
        other => Err(ApiError::bad_request(format!(
            "scope: must be global, local or system, got {other:?}"
        ))),
    }
}

#[derive(Debug, Deserialize)]
pub struct SetConfigRequest {
    pub key: String,
    pub value: String,
    pub path: Option<String>,
    pub scope: Option<String>,
}

pub async fn set_config(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SetConfigRequest>,
) -> Result<(), ApiError> {
    require(&request.key, "key")?;
    let (dir, scope) = scope_args(&state, request.scope.as_deref(), request.path.as_deref())?;
    let command = GitCommand::new(
        dir.as_deref(),
        ["config", scope, &request.key, &request.value],
    );
    git(&state, "config", command).await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct GetConfigQuery {
    pub key: String,
    pub path: Option<String>,
    pub scope: Option<String>,
}

pub async fn get_config(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<GetConfigQuery>,
) -> Result<Json<Value>, ApiError> {
    require(&query.key, "key")?;
    let (dir, scope) = scope_args(&state, query.scope.as_deref(), query.path.as_deref())?;
    let command = GitCommand::new(dir.as_deref(), ["config", scope, "--get", &query.key]);
    match command.run(state.env()).await {
        Ok(value) => Ok(Json(json!({ "value": value.trim_end_matches('\n') }))),
        // Exit 1: the key is not set.
        Err(failure) if failure.exit_code == Some(1) => Ok(Json(json!({ "value": null }))),
        Err(failure) => Err(failure.into_api("config")),
    }
}

#[derive(Debug, Deserialize)]
pub struct ConfigureUserRequest {
    pub name: String,
    pub email: String,
    pub path: Option<String>,
    pub scope: Option<String>,
}

pub async fn configure_user(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ConfigureUserRequest>,
) -> Result<(), ApiError> {
    require(&request.name, "name")?;
    require(&request.email, "email")?;
    let (dir, scope) = scope_args(&state, request.scope.as_deref(), request.path.as_deref())?;
    for (key, value) in [("user.name", &request.name), ("user.email", &request.email)] {
        let command = GitCommand::new(dir.as_deref(), ["config", scope, key, value]);
        git(&state, "config", command).await?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct AuthenticateRequest {
    pub username: String,
    pub password: String,
    pub host: Option<String>,
    pub protocol: Option<String>,
}

/// Stores credentials with git's `store` helper (plaintext `~/.git-credentials`, as the SDK
/// warns); the password goes through stdin, never argv.
pub async fn authenticate(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AuthenticateRequest>,
) -> Result<(), ApiError> {
    require(&request.username, "username")?;
    require(&request.password, "password")?;
    let host = request
        .host
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "github.com".into());
    let protocol = request
        .protocol
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "https".into());
    for (name, value) in [
        ("host", &host),
        ("protocol", &protocol),
        ("username", &request.username),
    ] {
        if value.contains('\n') || value.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "{name}: must be a single line"
            )));
        }
    }
    if request.password.contains('\n') {
        return Err(ApiError::bad_request("password: must be a single line"));
    }
    git(
        &state,
        "config",
        GitCommand::new(None, ["config", "--global", "credential.helper", "store"]),
    )
    .await?;
    let input = format!(
        "protocol={protocol}\nhost={host}\nusername={}\npassword={}\n\n",
        request.username, request.password
    );
    git(
        &state,
        "credential approve",
        GitCommand::new(None, ["credential", "approve"]).stdin(input),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_are_split() {
        let output = "abc\x1fAda\x1fada@x.org\x1f2026-01-01T00:00:00+00:00\x1ffirst line\n\nbody\n\x1e\n\
                      def\x1fBob\x1fbob@x.org\x1f2025-12-31T00:00:00+00:00\x1finitial\n\x1e\n";
        let commits = parse_log(output);
        assert_eq!(commits.len(), 2);
        assert_eq!(commits[0].hash, "abc");
        assert_eq!(commits[0].message, "first line\n\nbody");
        assert_eq!(commits[1].author, "Bob");
        assert_eq!(commits[1].timestamp, "2025-12-31T00:00:00+00:00");
    }
}
