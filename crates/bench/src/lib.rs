//! `daytona-bench`: measures a running daytona server through the same HTTP calls the official
//! SDK makes, prints one table per section and can write every raw sample as JSON.
//!
//! Sections: `create` (create-to-first-exec, sequential and burst), `exec` (exec and code-run
//! round trips), `transfer` (upload/download through the proxy vs a local copy), `proxy`
//! (preview proxy vs direct, driven by hey), `idle` (memory per idle sandbox, health of N at
//! once) and `docker` (the same on a Docker engine, for comparison).

pub mod client;
pub mod docker;
pub mod error;
pub mod host;
pub mod load;
pub mod report;
pub mod sections;
pub mod stats;

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use client::{Client, Sandbox};
use error::{BenchError, Result};
use report::{Machine, Report, SectionReport};

/// A part of the benchmark, selectable with `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Create,
    Exec,
    Transfer,
    Proxy,
    Idle,
    Docker,
}

impl Section {
    pub const ALL: [Section; 6] = [
        Section::Create,
        Section::Exec,
        Section::Transfer,
        Section::Proxy,
        Section::Idle,
        Section::Docker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Create => "create",
            Section::Exec => "exec",
            Section::Transfer => "transfer",
            Section::Proxy => "proxy",
            Section::Idle => "idle",
            Section::Docker => "docker",
        }
    }
}

impl FromStr for Section {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Section> {
        Section::ALL
            .into_iter()
            .find(|sec| sec.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Section::ALL.iter().map(|s| s.name()).collect();
                BenchError::Usage(format!(
                    "unknown section '{s}' (one of {})",
                    names.join(", ")
                ))
            })
    }
}

/// Everything a run needs; `main` fills it from flags and environment.
#[derive(Debug, Clone)]
pub struct Options {
    pub api_url: String,
    pub api_key: String,
    /// Sequential create-to-first-exec runs.
    pub runs: usize,
    /// Concurrent creates in the burst.
    pub burst: usize,
    /// Idle sandboxes held at once.
    pub idle: usize,
    /// Exec round trips on one running sandbox.
    pub exec_runs: usize,
    /// Size of the large transfer (MiB); the small one is always 1 MiB.
    pub large_transfer_mib: u64,
    /// Requests per load run (proxy section) and their concurrency.
    pub requests: usize,
    pub concurrency: usize,
    pub sections: Vec<Section>,
    /// The server process, for its RSS growth in the idle section.
    pub server_pid: Option<u32>,
    /// Where test files for the transfer section go.
    pub scratch_dir: PathBuf,
    /// Docker image (already loaded) for the docker section.
    pub docker_image: String,
}

/// Sandboxes this run created and has not deleted yet, so a failing section leaves none behind.
#[derive(Clone, Default)]
pub struct Tracker {
    live: Arc<Mutex<HashSet<String>>>,
}

impl Tracker {
    pub async fn create(&self, client: &Client, label: &str) -> Result<Sandbox> {
        let dto = client.create_sandbox(label).await?;
        self.live
            .lock()
            .expect("tracker lock")
            .insert(dto.id.clone());
        client.wait_started(dto).await
    }

    pub async fn delete(&self, client: &Client, id: &str) -> Result<()> {
        client.delete_sandbox(id).await?;
        self.live.lock().expect("tracker lock").remove(id);
        Ok(())
    }

    /// Deletes `ids` with at most `parallel` deletes in flight.
    pub async fn delete_all(&self, client: &Client, ids: &[String], parallel: usize) -> Result<()> {
        use futures::StreamExt;
        let results: Vec<Result<()>> = futures::stream::iter(ids)
            .map(|id| self.delete(client, id))
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Best-effort delete of whatever is left (after a failure).
    pub async fn cleanup(&self, client: &Client) {
        let left: Vec<String> = self
            .live
            .lock()
            .expect("tracker lock")
            .iter()
            .cloned()
            .collect();
        if left.is_empty() {
            return;
        }
        tracing::warn!(
            count = left.len(),
            "deleting sandboxes left by a failed section"
        );
        if let Err(e) = self.delete_all(client, &left, 8).await {
            tracing::error!(error = %e, "cleanup failed; delete the sandboxes labelled bench=* by hand");
        }
    }
}

/// Runs the selected sections in order; `on_section` sees each result as soon as it is ready
/// (a failed section is reported and the run goes on).
pub async fn run(
    opts: &Options,
    mut on_section: impl FnMut(&std::result::Result<SectionReport, (Section, BenchError)>),
) -> Result<(Report, usize)> {
    let client = Client::new(&opts.api_url, &opts.api_key)?;
    let needs_server = opts.sections.iter().any(|s| *s != Section::Docker);
    if needs_server {
        client.health().await?;
    }
    let tracker = Tracker::default();
    let mut report = Report {
        machine: Machine::current(),
        api_url: opts.api_url.clone(),
        sections: Vec::new(),
    };
    let mut failures = 0;
    for &section in &opts.sections {
        tracing::info!(section = section.name(), "running");
        let result = match section {
            Section::Create => sections::create::run(&client, &tracker, opts).await,
            Section::Exec => sections::exec::run(&client, &tracker, opts).await,
            Section::Transfer => sections::transfer::run(&client, &tracker, opts).await,
            Section::Proxy => sections::proxy::run(&client, &tracker, opts).await,
            Section::Idle => sections::idle::run(&client, &tracker, opts).await,
            Section::Docker => docker::run(opts, &report).await,
        }
        .map_err(|e| (section, e));
        if result.is_err() {
            failures += 1;
            tracker.cleanup(&client).await;
        }
        on_section(&result);
        if let Ok(s) = result {
            report.sections.push(s);
        }
    }
    Ok((report, failures))
}

/// Runs `checks` (a few at a time) and records how many passed as "healthy at the end" of `n`.
pub(crate) async fn report_healthy<F>(
    report: &mut SectionReport,
    n: usize,
    checks: impl IntoIterator<Item = F>,
) -> usize
where
    F: std::future::Future<Output = bool>,
{
    use futures::StreamExt;
    let healthy = futures::stream::iter(checks)
        .buffer_unordered(4)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    report.metric(
        format!("healthy at the end (exec true), of {n}"),
        "count",
        vec![healthy as f64],
    );
    healthy
}
