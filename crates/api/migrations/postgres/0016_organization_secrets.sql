-- PostgreSQL twin of sqlite/0016_organization_secrets.sql (the same schema: only text columns).
-- Organization secrets (`/api/secret`): the value encrypted (AES-256-GCM, key derived from
-- ENCRYPTION_KEY and ENCRYPTION_SALT), an opaque placeholder that sandboxes see instead, and
-- the hosts (JSON array of strings) the value may be sent to.
CREATE TABLE organization_secrets (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    description TEXT,
    value_sealed TEXT NOT NULL,
    placeholder TEXT NOT NULL UNIQUE,
    hosts TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX organization_secrets_org_name ON organization_secrets (organization_id, name);

-- The secrets a sandbox mounts: a JSON array of {"env", "secretId", "placeholder"}.
ALTER TABLE sandboxes ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';
