-- Snapshots: named images sandboxes are created from. `general` ones are visible to every
-- organization (the default snapshot is one).
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    general INTEGER NOT NULL,
    name TEXT NOT NULL,
    image_name TEXT NOT NULL,
    state TEXT NOT NULL,
    error_reason TEXT,
    digest TEXT,
    size_bytes INTEGER,
    entrypoint TEXT,
    cpu INTEGER NOT NULL,
    gpu INTEGER NOT NULL,
    mem INTEGER NOT NULL,
    disk INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_used_at TEXT
);

CREATE UNIQUE INDEX snapshots_org_name ON snapshots (organization_id, name);
