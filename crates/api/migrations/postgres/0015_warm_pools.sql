-- PostgreSQL twin of sqlite/0015_warm_pools.sql (BIGINT numbers, BOOLEAN flags).
-- Warm pools: per organization, snapshot and region, a number of started sandboxes kept ready
-- for creates that match them (`/api/warm-pools`).
CREATE TABLE warm_pools (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    snapshot_id TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    target TEXT NOT NULL,
    pool BIGINT NOT NULL,
    cpu BIGINT NOT NULL,
    mem BIGINT NOT NULL,
    disk BIGINT NOT NULL,
    os_user TEXT NOT NULL,
    env TEXT NOT NULL,
    error_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- One pool per snapshot and region in an organization.
CREATE UNIQUE INDEX warm_pools_org_snapshot_target ON warm_pools (organization_id, snapshot_id, target);

-- The pool a sandbox was made for (kept after it is claimed, for `warmPoolId`), and whether it
-- still waits in that pool (hidden from its organization's listings until a create claims it).
ALTER TABLE sandboxes ADD COLUMN warm_pool_id TEXT;
ALTER TABLE sandboxes ADD COLUMN pooled BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX sandboxes_pooled ON sandboxes (warm_pool_id) WHERE pooled;
