//! Jobs in the store, and the wake-ups around them: a runner's poll wakes when a job for it is
//! created, a caller waiting for a job wakes when its outcome arrives, on whichever API process
//! that happened (the wake-ups travel through the [`Cluster`]). Both also re-read the store
//! every second, so a lost wake-up (or a job from before a restart) only delays them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daytona_runner::RunnerError;
use daytona_runner::jobs::{Job, status};
use serde::de::DeserializeOwned;

use futures::StreamExt;

use crate::cluster::{Cluster, channel};
use crate::store::{JobRow, Store, now};

/// How often waiters re-read the store when no wake-up came.
const RECHECK: Duration = Duration::from_secs(1);

type Waiters = Arc<Mutex<HashMap<String, Arc<tokio::sync::Notify>>>>;

pub struct JobHub {
    cluster: Arc<dyn Cluster>,
    /// Per runner: woken when a job for it is created.
    runners: Waiters,
    /// Per job being waited for: woken when its outcome is recorded.
    jobs: Waiters,
}

fn notify_of(map: &Waiters, key: &str) -> Arc<tokio::sync::Notify> {
    map.lock()
        .expect("notify map")
        .entry(key.to_owned())
        .or_default()
        .clone()
}

/// Wakes this process's waiters for each key published on `channel`.
fn relay(cluster: &Arc<dyn Cluster>, channel: &'static str, waiters: Waiters, create: bool) {
    let mut keys = cluster.subscribe(channel);
    tokio::spawn(async move {
        while let Some(key) = keys.next().await {
            // A runner's poll registers its waiter once per round, so one that is between
            // rounds still finds the key; a job nobody here waits for needs no waiter.
            let waiter = if create {
                Some(notify_of(&waiters, &key))
            } else {
                waiters.lock().expect("notify map").get(&key).cloned()
            };
            if let Some(waiter) = waiter {
                waiter.notify_waiters();
            }
        }
    });
}

impl JobHub {
    /// Must be called inside a Tokio runtime: relays the cluster's wake-ups.
    pub fn new(cluster: Arc<dyn Cluster>) -> Self {
        let hub = JobHub {
            cluster,
            runners: Waiters::default(),
            jobs: Waiters::default(),
        };
        relay(
            &hub.cluster,
            channel::RUNNER_JOBS,
            hub.runners.clone(),
            true,
        );
        relay(&hub.cluster, channel::JOB_FINISHED, hub.jobs.clone(), false);
        hub
    }

    /// Stores `job` for `runner_id` and wakes the runner's poll.
    pub async fn submit(
        &self,
        store: &Store,
        runner_id: &str,
        job: &Job,
    ) -> Result<String, sqlx::Error> {
        let encoded = job.encode();
        let ts = now();
        let row = JobRow {
            id: uuid::Uuid::new_v4().to_string(),
            runner_id: runner_id.to_owned(),
            job_type: encoded.job_type,
            resource_id: encoded.resource_id,
            payload: encoded.payload,
            state: status::PENDING.into(),
            result: None,
            error_message: None,
            created_at: ts.clone(),
            updated_at: ts,
            started_at: None,
            completed_at: None,
            // The runner's run of the job continues the trace of the request that asked for it.
            trace_context: serde_json::json!(daytona_telemetry::trace_context()),
        };
        store.insert_job(&row).await?;
        tracing::debug!(job = %row.id, runner = runner_id, job_type = %row.job_type, "job created");
        self.cluster
            .publish(channel::RUNNER_JOBS, runner_id.to_owned());
        Ok(row.id)
    }

    /// Takes up to `limit` pending jobs of `runner_id`, waiting up to `timeout` for one.
    pub async fn poll(
        &self,
        store: &Store,
        runner_id: &str,
        limit: i64,
        timeout: Duration,
    ) -> Result<Vec<JobRow>, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let wake = notify_of(&self.runners, runner_id);
        loop {
            // Registered before the store is read, so a job created in between still wakes us.
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let jobs = store.claim_jobs(runner_id, limit).await?;
            let now = tokio::time::Instant::now();
            if !jobs.is_empty() || now >= deadline {
                return Ok(jobs);
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(RECHECK.min(deadline - now)) => {}
            }
        }
    }

    /// Records a runner's report of a job's outcome and wakes whoever waits for it; false when
    /// the job was not unfinished.
    pub async fn finish(
        &self,
        store: &Store,
        job_id: &str,
        runner_id: &str,
        succeeded: bool,
        result: Option<&str>,
        error_message: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let state = if succeeded {
            status::COMPLETED
        } else {
            status::FAILED
        };
        let finished = store
            .finish_job(job_id, runner_id, state, result, error_message)
            .await?;
        self.cluster
            .publish(channel::JOB_FINISHED, job_id.to_owned());
        Ok(finished)
    }

    /// Waits for job `job_id` to finish. `runner_gone` is asked every second whether the runner
    /// stopped answering: then a job it has not taken is cancelled and the wait ends with that
    /// reason (a taken job is run again when the runner comes back; its outcome is then only
    /// recorded).
    pub async fn wait<F, Fut>(
        &self,
        store: &Store,
        job_id: &str,
        runner_gone: F,
    ) -> Result<JobRow, RunnerError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<String>>,
    {
        let wake = notify_of(&self.jobs, job_id);
        let result = async {
            loop {
                let woken = wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let job = store
                    .job_by_id(job_id)
                    .await
                    .map_err(|e| RunnerError::Unavailable(format!("job {job_id}: {e}")))?
                    .ok_or_else(|| RunnerError::Unavailable(format!("job {job_id} vanished")))?;
                if matches!(job.state.as_str(), status::COMPLETED | status::FAILED) {
                    return Ok(job);
                }
                if let Some(reason) = runner_gone().await {
                    let _ = store.cancel_pending_job(job_id, &reason).await;
                    return Err(RunnerError::Unavailable(reason));
                }
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(RECHECK) => {}
                }
            }
        }
        .await;
        self.jobs.lock().expect("notify map").remove(job_id);
        result
    }
}

/// The outcome of a finished job as the caller's type: its result, or its error as the
/// runner reported it.
pub fn outcome<T: DeserializeOwned>(job: &JobRow) -> Result<T, RunnerError> {
    if job.state == status::FAILED {
        return Err(RunnerError::Remote(
            job.error_message
                .clone()
                .unwrap_or_else(|| format!("job {} ({}) failed", job.id, job.job_type)),
        ));
    }
    serde_json::from_str(job.result.as_deref().unwrap_or("null")).map_err(|e| {
        RunnerError::Remote(format!(
            "job {} ({}) returned an unreadable result: {e}",
            job.id, job.job_type
        ))
    })
}
