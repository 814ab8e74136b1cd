//! The Redis coordination of API replicas against a real `redis-server` (started here on a free
//! loopback port, no persistence, stopped by its PID). Two `RedisCluster`s stand for two API
//! processes. Skipped, with a note, where `redis-server` is not installed.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use daytona_api::cluster::{Cluster, RedisCluster, channel};
use daytona_api::rate_limit::{RateLimiter, RedisLimiter};
use daytona_config::RateLimit;
use futures::StreamExt;

struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn redis_server() -> Option<RedisServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = tempfile::tempdir().ok()?;
    let child = match Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("redis-server not runnable ({e}); skipping");
            return None;
        }
    };
    let server = RedisServer {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(server);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not listen on {port}");
}

async fn replicas(server: &RedisServer) -> (Arc<RedisCluster>, Arc<RedisCluster>) {
    let a = RedisCluster::connect("127.0.0.1", server.port)
        .await
        .unwrap();
    let b = RedisCluster::connect("127.0.0.1", server.port)
        .await
        .unwrap();
    (a, b)
}

#[tokio::test]
async fn a_lock_taken_by_one_replica_holds_on_the_other_until_released() {
    let Some(server) = redis_server().await else {
        return;
    };
    let (a, b) = replicas(&server).await;
    let held = a.lock("sandbox:1").await.unwrap();
    assert!(b.try_lock("sandbox:1").await.unwrap().is_none());
    assert!(b.try_lock("sandbox:2").await.unwrap().is_some());
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.lock("sandbox:1").await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the lock is still held by replica a");
    drop(held);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter gets the released lock")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_lease_stays_with_its_holder_and_moves_when_it_lapses() {
    let Some(server) = redis_server().await else {
        return;
    };
    let (a, b) = replicas(&server).await;
    let ttl = Duration::from_millis(600);
    assert!(a.lead("worker", ttl).await);
    assert!(!b.lead("worker", ttl).await);
    assert!(a.lead("worker", ttl).await, "the holder renews");
    assert!(b.lead("other", ttl).await, "leases are independent");
    // Replica a stops renewing (as when it dies): the lease moves.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(b.lead("worker", ttl).await);
    assert!(!a.lead("worker", ttl).await);
}

#[tokio::test]
async fn a_message_published_on_one_replica_reaches_the_other() {
    let Some(server) = redis_server().await else {
        return;
    };
    let (a, b) = replicas(&server).await;
    let mut jobs = b.subscribe(channel::RUNNER_JOBS);
    let mut events = b.subscribe(channel::EVENTS);
    a.publish(channel::RUNNER_JOBS, "runner-1".into());
    a.publish(channel::EVENTS, "{\"n\":1}".into());
    a.publish(channel::RUNNER_JOBS, "runner-2".into());
    assert_eq!(next(&mut jobs).await, "runner-1");
    assert_eq!(next(&mut jobs).await, "runner-2");
    assert_eq!(next(&mut events).await, "{\"n\":1}");
}

#[tokio::test]
async fn invalidations_cross_replicas_and_a_lost_subscription_invalidates_everything() {
    let Some(server) = redis_server().await else {
        return;
    };
    let (a, b) = replicas(&server).await;
    let mut on_b = b.subscribe(channel::INVALIDATIONS);
    let hub = daytona_api::invalidation::Invalidations::new(a.clone());
    hub.sandbox("s1");
    assert_eq!(next(&mut on_b).await, r#"{"kind":"sandbox","id":"s1"}"#);

    // Redis drops the replicas' subscriptions: what was published meanwhile is lost, so once
    // subscribed again each replica tells its split services to forget everything.
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port)).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 2, "one subscription per replica");
    assert_eq!(next(&mut on_b).await, r#"{"kind":"all"}"#);
    hub.credentials();
    assert_eq!(
        next(&mut on_b).await,
        r#"{"kind":"credentials"}"#,
        "relayed again"
    );
}

async fn next(messages: &mut futures::stream::BoxStream<'static, String>) -> String {
    tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("a message within 5 s")
        .expect("the subscription is open")
}

#[tokio::test]
async fn rate_limits_are_counted_across_replicas() {
    let Some(server) = redis_server().await else {
        return;
    };
    let (a, b) = replicas(&server).await;
    let (a, b) = (
        RedisLimiter::new(a.connection()),
        RedisLimiter::new(b.connection()),
    );
    let limit = RateLimit {
        ttl: Duration::from_secs(60),
        limit: 3,
    };
    assert!(a.hit("failed-auth:x", &limit).await.is_ok());
    assert!(b.hit("failed-auth:x", &limit).await.is_ok());
    assert!(a.hit("failed-auth:x", &limit).await.is_ok());
    let retry = b.hit("failed-auth:x", &limit).await.unwrap_err();
    assert!(retry <= Duration::from_secs(60) && retry > Duration::from_secs(50));
    assert!(a.hit("failed-auth:x", &limit).await.is_err());
    assert!(
        b.hit("failed-auth:y", &limit).await.is_ok(),
        "buckets apart"
    );
}
