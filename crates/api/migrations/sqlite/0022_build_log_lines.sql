-- Build log lines, shared by every API replica: written by the replica running a build and by
-- whichever replica a remote runner reports its lines to, read (and followed) on any of them.
-- `origin` is who numbered the line (a runner job's id, or one API build attempt), `idx` its
-- number there, so a batch reported twice is stored once.
CREATE TABLE build_log_lines (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    snapshot_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    idx INTEGER NOT NULL,
    line TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (snapshot_id, origin, idx)
);
CREATE INDEX build_log_lines_snapshot ON build_log_lines (snapshot_id, id);
