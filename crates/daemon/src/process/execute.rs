//! `POST /process/execute` and `POST /process/code-run`.

use std::{collections::HashMap, time::Duration};

use axum::{Json, extract::State, http::StatusCode};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::shell::{self, JobOutcome, ShellJob};
use crate::{
    error::{ApiError, ApiJson, ErrorCode},
    server::AppState,
};

/// Output lines starting with this carry a JSON artifact instead of program output.
pub const ARTIFACT_MARKER: &str = "dtn_artifact_k39fd2:";

const CHART_CAPTURE: &str = include_str!("matplotlib_charts.py");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteRequest {
    pub command: String,
    pub cwd: Option<String>,
    pub envs: Option<HashMap<String, String>>,
    /// Seconds; absent or 0 means no limit.
    pub timeout: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteResponse {
    pub exit_code: i32,
    pub result: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeRunRequest {
    pub code: String,
    #[serde(default)]
    pub language: Option<String>,
    pub argv: Option<Vec<String>>,
    pub envs: Option<HashMap<String, String>>,
    pub timeout: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeRunResponse {
    pub exit_code: i32,
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Artifacts>,
}

#[derive(Debug, Serialize)]
pub struct Artifacts {
    pub charts: Vec<Value>,
}

pub async fn execute(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    if request.command.trim().is_empty() {
        return Err(ApiError::bad_request("command: must not be empty"));
    }
    let job = job(
        &state,
        request.command,
        request.cwd.as_deref(),
        request.envs,
        request.timeout,
    )?;
    let (exit_code, output) = run(job).await?;
    Ok(Json(ExecuteResponse {
        exit_code,
        result: output,
    }))
}

pub async fn code_run(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CodeRunRequest>,
) -> Result<Json<CodeRunResponse>, ApiError> {
    let language = request.language.as_deref().unwrap_or("python");
    let script = code_script(
        language,
        &request.code,
        request.argv.as_deref().unwrap_or_default(),
    )?;
    let job = job(&state, script, None, request.envs, request.timeout)?;
    let (exit_code, output) = run(job).await?;
    let (result, charts) = extract_charts(&output);
    Ok(Json(CodeRunResponse {
        exit_code,
        result,
        artifacts: (!charts.is_empty()).then_some(Artifacts { charts }),
    }))
}

fn job(
    state: &AppState,
    script: String,
    cwd: Option<&str>,
    envs: Option<HashMap<String, String>>,
    timeout: Option<i64>,
) -> Result<ShellJob, ApiError> {
    let extra = envs.unwrap_or_default();
    shell::validate_env(extra.keys())?;
    let mut envs = state.env().snapshot();
    envs.extend(extra);
    let timeout = match timeout {
        None | Some(0) => None,
        Some(secs) if secs > 0 => Some(Duration::from_secs(secs as u64)),
        Some(_) => return Err(ApiError::bad_request("timeout: must not be negative")),
    };
    Ok(ShellJob {
        script,
        cwd: shell::resolve_cwd(&state.config().work_dir, cwd),
        envs,
        timeout,
    })
}

/// Runs the job; a timeout becomes 408, a shell that cannot start becomes exit code -1.
async fn run(job: ShellJob) -> Result<(i32, String), ApiError> {
    let limit = job.timeout;
    match shell::run(job).await {
        Ok(JobOutcome::Exited { exit_code, output }) => {
            Ok((exit_code, String::from_utf8_lossy(&output).into_owned()))
        }
        Ok(JobOutcome::TimedOut { .. }) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::ProcessExecutionTimeout,
            format!(
                "command timed out after {}s and was killed",
                limit.unwrap_or_default().as_secs()
            ),
        )),
        Err(e) => Ok((-1, format!("failed to start command: {e}"))),
    }
}

/// The shell script that runs `code` in `language` with `argv`.
fn code_script(language: &str, code: &str, argv: &[String]) -> Result<String, ApiError> {
    let args: String = argv
        .iter()
        .map(|a| format!(" {}", shell::quote(a)))
        .collect();
    Ok(match language {
        "python" | "" => {
            let program = if code.contains("matplotlib") {
                format!("{CHART_CAPTURE}\n{code}")
            } else {
                code.to_owned()
            };
            format!("{} | python3 -u -{args}\n", decode_pipe(&program))
        }
        // `node -` sees argv [node, "-", ...]; dropping "-" gives scripts the usual layout.
        "javascript" => format!(
            "{} | node -{args}\n",
            decode_pipe(&format!("process.argv.splice(1, 1);\n{code}"))
        ),
        "typescript" => format!(
            "_dtn_f=\"${{TMPDIR:-/tmp}}/dtn_$$.ts\"\n{} > \"$_dtn_f\"\n\
             if command -v ts-node >/dev/null; then _dtn_ts=ts-node; \
             else _dtn_ts='npx ts-node'; export npm_config_loglevel=error; fi\n\
             $_dtn_ts -T --ignore-diagnostics 5107 \
             -O '{{\"module\":\"CommonJS\"}}' \"$_dtn_f\"{args}\n\
             _dtn_rc=$?\nrm -f \"$_dtn_f\"\nexit $_dtn_rc\n",
            decode_pipe(code)
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "language: unsupported language {other:?} (python, javascript, typescript)"
            )));
        }
    })
}

/// A pipeline stage printing `source` without any shell interpretation of its text.
fn decode_pipe(source: &str) -> String {
    format!("printf '%s' '{}' | base64 -d", BASE64.encode(source))
}

/// Removes artifact lines from `output`, returning the remaining text and the charts.
pub fn extract_charts(output: &str) -> (String, Vec<Value>) {
    let mut text = String::with_capacity(output.len());
    let mut charts = Vec::new();
    for line in output.split_inclusive('\n') {
        let Some(payload) = line.strip_prefix(ARTIFACT_MARKER) else {
            text.push_str(line);
            continue;
        };
        match serde_json::from_str::<Value>(payload.trim_end()) {
            Ok(Value::Object(mut artifact)) if artifact.get("type") == Some(&"chart".into()) => {
                if let Some(chart) = artifact.remove("value") {
                    charts.push(chart);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("unreadable artifact line dropped: {e}"),
        }
    }
    (text, charts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_lines_are_moved_to_artifacts() {
        let output = "a\ndtn_artifact_k39fd2:{\"type\":\"chart\",\"value\":{\"type\":\"line\",\"title\":\"t\"}}\nb\n";
        let (text, charts) = extract_charts(output);
        assert_eq!(text, "a\nb\n");
        assert_eq!(charts.len(), 1);
        assert_eq!(charts[0]["title"], "t");
    }

    #[test]
    fn unknown_language_is_rejected() {
        assert!(code_script("cobol", "x", &[]).is_err());
    }
}
