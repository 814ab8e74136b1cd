-- Snapshots taken from a sandbox (`POST /sandbox/{id}/snapshot`) name it.
ALTER TABLE snapshots ADD COLUMN source_sandbox_id TEXT;
CREATE INDEX snapshots_source_sandbox ON snapshots (source_sandbox_id);

-- Which sandbox each fork was made from (`POST /sandbox/{id}/fork`).
CREATE TABLE sandbox_forks (
    child_id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    parent_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL
);
CREATE INDEX sandbox_forks_parent ON sandbox_forks (parent_id);
