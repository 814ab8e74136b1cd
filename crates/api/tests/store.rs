//! The store's queries on every backend: SQLite always, PostgreSQL when
//! `DAYTONA_TEST_POSTGRES_URL` names a server (scripts/test.sh starts one). The same assertions run
//! on both, so a query that only one dialect accepts, or that answers differently, fails here.

use std::collections::HashSet;

use daytona_api::Store;
use daytona_api::store::{
    BackupOutcome, Claim, JobRow, MetricSample, OpenError, OrgQuotas, OrgSecretRow,
    RegistryCredentialRow, ResourceUse, SandboxFilter, SandboxRow, SandboxSetting, SandboxSort,
    SecretFilter, SecretKind, SecretSort, SnapshotBuildRow, SnapshotFilter, SnapshotRow,
    WarmPoolRow, now,
};

mod common;
use common::{TestStore, add_org, fresh_postgres_url, test_stores};

fn sandbox(org: &str, name: &str, labels: &str) -> SandboxRow {
    let ts = now();
    SandboxRow {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org.into(),
        name: name.into(),
        snapshot: None,
        image_ref: "oci-archive:/base.tar".into(),
        os_user: "daytona".into(),
        env: "{}".into(),
        labels: labels.into(),
        public: false,
        network_block_all: false,
        network_allow_list: None,
        domain_allow_list: None,
        target: "us".into(),
        cpu: 1,
        gpu: 0,
        memory: 2,
        disk: 3,
        state: "started".into(),
        desired_state: "started".into(),
        error_reason: None,
        auto_stop_interval: 15,
        auto_archive_interval: 0,
        auto_delete_interval: -1,
        auto_pause_interval: 0,
        runner_id: None,
        daemon_version: None,
        created_at: ts.clone(),
        updated_at: ts.clone(),
        last_activity_at: ts,
        auto_destroy_at: None,
        volumes: "[]".into(),
        warm_pool_id: None,
        pooled: false,
        secrets: "[]".into(),
        backup_state: "None".into(),
        backup_key: None,
        backup_created_at: None,
        backup_error: None,
    }
}

fn names(rows: &[SandboxRow]) -> Vec<&str> {
    rows.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn sandboxes_are_stored_found_and_listed_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "alice").await.ctx.organization_id;
        // A label key with a quote and a dot must be matched as one key, not a JSON path.
        let odd = r#"{"team":"a","k.\"q":"v"}"#;
        let mut rows = vec![
            sandbox(&org, "bravo", r#"{"team":"a"}"#),
            sandbox(&org, "alpha", odd),
            sandbox(&org, "charlie", r#"{"team":"b"}"#),
        ];
        rows[2].state = "stopped".into();
        rows[2].cpu = 4;
        for row in &rows {
            store.insert_sandbox(row).await.unwrap();
        }

        let by_name = store.find_sandbox(&org, "alpha").await.unwrap().unwrap();
        assert_eq!(by_name.id, rows[1].id, "{backend}");
        assert_eq!(by_name.labels, odd, "{backend}");
        assert!(!by_name.public && !by_name.network_block_all, "{backend}");
        let by_id = store.find_sandbox(&org, &rows[0].id).await.unwrap();
        assert_eq!(by_id.unwrap().name, "bravo", "{backend}");
        assert!(
            store
                .find_sandbox("other", "alpha")
                .await
                .unwrap()
                .is_none()
        );

        let list = |f: SandboxFilter| {
            let store = store.clone();
            let org = org.clone();
            async move { store.list_sandboxes(&org, &f).await.unwrap() }
        };
        let all = list(SandboxFilter {
            limit: 10,
            ..Default::default()
        })
        .await;
        assert_eq!(all.len(), 3, "{backend}");
        let team_a = list(SandboxFilter {
            labels: vec![("team".into(), "a".into())],
            sort: Some(SandboxSort::Name),
            limit: 10,
            ..Default::default()
        })
        .await;
        assert_eq!(names(&team_a), ["alpha", "bravo"], "{backend}");
        let odd_key = list(SandboxFilter {
            labels: vec![("k.\"q".into(), "v".into()), ("team".into(), "a".into())],
            limit: 10,
            ..Default::default()
        })
        .await;
        assert_eq!(names(&odd_key), ["alpha"], "{backend}");
        let stopped = list(SandboxFilter {
            states: vec!["stopped".into(), "error".into()],
            limit: 10,
            ..Default::default()
        })
        .await;
        assert_eq!(names(&stopped), ["charlie"], "{backend}");
        // One page of one row fetches two: the caller learns that more follow.
        let page = list(SandboxFilter {
            sort: Some(SandboxSort::Cpu),
            descending: true,
            offset: 0,
            limit: 1,
            ..Default::default()
        })
        .await;
        assert_eq!(page[0].name, "charlie", "{backend}");
        assert_eq!(page.len(), 2, "{backend}");
        let by_id_and_name = list(SandboxFilter {
            id: Some(rows[0].id.clone()),
            name: Some("bravo".into()),
            limit: 10,
            ..Default::default()
        })
        .await;
        assert_eq!(names(&by_id_and_name), ["bravo"], "{backend}");

        // Names are unique among live sandboxes only.
        let dup = store
            .insert_sandbox(&sandbox(&org, "alpha", "{}"))
            .await
            .unwrap_err();
        match dup {
            sqlx::Error::Database(d) => assert!(d.is_unique_violation(), "{backend}: {d}"),
            e => panic!("{backend}: {e}"),
        }
        store
            .set_sandbox_state(&rows[1].id, "destroyed", None)
            .await
            .unwrap();
        store
            .insert_sandbox(&sandbox(&org, "alpha", "{}"))
            .await
            .unwrap();
        assert!(store.sandbox_by_id(&rows[1].id).await.unwrap().is_none());
        let record = store.sandbox_record(&rows[1].id).await.unwrap().unwrap();
        assert_eq!(record.state, "destroyed", "{backend}");

        // Settings, flags included, read back as written.
        let id = &rows[0].id;
        for setting in [
            SandboxSetting::Public(true),
            SandboxSetting::AutoStop(0),
            SandboxSetting::AutoDestroyAt(Some("2030-01-01T00:00:00.000Z".into())),
            SandboxSetting::Network {
                block_all: true,
                allow_list: Some("100.64.0.0/10".into()),
                domain_allow_list: None,
            },
        ] {
            store.update_sandbox_setting(id, &setting).await.unwrap();
        }
        store
            .set_sandbox_started(id, "runner-1", Some("v1"))
            .await
            .unwrap();
        store
            .set_sandbox_started(id, "runner-1", None)
            .await
            .unwrap();
        let row = store.sandbox_by_id(id).await.unwrap().unwrap();
        assert!(row.public && row.network_block_all, "{backend}");
        assert_eq!(row.auto_stop_interval, 0, "{backend}");
        assert_eq!(row.network_allow_list.as_deref(), Some("100.64.0.0/10"));
        assert_eq!(row.daemon_version.as_deref(), Some("v1"), "{backend}");
        assert_eq!(row.runner_id.as_deref(), Some("runner-1"), "{backend}");

        // Forks and archiving.
        store.insert_fork(id, &rows[2].id).await.unwrap();
        assert_eq!(names(&store.forks_of(id).await.unwrap()), ["charlie"]);
        assert_eq!(
            store.parent_of(&rows[2].id).await.unwrap().as_deref(),
            Some(id.as_str())
        );
        store.set_sandbox_archived(id).await.unwrap();
        let row = store.sandbox_by_id(id).await.unwrap().unwrap();
        assert_eq!((row.state.as_str(), row.runner_id), ("archived", None));
    }
}

#[tokio::test]
async fn quotas_and_resource_use_are_counted_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "alice").await.ctx.organization_id;
        let quotas = OrgQuotas {
            total_cpu_quota: 10,
            max_disk_per_sandbox: 7,
            snapshot_quota: 3,
            ..Default::default()
        };
        store.set_organization_quotas(&org, &quotas).await.unwrap();
        assert_eq!(store.organization_quotas(&org).await.unwrap(), quotas);

        let mut running = sandbox(&org, "running", "{}");
        running.cpu = 2;
        let mut stopped = sandbox(&org, "stopped", "{}");
        stopped.state = "stopped".into();
        let mut archived = sandbox(&org, "archived", "{}");
        archived.state = "archived".into();
        for row in [&running, &stopped, &archived] {
            store.insert_sandbox(row).await.unwrap();
        }
        // Running sandboxes hold cpu and memory, every unarchived one its disk.
        let used = store.resource_use(&org, None).await.unwrap();
        let expected = ResourceUse {
            cpu: 2,
            memory: 2,
            disk: 6,
        };
        assert_eq!(used, expected, "{backend}");
        let without = store.resource_use(&org, Some(&running.id)).await.unwrap();
        let expected = ResourceUse {
            cpu: 0,
            memory: 0,
            disk: 3,
        };
        assert_eq!(without, expected, "{backend}");
        let none = store.resource_use("nobody", None).await.unwrap();
        assert_eq!(none, ResourceUse::default(), "{backend}");
    }
}

fn warm_pool(org: &str, snapshot_id: &str) -> WarmPoolRow {
    let ts = now();
    WarmPoolRow {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org.into(),
        snapshot_id: snapshot_id.into(),
        snapshot: "base".into(),
        target: "us".into(),
        pool: 2,
        cpu: 1,
        mem: 2,
        disk: 3,
        os_user: "daytona".into(),
        env: "{}".into(),
        error_reason: None,
        created_at: ts.clone(),
        updated_at: ts,
    }
}

fn claim(name: &str) -> Claim {
    Claim {
        name: name.into(),
        labels: r#"{"team":"a"}"#.into(),
        public: true,
        auto_stop_interval: 15,
        auto_archive_interval: 60,
        auto_delete_interval: -1,
        auto_pause_interval: 0,
        auto_destroy_at: None,
    }
}

#[tokio::test]
async fn warm_pools_and_their_sandboxes_are_kept_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "alice").await.ctx.organization_id;
        let pool = warm_pool(&org, "snap-1");
        store.insert_warm_pool(&pool).await.unwrap();
        let twin = warm_pool(&org, "snap-1");
        let dup = store.insert_warm_pool(&twin).await.unwrap_err();
        assert!(
            matches!(&dup, sqlx::Error::Database(d) if d.is_unique_violation()),
            "{backend}: one pool per snapshot and region: {dup}"
        );
        let found = store
            .warm_pool_for(&org, "snap-1", "us")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.id.as_str(), found.pool, found.mem),
            (pool.id.as_str(), 2, 2),
            "{backend}"
        );
        assert!(
            store
                .warm_pool_for(&org, "snap-1", "eu")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store.warm_pool("other", &pool.id).await.unwrap().is_none(),
            "{backend}"
        );
        store.set_warm_pool_size(&pool.id, 3).await.unwrap();
        store
            .set_warm_pool_error(&pool.id, Some("quota"))
            .await
            .unwrap();
        let row = store.warm_pool(&org, &pool.id).await.unwrap().unwrap();
        assert_eq!(
            (row.pool, row.error_reason.as_deref()),
            (3, Some("quota")),
            "{backend}"
        );
        store.set_warm_pool_error(&pool.id, None).await.unwrap();
        assert_eq!(
            store.warm_pools(&org).await.unwrap()[0].error_reason,
            None,
            "{backend}"
        );

        // Two waiting sandboxes (one still being made) and one of the organization's own.
        let mut ready = sandbox(&org, "ready", "{}");
        let mut making = sandbox(&org, "making", "{}");
        making.state = "creating".into();
        for row in [&mut ready, &mut making] {
            row.name = row.id.clone();
            row.warm_pool_id = Some(pool.id.clone());
            row.pooled = true;
        }
        let own = sandbox(&org, "own", "{}");
        for row in [&ready, &making, &own] {
            store.insert_sandbox(row).await.unwrap();
        }
        assert_eq!(
            store.pooled_sandboxes().await.unwrap().len(),
            2,
            "{backend}"
        );
        assert_eq!(
            store.ready_pooled_sandboxes(&pool.id).await.unwrap(),
            [ready.id.clone()]
        );
        assert_eq!(
            store.ready_pooled_count(&pool.id).await.unwrap(),
            1,
            "{backend}"
        );
        // Hidden from the organization, but it pays for them.
        assert!(
            store.find_sandbox(&org, &ready.id).await.unwrap().is_none(),
            "{backend}"
        );
        let f = SandboxFilter {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(
            names(&store.list_sandboxes(&org, &f).await.unwrap()),
            ["own"],
            "{backend}"
        );
        let f = SandboxFilter {
            limit: 10,
            include_warm: true,
            ..Default::default()
        };
        assert_eq!(
            store.list_sandboxes(&org, &f).await.unwrap().len(),
            3,
            "{backend}"
        );
        assert_eq!(
            store.resource_use(&org, None).await.unwrap().cpu,
            3,
            "{backend}"
        );
        assert_eq!(
            store.holdings(&org).await.unwrap().sandboxes,
            1,
            "{backend}"
        );

        // A sandbox still being made can be neither claimed nor released.
        assert!(
            !store
                .claim_pooled_sandbox(&making.id, &claim("x"))
                .await
                .unwrap()
        );
        assert!(
            !store.release_pooled_sandbox(&making.id).await.unwrap(),
            "{backend}"
        );
        // The first claim wins; a second claim and a release find it gone.
        assert!(
            store
                .claim_pooled_sandbox(&ready.id, &claim("mine"))
                .await
                .unwrap(),
            "{backend}"
        );
        assert!(
            !store
                .claim_pooled_sandbox(&ready.id, &claim("again"))
                .await
                .unwrap()
        );
        assert!(
            !store.release_pooled_sandbox(&ready.id).await.unwrap(),
            "{backend}"
        );
        let claimed = store.find_sandbox(&org, "mine").await.unwrap().unwrap();
        assert_eq!(claimed.id, ready.id, "{backend}");
        assert!(claimed.public && !claimed.pooled, "{backend}");
        assert_eq!(claimed.labels, r#"{"team":"a"}"#, "{backend}");
        assert_eq!(
            claimed.warm_pool_id.as_deref(),
            Some(pool.id.as_str()),
            "{backend}"
        );
        // A claim may not take a name the organization uses.
        store
            .set_sandbox_state(&making.id, "started", None)
            .await
            .unwrap();
        let taken = store
            .claim_pooled_sandbox(&making.id, &claim("own"))
            .await
            .unwrap_err();
        assert!(
            matches!(&taken, sqlx::Error::Database(d) if d.is_unique_violation()),
            "{backend}: {taken}"
        );
        assert!(
            store.release_pooled_sandbox(&making.id).await.unwrap(),
            "{backend}"
        );
        assert!(
            !store
                .claim_pooled_sandbox(&making.id, &claim("late"))
                .await
                .unwrap()
        );

        assert!(
            store.delete_warm_pool(&org, &pool.id).await.unwrap(),
            "{backend}"
        );
        assert!(
            !store.delete_warm_pool(&org, &pool.id).await.unwrap(),
            "{backend}"
        );
        assert!(
            store
                .all_warm_pools()
                .await
                .unwrap()
                .iter()
                .all(|p| p.id != pool.id)
        );
    }
}

#[tokio::test]
async fn concurrent_claims_of_one_sandbox_have_one_winner() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "alice").await.ctx.organization_id;
        let pool = warm_pool(&org, "snap-1");
        store.insert_warm_pool(&pool).await.unwrap();
        let mut row = sandbox(&org, "waiting", "{}");
        row.warm_pool_id = Some(pool.id.clone());
        row.pooled = true;
        store.insert_sandbox(&row).await.unwrap();
        let attempts = (0..8).map(|i| {
            let (store, id) = (store.clone(), row.id.clone());
            tokio::spawn(async move {
                if i == 7 {
                    store.release_pooled_sandbox(&id).await.unwrap()
                } else {
                    store
                        .claim_pooled_sandbox(&id, &claim(&format!("c{i}")))
                        .await
                        .unwrap()
                }
            })
        });
        let mut winners = 0;
        for attempt in attempts.collect::<Vec<_>>() {
            winners += usize::from(attempt.await.unwrap());
        }
        assert_eq!(winners, 1, "{backend}");
    }
}

fn org_secret(org: &str, name: &str, created_at: &str) -> OrgSecretRow {
    OrgSecretRow {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org.into(),
        name: name.into(),
        description: None,
        value_sealed: "sealed".into(),
        placeholder: format!("daytona-secret-{}", uuid::Uuid::new_v4().simple()),
        hosts: r#"["api.example.com"]"#.into(),
        created_at: created_at.into(),
        updated_at: created_at.into(),
    }
}

#[tokio::test]
async fn organization_secrets_are_stored_and_listed_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "alice").await.ctx.organization_id;
        let other = add_org(&store, "bob").await.ctx.organization_id;
        let rows = [
            org_secret(&org, "b_key", "2026-01-01T00:00:01.000Z"),
            org_secret(&org, "a_key", "2026-01-01T00:00:02.000Z"),
            org_secret(&org, "c%_x", "2026-01-01T00:00:03.000Z"),
        ];
        for row in &rows {
            store.insert_org_secret(row).await.unwrap();
        }
        store
            .insert_org_secret(&org_secret(&other, "a_key", "2026-01-01T00:00:04.000Z"))
            .await
            .unwrap();
        let dup = store
            .insert_org_secret(&org_secret(&org, "a_key", "x"))
            .await;
        assert!(
            matches!(dup, Err(sqlx::Error::Database(ref d)) if d.is_unique_violation()),
            "{backend}: {dup:?}"
        );

        let list = |name: Option<&str>, sort, descending, offset, limit| SecretFilter {
            name: name.map(str::to_owned),
            sort,
            descending,
            offset,
            limit,
        };
        let (page, total) = store
            .list_org_secrets(&org, &list(None, SecretSort::CreatedAt, true, 0, 2))
            .await
            .unwrap();
        let names: Vec<&str> = page.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            (names, total),
            (vec!["c%_x", "a_key", "b_key"], 3),
            "{backend}"
        );
        let (page, _) = store
            .list_org_secrets(&org, &list(None, SecretSort::Name, false, 1, 5))
            .await
            .unwrap();
        let names: Vec<&str> = page.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b_key", "c%_x"], "{backend}");
        // Case-insensitive substring; LIKE wildcards in the filter are literal.
        let (page, total) = store
            .list_org_secrets(&org, &list(Some("KEY"), SecretSort::Name, false, 0, 10))
            .await
            .unwrap();
        assert_eq!((page.len(), total), (2, 2), "{backend}");
        let (page, total) = store
            .list_org_secrets(&org, &list(Some("%_"), SecretSort::Name, false, 0, 10))
            .await
            .unwrap();
        assert_eq!((page[0].name.as_str(), total), ("c%_x", 1), "{backend}");

        let mut changed = rows[0].clone();
        changed.description = Some("d".into());
        changed.value_sealed = "resealed".into();
        changed.updated_at = now();
        store.update_org_secret(&changed).await.unwrap();
        let got = store.org_secret(&org, &changed.id).await.unwrap().unwrap();
        assert_eq!(
            (got.description.as_deref(), got.value_sealed.as_str()),
            (Some("d"), "resealed")
        );
        assert!(
            store
                .org_secret(&other, &changed.id)
                .await
                .unwrap()
                .is_none(),
            "{backend}"
        );
        let by_ids = store
            .org_secrets_by_ids(&org, &[rows[1].id.clone(), "missing".into()])
            .await
            .unwrap();
        assert_eq!(by_ids.len(), 1, "{backend}");
        assert_eq!(
            store
                .org_secret_by_name(&org, "a_key")
                .await
                .unwrap()
                .unwrap()
                .id,
            rows[1].id
        );

        let sandbox_row = sandbox(&org, "with-secrets", "{}");
        store.insert_sandbox(&sandbox_row).await.unwrap();
        store
            .set_sandbox_secrets(&sandbox_row.id, r#"[{"env":"T"}]"#)
            .await
            .unwrap();
        let stored = store.sandbox_by_id(&sandbox_row.id).await.unwrap().unwrap();
        assert_eq!(stored.secrets, r#"[{"env":"T"}]"#, "{backend}");

        assert!(store.delete_org_secret(&org, &rows[0].id).await.unwrap());
        assert!(!store.delete_org_secret(&org, &rows[0].id).await.unwrap());
        store.delete_organization(&org).await.unwrap();
        assert!(
            store.org_secret(&org, &rows[1].id).await.unwrap().is_none(),
            "{backend}"
        );
    }
}

#[tokio::test]
async fn concurrent_first_uses_of_a_secret_agree() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "alice").await.ctx.organization_id;
        let row = sandbox(&org, "s", "{}");
        store.insert_sandbox(&row).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                let id = row.id.clone();
                tokio::spawn(async move {
                    store
                        .sandbox_secret(&id, SecretKind::PreviewToken, || format!("token-{i}"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut values = HashSet::new();
        for task in tasks {
            values.insert(task.await.unwrap());
        }
        assert_eq!(values.len(), 1, "{backend}: {values:?}");
        let rotated = store
            .rotate_sandbox_secret(&row.id, SecretKind::PreviewToken, "new".into())
            .await
            .unwrap();
        let read = store
            .sandbox_secret(&row.id, SecretKind::PreviewToken, || unreachable!())
            .await
            .unwrap();
        assert_eq!(
            (rotated.as_str(), read.as_str()),
            ("new", "new"),
            "{backend}"
        );
        let signing = store
            .sandbox_secret(&row.id, SecretKind::SigningKey, || "key".into())
            .await
            .unwrap();
        assert_eq!(signing, "key", "{backend}");
        store
            .forget_sandbox_secret(&row.id, SecretKind::PreviewToken)
            .await
            .unwrap();
        let fresh = store
            .sandbox_secret(&row.id, SecretKind::PreviewToken, || "again".into())
            .await
            .unwrap();
        assert_eq!(fresh, "again", "{backend}");
    }
}

fn snapshot(org: &str, name: &str, general: bool) -> SnapshotRow {
    let ts = now();
    SnapshotRow {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org.into(),
        general,
        name: name.into(),
        image_name: format!("{name}:latest"),
        state: "pending".into(),
        error_reason: None,
        digest: None,
        size_bytes: None,
        entrypoint: None,
        cpu: 1,
        gpu: 0,
        mem: 1,
        disk: 3,
        created_at: ts.clone(),
        updated_at: ts,
        last_used_at: None,
        source_sandbox_id: None,
        internal_ref: None,
    }
}

#[tokio::test]
async fn snapshots_are_found_and_listed_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let alice = add_org(&store, "alice").await.ctx.organization_id;
        let bob = add_org(&store, "bob").await.ctx.organization_id;
        let general = snapshot("", "Base-Image", true);
        let own = snapshot(&alice, "Base-Image", false);
        let mut taken = snapshot(&alice, "taken", false);
        taken.source_sandbox_id = Some("sbx-1".into());
        for row in [&general, &own, &taken, &snapshot(&bob, "bobs", false)] {
            store.insert_snapshot(row).await.unwrap();
        }

        let found = store.find_snapshot(&alice, "Base-Image").await.unwrap();
        assert_eq!(found.unwrap().id, own.id, "{backend}: own before general");
        let found = store.find_snapshot(&bob, "Base-Image").await.unwrap();
        let found = found.unwrap();
        assert!(found.general, "{backend}");
        assert_eq!(found.id, general.id, "{backend}");
        let by_id = store.find_snapshot(&bob, &general.id).await.unwrap();
        assert_eq!(by_id.unwrap().name, "Base-Image", "{backend}");
        assert!(store.find_snapshot(&bob, "taken").await.unwrap().is_none());
        let general_by_name = store.general_snapshot_by_name("Base-Image").await.unwrap();
        assert_eq!(general_by_name.unwrap().id, general.id, "{backend}");

        // The name filter ignores case on both backends.
        let filter = SnapshotFilter {
            name: Some("base"),
            ..Default::default()
        };
        let (rows, total) = store
            .list_snapshots(&alice, &filter, "created_at", false, 0, 1)
            .await
            .unwrap();
        assert_eq!((rows.len(), total), (1, 2), "{backend}");
        let from_sandbox = SnapshotFilter {
            source_sandbox_id: Some("sbx-1"),
            ..Default::default()
        };
        let (rows, total) = store
            .list_snapshots(&alice, &from_sandbox, "name", true, 0, 10)
            .await
            .unwrap();
        assert_eq!((rows[0].id.as_str(), total), (taken.id.as_str(), 1));

        store
            .set_snapshot_captured(&taken.id, "img", "sha256:1", 42, "[]")
            .await
            .unwrap();
        store.mark_snapshot_used(&taken.id).await.unwrap();
        let row = store.find_snapshot(&alice, "taken").await.unwrap().unwrap();
        assert_eq!(
            (row.state.as_str(), row.size_bytes, row.image_name.as_str()),
            ("active", Some(42), "img"),
            "{backend}"
        );
        assert!(row.last_used_at.is_some(), "{backend}");
        assert_eq!(store.snapshot_digests().await.unwrap(), ["sha256:1"]);
        assert_eq!(row.runnable_image(), "img", "{backend}");

        // A pulled image's internal registry copy is what sandboxes use.
        let internal = "registry:6000/daytona/daytona-1:daytona";
        store
            .set_snapshot_internal_ref(&own.id, internal)
            .await
            .unwrap();
        let row = store.find_snapshot(&alice, &own.id).await.unwrap().unwrap();
        assert_eq!(row.internal_ref.as_deref(), Some(internal), "{backend}");
        assert_eq!(row.runnable_image(), internal, "{backend}");
        assert_eq!(row.image_name, "Base-Image:latest", "{backend}");
        store.delete_snapshot(&taken.id).await.unwrap();
        assert!(
            store
                .find_snapshot(&alice, "taken")
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn snapshot_builds_are_found_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let alice = add_org(&store, "alice").await.ctx.organization_id;
        let bob = add_org(&store, "bob").await.ctx.organization_id;
        let build = |snapshot: &SnapshotRow, build_ref: &str| SnapshotBuildRow {
            snapshot_id: snapshot.id.clone(),
            organization_id: snapshot.organization_id.clone(),
            build_ref: build_ref.into(),
            dockerfile: "FROM base\n".into(),
            context_hashes: r#"["h1"]"#.into(),
            created_at: snapshot.created_at.clone(),
            updated_at: snapshot.updated_at.clone(),
        };
        let mut failed = snapshot(&alice, "built-1", false);
        failed.state = "error".into();
        failed.created_at = "2026-01-01T00:00:02.000Z".into();
        let mut building = snapshot(&alice, "built-2", false);
        building.state = "building".into();
        building.created_at = "2026-01-01T00:00:01.000Z".into();
        let mut other = snapshot(&bob, "built-3", false);
        other.state = "active".into();
        for (row, build_ref) in [(&failed, "r1"), (&building, "r1"), (&other, "r1")] {
            store.insert_snapshot(row).await.unwrap();
            store
                .insert_snapshot_build(&build(row, build_ref))
                .await
                .unwrap();
        }

        let stored = store.snapshot_build(&building.id).await.unwrap().unwrap();
        assert_eq!(stored.context_hashes, r#"["h1"]"#, "{backend}");
        let usable = store.snapshot_for_build(&alice, "r1").await.unwrap();
        assert_eq!(
            usable.unwrap().id,
            building.id,
            "{backend}: failed builds are skipped"
        );
        let theirs = store.snapshot_for_build(&bob, "r1").await.unwrap();
        assert_eq!(theirs.unwrap().id, other.id, "{backend}: per organization");
        assert!(
            store
                .snapshot_for_build(&alice, "r2")
                .await
                .unwrap()
                .is_none()
        );
        let by_id = store.snapshot_by_id(&other.id).await.unwrap().unwrap();
        assert_eq!(by_id.organization_id, bob, "{backend}");
        assert!(
            store
                .insert_snapshot_build(&build(&other, "r9"))
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn metric_samples_are_stored_ranged_and_pruned_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "alice").await.ctx.organization_id;
        let running = sandbox(&org, "running", "{}");
        let mut stopped = sandbox(&org, "stopped", "{}");
        stopped.state = "stopped".into();
        store.insert_sandbox(&running).await.unwrap();
        store.insert_sandbox(&stopped).await.unwrap();
        assert_eq!(
            store.started_sandbox_ids().await.unwrap(),
            vec![running.id.clone()],
            "{backend}"
        );

        let sample = |at: &str, cpu: f64| MetricSample {
            sandbox_id: running.id.clone(),
            sampled_at: at.into(),
            cpu_utilization: cpu,
            cpu_limit: 1.5,
            memory_usage: 3 << 30,
            memory_limit: 4 << 30,
            memory_cache: 1 << 20,
            filesystem_usage: 5_000_000_000,
            filesystem_total: 10_000_000_000,
        };
        let samples = [
            sample("2026-01-01T00:00:00.000Z", 12.5),
            sample("2026-01-01T00:00:15.000Z", 99.25),
            sample("2026-01-01T00:00:30.000Z", 0.0),
        ];
        store.insert_metric_samples(&samples).await.unwrap();
        // A repeated round is ignored, not an error.
        store.insert_metric_samples(&samples[..1]).await.unwrap();
        let all = store
            .metric_samples(
                &running.id,
                "2026-01-01T00:00:00.000Z",
                "2026-01-01T00:00:30.000Z",
                100,
            )
            .await
            .unwrap();
        assert_eq!(all, samples, "{backend}: values and bounds are inclusive");
        let limited = store
            .metric_samples(
                &running.id,
                "2025-12-31T00:00:00.000Z",
                "2026-01-02T00:00:00.000Z",
                2,
            )
            .await
            .unwrap();
        assert_eq!(limited, samples[..2], "{backend}: oldest first, limited");
        let pruned = store
            .prune_metric_samples("2026-01-01T00:00:15.000Z")
            .await
            .unwrap();
        assert_eq!(pruned, 1, "{backend}");
        let left = store
            .metric_samples(
                &running.id,
                "2025-12-31T00:00:00.000Z",
                "2026-01-02T00:00:00.000Z",
                100,
            )
            .await
            .unwrap();
        assert_eq!(left, samples[1..], "{backend}");
    }
}

#[tokio::test]
async fn registry_credentials_expire_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let credential = |name: &str, expires_at: &str| RegistryCredentialRow {
            username: name.into(),
            secret_hash: format!("hash-of-{name}"),
            organization_id: "org-1".into(),
            created_by: "user-1".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            expires_at: expires_at.into(),
        };
        let live = credential("daytona-push-live", "2026-01-01T01:00:00.000Z");
        let old = credential("daytona-push-old", "2026-01-01T00:30:00.000Z");
        store.insert_registry_credential(&live).await.unwrap();
        store.insert_registry_credential(&old).await.unwrap();
        assert!(
            store.insert_registry_credential(&live).await.is_err(),
            "{backend}: usernames are unique"
        );
        let at = "2026-01-01T00:45:00.000Z";
        let found = store
            .live_registry_credential(&live.username, at)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.secret_hash.as_str(), found.organization_id.as_str()),
            ("hash-of-daytona-push-live", "org-1"),
            "{backend}"
        );
        assert!(
            store
                .live_registry_credential(&old.username, at)
                .await
                .unwrap()
                .is_none(),
            "{backend}: expired"
        );
        assert_eq!(
            store.delete_expired_registry_credentials(at).await.unwrap(),
            1,
            "{backend}"
        );
        assert_eq!(
            store.delete_expired_registry_credentials(at).await.unwrap(),
            0,
            "{backend}"
        );
        assert!(
            store
                .live_registry_credential(&live.username, at)
                .await
                .unwrap()
                .is_some(),
            "{backend}"
        );
    }
}

#[tokio::test]
async fn accounts_and_keys_are_stored_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        assert!(store.admin_organization().await.unwrap().is_none());
        let org = store
            .create_user_with_personal_org("root", "Admin", "admin")
            .await
            .unwrap();
        let (admin_org, admin) = store.admin_organization().await.unwrap().unwrap();
        assert_eq!((admin_org.as_str(), admin.as_str()), (org.as_str(), "root"));
        let alice = add_org(&store, "alice").await;
        let key = store
            .api_key_by_name(&alice.ctx.organization_id, "alice", "test")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(key.permissions, "*", "{backend}");
        store.touch_api_key(&key.id).await.unwrap();
        let keys = store
            .api_keys_of(&alice.ctx.organization_id, "alice")
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{backend}");
        assert!(keys[0].last_used_at.is_some(), "{backend}");
        store.delete_api_key(&key.id).await.unwrap();
        assert!(
            daytona_api::auth::authenticate(&store, &alice.key)
                .await
                .is_err(),
            "{backend}: a deleted key no longer opens anything"
        );
    }
}

#[tokio::test]
async fn signed_preview_tokens_name_their_sandbox_and_expiry_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "alice").await.ctx.organization_id;
        let row = sandbox(&org, "web", "{}");
        store.insert_sandbox(&row).await.unwrap();
        let later = (chrono::Utc::now() + chrono::Duration::minutes(5))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let past = (chrono::Utc::now() - chrono::Duration::minutes(5))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        store
            .insert_signed_preview_token("live", &row.id, 8080, &later)
            .await
            .unwrap();
        store
            .insert_signed_preview_token("gone", &row.id, 8080, &past)
            .await
            .unwrap();
        assert_eq!(
            store.signed_preview_sandbox("live", 8080).await.unwrap(),
            Some((row.id.clone(), later)),
            "{backend}"
        );
        assert_eq!(
            store.signed_preview_sandbox("live", 8081).await.unwrap(),
            None,
            "{backend}: bound to its port"
        );
        assert_eq!(
            store.signed_preview_sandbox("gone", 8080).await.unwrap(),
            None,
            "{backend}: expired"
        );
        assert!(
            store
                .delete_signed_preview_token("live", &row.id, 8080)
                .await
                .unwrap()
        );
        assert_eq!(
            store.signed_preview_sandbox("live", 8080).await.unwrap(),
            None,
            "{backend}"
        );
    }
}

/// With `RUN_MIGRATIONS=false` the server refuses a database whose schema is behind, and accepts
/// one that is current.
#[tokio::test]
async fn an_unmigrated_database_is_refused_without_run_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/daytona.db?mode=rwc", dir.path().display());
    let mut urls = vec![sqlite];
    urls.extend(fresh_postgres_url().await);
    for url in urls {
        match Store::open_url(&url, false).await {
            Err(OpenError::NotMigrated { missing }) => assert!(missing.contains(&1), "{missing:?}"),
            Err(e) => panic!("{url}: {e}"),
            Ok(_) => panic!("{url}: an empty database was accepted"),
        }
        Store::open_url(&url, true).await.unwrap();
        Store::open_url(&url, false).await.unwrap();
    }
}

#[tokio::test]
async fn runners_jobs_and_runner_images_are_stored_alike() {
    use daytona_api::store::RunnerReport;
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "runner-owner").await.ctx.organization_id;
        store
            .ensure_runner("r-1", "default", "us", "hash-1")
            .await
            .unwrap();
        // Registering again keeps the row and takes the token configured now.
        store
            .ensure_runner("r-other", "default", "us", "hash-2")
            .await
            .unwrap();
        let runner = store.runner_by_token_hash("hash-2").await.unwrap().unwrap();
        assert_eq!(
            (runner.id.as_str(), runner.state.as_str()),
            ("r-1", "initializing"),
            "{backend:?}"
        );
        assert!(
            store
                .runner_by_token_hash("hash-1")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(store.list_runners(Some("us")).await.unwrap().len(), 1);
        assert!(store.list_runners(Some("eu")).await.unwrap().is_empty());

        store
            .record_runner_health(
                "r-1",
                &RunnerReport {
                    domain: Some("runner-1"),
                    api_url: None,
                    proxy_url: None,
                    app_version: "0.0.1",
                    metrics: "{\"cpu\":4}",
                    availability_score: 77,
                    contact_interval_seconds: 2,
                },
            )
            .await
            .unwrap();
        let ready = store.runner_by_id("r-1").await.unwrap().unwrap();
        assert_eq!(
            (ready.state.as_str(), ready.availability_score),
            ("ready", 77)
        );
        let last = ready.last_checked.clone().unwrap();
        assert!(store.mark_runner_unresponsive("r-1", &last).await.unwrap());
        assert!(!store.mark_runner_unresponsive("r-1", &last).await.unwrap());

        // Allocation counts the sandboxes placed there that hold resources.
        let mut placed = sandbox(&org, "placed", "{}");
        placed.runner_id = Some("r-1".into());
        store.insert_sandbox(&placed).await.unwrap();
        let mut gone = sandbox(&org, "gone", "{}");
        gone.runner_id = Some("r-1".into());
        gone.state = "archived".into();
        store.insert_sandbox(&gone).await.unwrap();
        let allocation = store.runner_allocation("r-1").await.unwrap();
        assert_eq!(
            (
                allocation.cpu,
                allocation.memory,
                allocation.disk,
                allocation.started
            ),
            (1, 2, 3, 1)
        );
        assert_eq!(
            store.sandboxes_on_runner("r-1").await.unwrap(),
            vec![placed.id.clone()]
        );
        store
            .set_sandbox_state(
                &placed.id,
                "error",
                Some("start failed: runner r-1 is unresponsive (x_y%)"),
            )
            .await
            .unwrap();
        assert_eq!(
            store
                .sandboxes_failed_with("r-1", "runner r-1 is unresponsive")
                .await
                .unwrap(),
            vec![placed.id.clone()]
        );
        assert!(
            store
                .sandboxes_failed_with("r-1", "runner r-2")
                .await
                .unwrap()
                .is_empty()
        );
        // LIKE's wildcards in the marker are taken literally.
        assert!(
            store
                .sandboxes_failed_with("r-1", "unresponsive (x%")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.sandboxes_failed_with("r-1", "(x_y%)").await.unwrap(),
            vec![placed.id.clone()]
        );
        // Every sandbox recorded on the runner, whatever its state.
        let recorded: HashSet<String> = store
            .sandbox_ids_recorded_on("r-1")
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            recorded,
            HashSet::from([placed.id.clone(), gone.id.clone()])
        );
        assert!(
            store
                .sandbox_ids_recorded_on("r-2")
                .await
                .unwrap()
                .is_empty()
        );

        // Jobs: claimed once, finished once, cancelled only while pending.
        for (i, id) in ["j-1", "j-2", "j-3"].iter().enumerate() {
            store
                .insert_job(&pending_job(id, "STOP_SANDBOX", &format!("sb-{i}")))
                .await
                .unwrap();
        }
        assert!(
            store
                .has_unfinished_job("r-1", "STOP_SANDBOX", "sb-0")
                .await
                .unwrap()
        );
        assert!(
            !store
                .has_unfinished_job("r-1", "DESTROY_SANDBOX", "sb-0")
                .await
                .unwrap()
        );
        let claimed = store.claim_jobs("r-1", 2).await.unwrap();
        assert_eq!(claimed.len(), 2, "{backend:?}");
        assert!(claimed.iter().all(|j| j.state == "IN_PROGRESS"));
        // The creating request's trace context comes back as it was stored.
        assert_eq!(
            claimed[0].trace_context["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "{backend:?}"
        );
        assert_eq!(
            store
                .runner_jobs("r-1", Some("IN_PROGRESS"), 10)
                .await
                .unwrap()
                .len(),
            2
        );
        assert!(
            store
                .finish_job(&claimed[0].id, "r-1", "COMPLETED", Some("null"), None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .finish_job(&claimed[0].id, "r-1", "FAILED", None, Some("late"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .finish_job(&claimed[1].id, "r-other", "COMPLETED", None, None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .cancel_pending_job(&claimed[1].id, "gave up")
                .await
                .unwrap()
        );
        assert!(store.cancel_pending_job("j-3", "gave up").await.unwrap());
        let cancelled = store.job_by_id("j-3").await.unwrap().unwrap();
        assert_eq!(
            (cancelled.state.as_str(), cancelled.error_message.as_deref()),
            ("FAILED", Some("gave up"))
        );

        store
            .set_runner_image_state("r-1", "img:1", "pulling", None)
            .await
            .unwrap();
        store
            .set_runner_image_state("r-1", "img:1", "ready", None)
            .await
            .unwrap();
        assert_eq!(
            store
                .runner_image_state("r-1", "img:1")
                .await
                .unwrap()
                .as_deref(),
            Some("ready")
        );
        assert_eq!(
            store.runner_image_state("r-1", "img:2").await.unwrap(),
            None
        );
        assert!(store.delete_runner("r-1").await.unwrap());
        assert!(store.runner_by_id("r-1").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn runner_flags_and_stale_jobs_alike() {
    use std::time::Duration;

    use daytona_api::runner::{Fleet, FleetSettings};
    for TestStore { backend, store, .. } in test_stores().await {
        store
            .ensure_runner("r-1", "default", "us", "hash-1")
            .await
            .unwrap();
        let drained = store
            .set_runner_flags("r-1", None, Some(true))
            .await
            .unwrap()
            .unwrap();
        assert!(
            drained.draining && !drained.unschedulable,
            "{backend:?}: only the flag given changes"
        );
        let both = store
            .set_runner_flags("r-1", Some(true), None)
            .await
            .unwrap()
            .unwrap();
        assert!(both.draining && both.unschedulable, "{backend:?}");
        let back = store
            .set_runner_flags("r-1", Some(false), Some(false))
            .await
            .unwrap()
            .unwrap();
        assert!(!back.draining && !back.unschedulable, "{backend:?}");
        assert!(
            store
                .set_runner_flags("r-missing", Some(true), None)
                .await
                .unwrap()
                .is_none()
        );

        // Two jobs taken at once: a stop (10 minute limit) and a build (120 minutes).
        for (id, job_type) in [("j-stop", "STOP_SANDBOX"), ("j-build", "BUILD_SNAPSHOT")] {
            store
                .insert_job(&pending_job(id, job_type, "sb"))
                .await
                .unwrap();
        }
        assert_eq!(store.claim_jobs("r-1", 10).await.unwrap().len(), 2);
        let fleet = Fleet::new(
            store.clone(),
            FleetSettings {
                availability_score_threshold: 10,
                declarative_build_score_threshold: 10,
                start_score_threshold: 3,
                health_timeout: Duration::from_secs(3),
                default_region: "us".into(),
                runner_wait: Duration::from_secs(1),
            },
            std::sync::Arc::new(daytona_api::cluster::InProcessCluster::default()),
        );
        let at = |minutes: i64| chrono::Utc::now() + chrono::Duration::minutes(minutes);
        assert_eq!(
            fleet.fail_stale_jobs(at(5)).await.unwrap(),
            0,
            "{backend:?}"
        );
        assert_eq!(
            fleet.fail_stale_jobs(at(11)).await.unwrap(),
            1,
            "{backend:?}"
        );
        let stop = store.job_by_id("j-stop").await.unwrap().unwrap();
        assert_eq!(stop.state, "FAILED");
        assert!(
            stop.error_message
                .as_deref()
                .is_some_and(|m| m.contains("timed out") && m.contains("10 minutes")),
            "{:?}",
            stop.error_message
        );
        assert_eq!(
            store.job_by_id("j-build").await.unwrap().unwrap().state,
            "IN_PROGRESS"
        );
        assert_eq!(
            fleet.fail_stale_jobs(at(121)).await.unwrap(),
            1,
            "{backend:?}"
        );
        assert_eq!(
            store.job_by_id("j-build").await.unwrap().unwrap().state,
            "FAILED"
        );
    }
}

#[tokio::test]
async fn build_logs_and_earlier_jobs_are_found_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "alice").await.ctx.organization_id;
        let row = snapshot(&org, "logged", false);
        store.insert_snapshot(&row).await.unwrap();
        let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        store
            .append_build_log(&row.id, "api-1", 0, &lines(&["a", "b"]))
            .await
            .unwrap();
        store
            .append_build_log(&row.id, "job-1", 0, &lines(&["x"]))
            .await
            .unwrap();
        // Reported again with one more: the first is kept once.
        store
            .append_build_log(&row.id, "job-1", 0, &lines(&["x", "y"]))
            .await
            .unwrap();
        let all = store.build_log_after(&row.id, 0, 100).await.unwrap();
        let texts: Vec<&str> = all.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(texts, ["a", "b", "x", "y"], "{backend}");
        let rest = store.build_log_after(&row.id, all[1].0, 1).await.unwrap();
        assert_eq!(rest.len(), 1, "{backend}: limited");
        assert_eq!(rest[0].1, "x", "{backend}: after the position given");
        store.delete_snapshot(&row.id).await.unwrap();
        assert!(
            store
                .build_log_after(&row.id, 0, 100)
                .await
                .unwrap()
                .is_empty(),
            "{backend}: the log goes with its snapshot"
        );

        store
            .ensure_runner("r-1", "default", "us", "hash-1")
            .await
            .unwrap();
        let mut older = pending_job("j-old", "PULL_SNAPSHOT", "img");
        older.created_at = "2026-01-01T00:00:00.000Z".into();
        store.insert_job(&older).await.unwrap();
        store
            .insert_job(&pending_job("j-new", "PULL_SNAPSHOT", "img"))
            .await
            .unwrap();
        store
            .insert_job(&pending_job("j-other", "BUILD_SNAPSHOT", "img"))
            .await
            .unwrap();
        let latest = store
            .latest_job("PULL_SNAPSHOT", "img", None)
            .await
            .unwrap();
        assert_eq!(latest.unwrap().id, "j-new", "{backend}");
        let on_r1 = store
            .latest_job("PULL_SNAPSHOT", "img", Some("r-1"))
            .await
            .unwrap();
        assert_eq!(on_r1.unwrap().id, "j-new", "{backend}");
        assert!(
            store
                .latest_job("PULL_SNAPSHOT", "img", Some("r-2"))
                .await
                .unwrap()
                .is_none(),
            "{backend}"
        );
        assert!(
            store
                .latest_job("PULL_SNAPSHOT", "other", None)
                .await
                .unwrap()
                .is_none(),
            "{backend}"
        );
    }
}

/// A job of runner `r-1` no runner has taken yet.
fn pending_job(id: &str, job_type: &str, resource_id: &str) -> JobRow {
    let ts = now();
    JobRow {
        id: id.into(),
        runner_id: "r-1".into(),
        job_type: job_type.into(),
        resource_id: resource_id.into(),
        payload: "{}".into(),
        state: "PENDING".into(),
        result: None,
        error_message: None,
        created_at: ts.clone(),
        updated_at: ts,
        started_at: None,
        completed_at: None,
        trace_context: serde_json::json!({
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        }),
    }
}

#[tokio::test]
async fn backups_go_from_pending_to_completed_alike() {
    for TestStore { backend, store, .. } in test_stores().await {
        let org = add_org(&store, "bob").await.ctx.organization_id;
        let mut stopped = sandbox(&org, "stopped", "{}");
        stopped.state = "stopped".into();
        stopped.runner_id = Some("r-1".into());
        store.insert_sandbox(&stopped).await.unwrap();
        let mut started = sandbox(&org, "started", "{}");
        started.runner_id = Some("r-1".into());
        store.insert_sandbox(&started).await.unwrap();
        let id = stopped.id.as_str();
        let state = |row: SandboxRow| {
            (
                row.backup_state,
                row.backup_key,
                row.backup_created_at,
                row.backup_error,
            )
        };
        let read = || async { state(store.sandbox_by_id(id).await.unwrap().unwrap()) };
        let before = store.sandbox_by_id(id).await.unwrap().unwrap().updated_at;

        // Asked once; only stopped sandboxes on a runner are pending.
        assert!(store.request_backup(id).await.unwrap(), "{backend}");
        assert!(!store.request_backup(id).await.unwrap(), "{backend}");
        assert!(store.request_backup(&started.id).await.unwrap());
        let pending: Vec<String> = store
            .pending_backups()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(pending, vec![stopped.id.clone()], "{backend}");
        assert!(!store.claim_backup(&started.id).await.unwrap());

        // Claimed once; counted per runner while it runs.
        assert!(store.claim_backup(id).await.unwrap(), "{backend}");
        assert!(!store.claim_backup(id).await.unwrap(), "{backend}");
        assert_eq!(store.backups_in_progress("r-1").await.unwrap(), 1);
        assert_eq!(store.backups_in_progress("r-2").await.unwrap(), 0);
        assert_eq!(
            store.running_backups().await.unwrap(),
            vec![stopped.id.clone()]
        );
        assert!(
            !store.request_backup(id).await.unwrap(),
            "running: not asked again"
        );

        // A runner that is gone puts it back; a failure records why.
        store.end_backup(id, None).await.unwrap();
        assert_eq!(read().await.0, "Pending", "{backend}");
        assert!(store.claim_backup(id).await.unwrap());
        store
            .end_backup(id, Some("backup failed: disk"))
            .await
            .unwrap();
        assert_eq!(
            read().await,
            (
                "Error".into(),
                None,
                None,
                Some("backup failed: disk".into())
            ),
            "{backend}"
        );

        // Completed: the first has nothing to replace, the next replaces it.
        assert!(store.request_backup(id).await.unwrap());
        assert!(store.claim_backup(id).await.unwrap());
        let outcome = store.complete_backup(id, "backups/a", "t1").await.unwrap();
        assert_eq!(
            outcome,
            BackupOutcome::Recorded { replaced: None },
            "{backend}"
        );
        assert_eq!(
            read().await,
            (
                "Completed".into(),
                Some("backups/a".into()),
                Some("t1".into()),
                None
            ),
            "{backend}"
        );
        assert_eq!(
            store.complete_backup(id, "backups/x", "t9").await.unwrap(),
            BackupOutcome::Abandoned,
            "not in progress: the copy is stale"
        );
        assert!(store.request_backup(id).await.unwrap());
        assert!(store.claim_backup(id).await.unwrap());
        assert_eq!(
            store.complete_backup(id, "backups/b", "t2").await.unwrap(),
            BackupOutcome::Recorded {
                replaced: Some("backups/a".into())
            },
            "{backend}"
        );
        let after = store.sandbox_by_id(id).await.unwrap().unwrap().updated_at;
        assert_eq!(
            before, after,
            "backups do not change the sandbox's updated_at"
        );

        // A start clears the state and keeps the key (the copy is deleted when replaced).
        store.set_sandbox_started(id, "r-1", None).await.unwrap();
        assert_eq!(
            read().await,
            (
                "None".into(),
                Some("backups/b".into()),
                Some("t2".into()),
                None
            ),
            "{backend}"
        );

        // Destroyed while its backup ran: the new copy is stale.
        store.set_sandbox_state(id, "stopped", None).await.unwrap();
        assert!(store.request_backup(id).await.unwrap());
        assert!(store.claim_backup(id).await.unwrap());
        store
            .set_sandbox_state(id, "destroyed", None)
            .await
            .unwrap();
        assert_eq!(
            store.complete_backup(id, "backups/c", "t3").await.unwrap(),
            BackupOutcome::Abandoned,
            "{backend}"
        );
    }
}
