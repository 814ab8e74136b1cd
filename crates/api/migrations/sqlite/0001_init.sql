-- Portable SQL (SQLite now, PostgreSQL later): text ids, RFC 3339 text timestamps, JSON as text.
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
    personal INTEGER NOT NULL,
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
    public INTEGER NOT NULL,
    network_block_all INTEGER NOT NULL,
    network_allow_list TEXT,
    target TEXT NOT NULL,
    cpu INTEGER NOT NULL,
    gpu INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    disk INTEGER NOT NULL,
    state TEXT NOT NULL,
    desired_state TEXT NOT NULL,
    error_reason TEXT,
    auto_stop_interval INTEGER NOT NULL,
    auto_archive_interval INTEGER NOT NULL,
    auto_delete_interval INTEGER NOT NULL,
    auto_pause_interval INTEGER NOT NULL,
    runner_id TEXT,
    daemon_version TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_activity_at TEXT NOT NULL
);

-- Names are unique per organization among sandboxes that still exist.
CREATE UNIQUE INDEX sandboxes_org_name ON sandboxes (organization_id, name) WHERE state <> 'destroyed';
CREATE INDEX sandboxes_org_created ON sandboxes (organization_id, created_at);
