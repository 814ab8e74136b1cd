//! Shared by the API's integration tests: a runner without sandboxes and organizations with keys.
#![allow(dead_code)] // each test binary uses its own part

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use daytona_api::Store;
use daytona_api::auth::{self, AuthContext};
use daytona_api::store::NewApiKey;
use daytona_runner::{PulledImage, RunnerError, SandboxRequest, SandboxRunner};

/// A runner whose sandboxes only exist as state transitions; `archives` are the archive keys
/// its storage holds, `destroyed` the sandboxes it was asked to destroy, `volumes` the volumes
/// it stores.
#[derive(Default)]
pub struct NullRunner {
    pub archives: Mutex<HashSet<String>>,
    pub destroyed: Mutex<Vec<String>>,
    pub volumes: Mutex<HashSet<String>>,
}

#[async_trait::async_trait]
impl SandboxRunner for NullRunner {
    fn id(&self) -> &str {
        "null"
    }
    async fn pull_image(&self, _: &str) -> Result<PulledImage, RunnerError> {
        Ok(PulledImage {
            digest: "sha256:0".into(),
            size_bytes: 0,
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            published: None,
        })
    }
    async fn collect_garbage(&self, _: &[String]) -> Result<(), RunnerError> {
        Ok(())
    }
    async fn create_sandbox(&self, _: &SandboxRequest) -> Result<SocketAddr, RunnerError> {
        Ok(([127, 0, 0, 1], 2280).into())
    }
    async fn start_sandbox(&self, _: &str) -> Result<SocketAddr, RunnerError> {
        Ok(([127, 0, 0, 1], 2280).into())
    }
    async fn stop_sandbox(&self, _: &str) -> Result<(), RunnerError> {
        Ok(())
    }
    async fn destroy_sandbox(&self, id: &str) -> Result<(), RunnerError> {
        self.destroyed.lock().unwrap().push(id.to_owned());
        Ok(())
    }
    async fn daemon_address(&self, _: &str) -> Result<Option<SocketAddr>, RunnerError> {
        Ok(None)
    }
    async fn oom_kills(&self, _: &str) -> Result<u64, RunnerError> {
        Ok(0)
    }
    async fn pause_sandbox(&self, _: &str) -> Result<(), RunnerError> {
        Ok(())
    }
    async fn resume_sandbox(&self, _: &str) -> Result<(), RunnerError> {
        Ok(())
    }
    async fn resize_sandbox(&self, _: &str, _: &daytona_runner::Resize) -> Result<(), RunnerError> {
        Ok(())
    }
    async fn update_network(
        &self,
        _: &str,
        _: &daytona_runner::NetworkPolicy,
    ) -> Result<(), RunnerError> {
        Ok(())
    }
    async fn archive_exists(&self, key: &str) -> Result<bool, RunnerError> {
        Ok(self.archives.lock().unwrap().contains(key))
    }
    async fn create_volume(&self, id: &str) -> Result<(), RunnerError> {
        self.volumes.lock().unwrap().insert(id.to_owned());
        Ok(())
    }
    async fn delete_volume(&self, id: &str) -> Result<(), RunnerError> {
        self.volumes.lock().unwrap().remove(id);
        Ok(())
    }
}

/// An organization with an API key.
pub struct Org {
    pub ctx: AuthContext,
    pub key: String,
}

pub async fn add_org(store: &Store, user: &str) -> Org {
    // System administrators: the tests create sandboxes straight from a local image reference,
    // which only administrators may name.
    let organization_id = store
        .create_user_with_personal_org(user, user, "admin")
        .await
        .unwrap();
    let key = auth::generate_key();
    store
        .insert_api_key(NewApiKey {
            organization_id: &organization_id,
            user_id: user,
            name: "test",
            key_hash: &auth::hash_key(&key),
            key_prefix: &key[..8],
            permissions: "*",
            expires_at: None,
        })
        .await
        .unwrap();
    let ctx = auth::authenticate(store, &key).await.unwrap();
    assert_eq!(ctx.organization_id, organization_id);
    Org { ctx, key }
}

/// A store a test runs against; `backend` names it in assertion messages.
pub struct TestStore {
    pub backend: &'static str,
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

/// SQLite in a temporary directory, always.
pub async fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    TestStore {
        backend: "sqlite",
        store,
        _dir: Some(dir),
    }
}

/// The URL of a new, empty database on the PostgreSQL server `DAYTONA_TEST_POSTGRES_URL` names
/// (an admin URL; scripts/test.sh starts a throwaway server and sets it), or `None` when unset.
pub async fn fresh_postgres_url() -> Option<String> {
    use sqlx::Connection;
    let admin_url = std::env::var("DAYTONA_TEST_POSTGRES_URL").ok()?;
    sqlx::any::install_default_drivers();
    let name = format!("daytona_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::AnyConnection::connect(&admin_url)
        .await
        .expect("DAYTONA_TEST_POSTGRES_URL: cannot connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&name);
    Some(url.into())
}

/// A migrated fresh PostgreSQL database (see [`fresh_postgres_url`]).
pub async fn postgres_store() -> Option<TestStore> {
    let url = fresh_postgres_url().await?;
    let store = Store::open_url(&url, true).await.unwrap();
    Some(TestStore {
        backend: "postgres",
        store,
        _dir: None,
    })
}

/// Every backend available to this run: SQLite, plus PostgreSQL when configured.
pub async fn test_stores() -> Vec<TestStore> {
    let mut stores = vec![sqlite_store().await];
    stores.extend(postgres_store().await);
    stores
}
