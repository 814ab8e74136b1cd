-- PostgreSQL twin of sqlite/0014_sandbox_metrics.sql.
-- Resource usage samples of running sandboxes (`GET /sandbox/{id}/telemetry/metrics`), one row
-- per sandbox and sampling round; rows older than the retention are pruned.
CREATE TABLE sandbox_metrics (
    sandbox_id TEXT NOT NULL,
    sampled_at TEXT NOT NULL,
    cpu_utilization DOUBLE PRECISION NOT NULL,
    cpu_limit DOUBLE PRECISION NOT NULL,
    memory_usage BIGINT NOT NULL,
    memory_limit BIGINT NOT NULL,
    memory_cache BIGINT NOT NULL,
    filesystem_usage BIGINT NOT NULL,
    filesystem_total BIGINT NOT NULL,
    PRIMARY KEY (sandbox_id, sampled_at)
);
CREATE INDEX sandbox_metrics_sampled_at ON sandbox_metrics (sampled_at);
