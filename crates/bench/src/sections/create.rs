//! Create-to-first-exec: `POST /sandbox`, wait for `started`, `exec("true")`.

use std::time::Instant;

use super::ms_since;
use crate::client::Client;
use crate::error::Result;
use crate::report::SectionReport;
use crate::{Options, Tracker};

const LABEL: &str = "create-to-exec";

/// One sandbox's timeline, ms.
struct Timing {
    create: f64,
    first_exec: f64,
    total: f64,
}

async fn create_then_exec(client: &Client, tracker: &Tracker) -> Result<(String, Timing)> {
    let t0 = Instant::now();
    let sb = tracker.create(client, LABEL).await?;
    let create = ms_since(t0);
    let t1 = Instant::now();
    client.exec_ok(&sb, "true").await?;
    let first_exec = ms_since(t1);
    Ok((
        sb.id,
        Timing {
            create,
            first_exec,
            total: ms_since(t0),
        },
    ))
}

pub async fn run(client: &Client, tracker: &Tracker, opts: &Options) -> Result<SectionReport> {
    let mut report = SectionReport::new(
        "create",
        "create-to-first-exec (create, wait for started, exec true)",
    );

    // The server's first sandbox may pay for unpacking the base image: reported, not aggregated.
    let (id, first) = create_then_exec(client, tracker).await?;
    tracker.delete(client, &id).await?;
    report.note(format!(
        "warm-up sandbox (may include the image import): {:.1} ms",
        first.total
    ));

    let (mut create, mut first_exec, mut total, mut delete) = (vec![], vec![], vec![], vec![]);
    for _ in 0..opts.runs {
        let (id, t) = create_then_exec(client, tracker).await?;
        create.push(t.create);
        first_exec.push(t.first_exec);
        total.push(t.total);
        let t0 = Instant::now();
        tracker.delete(client, &id).await?;
        delete.push(ms_since(t0));
    }
    report.metric("create-to-first-exec (sequential)", "ms", total);
    report.metric("  create (POST until started)", "ms", create);
    report.metric("  first exec", "ms", first_exec);
    report.metric("delete (until destroyed)", "ms", delete);

    if opts.burst > 0 {
        let t0 = Instant::now();
        let results =
            futures::future::join_all((0..opts.burst).map(|_| create_then_exec(client, tracker)))
                .await;
        let wall = ms_since(t0);
        let mut ids = Vec::new();
        let mut burst_total = Vec::new();
        let mut first_error = None;
        for r in results {
            match r {
                Ok((id, t)) => {
                    ids.push(id);
                    burst_total.push(t.total);
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        tracker.delete_all(client, &ids, 8).await?;
        if let Some(e) = first_error {
            return Err(e);
        }
        report.metric(
            format!("create-to-first-exec (burst of {} at once)", opts.burst),
            "ms",
            burst_total,
        );
        report.metric("burst: all started and exec'd", "ms", vec![wall]);
    }
    report.note("target (issue 3): create-to-first-exec median < 50 ms on this 2-core machine");
    Ok(report)
}
