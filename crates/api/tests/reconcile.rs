//! What a restart makes of sandboxes that were mid-transition when the server stopped.

use std::sync::Arc;

use daytona_api::sandbox::dto::CreateSandbox;
use daytona_api::snapshot::SnapshotService;
use daytona_api::{SandboxService, SandboxSettings, Store};
use daytona_runner::SandboxRunner;

mod common;
use common::{NullRunner, Org, add_org};

#[tokio::test]
async fn an_interrupted_archive_ends_archived_only_when_its_upload_completed() {
    let (_dir, store, org, runner, sandboxes) = setup().await;
    let mut ids = Vec::new();
    for name in ["uploaded", "interrupted"] {
        let body = CreateSandbox {
            name: Some(name.into()),
            ..Default::default()
        };
        let sandbox = sandboxes.create(&org.ctx, body).await.unwrap();
        // The crash: `archiving` recorded, the runner's work done up to some point.
        store
            .set_sandbox_state(&sandbox.id, "archiving", None)
            .await
            .unwrap();
        ids.push(sandbox.id);
    }
    // The first one's upload had completed (its local files may be gone already).
    runner
        .archives
        .lock()
        .unwrap()
        .insert(format!("sandbox-archives/{}.disk.zst", ids[0]));

    sandboxes.reconcile().await.unwrap();
    let state = |id: String| {
        let store = store.clone();
        async move { store.sandbox_by_id(&id).await.unwrap().unwrap().state }
    };
    assert_eq!(state(ids[0].clone()).await, "archived");
    assert_eq!(state(ids[1].clone()).await, "stopped");
    // Local leftovers of the archived one are removed; the stopped one keeps its files.
    assert_eq!(*runner.destroyed.lock().unwrap(), [ids[0].clone()]);
}

/// A store with one organization and a sandbox service on a [`NullRunner`].
async fn setup() -> (
    tempfile::TempDir,
    Store,
    Org,
    Arc<NullRunner>,
    Arc<SandboxService>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let org = add_org(&store, "alice").await;
    let runner = Arc::new(NullRunner::default());
    let dyn_runner: Arc<dyn SandboxRunner> = runner.clone();
    let snapshots = Arc::new(SnapshotService::new(store.clone(), dyn_runner.clone()));
    let settings = SandboxSettings {
        toolbox_proxy_url: "http://127.0.0.1:4000/toolbox".into(),
        default_snapshot: "oci-archive:/base.tar".into(),
        default_region: "us".into(),
        max_auto_archive_minutes: 7 * 24 * 60,
    };
    let sandboxes = Arc::new(SandboxService::new(
        store.clone(),
        dyn_runner,
        snapshots,
        settings,
    ));
    (dir, store, org, runner, sandboxes)
}

#[tokio::test]
async fn an_interrupted_create_or_start_is_carried_out_after_a_restart() {
    let (_dir, store, org, runner, sandboxes) = setup().await;
    let mut ids = Vec::new();
    for (name, crashed_in) in [
        ("created", "creating"),
        ("started", "starting"),
        ("stopping", "stopping"),
    ] {
        let body = CreateSandbox {
            name: Some(name.into()),
            ..Default::default()
        };
        let sandbox = sandboxes.create(&org.ctx, body).await.unwrap();
        store
            .set_sandbox_state(&sandbox.id, crashed_in, None)
            .await
            .unwrap();
        ids.push(sandbox.id);
    }
    store
        .set_sandbox_desired_state(&ids[2], "stopped")
        .await
        .unwrap();

    sandboxes.reconcile().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let states = loop {
        let mut states = Vec::new();
        for id in &ids {
            states.push(store.sandbox_by_id(id).await.unwrap().unwrap().state);
        }
        if states[..2] == ["started", "started"] || std::time::Instant::now() > deadline {
            break states;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(states, ["started", "started", "stopped"]);
    // Only the half-made sandbox was discarded before being made again.
    assert_eq!(*runner.destroyed.lock().unwrap(), [ids[0].clone()]);
}
