//! Usage samples of running sandboxes, for the telemetry metrics route.

use super::Store;

/// One sampling round's reading of one sandbox.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MetricSample {
    pub sandbox_id: String,
    /// RFC 3339 with milliseconds, the same for every sandbox of a round.
    pub sampled_at: String,
    /// Percent of the sandbox's CPU limit used since the previous round.
    pub cpu_utilization: f64,
    /// Cores.
    pub cpu_limit: f64,
    pub memory_usage: i64,
    pub memory_limit: i64,
    pub memory_cache: i64,
    pub filesystem_usage: i64,
    pub filesystem_total: i64,
}

impl Store {
    /// Ids of the sandboxes that run now (the ones to sample).
    pub async fn started_sandbox_ids(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM sandboxes WHERE state = 'started' ORDER BY id")
            .fetch_all(self.pool())
            .await
    }

    /// Stores a round of samples in one transaction.
    pub async fn insert_metric_samples(&self, samples: &[MetricSample]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        for s in samples {
            sqlx::query(
                "INSERT INTO sandbox_metrics (sandbox_id, sampled_at, cpu_utilization, cpu_limit,
                 memory_usage, memory_limit, memory_cache, filesystem_usage, filesystem_total)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (sandbox_id, sampled_at) DO NOTHING",
            )
            .bind(&s.sandbox_id)
            .bind(&s.sampled_at)
            .bind(s.cpu_utilization)
            .bind(s.cpu_limit)
            .bind(s.memory_usage)
            .bind(s.memory_limit)
            .bind(s.memory_cache)
            .bind(s.filesystem_usage)
            .bind(s.filesystem_total)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Deletes samples taken before `before` (RFC 3339); returns how many.
    pub async fn prune_metric_samples(&self, before: &str) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM sandbox_metrics WHERE sampled_at < $1")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// The sandbox's samples with `from <= sampled_at <= to` (RFC 3339), oldest first, at most
    /// `limit`.
    pub async fn metric_samples(
        &self,
        sandbox_id: &str,
        from: &str,
        to: &str,
        limit: i64,
    ) -> Result<Vec<MetricSample>, sqlx::Error> {
        sqlx::query_as::<_, MetricSample>(
            "SELECT * FROM sandbox_metrics WHERE sandbox_id = $1 AND sampled_at >= $2
             AND sampled_at <= $3 ORDER BY sampled_at LIMIT $4",
        )
        .bind(sandbox_id)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(self.pool())
        .await
    }
}
