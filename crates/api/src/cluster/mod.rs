//! What the API processes of one deployment share besides the database: named locks,
//! leases for background workers, and broadcast messages.
//!
//! `daytona server` is one process, so [`InProcessCluster`] (tokio mutexes and a broadcast
//! channel) is the embedded default; several API replicas on one PostgreSQL use
//! [`RedisCluster`] (`REDIS_HOST`), so a lock taken on one replica holds on all of them, a lease
//! moves to another replica when its holder dies, and a message published on one reaches
//! subscribers on every replica.

mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

pub use self::redis::RedisCluster;

/// Broadcast channels the control plane uses.
pub mod channel {
    /// Domain events (`crate::events::Event` as JSON).
    pub const EVENTS: &str = "events";
    /// A job was queued for the runner whose id is the message.
    pub const RUNNER_JOBS: &str = "runner-jobs";
    /// The job whose id is the message has finished.
    pub const JOB_FINISHED: &str = "job-finished";
    /// A runner reported healthy (its id).
    pub const RUNNER_JOINED: &str = "runner-joined";
    /// A sandbox's daemon moved or went away: `<publishing process> <sandbox id>`.
    pub const SANDBOX_MOVED: &str = "sandbox-moved";
    /// What split proxies and gateways must forget (`daytona_proxy::invalidation::Invalidation`
    /// as JSON).
    pub const INVALIDATIONS: &str = "invalidations";
    /// The build log of the snapshot whose id is the message grew, or its build ended.
    pub const BUILD_LOG: &str = "build-log";
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the shared lock service is unavailable: {0}")]
    Unavailable(String),
}

impl From<ClusterError> for crate::error::ApiError {
    fn from(e: ClusterError) -> Self {
        crate::error::ApiError::Unavailable(e.to_string())
    }
}

/// A held lock; dropping it releases the lock.
pub struct LockGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl LockGuard {
    fn new(inner: impl Send + Sync + 'static) -> Self {
        LockGuard(Box::new(inner))
    }
}

/// Coordination between the API processes of a deployment.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// Waits until this process holds the lock `key`, exclusive across every process.
    async fn lock(&self, key: &str) -> Result<LockGuard, ClusterError>;

    /// The lock `key` if nobody holds it now.
    async fn try_lock(&self, key: &str) -> Result<Option<LockGuard>, ClusterError>;

    /// Whether this process holds the lease `name` (taken or renewed now) for the next `ttl`.
    /// Background workers ask before each round, so exactly one process does each round and
    /// the lease moves to another process when its holder stops renewing it.
    async fn lead(&self, name: &str, ttl: Duration) -> bool;

    /// Sends `message` to the subscribers of `channel` in every process. Never fails the
    /// caller: messages are wake-ups and hints, whose receivers also re-read the store.
    fn publish(&self, channel: &'static str, message: String);

    /// Messages published on `channel` from now on.
    fn subscribe(&self, channel: &'static str) -> BoxStream<'static, String>;
}

/// How many messages a slow subscriber may lag behind before it skips some.
const BROADCAST_CAPACITY: usize = 4096;

/// Messages of every channel, fanned out in this process.
#[derive(Clone)]
struct LocalBroadcast(broadcast::Sender<Arc<(String, String)>>);

impl LocalBroadcast {
    fn new() -> Self {
        LocalBroadcast(broadcast::channel(BROADCAST_CAPACITY).0)
    }

    fn send(&self, channel: &str, message: String) {
        // An error only means there is no subscriber right now.
        let _ = self.0.send(Arc::new((channel.to_owned(), message)));
    }

    fn subscribe(&self, channel: &'static str) -> BoxStream<'static, String> {
        futures::stream::unfold(self.0.subscribe(), move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(m) if m.0 == channel => return Some((m.1.clone(), rx)),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::warn!(
                            channel,
                            skipped,
                            "subscriber fell behind; messages skipped"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}

type LockMap = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// The coordination of a single API process.
pub struct InProcessCluster {
    locks: LockMap,
    messages: LocalBroadcast,
}

impl Default for InProcessCluster {
    fn default() -> Self {
        InProcessCluster {
            locks: LockMap::default(),
            messages: LocalBroadcast::new(),
        }
    }
}

/// Holds an in-process lock; forgets the key's mutex when nobody else uses it.
struct LocalGuard {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    key: String,
    locks: LockMap,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.locks.lock().expect("lock map poisoned");
        if locks
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

impl InProcessCluster {
    fn mutex(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("lock map poisoned")
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    fn guard(&self, key: &str, guard: tokio::sync::OwnedMutexGuard<()>) -> LockGuard {
        LockGuard::new(LocalGuard {
            guard: Some(guard),
            key: key.to_owned(),
            locks: self.locks.clone(),
        })
    }
}

#[async_trait::async_trait]
impl Cluster for InProcessCluster {
    async fn lock(&self, key: &str) -> Result<LockGuard, ClusterError> {
        let guard = self.mutex(key).lock_owned().await;
        Ok(self.guard(key, guard))
    }

    async fn try_lock(&self, key: &str) -> Result<Option<LockGuard>, ClusterError> {
        Ok(self
            .mutex(key)
            .try_lock_owned()
            .ok()
            .map(|guard| self.guard(key, guard)))
    }

    async fn lead(&self, _name: &str, _ttl: Duration) -> bool {
        true // the only process
    }

    fn publish(&self, channel: &'static str, message: String) {
        self.messages.send(channel, message);
    }

    fn subscribe(&self, channel: &'static str) -> BoxStream<'static, String> {
        self.messages.subscribe(channel)
    }
}

/// The lease of a worker that does a round every `interval`: it lapses three rounds after its
/// holder's last one, so another process takes over when the holder dies.
pub fn lease_for(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_locks_exclude_and_release() {
        let cluster = InProcessCluster::default();
        let held = cluster.lock("a").await.unwrap();
        assert!(cluster.try_lock("a").await.unwrap().is_none());
        assert!(
            cluster.try_lock("b").await.unwrap().is_some(),
            "keys are independent"
        );
        drop(held);
        assert!(cluster.try_lock("a").await.unwrap().is_some());
        assert!(
            cluster.locks.lock().unwrap().is_empty(),
            "unused keys are forgotten"
        );
    }

    #[tokio::test]
    async fn in_process_messages_reach_subscribers_of_their_channel() {
        let cluster = InProcessCluster::default();
        let mut jobs = cluster.subscribe(channel::RUNNER_JOBS);
        let mut events = cluster.subscribe(channel::EVENTS);
        cluster.publish(channel::RUNNER_JOBS, "r1".into());
        cluster.publish(channel::EVENTS, "{}".into());
        assert_eq!(jobs.next().await.unwrap(), "r1");
        assert_eq!(events.next().await.unwrap(), "{}");
    }
}
