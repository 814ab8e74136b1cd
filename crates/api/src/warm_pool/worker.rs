//! Keeps every warm pool at its size: makes the missing sandboxes, destroys the surplus, the
//! failed ones and those of deleted pools or of snapshots that can no longer be used, and records
//! in the pool why it is not full.

use crate::cluster::lease_for;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{pool_context, release, usable};
use crate::error::ApiResult;
use crate::sandbox::SandboxService;
use crate::sandbox::dto::CreateSandbox;
use crate::store::{SandboxRow, WarmPoolRow};

/// The first wait after a pool failed to fill; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Checks the pools once per `period` until the process ends.
pub fn spawn(service: Arc<SandboxService>, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut worker = Worker {
            service,
            backoff: HashMap::new(),
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // One API process at a time, so a pool is not filled twice over.
            if !worker
                .service
                .cluster()
                .lead("warm-pools", lease_for(period))
                .await
            {
                continue;
            }
            if let Err(e) = worker.pass().await {
                tracing::warn!(error = %e, "warm pool check failed");
            }
        }
    })
}

/// When a pool that failed to fill is tried again.
struct Backoff {
    until: Instant,
    delay: Duration,
}

struct Worker {
    service: Arc<SandboxService>,
    backoff: HashMap<String, Backoff>,
}

impl Worker {
    async fn pass(&mut self) -> ApiResult<()> {
        let store = self.service.store();
        let pools = store.all_warm_pools().await?;
        let mut waiting: HashMap<String, Vec<SandboxRow>> = HashMap::new();
        for row in store.pooled_sandboxes().await? {
            if let Some(pool) = row.warm_pool_id.clone() {
                waiting.entry(pool).or_default().push(row);
            }
        }
        let known: HashSet<String> = pools.iter().map(|p| p.id.clone()).collect();
        self.backoff.retain(|pool, _| known.contains(pool));
        // Sandboxes whose pool (or whose pool's organization) was deleted.
        for (_, rows) in waiting.extract_if(|pool, _| !known.contains(pool)) {
            for row in rows {
                release(&self.service, row).await;
            }
        }
        for pool in pools {
            let rows = waiting.remove(&pool.id).unwrap_or_default();
            if let Err(e) = self.keep(&pool, rows).await {
                tracing::warn!(pool = %pool.id, error = %e, "could not fill warm pool");
            }
        }
        Ok(())
    }

    /// Brings one pool to its size; `rows` are the sandboxes waiting in it.
    async fn keep(&mut self, pool: &WarmPoolRow, rows: Vec<SandboxRow>) -> ApiResult<()> {
        let store = self.service.store().clone();
        let unusable = match store
            .find_snapshot(&pool.organization_id, &pool.snapshot_id)
            .await?
        {
            None => Some(format!("Snapshot {} was deleted", pool.snapshot)),
            Some(s) if !usable(&s.state) => Some(format!("Snapshot {} is {}", s.name, s.state)),
            Some(_) => None,
        };
        if let Some(reason) = unusable {
            for row in rows {
                release(&self.service, row).await;
            }
            return Ok(store.set_warm_pool_error(&pool.id, Some(&reason)).await?);
        }

        let mut failure = None;
        let mut live = Vec::new();
        for row in rows {
            match row.state.as_str() {
                "creating" | "started" => live.push(row),
                "destroying" => {}
                other => {
                    failure = failure.or_else(|| {
                        Some(format!(
                            "A warm sandbox ended {other}: {}",
                            row.error_reason.as_deref().unwrap_or("no reason given")
                        ))
                    });
                    release(&self.service, row).await;
                }
            }
        }
        let want = usize::try_from(pool.pool).unwrap_or(0);
        if live.len() > want {
            // The newest first: the oldest have waited longest and are surely started.
            let surplus = live.len() - want;
            let ready = live.iter().rev().filter(|r| r.state == "started");
            for row in ready.take(surplus).cloned().collect::<Vec<_>>() {
                release(&self.service, row).await;
            }
        } else if live.len() < want && failure.is_none() && !self.backing_off(&pool.id) {
            for _ in live.len()..want {
                let made = self
                    .service
                    .create_pooled(&pool_context(pool), sandbox_request(pool), &pool.id)
                    .await;
                if let Err(e) = made {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        match failure {
            Some(reason) => {
                tracing::warn!(pool = %pool.id, %reason, "warm pool is not full");
                self.back_off(&pool.id);
                store.set_warm_pool_error(&pool.id, Some(&reason)).await?;
            }
            None if live.len() == want && live.iter().all(|r| r.state == "started") => {
                self.backoff.remove(&pool.id);
                store.set_warm_pool_error(&pool.id, None).await?;
            }
            None => {}
        }
        Ok(())
    }

    fn backing_off(&self, pool: &str) -> bool {
        self.backoff
            .get(pool)
            .is_some_and(|b| Instant::now() < b.until)
    }

    fn back_off(&mut self, pool: &str) {
        let delay = self
            .backoff
            .get(pool)
            .map_or(FIRST_BACKOFF, |b| (b.delay * 2).min(MAX_BACKOFF));
        self.backoff.insert(
            pool.to_string(),
            Backoff {
                until: Instant::now() + delay,
                delay,
            },
        );
    }
}

/// The create that makes one of `pool`'s sandboxes; its settings are replaced by the claiming
/// create's.
fn sandbox_request(pool: &WarmPoolRow) -> CreateSandbox {
    CreateSandbox {
        snapshot: Some(pool.snapshot_id.clone()),
        target: Some(pool.target.clone()),
        user: (pool.os_user != super::POOL_USER).then(|| pool.os_user.clone()),
        env: serde_json::from_str(&pool.env).unwrap_or_default(),
        // Never due while it waits (the lifecycle worker skips pooled sandboxes anyway).
        auto_stop_interval: Some(0),
        ..Default::default()
    }
}
