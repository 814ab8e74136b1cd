-- PostgreSQL twin of sqlite/0001_init.sql: the same tables and columns, so one set of queries
-- serves both. Ids and RFC 3339 timestamps are text, JSON documents are text, flags are BOOLEAN,
-- numbers BIGINT (what the store binds and reads as i64).
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    role TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    personal BOOLEAN NOT NULL,
    created_by TEXT NOT NULL REFERENCES users(id),
    created_at TEXT NOT NULL
);

CREATE TABLE organization_members (
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    role TEXT NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    permissions TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    last_used_at TEXT
);

CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    snapshot TEXT,
    image_ref TEXT NOT NULL,
    os_user TEXT NOT NULL,
    env TEXT NOT NULL,
    labels TEXT NOT NULL,
    public BOOLEAN NOT NULL,
    network_block_all BOOLEAN NOT NULL,
    network_allow_list TEXT,
    target TEXT NOT NULL,
    cpu BIGINT NOT NULL,
    gpu BIGINT NOT NULL,
    memory BIGINT NOT NULL,
    disk BIGINT NOT NULL,
    state TEXT NOT NULL,
    desired_state TEXT NOT NULL,
    error_reason TEXT,
    auto_stop_interval BIGINT NOT NULL,
    auto_archive_interval BIGINT NOT NULL,
    auto_delete_interval BIGINT NOT NULL,
    auto_pause_interval BIGINT NOT NULL,
    runner_id TEXT,
    daemon_version TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_activity_at TEXT NOT NULL
);

-- Names are unique per organization among sandboxes that still exist.
CREATE UNIQUE INDEX sandboxes_org_name ON sandboxes (organization_id, name) WHERE state <> 'destroyed';
CREATE INDEX sandboxes_org_created ON sandboxes (organization_id, created_at);
