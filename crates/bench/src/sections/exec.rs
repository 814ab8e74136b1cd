//! Toolbox round trips on a running sandbox: `exec("true")` and `code_run("print(1)")`.

use std::time::Instant;

use super::ms_since;
use crate::client::{Client, Sandbox};
use crate::error::{BenchError, Result};
use crate::report::SectionReport;
use crate::{Options, Tracker};

/// Untimed calls first (connection pool, page cache inside the sandbox).
const WARM_UP: usize = 5;

pub async fn run(client: &Client, tracker: &Tracker, opts: &Options) -> Result<SectionReport> {
    let sb = tracker.create(client, "exec").await?;
    let result = measure(client, &sb, opts).await;
    tracker.delete(client, &sb.id).await?;
    result
}

async fn measure(client: &Client, sb: &Sandbox, opts: &Options) -> Result<SectionReport> {
    let mut report = SectionReport::new(
        "exec",
        "toolbox round trips through the proxy (one running sandbox)",
    );
    for _ in 0..WARM_UP {
        client.exec_ok(sb, "true").await?;
    }
    let mut exec = Vec::with_capacity(opts.exec_runs);
    for _ in 0..opts.exec_runs {
        let t0 = Instant::now();
        client.exec_ok(sb, "true").await?;
        exec.push(ms_since(t0));
    }
    report.metric("exec `true`", "ms", exec);

    // code-run starts a Python interpreter per call, so it is far slower: fewer rounds.
    let code_runs = (opts.exec_runs / 4).max(3);
    let mut code = Vec::with_capacity(code_runs);
    for i in 0..code_runs + 1 {
        let t0 = Instant::now();
        let r = client.code_run(sb, "print(1)").await?;
        let elapsed = ms_since(t0);
        if r.exit_code != 0 || r.result.trim() != "1" {
            return Err(BenchError::Response {
                what: format!("code-run print(1) in {}", sb.id),
                detail: format!("exit code {}, output {:?}", r.exit_code, r.result),
            });
        }
        if i > 0 {
            code.push(elapsed); // the first run is the warm-up
        }
    }
    report.metric("code-run `print(1)` (python)", "ms", code);
    report.note("target (issue 3): exec round trip median < 5 ms");
    Ok(report)
}
