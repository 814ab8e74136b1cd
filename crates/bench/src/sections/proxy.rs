//! Preview proxy overhead: a small HTTP response from `python3 -m http.server` inside a sandbox,
//! through the preview proxy and straight to the sandbox's address.

use std::time::{Duration, Instant};

use crate::client::{Client, Sandbox};
use crate::error::{BenchError, Result};
use crate::load::{self, LoadResult, Target};
use crate::report::SectionReport;
use crate::stats::Summary;
use crate::{Options, Tracker};

const PORT: u16 = 8000;
const BODY: &str = "hello from the sandbox";
const SERVER_START: Duration = Duration::from_secs(20);

pub async fn run(client: &Client, tracker: &Tracker, opts: &Options) -> Result<SectionReport> {
    let sb = tracker.create(client, "proxy").await?;
    let result = measure(client, &sb, opts).await;
    tracker.delete(client, &sb.id).await?;
    result
}

async fn measure(client: &Client, sb: &Sandbox, opts: &Options) -> Result<SectionReport> {
    client
        .exec_ok(
            sb,
            &format!("mkdir -p /tmp/www && echo '{BODY}' > /tmp/www/index.txt"),
        )
        .await?;
    client
        .start_background(
            sb,
            "http",
            &format!("cd /tmp/www && exec python3 -m http.server {PORT} --bind 0.0.0.0 > /tmp/http.log 2>&1"),
        )
        .await?;
    wait_listening(client, sb).await?;
    let ip = client.exec_ok(sb, "hostname -I").await?;
    let ip = ip
        .split_whitespace()
        .next()
        .ok_or_else(|| BenchError::Response {
            what: "hostname -I".into(),
            detail: "no address".into(),
        })?;

    let preview = client.preview_url(sb, PORT).await?;
    let direct = Target {
        url: format!("http://{ip}:{PORT}/index.txt"),
        host: None,
        headers: vec![],
    };
    // The preview host routes; the TCP connection goes to the proxy (the toolbox URL's origin),
    // so no wildcard DNS is needed.
    let proxied = Target {
        url: format!("{}/index.txt", origin(&sb.toolbox)?),
        host: Some(authority(&preview.url)?.to_string()),
        headers: vec![("X-Daytona-Preview-Token".into(), preview.token.clone())],
    };

    let http = client.http();
    let (n, c) = (opts.requests, opts.concurrency);
    // Warm both paths (connection pools, the proxy's lookups, the page cache).
    for target in [&direct, &proxied] {
        check(&load::run(http, target, (n / 10).max(c), c).await?, target)?;
    }
    let d = load::run(http, &direct, n, c).await?;
    check(&d, &direct)?;
    let p = load::run(http, &proxied, n, c).await?;
    check(&p, &proxied)?;

    let mut report = SectionReport::new(
        "proxy",
        format!(
            "preview proxy vs direct ({n} requests, {c} concurrent, {} via {})",
            "23-byte file", d.tool
        ),
    );
    report.metric("direct: latency", "ms", d.latencies_ms.clone());
    report.metric("proxied: latency", "ms", p.latencies_ms.clone());
    report.metric("direct: throughput", "req/s", vec![d.requests_per_s()]);
    report.metric("proxied: throughput", "req/s", vec![p.requests_per_s()]);
    let (ds, ps) = (summary(&d)?, summary(&p)?);
    report.metric("added latency (median)", "ms", vec![ps.median - ds.median]);
    report.metric("added latency (p99)", "ms", vec![ps.p99 - ds.p99]);
    report.note("python http.server has a listen backlog of 5: keep --concurrency small");
    Ok(report)
}

fn check(r: &LoadResult, target: &Target) -> Result<()> {
    if r.errors > 0 || r.latencies_ms.is_empty() {
        return Err(BenchError::Tool {
            tool: r.tool.into(),
            detail: format!(
                "{} of {} requests to {} (host {:?}) failed",
                r.errors,
                r.errors + r.latencies_ms.len(),
                target.url,
                target.host
            ),
        });
    }
    Ok(())
}

fn summary(r: &LoadResult) -> Result<Summary> {
    Summary::of(&r.latencies_ms).ok_or_else(|| BenchError::Tool {
        tool: r.tool.into(),
        detail: "no successful requests".into(),
    })
}

/// Polls until the server in the sandbox accepts connections.
async fn wait_listening(client: &Client, sb: &Sandbox) -> Result<()> {
    let probe =
        format!("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {PORT}), 1)'");
    let deadline = Instant::now() + SERVER_START;
    loop {
        if client.exec(sb, &probe).await?.exit_code == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = client.exec(sb, "cat /tmp/http.log").await?.result;
            return Err(BenchError::Timeout {
                what: format!(
                    "http.server in sandbox {} listening (log: {})",
                    sb.id,
                    log.trim()
                ),
                after: SERVER_START,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `host[:port]` of an absolute URL.
fn authority(url: &str) -> Result<&str> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Response {
            what: "preview URL".into(),
            detail: format!("not an absolute URL: {url}"),
        })?;
    Ok(rest.split(['/', '?']).next().unwrap_or(rest))
}

/// `scheme://host[:port]` of an absolute URL.
fn origin(url: &str) -> Result<String> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("http");
    Ok(format!("{scheme}://{}", authority(url)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts() {
        assert_eq!(
            authority("http://8000-abc.proxy.localhost:4000/").unwrap(),
            "8000-abc.proxy.localhost:4000"
        );
        assert_eq!(authority("https://h.example?x=1").unwrap(), "h.example");
        assert_eq!(
            origin("http://127.0.0.1:4000/toolbox/abc").unwrap(),
            "http://127.0.0.1:4000"
        );
        assert!(authority("no-scheme").is_err());
    }
}
