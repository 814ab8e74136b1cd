-- Runners that run as their own processes and take work from the API as jobs.
CREATE TABLE runners (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    -- SHA-256 (hex) of the runner's token; the default runner's is that of DEFAULT_RUNNER_API_KEY.
    token_hash TEXT NOT NULL,
    -- initializing (never heard from), ready, unresponsive
    state TEXT NOT NULL,
    domain TEXT,
    api_url TEXT,
    proxy_url TEXT,
    app_version TEXT,
    -- The last RunnerHealthMetrics the runner reported, as JSON.
    metrics TEXT NOT NULL DEFAULT '{}',
    availability_score INTEGER NOT NULL DEFAULT 0,
    -- Seconds of silence the runner announced it may keep between contacts.
    contact_interval_seconds INTEGER NOT NULL DEFAULT 30,
    last_checked TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX runners_region_name ON runners (region, name);
CREATE UNIQUE INDEX runners_token_hash ON runners (token_hash);

-- Work for a runner: created by the API, taken by the runner's poll, finished by its report.
CREATE TABLE runner_jobs (
    id TEXT PRIMARY KEY,
    runner_id TEXT NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
    job_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- PENDING, IN_PROGRESS, COMPLETED, FAILED
    state TEXT NOT NULL,
    result TEXT,
    error_message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT
);
CREATE INDEX runner_jobs_runner_state ON runner_jobs (runner_id, state, created_at);

-- Images each runner holds (upstream's snapshot_runner): pulled before a sandbox of the image
-- is created there.
CREATE TABLE runner_images (
    runner_id TEXT NOT NULL REFERENCES runners(id) ON DELETE CASCADE,
    image_ref TEXT NOT NULL,
    -- pulling, ready, error
    state TEXT NOT NULL,
    error_reason TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (runner_id, image_ref)
);
