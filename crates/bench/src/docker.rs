//! The same measurements on a Docker engine (`docker run -d` + `docker exec true`, `docker exec`
//! round trips, idle memory per container) and their ratio to the native numbers of this run.
//! Uses the `docker` CLI against whatever engine `DOCKER_HOST` names (scripts/bench.sh starts one).

use std::time::Instant;

use futures::StreamExt;

use crate::Options;
use crate::error::{BenchError, Result};
use crate::host;
use crate::report::{Report, SectionReport};
use crate::sections::ms_since;

const LABEL: &str = "daytona-bench=1";
const PARALLEL: usize = 4;

async fn docker(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .map_err(|e| BenchError::Tool {
            tool: "docker".into(),
            detail: format!("cannot run: {e}"),
        })?;
    if !out.status.success() {
        return Err(BenchError::Tool {
            tool: format!("docker {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker run -d` of an idle container; returns its id.
async fn run_container(image: &str) -> Result<String> {
    docker(&["run", "-d", "--label", LABEL, image, "sleep", "infinity"]).await
}

async fn remove(ids: &[String]) -> Result<()> {
    for chunk in ids.chunks(50) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk.iter().map(String::as_str));
        docker(&args).await?;
    }
    Ok(())
}

pub async fn run(opts: &Options, native: &Report) -> Result<SectionReport> {
    let version = docker(&["version", "--format", "{{.Server.Version}}"])
        .await
        .map_err(|e| BenchError::Tool {
            tool: "docker".into(),
            detail: format!("no Docker engine answers (scripts/bench.sh --docker starts one): {e}"),
        })?;
    let image = opts.docker_image.as_str();
    docker(&["image", "inspect", "--format", "{{.Id}}", image]).await?;
    let mut report = SectionReport::new("docker", format!("Docker {version}, image {image}"));
    let mut created = Vec::new();
    let result = measure(opts, image, &mut report, &mut created).await;
    remove(&created).await?;
    result?;
    ratios(native, &mut report);
    Ok(report)
}

async fn measure(
    opts: &Options,
    image: &str,
    report: &mut SectionReport,
    created: &mut Vec<String>,
) -> Result<()> {
    // create-to-first-exec, sequential, after one warm-up container.
    let (mut total, mut delete) = (Vec::new(), Vec::new());
    for i in 0..=opts.runs {
        let t0 = Instant::now();
        let id = run_container(image).await?;
        created.push(id.clone());
        docker(&["exec", &id, "true"]).await?;
        let ms = ms_since(t0);
        let t0 = Instant::now();
        remove(std::slice::from_ref(&id)).await?;
        created.pop();
        if i > 0 {
            total.push(ms);
            delete.push(ms_since(t0));
        }
    }
    report.metric("docker run -d + exec true (sequential)", "ms", total);
    report.metric("docker rm -f", "ms", delete);

    // exec round trip on one running container.
    let id = run_container(image).await?;
    created.push(id.clone());
    let mut exec = Vec::new();
    for i in 0..opts.exec_runs + 5 {
        let t0 = Instant::now();
        docker(&["exec", &id, "true"]).await?;
        if i >= 5 {
            exec.push(ms_since(t0));
        }
    }
    report.metric("docker exec true", "ms", exec);
    remove(&[id]).await?;
    created.clear();

    // idle containers: their cgroups, the shims, and the engine's growth.
    let engine = |names: &[&str]| -> u64 {
        names
            .iter()
            .flat_map(|n| host::pids_named(n))
            .filter_map(|pid| host::rss_kib(pid).ok())
            .sum()
    };
    let engine_before = engine(&["dockerd", "containerd"]);
    let shims_before: Vec<u32> = host::pids_named("containerd-shim");
    let n = opts.idle.max(1);
    let results: Vec<Result<String>> = futures::stream::iter(0..n)
        .map(|_| run_container(image))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for r in results {
        created.push(r?);
    }
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (mut pss, mut kernel) = (Vec::new(), Vec::new());
    for id in created.iter() {
        let pid: u32 = docker(&["inspect", "--format", "{{.State.Pid}}", id])
            .await?
            .parse()
            .map_err(|e| BenchError::Tool {
                tool: "docker inspect".into(),
                detail: format!("pid of {id}: {e}"),
            })?;
        let m = host::cgroup_memory(&host::memory_cgroup_of(pid)?)?;
        pss.push(mib(m.pss_kib));
        kernel.push(mib(m.kernel_kib));
    }
    let shims: u64 = host::pids_named("containerd-shim")
        .into_iter()
        .filter(|p| !shims_before.contains(p))
        .filter_map(|p| host::pss_kib(p).ok())
        .sum();
    let engine_growth = engine(&["dockerd", "containerd"]).saturating_sub(engine_before);
    let total =
        pss.iter().sum::<f64>() + kernel.iter().sum::<f64>() + mib(shims) + mib(engine_growth);
    report.metric(
        "overhead per container (PSS + cgroup kernel + shims + engine growth)",
        "MiB",
        vec![total / n as f64],
    );
    report.metric("  PSS of the container's processes", "MiB", pss);
    report.metric("  cgroup kernel memory", "MiB", kernel);
    report.metric(
        "  containerd-shim PSS / N",
        "MiB",
        vec![mib(shims) / n as f64],
    );
    report.metric(
        "  dockerd + containerd RSS growth / N",
        "MiB",
        vec![mib(engine_growth) / n as f64],
    );
    crate::report_healthy(
        report,
        n,
        created
            .iter()
            .map(|id| async move { docker(&["exec", id, "true"]).await.is_ok() }),
    )
    .await;
    report.note("docker timings include starting the docker CLI process for every call");
    Ok(())
}

/// Native median / docker median for the numbers both sides measured in this run.
fn ratios(native: &Report, report: &mut SectionReport) {
    let pairs = [
        (
            "create",
            "create-to-first-exec (sequential)",
            "docker run -d + exec true (sequential)",
        ),
        ("exec", "exec `true`", "docker exec true"),
        (
            "idle",
            "overhead per sandbox (PSS + cgroup kernel + server RSS growth)",
            "overhead per container (PSS + cgroup kernel + shims + engine growth)",
        ),
    ];
    for (section, ours, theirs) in pairs {
        let ours = native
            .sections
            .iter()
            .find(|s| s.section == section)
            .and_then(|s| s.median_of(ours));
        match (ours, report.median_of(theirs)) {
            (Some(a), Some(b)) if b > 0.0 => {
                report.metric(format!("ratio native/docker: {section}"), "x", vec![a / b]);
            }
            _ => report.note(format!("no ratio for {section}: run that section too")),
        }
    }
}
