//! Snapshot work across API processes: a build another live process owns (it holds the
//! snapshot's lock) is left to it; one nobody owns is taken over, awaiting the runner's job an
//! earlier process gave instead of building again; a build waiting for a runner that passes
//! `RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD` says so in its log and names the threshold when it
//! gives up. Runs on every backend (see `common::test_stores`).

use std::sync::Arc;
use std::time::Duration;

use daytona_api::Store;
use daytona_api::cluster::{Cluster, InProcessCluster};
use daytona_api::runner::{Fleet, FleetSettings};
use daytona_api::snapshot::{BuildSettings, Builds, SnapshotService};
use daytona_api::store::{JobRow, SnapshotBuildRow, SnapshotRow, now};
use daytona_runner::jobs::{BuildOutcome, Healthcheck};
use daytona_runner::{CapturedImage, PulledImage};

mod common;
use common::{TestStore, add_org, test_stores};

const THRESHOLD_SETTING: &str = "RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD";

/// A fleet of one ready runner `r-1`, building only on runners scoring `build_threshold`.
async fn fleet(store: &Store, cluster: Arc<dyn Cluster>, build_threshold: i64) -> Arc<Fleet> {
    store
        .ensure_runner("r-1", "default", "us", "hash-1")
        .await
        .unwrap();
    let fleet = Fleet::new(
        store.clone(),
        FleetSettings {
            availability_score_threshold: 0,
            declarative_build_score_threshold: build_threshold,
            start_score_threshold: 0,
            health_timeout: Duration::from_secs(30),
            default_region: "us".into(),
            runner_wait: Duration::from_secs(2),
        },
        cluster,
    );
    let runner = store.runner_by_id("r-1").await.unwrap().unwrap();
    let report = Healthcheck {
        app_version: "test".into(),
        domain: None,
        api_url: None,
        proxy_url: None,
        region: None,
        metrics: None,
        contact_interval_seconds: Some(30),
        sandboxes: vec![],
    };
    fleet.healthcheck(&runner, &report).await.unwrap();
    fleet
}

fn service(store: &Store, fleet: Arc<Fleet>, cluster: Arc<dyn Cluster>) -> Arc<SnapshotService> {
    let builds = Builds::new(BuildSettings {
        timeout: Duration::from_secs(60),
        cpu: 1,
        memory_gib: 1,
        disk_gib: 3,
    });
    Arc::new(
        SnapshotService::new(store.clone(), fleet)
            .with_builds(builds)
            .with_cluster(cluster),
    )
}

/// A snapshot left `building` (with its definition) by a process that stopped.
async fn building_snapshot(store: &Store, org: &str) -> SnapshotRow {
    let ts = now();
    let row = SnapshotRow {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org.into(),
        general: false,
        name: format!("built-{}", uuid::Uuid::new_v4()),
        image_name: String::new(),
        state: "building".into(),
        error_reason: None,
        digest: None,
        size_bytes: None,
        entrypoint: None,
        cpu: 1,
        gpu: 0,
        mem: 1,
        disk: 3,
        created_at: ts.clone(),
        updated_at: ts.clone(),
        last_used_at: None,
        source_sandbox_id: None,
        internal_ref: None,
    };
    store.insert_snapshot(&row).await.unwrap();
    store
        .insert_snapshot_build(&SnapshotBuildRow {
            snapshot_id: row.id.clone(),
            organization_id: org.into(),
            build_ref: "ref".into(),
            dockerfile: "FROM base\nRUN sleep 1\n".into(),
            context_hashes: "[]".into(),
            created_at: ts.clone(),
            updated_at: ts,
        })
        .await
        .unwrap();
    row
}

async fn log_of(store: &Store, id: &str) -> Vec<String> {
    let lines = store.build_log_after(id, 0, 1000).await.unwrap();
    lines.into_iter().map(|(_, line)| line).collect()
}

async fn wait_until_not_building(store: &Store, id: &str) -> SnapshotRow {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = store.snapshot_by_id(id).await.unwrap().unwrap();
        if row.state != "building" {
            return row;
        }
        assert!(tokio::time::Instant::now() < deadline, "still building");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_build_another_process_owns_is_left_to_it_and_a_waiting_one_says_why() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "alice").await.ctx.organization_id;
        let cluster: Arc<dyn Cluster> = Arc::new(InProcessCluster::default());
        // No runner can score 1000.
        let fleet = fleet(&store, cluster.clone(), 1000).await;
        let snapshots = service(&store, fleet, cluster.clone());
        let row = building_snapshot(&store, &org).await;

        let owner = cluster.lock(&format!("snapshot:{}", row.id)).await.unwrap();
        snapshots.reconcile().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            log_of(&store, &row.id).await.is_empty(),
            "{backend}: a build its owner runs is not started again"
        );
        drop(owner);

        snapshots.recover_orphans().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            log_of(&store, &row.id).await.is_empty(),
            "{backend}: a build that just changed hands is not an orphan yet"
        );
        snapshots.reconcile().await.unwrap();
        let ended = wait_until_not_building(&store, &row.id).await;
        let log = log_of(&store, &row.id).await;
        assert!(
            log[0].starts_with("Resuming the build"),
            "{backend}: {log:?}"
        );
        let waiting = log
            .iter()
            .find(|l| l.starts_with("Waiting for a runner"))
            .unwrap_or_else(|| panic!("{backend}: no waiting line in {log:?}"));
        assert!(
            waiting.contains("at least 1000") && waiting.contains(THRESHOLD_SETTING),
            "{waiting}"
        );
        assert!(
            waiting.contains("scores"),
            "the scores are shown: {waiting}"
        );
        assert_eq!(ended.state, "error", "{backend}");
        let reason = ended.error_reason.unwrap_or_default();
        assert!(
            reason.contains(THRESHOLD_SETTING) && reason.contains("at least 1000"),
            "{backend}: {reason}"
        );
        assert!(
            store.runner_jobs("r-1", None, 10).await.unwrap().is_empty(),
            "{backend}: no runner passed the threshold"
        );
    }
}

#[tokio::test]
async fn a_taken_over_build_awaits_the_job_an_earlier_process_gave() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "bob").await.ctx.organization_id;
        let cluster: Arc<dyn Cluster> = Arc::new(InProcessCluster::default());
        let fleet = fleet(&store, cluster.clone(), 0).await;
        let snapshots = service(&store, fleet, cluster.clone());
        let row = building_snapshot(&store, &org).await;
        // The runner finished the build the dead process gave it, and had streamed one line.
        let outcome = BuildOutcome {
            image: CapturedImage {
                reference: "oci:/built".into(),
                image: PulledImage {
                    digest: "sha256:abc".into(),
                    size_bytes: 42,
                    entrypoint: vec![],
                    cmd: vec!["sleep".into()],
                    published: None,
                },
            },
            log: vec!["step 1".into(), "step 2".into()],
        };
        let ts = now();
        store
            .insert_job(&JobRow {
                id: "job-1".into(),
                runner_id: "r-1".into(),
                job_type: "BUILD_SNAPSHOT".into(),
                resource_id: row.id.clone(),
                payload: "{}".into(),
                state: "COMPLETED".into(),
                result: Some(serde_json::to_string(&outcome).unwrap()),
                error_message: None,
                created_at: ts.clone(),
                updated_at: ts.clone(),
                started_at: Some(ts.clone()),
                completed_at: Some(ts),
                trace_context: serde_json::Value::Null,
            })
            .await
            .unwrap();
        store
            .append_build_log(&row.id, "job-1", 0, &["step 1".into()])
            .await
            .unwrap();

        snapshots.reconcile().await.unwrap();
        let ended = wait_until_not_building(&store, &row.id).await;
        assert_eq!(ended.state, "active", "{backend}: {:?}", ended.error_reason);
        assert_eq!(ended.image_name, "oci:/built", "{backend}");
        assert_eq!(
            store.runner_jobs("r-1", None, 10).await.unwrap().len(),
            1,
            "{backend}: the build was not given again"
        );
        let log = log_of(&store, &row.id).await;
        assert_eq!(log.len(), 4, "{backend}: {log:?}");
        assert_eq!(log[0], "step 1");
        assert!(log[1].starts_with("Resuming the build"), "{log:?}");
        assert_eq!(log[2], "Awaiting the build already given to runner r-1");
        assert_eq!(
            log[3], "step 2",
            "{backend}: streamed lines are not repeated"
        );
    }
}
