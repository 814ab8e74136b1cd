//! Memory per idle sandbox and whether N idle sandboxes stay healthy at once.
//!
//! Per-sandbox overhead = (sum of the PSS of every process in the sandboxes + the kernel memory
//! their cgroups report + the server's RSS growth) / N. The host's `MemTotal - MemAvailable`
//! growth is shown as a cross-check (it also sees page cache, loop devices and everything else
//! running on the machine) and so does the host's kernel memory (slab, stacks, page tables),
//! which catches what no cgroup is charged for; both are noisy while other work runs.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::ms_since;
use crate::client::{Client, Sandbox};
use crate::error::{BenchError, Result};
use crate::host;
use crate::report::SectionReport;
use crate::{Options, Tracker};

/// Creates (and health checks) in flight at once.
const PARALLEL: usize = 4;
/// Time for the sandboxes to settle into idle before memory is read.
const SETTLE: Duration = Duration::from_secs(5);

pub async fn run(client: &Client, tracker: &Tracker, opts: &Options) -> Result<SectionReport> {
    let n = opts.idle;
    if n == 0 {
        return Err(BenchError::Usage(
            "--idle must be at least 1 for the idle section".into(),
        ));
    }
    let server_before = opts.server_pid.map(host::rss_kib).transpose()?;
    let host_before = (host::host_used_kib(), host::host_kernel_kib());

    let t0 = Instant::now();
    let created: Vec<Result<(Sandbox, f64)>> = futures::stream::iter(0..n)
        .map(|_| async {
            let t = Instant::now();
            let sb = tracker.create(client, "idle").await?;
            Ok((sb, ms_since(t)))
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let fill_ms = ms_since(t0);
    let mut sandboxes = Vec::new();
    let mut create_ms = Vec::new();
    let mut first_error = None;
    for r in created {
        match r {
            Ok((sb, ms)) => {
                sandboxes.push(sb);
                create_ms.push(ms);
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    let result = match first_error {
        Some(e) => Err(e),
        None => {
            tokio::time::sleep(SETTLE).await;
            measure(client, &sandboxes, opts, server_before, host_before).await
        }
    };
    let ids: Vec<String> = sandboxes.iter().map(|s| s.id.clone()).collect();
    let t0 = Instant::now();
    tracker.delete_all(client, &ids, PARALLEL).await?;
    let delete_ms = ms_since(t0);

    let mut report = result?;
    report.metric(format!("create while filling to {n}"), "ms", create_ms);
    report.metric(
        format!("fill: {n} sandboxes, {PARALLEL} creates at a time"),
        "ms",
        vec![fill_ms],
    );
    report.metric(format!("delete all {n}"), "ms", vec![delete_ms]);
    report.note("target (issue 3): < 8 MiB per idle sandbox, 200 idle sandboxes at once");
    Ok(report)
}

async fn measure(
    client: &Client,
    sandboxes: &[Sandbox],
    opts: &Options,
    server_before: Option<u64>,
    host_before: (Option<u64>, Option<u64>),
) -> Result<SectionReport> {
    let n = sandboxes.len();
    let mut report = SectionReport::new("idle", format!("{n} idle sandboxes at once"));
    let mib = |kib: u64| kib as f64 / 1024.0;

    let mut pss = Vec::with_capacity(n);
    let mut rss = Vec::with_capacity(n);
    let mut kernel = Vec::with_capacity(n);
    let mut file = Vec::with_capacity(n);
    let mut procs = Vec::with_capacity(n);
    for sb in sandboxes {
        let m = host::sandbox_memory(&sb.id)?;
        pss.push(mib(m.pss_kib));
        rss.push(mib(m.rss_kib));
        kernel.push(mib(m.kernel_kib));
        file.push(mib(m.file_kib));
        procs.push(m.processes as f64);
    }
    // Signed: other work on the machine can free more than the sandboxes took.
    let growth = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) => Some((a as f64 - b as f64) / 1024.0 / n as f64),
        _ => None,
    };
    let host_growth = growth(host_before.0, host::host_used_kib());
    let kernel_growth = growth(host_before.1, host::host_kernel_kib());
    let server_growth = match (opts.server_pid, server_before) {
        (Some(pid), Some(before)) => Some(mib(host::rss_kib(pid)?.saturating_sub(before))),
        _ => None,
    };

    let total: f64 =
        pss.iter().sum::<f64>() + kernel.iter().sum::<f64>() + server_growth.unwrap_or(0.0);
    report.metric(
        "overhead per sandbox (PSS + cgroup kernel + server RSS growth)",
        "MiB",
        vec![total / n as f64],
    );
    report.metric("  PSS of the sandbox's processes", "MiB", pss);
    report.metric("  cgroup kernel memory", "MiB", kernel);
    match server_growth {
        Some(g) => report.metric("  server RSS growth / N", "MiB", vec![g / n as f64]),
        None => report.note("server RSS growth not measured: pass --server-pid"),
    }
    report.metric(
        "RSS of the sandbox's processes (shared pages in full)",
        "MiB",
        rss,
    );
    report.metric(
        "page cache charged to the cgroup (not counted)",
        "MiB",
        file,
    );
    report.metric("processes per sandbox", "count", procs);
    if let Some(g) = host_growth {
        report.metric("host used memory growth / N (cross-check)", "MiB", vec![g]);
    }
    if let Some(g) = kernel_growth {
        report.metric(
            "host kernel memory growth / N (cross-check)",
            "MiB",
            vec![g],
        );
    }

    // Every sandbox must still answer at the end.
    let healthy = crate::report_healthy(
        &mut report,
        n,
        sandboxes
            .iter()
            .map(|sb| async move { client.exec_ok(sb, "true").await.is_ok() }),
    )
    .await;
    if healthy < n {
        report.note(format!(
            "{} of {n} sandboxes did not answer exec",
            n - healthy
        ));
    }
    Ok(report)
}
