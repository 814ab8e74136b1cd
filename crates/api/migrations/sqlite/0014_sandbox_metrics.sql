-- Resource usage samples of running sandboxes (`GET /sandbox/{id}/telemetry/metrics`), one row
-- per sandbox and sampling round; rows older than the retention are pruned.
CREATE TABLE sandbox_metrics (
    sandbox_id TEXT NOT NULL,
    sampled_at TEXT NOT NULL,
    cpu_utilization REAL NOT NULL,
    cpu_limit REAL NOT NULL,
    memory_usage INTEGER NOT NULL,
    memory_limit INTEGER NOT NULL,
    memory_cache INTEGER NOT NULL,
    filesystem_usage INTEGER NOT NULL,
    filesystem_total INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, sampled_at)
);
CREATE INDEX sandbox_metrics_sampled_at ON sandbox_metrics (sampled_at);
