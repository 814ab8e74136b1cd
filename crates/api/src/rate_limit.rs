//! Request rate limits (`RATE_LIMIT_*`): fixed windows per bucket, refused with 429 and
//! `Retry-After`. The embedded default counts in process; with Redis (`REDIS_HOST`) the windows
//! are counted there, so several API replicas share them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use daytona_config::{RateLimit, RateLimits};

use crate::error::ApiError;

/// Counts hits per bucket and says when one is over its limit.
#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Records a hit on `bucket`; `Err(retry_after)` when the window's limit is used up.
    async fn hit(&self, bucket: &str, limit: &RateLimit) -> Result<(), Duration>;
}

#[derive(Default)]
pub struct InProcessLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

#[async_trait::async_trait]
impl RateLimiter for InProcessLimiter {
    async fn hit(&self, bucket: &str, limit: &RateLimit) -> Result<(), Duration> {
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("rate limit map poisoned");
        // Forget finished windows now and then so the map stays small.
        if windows.len() > 10_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < limit.ttl);
        }
        let (start, count) = windows.entry(bucket.to_string()).or_insert((now, 0));
        if now.duration_since(*start) >= limit.ttl {
            *start = now;
            *count = 0;
        }
        if *count >= limit.limit {
            return Err(limit.ttl.saturating_sub(now.duration_since(*start)));
        }
        *count += 1;
        Ok(())
    }
}

/// Counts one window per bucket in Redis: the first hit starts it with the limit's TTL.
pub struct RedisLimiter {
    conn: redis::aio::ConnectionManager,
}

/// Counts a hit; answers the count so far and the window's remaining milliseconds.
const HIT: &str = r"local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}";

impl RedisLimiter {
    pub fn new(conn: redis::aio::ConnectionManager) -> Self {
        RedisLimiter { conn }
    }
}

#[async_trait::async_trait]
impl RateLimiter for RedisLimiter {
    async fn hit(&self, bucket: &str, limit: &RateLimit) -> Result<(), Duration> {
        let mut conn = self.conn.clone();
        let counted: redis::RedisResult<(u64, u64)> = redis::Script::new(HIT)
            .key(format!("daytona:rate:{bucket}"))
            .arg(limit.ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await;
        match counted {
            Ok((count, _)) if count <= u64::from(limit.limit) => Ok(()),
            Ok((_, ttl)) => Err(Duration::from_millis(ttl)),
            Err(e) => {
                // Limits protect the service; an outage of Redis must not stop it.
                tracing::warn!(bucket, error = %e, "cannot count a rate limit in Redis; request let through");
                Ok(())
            }
        }
    }
}

/// Which limit a request counts against.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Anonymous,
    Authenticated,
    FailedAuth,
    SandboxCreate,
    SandboxLifecycle,
}

/// The configured limits plus the limiter that enforces them.
pub struct RateLimitPolicy {
    limits: RateLimits,
    limiter: Box<dyn RateLimiter>,
}

impl RateLimitPolicy {
    pub fn new(limits: RateLimits, limiter: Box<dyn RateLimiter>) -> Self {
        RateLimitPolicy { limits, limiter }
    }

    /// Counts a request of `kind` by `who` (an organization id or a client address).
    pub async fn check(&self, kind: Kind, who: &str) -> Result<(), ApiError> {
        let (limit, name) = match kind {
            Kind::Anonymous => (&self.limits.anonymous, "anonymous"),
            Kind::Authenticated => (&self.limits.authenticated, "authenticated"),
            Kind::FailedAuth => (&self.limits.failed_auth, "failed-auth"),
            Kind::SandboxCreate => (&self.limits.sandbox_create, "sandbox-create"),
            Kind::SandboxLifecycle => (&self.limits.sandbox_lifecycle, "sandbox-lifecycle"),
        };
        let Some(limit) = limit else { return Ok(()) };
        self.limiter
            .hit(&format!("{name}:{who}"), limit)
            .await
            .map_err(|retry| ApiError::RateLimited {
                message: format!(
                    "Rate limit exceeded ({name}: {} requests per {} s); retry in {} s",
                    limit.limit,
                    limit.ttl.as_secs(),
                    retry.as_secs().max(1)
                ),
                retry_after_secs: retry.as_secs().max(1),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fixed_window_refuses_after_the_limit_and_reopens() {
        let limiter = InProcessLimiter::default();
        let limit = RateLimit {
            ttl: Duration::from_millis(200),
            limit: 2,
        };
        assert!(limiter.hit("a", &limit).await.is_ok());
        assert!(limiter.hit("a", &limit).await.is_ok());
        let retry = limiter.hit("a", &limit).await.unwrap_err();
        assert!(retry <= Duration::from_millis(200));
        assert!(
            limiter.hit("b", &limit).await.is_ok(),
            "buckets are independent"
        );
        tokio::time::sleep(Duration::from_millis(210)).await;
        assert!(limiter.hit("a", &limit).await.is_ok());
    }

    #[tokio::test]
    async fn unset_limits_never_refuse() {
        let policy =
            RateLimitPolicy::new(RateLimits::default(), Box::new(InProcessLimiter::default()));
        for _ in 0..1000 {
            policy.check(Kind::SandboxCreate, "org").await.unwrap();
        }
    }
}
