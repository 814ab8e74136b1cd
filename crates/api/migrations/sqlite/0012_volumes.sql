-- Volumes: directories that sandboxes of one organization mount and share (`/api/volumes`).
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    error_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_used_at TEXT
);
-- Names are unique per organization among volumes that are not deleted.
CREATE UNIQUE INDEX volumes_org_name ON volumes (organization_id, name) WHERE state <> 'deleted';

-- The volumes a sandbox mounts, as the API returns them: a JSON array of
-- {"volumeId", "mountPath", "subpath"?} with volume ids resolved.
ALTER TABLE sandboxes ADD COLUMN volumes TEXT NOT NULL DEFAULT '[]';
