//! The job protocol between the API and remote runners: what a job asks for, how it travels
//! (`type` + JSON `payload`, upstream's job shape) and how a runner carries it out.
//!
//! Every job is safe to run twice: a runner that restarts re-runs the jobs it had taken, so a
//! create first discards what an interrupted attempt left, and the others are idempotent in the
//! runtime (stop, destroy) or by nature (pull, lookups).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use daytona_runtime::{NetworkPolicy, Resize};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::image::build::{BuildLog, BuildRequest};
use crate::sandbox::{CapturedImage, RunnerError, SandboxRequest, SandboxRunner};

/// One unit of work for a runner. Serialized adjacently tagged: `{"type": "CREATE_SANDBOX",
/// "payload": {...}}`, which the API stores as the job's type and payload columns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Job {
    PullSnapshot {
        reference: String,
    },
    CollectGarbage {
        keep_images: Vec<String>,
    },
    CreateSandbox(SandboxRequest),
    StartSandbox {
        id: String,
    },
    StopSandbox {
        id: String,
    },
    DestroySandbox {
        id: String,
    },
    /// A runner that comes back with a copy of a sandbox that moved elsewhere drops it.
    DiscardSandbox {
        id: String,
    },
    PauseSandbox {
        id: String,
    },
    ResumeSandbox {
        id: String,
    },
    ResizeSandbox {
        id: String,
        resize: Resize,
    },
    UpdateSandboxNetworkSettings {
        id: String,
        policy: NetworkPolicy,
    },
    DaemonAddress {
        id: String,
    },
    SandboxUsage {
        id: String,
    },
    SnapshotSandbox {
        id: String,
        base_image: String,
    },
    ForkSandbox {
        source: String,
        fork: SandboxRequest,
    },
    BuildSnapshot(BuildRequest),
    ArchiveSandbox {
        id: String,
        key: String,
    },
    RestoreSandbox {
        request: SandboxRequest,
        key: String,
    },
    /// Upstream's name for a backup of a sandbox's disk (kept on the runner too).
    CreateBackup {
        id: String,
        key: String,
    },
    DeleteArchive {
        key: String,
    },
    ArchiveExists {
        key: String,
    },
    CreateVolume {
        id: String,
    },
    DeleteVolume {
        id: String,
    },
}

/// The job as stored and sent: its type name and payload text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedJob {
    pub job_type: String,
    /// Sandbox, snapshot reference or volume the job is about (upstream's `resourceId`).
    pub resource_id: String,
    pub payload: String,
}

/// Why a job could not be read.
#[derive(Debug, thiserror::Error)]
#[error("job {job_type}: {reason}")]
pub struct DecodeError {
    pub job_type: String,
    pub reason: String,
}

impl Job {
    pub fn encode(&self) -> EncodedJob {
        let value = serde_json::to_value(self).expect("jobs serialize");
        let job_type = value["type"].as_str().unwrap_or_default().to_owned();
        let payload = value.get("payload").cloned().unwrap_or(Value::Null);
        EncodedJob {
            job_type,
            resource_id: self.resource_id(),
            payload: payload.to_string(),
        }
    }

    pub fn decode(job_type: &str, payload: &str) -> Result<Job, DecodeError> {
        let error = |reason: String| DecodeError {
            job_type: job_type.to_owned(),
            reason,
        };
        let payload: Value = if payload.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(payload).map_err(|e| error(format!("payload: {e}")))?
        };
        serde_json::from_value(serde_json::json!({ "type": job_type, "payload": payload }))
            .map_err(|e| error(e.to_string()))
    }

    fn resource_id(&self) -> String {
        match self {
            Job::PullSnapshot { reference } => reference.clone(),
            Job::CollectGarbage { .. } => String::new(),
            Job::CreateSandbox(req) => req.id.clone(),
            Job::StartSandbox { id }
            | Job::StopSandbox { id }
            | Job::DestroySandbox { id }
            | Job::DiscardSandbox { id }
            | Job::PauseSandbox { id }
            | Job::ResumeSandbox { id }
            | Job::ResizeSandbox { id, .. }
            | Job::UpdateSandboxNetworkSettings { id, .. }
            | Job::DaemonAddress { id }
            | Job::SandboxUsage { id }
            | Job::SnapshotSandbox { id, .. }
            | Job::ArchiveSandbox { id, .. }
            | Job::CreateBackup { id, .. } => id.clone(),
            Job::ForkSandbox { fork, .. } => fork.id.clone(),
            Job::BuildSnapshot(req) => req.id.clone(),
            Job::RestoreSandbox { request, .. } => request.id.clone(),
            Job::DeleteArchive { key } | Job::ArchiveExists { key } => key.clone(),
            Job::CreateVolume { id } | Job::DeleteVolume { id } => id.clone(),
        }
    }
}

/// What a finished build returns: the image and the build's log (remote builds send it at the end).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildOutcome {
    pub image: CapturedImage,
    pub log: Vec<String>,
}

/// Runs `job` on `runner` and returns its result as JSON (upstream's `resultMetadata`); a
/// build's lines also go to `live` as they come.
pub async fn execute(
    runner: &dyn SandboxRunner,
    job: Job,
    live: Option<Arc<dyn BuildLog>>,
) -> Result<Value, RunnerError> {
    Ok(match job {
        Job::PullSnapshot { reference } => json(&runner.pull_image(&reference).await?),
        Job::CollectGarbage { keep_images } => {
            runner.collect_garbage(&keep_images).await?;
            Value::Null
        }
        Job::CreateSandbox(req) => {
            // A create that ran before (a restart while it was in progress) may have left a
            // half-made sandbox, or a whole one: a running one is kept, anything else remade.
            if let Some(addr) = runner.daemon_address(&req.id).await? {
                json(&addr)
            } else {
                runner.destroy_sandbox(&req.id).await?;
                json(&runner.create_sandbox(&req).await?)
            }
        }
        Job::StartSandbox { id } => match runner.daemon_address(&id).await? {
            Some(addr) => json(&addr),
            None => json(&runner.start_sandbox(&id).await?),
        },
        Job::StopSandbox { id } => {
            runner.stop_sandbox(&id).await?;
            Value::Null
        }
        Job::DestroySandbox { id } => {
            runner.destroy_sandbox(&id).await?;
            Value::Null
        }
        Job::DiscardSandbox { id } => {
            runner.discard_sandbox(&id).await?;
            Value::Null
        }
        Job::PauseSandbox { id } => {
            runner.pause_sandbox(&id).await?;
            Value::Null
        }
        Job::ResumeSandbox { id } => {
            runner.resume_sandbox(&id).await?;
            Value::Null
        }
        Job::ResizeSandbox { id, resize } => {
            runner.resize_sandbox(&id, &resize).await?;
            Value::Null
        }
        Job::UpdateSandboxNetworkSettings { id, policy } => {
            runner.update_network(&id, &policy).await?;
            Value::Null
        }
        Job::DaemonAddress { id } => json(&runner.daemon_address(&id).await?),
        Job::SandboxUsage { id } => json(&runner.usage(&id).await?),
        Job::SnapshotSandbox { id, base_image } => {
            json(&runner.snapshot_sandbox(&id, &base_image).await?)
        }
        Job::ForkSandbox { source, fork } => {
            runner.destroy_sandbox(&fork.id).await?;
            json(&runner.fork_sandbox(&source, &fork).await?)
        }
        Job::BuildSnapshot(req) => {
            let log = Arc::new(CollectedLog {
                lines: Mutex::default(),
                live,
            });
            let image = runner.build_image(&req, log.clone()).await?;
            let log = std::mem::take(&mut *log.lines.lock().expect("log lock"));
            json(&BuildOutcome { image, log })
        }
        Job::ArchiveSandbox { id, key } => json(&runner.archive_sandbox(&id, &key).await?),
        Job::CreateBackup { id, key } => json(&runner.backup_sandbox(&id, &key).await?),
        Job::RestoreSandbox { request, key } => {
            json(&runner.restore_sandbox(&request, &key).await?)
        }
        Job::DeleteArchive { key } => {
            runner.delete_archive(&key).await?;
            Value::Null
        }
        Job::ArchiveExists { key } => json(&runner.archive_exists(&key).await?),
        Job::CreateVolume { id } => {
            runner.create_volume(&id).await?;
            Value::Null
        }
        Job::DeleteVolume { id } => {
            runner.delete_volume(&id).await?;
            Value::Null
        }
    })
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("job results serialize")
}

/// A build log kept in memory, sent with the build's result (the API stores each line once,
/// so lines `live` already delivered are not repeated).
struct CollectedLog {
    lines: Mutex<Vec<String>>,
    live: Option<Arc<dyn BuildLog>>,
}

impl BuildLog for CollectedLog {
    fn line(&self, line: &str) {
        self.lines.lock().expect("log lock").push(line.to_owned());
        if let Some(live) = &self.live {
            live.line(line);
        }
    }
}

/// A sandbox as a runner reports it in its health checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedSandbox {
    pub id: String,
    /// `started`, `stopped` or `paused`.
    pub state: String,
    #[serde(default)]
    pub daemon_address: Option<SocketAddr>,
    #[serde(default)]
    pub oom_kills: u64,
}

/// The health check a runner sends (upstream's `RunnerHealthcheck`, plus its sandboxes and how
/// long the API may go without hearing from it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Healthcheck {
    pub app_version: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub api_url: Option<String>,
    #[serde(default)]
    pub proxy_url: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    pub metrics: Option<Metrics>,
    /// Seconds between the runner's polls (or health checks, whichever is longer apart): silence
    /// past this plus `RUNNER_HEALTH_TIMEOUT_SECONDS` makes the runner unresponsive.
    #[serde(default)]
    pub contact_interval_seconds: Option<u64>,
    #[serde(default)]
    pub sandboxes: Vec<ReportedSandbox>,
}

/// Capacity and usage (upstream's `RunnerHealthMetrics`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    pub current_cpu_load_average: f64,
    pub current_cpu_usage_percentage: f64,
    pub current_memory_usage_percentage: f64,
    pub current_disk_usage_percentage: f64,
    pub current_allocated_cpu: f64,
    #[serde(rename = "currentAllocatedMemoryGiB")]
    pub current_allocated_memory_gib: f64,
    #[serde(rename = "currentAllocatedDiskGiB")]
    pub current_allocated_disk_gib: f64,
    pub current_snapshot_count: f64,
    pub current_started_sandboxes: f64,
    pub cpu: f64,
    #[serde(rename = "memoryGiB")]
    pub memory_gib: f64,
    #[serde(rename = "diskGiB")]
    pub disk_gib: f64,
}

/// A job as the API hands it out (upstream's `Job`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDto {
    pub id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub status: String,
    pub resource_type: String,
    pub resource_id: String,
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The W3C trace context (`traceparent`, `tracestate`) of the request that created the job.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub trace_context: HashMap<String, String>,
}

/// `GET /jobs/poll`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollJobsResponse {
    pub jobs: Vec<JobDto>,
}

/// `POST /jobs/{id}/logs`'s body: lines of a build job's log while it runs, numbered from
/// `offset` (the first line of the job is 0).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobLogLines {
    pub offset: u64,
    pub lines: Vec<String>,
}

/// `POST /jobs/{id}/status`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateJobStatus {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The result as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_metadata: Option<String>,
}

/// Job states (upstream's `JobStatus`).
pub mod status {
    pub const PENDING: &str = "PENDING";
    pub const IN_PROGRESS: &str = "IN_PROGRESS";
    pub const COMPLETED: &str = "COMPLETED";
    pub const FAILED: &str = "FAILED";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_travel_as_type_and_payload() {
        let job = Job::ResizeSandbox {
            id: "sb-1".into(),
            resize: Resize {
                cpu: Some(2),
                memory_gib: None,
                disk_gib: None,
            },
        };
        let encoded = job.encode();
        assert_eq!(encoded.job_type, "RESIZE_SANDBOX");
        assert_eq!(encoded.resource_id, "sb-1");
        let back = Job::decode(&encoded.job_type, &encoded.payload).unwrap();
        assert!(
            matches!(back, Job::ResizeSandbox { id, resize } if id == "sb-1" && resize.cpu == Some(2))
        );
    }

    #[test]
    fn an_unknown_type_or_bad_payload_names_the_job() {
        let err = Job::decode("LAUNCH_ROCKET", "{}").unwrap_err();
        assert!(err.to_string().contains("LAUNCH_ROCKET"), "{err}");
        let err = Job::decode("STOP_SANDBOX", "{\"id\": 3}").unwrap_err();
        assert!(err.to_string().starts_with("job STOP_SANDBOX"), "{err}");
    }
}
