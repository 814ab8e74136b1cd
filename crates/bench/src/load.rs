//! HTTP load generation: `hey` (Debian's package) when installed, else a built-in client with
//! the same shape (fixed request count, fixed concurrency, keep-alive connections).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::error::{BenchError, Result};

/// Where the load goes: `url`, optionally with another `Host` header and extra headers.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct LoadResult {
    pub tool: &'static str,
    /// Per-request latency of successful (200) requests, ms.
    pub latencies_ms: Vec<f64>,
    /// From the first request's start to the last response's end, s.
    pub wall_s: f64,
    /// Requests that failed or did not answer 200.
    pub errors: usize,
}

impl LoadResult {
    pub fn requests_per_s(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.latencies_ms.len() as f64 / self.wall_s
        } else {
            0.0
        }
    }
}

/// Whether `hey` is on PATH.
pub fn hey_available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("hey").is_file()))
}

pub async fn run(
    http: &reqwest::Client,
    target: &Target,
    requests: usize,
    concurrency: usize,
) -> Result<LoadResult> {
    if hey_available() {
        run_hey(target, requests, concurrency).await
    } else {
        run_builtin(http, target, requests, concurrency).await
    }
}

async fn run_hey(target: &Target, requests: usize, concurrency: usize) -> Result<LoadResult> {
    let mut cmd = tokio::process::Command::new("hey");
    cmd.arg("-n")
        .arg(requests.to_string())
        .arg("-c")
        .arg(concurrency.to_string())
        .arg("-disable-compression")
        .args(["-o", "csv"]);
    if let Some(host) = &target.host {
        cmd.arg("-host").arg(host);
    }
    for (k, v) in &target.headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg(&target.url);
    let out = cmd.output().await.map_err(|e| BenchError::Tool {
        tool: "hey".into(),
        detail: format!("cannot run: {e}"),
    })?;
    if !out.status.success() {
        return Err(BenchError::Tool {
            tool: "hey".into(),
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
        });
    }
    parse_hey_csv(&String::from_utf8_lossy(&out.stdout))
}

/// hey's `-o csv`: `response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,
/// status-code,offset` per request, times in seconds, `offset` from the start of the run.
fn parse_hey_csv(text: &str) -> Result<LoadResult> {
    let bad = |detail: String| BenchError::Tool {
        tool: "hey".into(),
        detail,
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or_else(|| bad("empty output".into()))?;
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| c.trim() == name)
            .ok_or_else(|| bad(format!("no {name} column in {header:?}")))
    };
    let (time_col, status_col, offset_col) =
        (col("response-time")?, col("status-code")?, col("offset")?);
    let mut result = LoadResult {
        tool: "hey",
        latencies_ms: Vec::new(),
        wall_s: 0.0,
        errors: 0,
    };
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| -> Result<f64> {
            f.get(i)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad(format!("bad line {line:?}")))
        };
        let (secs, offset) = (num(time_col)?, num(offset_col)?);
        result.wall_s = result.wall_s.max(offset + secs);
        if f.get(status_col).map(|s| s.trim()) == Some("200") {
            result.latencies_ms.push(secs * 1000.0);
        } else {
            result.errors += 1;
        }
    }
    Ok(result)
}

async fn run_builtin(
    http: &reqwest::Client,
    target: &Target,
    requests: usize,
    concurrency: usize,
) -> Result<LoadResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers = (0..concurrency.max(1)).map(|_| {
        let (http, target, next) = (http.clone(), target.clone(), next.clone());
        tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let mut req = http.get(&target.url);
                if let Some(host) = &target.host {
                    req = req.header(reqwest::header::HOST, host);
                }
                for (k, v) in &target.headers {
                    req = req.header(k, v);
                }
                let t0 = Instant::now();
                let ok = match req.send().await {
                    Ok(resp) => resp.status() == 200 && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        })
    });
    let mut result = LoadResult {
        tool: "built-in",
        latencies_ms: Vec::new(),
        wall_s: 0.0,
        errors: 0,
    };
    for worker in futures::future::join_all(workers).await {
        let (latencies, errors) = worker.map_err(|e| BenchError::Tool {
            tool: "built-in load client".into(),
            detail: e.to_string(),
        })?;
        result.latencies_ms.extend(latencies);
        result.errors += errors;
    }
    result.wall_s = start.elapsed().as_secs_f64();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hey_csv_gives_latencies_wall_time_and_errors() {
        let csv = "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n\
                   0.0020,0.0001,0.0000,0.0000,0.0018,0.0000,200,0.0005\n\
                   0.0040,0.0000,0.0000,0.0000,0.0039,0.0000,200,0.0100\n\
                   0.0100,0.0000,0.0000,0.0000,0.0099,0.0000,502,0.0200\n";
        let r = parse_hey_csv(csv).unwrap();
        assert_eq!(r.latencies_ms.len(), 2);
        assert!((r.latencies_ms[0] - 2.0).abs() < 1e-9 && (r.latencies_ms[1] - 4.0).abs() < 1e-9);
        assert_eq!(r.errors, 1);
        assert!((r.wall_s - 0.03).abs() < 1e-9, "{}", r.wall_s);
        assert!((r.requests_per_s() - 2.0 / 0.03).abs() < 1e-6);
    }

    #[test]
    fn hey_output_without_columns_is_an_error() {
        assert!(parse_hey_csv("").is_err());
        assert!(parse_hey_csv("Summary:\n  Total: 1 secs\n").is_err());
    }

    #[tokio::test]
    async fn builtin_client_sends_host_and_headers() {
        use axum::http::HeaderMap;
        let app = axum::Router::new().route(
            "/x",
            axum::routing::get(|headers: HeaderMap| async move {
                let host =
                    headers.get("host").and_then(|v| v.to_str().ok()) == Some("8000-abc.proxy");
                let token = headers.get("x-token").is_some();
                if host && token {
                    (axum::http::StatusCode::OK, "ok")
                } else {
                    (axum::http::StatusCode::BAD_REQUEST, "no")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let http = reqwest::Client::new();
        let mut target = Target {
            url: format!("http://{addr}/x"),
            host: Some("8000-abc.proxy".into()),
            headers: vec![("x-token".into(), "t".into())],
        };
        let r = run_builtin(&http, &target, 25, 4).await.unwrap();
        assert_eq!((r.latencies_ms.len(), r.errors), (25, 0));
        assert!(r.requests_per_s() > 0.0);
        target.headers.clear();
        let r = run_builtin(&http, &target, 5, 2).await.unwrap();
        assert_eq!((r.latencies_ms.len(), r.errors), (0, 5));
    }
}
