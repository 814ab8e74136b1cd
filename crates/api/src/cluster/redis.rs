//! [`Cluster`] on Redis: locks and leases are keys set only if absent, with an expiry that the
//! holder keeps extending (so a dead holder's lock lapses) and that only the holder's token may
//! extend or delete; messages travel by Redis pub/sub.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::{Cluster, ClusterError, LocalBroadcast, LockGuard, channel};

/// Every key and channel of this deployment starts with this.
const PREFIX: &str = "daytona:";
/// A lock's expiry: how long a lock of a process that died stays taken.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How often a holder extends its lock.
const LOCK_RENEW: Duration = Duration::from_secs(5);
/// Pause between attempts to take a held lock.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// Extends a lock or lease if `ARGV[1]` holds it; 1 when it did.
const RENEW: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";
/// Deletes a lock if `ARGV[1]` holds it.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";
/// Renews the lease for `ARGV[1]`, or takes it when nobody holds it; 1 when `ARGV[1]` holds it.
const LEAD: &str = r"local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0";

pub struct RedisCluster {
    conn: ConnectionManager,
    /// This process's name in leases.
    me: String,
    /// The leases this process held at its last look (to log when one moves).
    leading: Mutex<HashSet<String>>,
    local: LocalBroadcast,
    outbox: mpsc::UnboundedSender<(&'static str, String)>,
}

fn unavailable(e: redis::RedisError) -> ClusterError {
    ClusterError::Unavailable(e.to_string())
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl RedisCluster {
    /// Connects to `redis://host:port` and starts relaying this deployment's messages.
    pub async fn connect(host: &str, port: u16) -> Result<Arc<Self>, ClusterError> {
        let client = redis::Client::open(format!("redis://{host}:{port}/")).map_err(unavailable)?;
        let conn = ConnectionManager::new(client.clone())
            .await
            .map_err(unavailable)?;
        let local = LocalBroadcast::new();
        let (outbox, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_loop(conn.clone(), rx));
        // Subscribed before `connect` returns, so nothing published afterwards is missed.
        let pubsub = subscribe(&client).await.map_err(unavailable)?;
        tokio::spawn(relay_loop(client, pubsub, local.clone()));
        Ok(Arc::new(RedisCluster {
            conn,
            me: uuid::Uuid::new_v4().to_string(),
            leading: Mutex::default(),
            local,
            outbox,
        }))
    }

    /// A connection for other shared state (rate limits).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

const CHANNELS: [&str; 6] = [
    channel::EVENTS,
    channel::RUNNER_JOBS,
    channel::JOB_FINISHED,
    channel::RUNNER_JOINED,
    channel::SANDBOX_MOVED,
    channel::INVALIDATIONS,
];

async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    for name in CHANNELS {
        pubsub.subscribe(format!("{PREFIX}{name}")).await?;
    }
    Ok(pubsub)
}

/// Publishes in order, one message at a time.
async fn publish_loop(
    mut conn: ConnectionManager,
    mut rx: mpsc::UnboundedReceiver<(&'static str, String)>,
) {
    while let Some((name, message)) = rx.recv().await {
        let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(format!("{PREFIX}{name}"))
            .arg(&message)
            .query_async(&mut conn)
            .await;
        if let Err(e) = sent {
            tracing::warn!(channel = name, error = %e, "could not publish to Redis");
        }
    }
}

/// Hands what Redis delivers to this process's subscribers, reconnecting when the
/// connection drops (messages sent meanwhile are lost: they are hints).
async fn relay_loop(client: redis::Client, first: redis::aio::PubSub, local: LocalBroadcast) {
    let mut pubsub = Some(first);
    loop {
        let connection = match pubsub.take() {
            Some(p) => Ok(p),
            None => subscribe(&client).await.inspect(|_| {
                // Invalidations of other replicas may have been lost meanwhile: the split
                // services connected here forget everything they keep.
                let all = daytona_proxy::invalidation::Invalidation::All.to_json();
                local.send(channel::INVALIDATIONS, all);
            }),
        };
        match connection {
            Ok(p) => {
                let mut messages = p.into_on_message();
                while let Some(msg) = messages.next().await {
                    let name = msg.get_channel_name().trim_start_matches(PREFIX);
                    match (
                        CHANNELS.iter().find(|c| **c == name),
                        msg.get_payload::<String>(),
                    ) {
                        (Some(name), Ok(payload)) => local.send(name, payload),
                        _ => tracing::warn!(channel = name, "unexpected Redis message ignored"),
                    }
                }
                tracing::warn!("Redis subscription ended; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to Redis; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A Redis lock held by this process: extended in the background, deleted when dropped.
struct RedisGuard {
    key: String,
    token: String,
    conn: ConnectionManager,
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        self.renewal.abort();
        let (key, token, mut conn) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
            self.conn.clone(),
        );
        tokio::spawn(async move {
            let released: redis::RedisResult<i64> = redis::Script::new(RELEASE)
                .key(&key)
                .arg(&token)
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = released {
                tracing::warn!(key, error = %e, "could not release a Redis lock; it lapses on its own");
            }
        });
    }
}

#[async_trait::async_trait]
impl Cluster for RedisCluster {
    async fn lock(&self, key: &str) -> Result<LockGuard, ClusterError> {
        loop {
            if let Some(guard) = self.try_lock(key).await? {
                return Ok(guard);
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
    }

    async fn try_lock(&self, key: &str) -> Result<Option<LockGuard>, ClusterError> {
        let key = format!("{PREFIX}lock:{key}");
        let token = uuid::Uuid::new_v4().to_string();
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(millis(LOCK_TTL))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if taken.is_none() {
            return Ok(None);
        }
        let renewal = tokio::spawn({
            let (key, token, mut conn) = (key.clone(), token.clone(), conn.clone());
            async move {
                loop {
                    tokio::time::sleep(LOCK_RENEW).await;
                    let renewed: redis::RedisResult<i64> = redis::Script::new(RENEW)
                        .key(&key)
                        .arg(&token)
                        .arg(millis(LOCK_TTL))
                        .invoke_async(&mut conn)
                        .await;
                    match renewed {
                        Ok(1) => {}
                        Ok(_) => {
                            tracing::error!(key, "a Redis lock lapsed while held");
                            return;
                        }
                        Err(e) => tracing::warn!(key, error = %e, "could not extend a Redis lock"),
                    }
                }
            }
        });
        Ok(Some(LockGuard::new(RedisGuard {
            key,
            token,
            conn,
            renewal,
        })))
    }

    async fn lead(&self, name: &str, ttl: Duration) -> bool {
        let mut conn = self.conn.clone();
        let held: redis::RedisResult<i64> = redis::Script::new(LEAD)
            .key(format!("{PREFIX}lease:{name}"))
            .arg(&self.me)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await;
        let held = match held {
            Ok(held) => held == 1,
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "cannot reach Redis for a lease; skipping this round");
                false
            }
        };
        let mut leading = self.leading.lock().expect("lease set poisoned");
        if held && leading.insert(name.to_owned()) {
            tracing::info!(
                lease = name,
                "lease taken: this API process runs the worker"
            );
        } else if !held && leading.remove(name) {
            tracing::info!(
                lease = name,
                "lease lost: another API process runs the worker"
            );
        }
        held
    }

    fn publish(&self, channel: &'static str, message: String) {
        // Fails only when the publisher task is gone, i.e. at shutdown.
        let _ = self.outbox.send((channel, message));
    }

    fn subscribe(&self, channel: &'static str) -> BoxStream<'static, String> {
        self.local.subscribe(channel)
    }
}
