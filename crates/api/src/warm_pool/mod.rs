//! Warm pools (`/api/warm-pools`): per organization, snapshot and region, a number of started
//! sandboxes kept ready, so a matching create answers with one at once.
//!
//! A pooled sandbox is a row of the pool's organization with `pooled` set: hidden from that
//! organization's listings and lookups, never due for auto-stop, and — since the organization
//! pays for what it reserves — counted in its resource use against its quotas like any other
//! sandbox (the pool fills only as far as the quotas allow; `errorReason` says why it stopped).
//!
//! A create matches a pool when it is for the pool's organization, snapshot and region, with the
//! pool's resources (or none named), the pool's user (or none), no env, volumes, secrets, network
//! restrictions or image build. Labels, `public`, the auto intervals, the TTL and the name are
//! only records, so they are applied on the claim. Env is not: the daemon (PID 1) and whatever it
//! started already run with the environment the sandbox was made with.
//!
//! Claims and releases (surplus, deleted pools, failed sandboxes) each take a sandbox out of its
//! pool with one conditional update under the sandbox's lock (`store::warm_pools`), so two
//! creates never get the same sandbox and a claimed sandbox is never destroyed by the pool.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::auth::{AuthContext, MemberRole};
use crate::error::{ApiError, ApiResult};
use crate::events::Event;
use crate::sandbox::SandboxService;
use crate::sandbox::dto::{CreateSandbox, Sandbox};
use crate::store::{SandboxRow, Store, WarmPoolRow, now};

pub mod routes;
pub mod worker;

/// The largest `pool` accepted; the organization's quotas usually cap a pool well below it.
pub const MAX_POOL_SIZE: i64 = 50;

/// The os user of pooled sandboxes (a create that names none gets it too).
const POOL_USER: &str = "daytona";

/// The Warm Pool DTO of SDK 0.226.1.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WarmPool {
    pub id: String,
    pub organization_id: String,
    pub snapshot: String,
    pub target: String,
    pub pool: i64,
    /// Started sandboxes waiting in the pool now.
    pub current_size: i64,
    pub cpu: i64,
    pub mem: i64,
    pub disk: i64,
    pub os_user: String,
    pub env: BTreeMap<String, String>,
    pub error_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWarmPool {
    pub snapshot: String,
    pub pool: i64,
    pub target: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWarmPool {
    pub pool: i64,
}

fn check_size(pool: i64, min: i64) -> ApiResult<()> {
    if (min..=MAX_POOL_SIZE).contains(&pool) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "pool: must be between {min} and {MAX_POOL_SIZE}, got {pool}"
        )))
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("Warm pool {id} not found"))
}

async fn to_dto(store: &Store, row: WarmPoolRow) -> ApiResult<WarmPool> {
    let current_size = store.ready_pooled_count(&row.id).await?;
    Ok(WarmPool {
        current_size,
        env: serde_json::from_str(&row.env).unwrap_or_default(),
        id: row.id,
        organization_id: row.organization_id,
        snapshot: row.snapshot,
        target: row.target,
        pool: row.pool,
        cpu: row.cpu,
        mem: row.mem,
        disk: row.disk,
        os_user: row.os_user,
        error_reason: row.error_reason,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

pub async fn list(store: &Store, ctx: &AuthContext) -> ApiResult<Vec<WarmPool>> {
    let mut pools = Vec::new();
    for row in store.warm_pools(&ctx.organization_id).await? {
        pools.push(to_dto(store, row).await?);
    }
    Ok(pools)
}

/// Creates `ctx`'s pool for a snapshot of its own (or a general one) in a region; the worker
/// fills it.
pub async fn create(
    store: &Store,
    ctx: &AuthContext,
    body: CreateWarmPool,
    default_region: &str,
) -> ApiResult<WarmPool> {
    check_size(body.pool, 1)?;
    let org = &ctx.organization_id;
    let snapshot = store
        .find_snapshot(org, &body.snapshot)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Snapshot {} not found", body.snapshot)))?;
    if !usable(&snapshot.state) {
        return Err(ApiError::BadRequest(format!(
            "snapshot: {} is {}; only an active snapshot can have a warm pool",
            snapshot.name, snapshot.state
        )));
    }
    let target =
        crate::organization::sandbox_region(store, org, body.target.as_deref(), default_region)
            .await?;
    let ts = now();
    let row = WarmPoolRow {
        id: uuid::Uuid::new_v4().to_string(),
        organization_id: org.clone(),
        snapshot_id: snapshot.id,
        snapshot: snapshot.name,
        target,
        pool: body.pool,
        cpu: snapshot.cpu,
        mem: snapshot.mem,
        disk: snapshot.disk,
        os_user: POOL_USER.into(),
        env: "{}".into(),
        error_reason: None,
        created_at: ts.clone(),
        updated_at: ts,
    };
    store.insert_warm_pool(&row).await.map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => ApiError::Conflict(format!(
            "A warm pool for snapshot {} in region {} already exists",
            row.snapshot, row.target
        )),
        e => e.into(),
    })?;
    tracing::info!(pool = %row.id, snapshot = %row.snapshot, size = row.pool, "warm pool created");
    to_dto(store, row).await
}

/// Sets the pool's size; the worker makes the missing sandboxes or destroys the surplus.
pub async fn update(
    store: &Store,
    ctx: &AuthContext,
    id: &str,
    body: UpdateWarmPool,
) -> ApiResult<WarmPool> {
    check_size(body.pool, 0)?;
    let row = store
        .warm_pool(&ctx.organization_id, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    store.set_warm_pool_size(&row.id, body.pool).await?;
    let row = store
        .warm_pool(&ctx.organization_id, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    to_dto(store, row).await
}

/// Deletes the pool and destroys the sandboxes waiting in it (those still being made follow
/// once they are, through the worker).
pub async fn delete(service: &Arc<SandboxService>, ctx: &AuthContext, id: &str) -> ApiResult<()> {
    let store = service.store();
    if !store.delete_warm_pool(&ctx.organization_id, id).await? {
        return Err(not_found(id));
    }
    tracing::info!(pool = %id, "warm pool deleted");
    for row in store.pooled_sandboxes().await? {
        if row.warm_pool_id.as_deref() == Some(id) {
            release(service, row).await;
        }
    }
    Ok(())
}

/// Snapshot states a pool's sandboxes can be made from (as for any create).
fn usable(snapshot_state: &str) -> bool {
    matches!(snapshot_state, "active" | "pending" | "pulling")
}

/// Whether a create asks for nothing a pooled sandbox cannot give it after the fact.
fn could_claim(body: &CreateSandbox) -> bool {
    body.build_info.is_none()
        && body.volumes.is_empty()
        && body.env.is_empty()
        && body.secrets.as_ref().is_none_or(Vec::is_empty)
        && body.gpu.unwrap_or(0) == 0
        && !body.network_block_all.unwrap_or(false)
        && body.network_allow_list.is_none()
        && body.domain_allow_list.is_none()
        && body.linked_sandbox.is_none()
}

/// Whether `pool`'s sandboxes have what the create asks for.
fn fits(pool: &WarmPoolRow, body: &CreateSandbox) -> bool {
    let same = |asked: Option<u32>, has: i64| asked.is_none_or(|v| i64::from(v) == has);
    same(body.cpu, pool.cpu)
        && same(body.memory, pool.mem)
        && same(body.disk, pool.disk)
        && body.user.as_deref().is_none_or(|u| u == pool.os_user)
}

/// Takes a started sandbox from `ctx`'s pool for `snapshot` in `target`, if the create matches
/// one and it has a sandbox ready, and gives it the create's settings. `None`: make one anew.
pub(crate) async fn claim(
    service: &Arc<SandboxService>,
    ctx: &AuthContext,
    body: &CreateSandbox,
    snapshot: &str,
    target: &str,
) -> ApiResult<Option<Sandbox>> {
    if !could_claim(body) {
        return Ok(None);
    }
    let store = service.store();
    let org = &ctx.organization_id;
    let Some(snapshot) = store.find_snapshot(org, snapshot).await? else {
        return Ok(None);
    };
    let Some(pool) = store.warm_pool_for(org, &snapshot.id, target).await? else {
        return Ok(None);
    };
    if !fits(&pool, body) {
        return Ok(None);
    }
    // A taken name is refused by the ordinary create, with its message.
    if let Some(name) = &body.name
        && store.find_sandbox(org, name).await?.is_some()
    {
        return Ok(None);
    }
    for id in store.ready_pooled_sandboxes(&pool.id).await? {
        let settings =
            crate::sandbox::service::claim_for(body, body.name.clone().unwrap_or(id.clone()));
        let guard = service.lock_sandbox(&id).await?;
        let claimed = store
            .claim_pooled_sandbox(&id, &settings)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => ApiError::Conflict(format!(
                    "Sandbox with name {} already exists",
                    settings.name
                )),
                e => e.into(),
            })?;
        drop(guard);
        if !claimed {
            continue; // another create (or the worker) took it first
        }
        let row = store
            .sandbox_by_id(&id)
            .await?
            .ok_or_else(|| ApiError::Internal(format!("claimed sandbox {id} vanished")))?;
        tracing::info!(sandbox = %id, pool = %pool.id, "claimed a warm sandbox");
        let dto = service.to_dto(row);
        service.events().publish(Event::sandbox_created(&dto));
        return Ok(Some(dto));
    }
    Ok(None)
}

/// Takes `row` out of its pool and destroys it, unless a create claimed it first.
async fn release(service: &Arc<SandboxService>, row: SandboxRow) {
    let id = row.id.clone();
    let released = {
        let _guard = match service.lock_sandbox(&id).await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "cannot release a warm sandbox now");
                return;
            }
        };
        service.store().release_pooled_sandbox(&id).await
    };
    match released {
        Ok(true) => {
            tracing::info!(sandbox = %id, pool = ?row.warm_pool_id, state = %row.state, "destroying a warm sandbox");
            let service = service.clone();
            tokio::spawn(async move {
                if let Err(e) = service.delete_sandbox(row).await {
                    tracing::warn!(sandbox = %id, error = %e, "could not destroy a warm sandbox");
                }
            });
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(sandbox = %id, error = %e, "could not release a warm sandbox"),
    }
}

/// The context the worker makes a pool's sandboxes in: the pool's organization, no user. The
/// create path reads only the organization from it (the pool's snapshot is a stored one, never a
/// local image reference, which would need a system administrator).
fn pool_context(pool: &WarmPoolRow) -> AuthContext {
    AuthContext {
        organization_id: pool.organization_id.clone(),
        user_id: String::new(),
        api_key_id: None,
        permissions: Vec::new(),
        member_role: MemberRole::Member,
        system_admin: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> WarmPoolRow {
        WarmPoolRow {
            id: "wp-1".into(),
            organization_id: "org".into(),
            snapshot_id: "snap-1".into(),
            snapshot: "base".into(),
            target: "us".into(),
            pool: 2,
            cpu: 1,
            mem: 1,
            disk: 3,
            os_user: "daytona".into(),
            env: "{}".into(),
            error_reason: None,
            created_at: now(),
            updated_at: now(),
        }
    }

    #[test]
    fn plain_creates_match_and_settings_that_are_records_do_not_matter() {
        let mut body = CreateSandbox {
            name: Some("mine".into()),
            public: Some(true),
            auto_stop_interval: Some(0),
            ttl_minutes: Some(5),
            ..Default::default()
        };
        body.labels.insert("team".into(), "a".into());
        assert!(could_claim(&body) && fits(&pool(), &body));
        body.cpu = Some(1);
        body.user = Some("daytona".into());
        assert!(fits(&pool(), &body), "the pool's own values are no change");
    }

    #[test]
    fn what_a_started_sandbox_cannot_take_on_does_not_match() {
        let cases: Vec<fn(&mut CreateSandbox)> = vec![
            |b| {
                b.env.insert("A".into(), "1".into());
            },
            |b| b.network_block_all = Some(true),
            |b| b.network_allow_list = Some("100.64.0.0/10".into()),
            |b| b.build_info = Some(serde_json::json!({"dockerfileContent": "FROM x"})),
            |b| b.linked_sandbox = Some("other".into()),
            |b| {
                b.volumes.push(crate::sandbox::dto::VolumeMount {
                    volume_id: "v".into(),
                    mount_path: "/data".into(),
                    subpath: None,
                })
            },
        ];
        for change in cases {
            let mut body = CreateSandbox::default();
            change(&mut body);
            assert!(!could_claim(&body), "{body:?}");
        }
        for change in [
            (|b: &mut CreateSandbox| b.cpu = Some(2)) as fn(&mut CreateSandbox),
            |b| b.memory = Some(4),
            |b| b.disk = Some(10),
            |b| b.user = Some("root".into()),
        ] {
            let mut body = CreateSandbox::default();
            change(&mut body);
            assert!(!fits(&pool(), &body), "{body:?}");
        }
    }

    #[test]
    fn sizes_are_checked_with_the_field_named() {
        assert!(check_size(1, 1).is_ok() && check_size(0, 0).is_ok());
        assert!(check_size(MAX_POOL_SIZE, 0).is_ok());
        for (size, min) in [(0, 1), (-1, 0), (MAX_POOL_SIZE + 1, 0)] {
            let e = check_size(size, min).unwrap_err();
            assert!(
                matches!(&e, ApiError::BadRequest(m) if m.starts_with("pool: ")),
                "{e}"
            );
        }
    }
}
