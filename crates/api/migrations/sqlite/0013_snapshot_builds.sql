-- Snapshots built from a Dockerfile (`buildInfo`): the definition, and the hash that names
-- identical definitions (`build_ref`, over the Dockerfile and the sorted context hashes).
CREATE TABLE snapshot_builds (
    snapshot_id TEXT PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE,
    organization_id TEXT NOT NULL,
    build_ref TEXT NOT NULL,
    dockerfile TEXT NOT NULL,
    context_hashes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX snapshot_builds_ref ON snapshot_builds (organization_id, build_ref);
