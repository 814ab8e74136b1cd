//! Volumes through the services the routes call: per-organization names and visibility,
//! mounts checked and resolved at sandbox create, refusal to delete a mounted volume, quotas,
//! events and what a restart finishes.

use std::sync::Arc;

use daytona_api::error::ApiError;
use daytona_api::events::EventKind;
use daytona_api::sandbox::dto::{CreateSandbox, VolumeMount};
use daytona_api::snapshot::SnapshotService;
use daytona_api::store::OrgQuotas;
use daytona_api::{SandboxService, SandboxSettings, Store};
use daytona_runner::SandboxRunner;
use futures::StreamExt;

mod common;
use common::{NullRunner, Org, TestStore, add_org, test_stores};

struct Env {
    store: Store,
    runner: Arc<NullRunner>,
    sandboxes: Arc<SandboxService>,
    a: Org,
    b: Org,
    _store: TestStore,
}

/// One environment per backend this run has (SQLite, and PostgreSQL when configured).
async fn envs() -> Vec<Env> {
    let mut envs = Vec::new();
    for test_store in test_stores().await {
        envs.push(env(test_store).await);
    }
    envs
}

async fn env(test_store: TestStore) -> Env {
    let store = test_store.store.clone();
    let a = add_org(&store, "alice").await;
    let b = add_org(&store, "bob").await;
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
    Env {
        store,
        runner,
        sandboxes,
        a,
        b,
        _store: test_store,
    }
}

fn mount(volume: &str, path: &str, subpath: Option<&str>) -> VolumeMount {
    VolumeMount {
        volume_id: volume.into(),
        mount_path: path.into(),
        subpath: subpath.map(Into::into),
    }
}

fn with_volumes(name: &str, volumes: Vec<VolumeMount>) -> CreateSandbox {
    CreateSandbox {
        name: Some(name.into()),
        volumes,
        ..Default::default()
    }
}

#[tokio::test]
async fn another_organization_sees_nothing_and_may_reuse_the_name() {
    for env in envs().await {
        let volumes = env.sandboxes.volumes();
        let (a, b) = (&env.a.ctx.organization_id, &env.b.ctx.organization_id);
        let vol = volumes.create(a, "data").await.unwrap();
        assert_eq!(vol.state, "ready");
        assert!(env.runner.volumes.lock().unwrap().contains(&vol.id));

        assert!(matches!(
            volumes.get(b, &vol.id).await,
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            volumes.get_by_name(b, "data").await,
            Err(ApiError::NotFound(_))
        ));
        assert!(matches!(
            volumes.delete(b, &vol.id).await,
            Err(ApiError::NotFound(_))
        ));
        assert!(volumes.list(b, true).await.unwrap().is_empty());
        let err = env
            .sandboxes
            .create(
                &env.b.ctx,
                with_volumes("s", vec![mount(&vol.id, "/data", None)]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::NotFound(_)), "{err}");
        assert!(err.to_string().contains("volumes[0].volumeId"), "{err}");

        // Names are per organization.
        let own = volumes.create(b, "data").await.unwrap();
        assert_ne!(own.id, vol.id);
        let again = volumes.create(a, "data").await.unwrap_err();
        assert!(matches!(again, ApiError::Conflict(_)), "{again}");
        assert_eq!(volumes.get_by_name(a, "data").await.unwrap().id, vol.id);
    }
}

#[tokio::test]
async fn a_mounted_volume_cannot_be_deleted_until_its_sandboxes_are_gone() {
    for env in envs().await {
        let volumes = env.sandboxes.volumes();
        let org = &env.a.ctx.organization_id;
        let vol = volumes.create(org, "shared").await.unwrap();
        // By name; the sandbox stores (and shows) the id.
        let sandbox = env
            .sandboxes
            .create(
                &env.a.ctx,
                with_volumes("user-1", vec![mount("shared", "/data", Some("a/b"))]),
            )
            .await
            .unwrap();
        assert_eq!(sandbox.volumes.len(), 1);
        assert_eq!(sandbox.volumes[0].volume_id, vol.id);
        assert_eq!(sandbox.volumes[0].subpath.as_deref(), Some("a/b"));
        assert!(
            volumes
                .get(org, &vol.id)
                .await
                .unwrap()
                .last_used_at
                .is_some()
        );

        let err = volumes.delete(org, &vol.id).await.unwrap_err();
        assert!(matches!(err, ApiError::Conflict(_)), "{err}");
        assert!(err.to_string().contains("user-1"), "{err}");
        assert_eq!(volumes.get(org, &vol.id).await.unwrap().state, "ready");

        // Stopped still counts; destroyed does not.
        env.sandboxes.stop(&env.a.ctx, "user-1").await.unwrap();
        assert!(volumes.delete(org, &vol.id).await.is_err());
        env.sandboxes.delete(&env.a.ctx, "user-1").await.unwrap();
        let deleted = volumes.delete(org, &vol.id).await.unwrap();
        assert_eq!(deleted.state, "deleted");
        assert!(env.runner.volumes.lock().unwrap().is_empty());
        assert!(matches!(
            volumes.delete(org, &vol.id).await,
            Err(ApiError::NotFound(_))
        ));

        // Gone from the default listing and by name; the name is free again.
        assert!(volumes.list(org, false).await.unwrap().is_empty());
        assert_eq!(volumes.list(org, true).await.unwrap().len(), 1);
        assert!(matches!(
            volumes.get_by_name(org, "shared").await,
            Err(ApiError::NotFound(_))
        ));
        let err = env
            .sandboxes
            .create(
                &env.a.ctx,
                with_volumes("user-2", vec![mount(&vol.id, "/data", None)]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::NotFound(_)), "{err}");
        assert_ne!(volumes.create(org, "shared").await.unwrap().id, vol.id);
    }
}

#[tokio::test]
async fn bad_mounts_are_refused_naming_the_field() {
    for env in envs().await {
        let volumes = env.sandboxes.volumes();
        let org = &env.a.ctx.organization_id;
        volumes.create(org, "v").await.unwrap();
        for (mounts, expect) in [
            (
                vec![mount("v", "data", None)],
                "volumes[0].mountPath: 'data' is not an absolute path",
            ),
            (vec![mount("v", "/", None)], "volumes[0].mountPath"),
            (vec![mount("v", "/proc/x", None)], "inside /proc"),
            (vec![mount("v", "/etc", None)], "system directory"),
            (vec![mount("v", "/a/../etc", None)], "normalized"),
            (
                vec![mount("v", "/a", None), mount("v", "/a", None)],
                "volumes[1].mountPath: '/a' is mounted twice",
            ),
            (vec![mount("v", "/a", Some("../x"))], "volumes[0].subpath"),
            (vec![mount("v", "/a", Some("/abs"))], "relative"),
        ] {
            let err = env
                .sandboxes
                .create(&env.a.ctx, with_volumes("bad", mounts))
                .await
                .unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{err}");
            assert!(err.to_string().contains(expect), "{err} (want {expect})");
        }
        // A volume that is not ready.
        let broken = volumes.create(org, "broken").await.unwrap();
        env.store
            .set_volume_state(&broken.id, "error", Some("disk on fire"))
            .await
            .unwrap();
        let err = env
            .sandboxes
            .create(
                &env.a.ctx,
                with_volumes("bad", vec![mount("broken", "/a", None)]),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("not ready (state: error)"),
            "{err}"
        );
        let err = volumes.create(org, "two words").await.unwrap_err();
        assert!(matches!(err, ApiError::BadRequest(_)), "{err}");
        assert!(env.store.live_sandboxes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_volume_quota_counts_volumes_not_deleted() {
    for env in envs().await {
        let volumes = env.sandboxes.volumes();
        let org = &env.a.ctx.organization_id;
        env.store
            .set_organization_quotas(
                org,
                &OrgQuotas {
                    volume_quota: 1,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let first = volumes.create(org, "one").await.unwrap();
        let err = volumes.create(org, "two").await.unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)), "{err}");
        assert!(err.to_string().contains("in use 1, limit 1"), "{err}");
        volumes.delete(org, &first.id).await.unwrap();
        volumes.create(org, "two").await.unwrap();
    }
}

#[tokio::test]
async fn events_and_restarts() {
    for env in envs().await {
        let volumes = env.sandboxes.volumes();
        let org = &env.a.ctx.organization_id;
        let mut events = env.sandboxes.events().subscribe();
        let vol = volumes.create(org, "ev").await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let event = events.next().await.unwrap();
            assert_eq!(&event.organization_id, org);
            match &event.kind {
                EventKind::VolumeCreated(v) => {
                    assert_eq!(v["id"], vol.id.as_str());
                    seen.push("created".to_string());
                }
                EventKind::VolumeStateUpdated {
                    volume, new_state, ..
                } => {
                    assert_eq!(volume["state"], new_state.as_str());
                    seen.push(new_state.clone());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["created", "creating", "ready"]);

        // A restart finishes what a crash interrupted.
        env.store
            .set_volume_state(&vol.id, "deleting", None)
            .await
            .unwrap();
        let pending = volumes.create(org, "pending").await.unwrap();
        env.runner.volumes.lock().unwrap().remove(&pending.id);
        env.store
            .set_volume_state(&pending.id, "pending_create", None)
            .await
            .unwrap();
        env.sandboxes.reconcile().await.unwrap();
        assert_eq!(volumes.get(org, &vol.id).await.unwrap().state, "deleted");
        assert_eq!(volumes.get(org, &pending.id).await.unwrap().state, "ready");
        let stored = env.runner.volumes.lock().unwrap().clone();
        assert!(stored.contains(&pending.id) && !stored.contains(&vol.id));
    }
}
