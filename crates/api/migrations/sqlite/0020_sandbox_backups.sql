-- Backups: a copy of a stopped sandbox's disk in the runners' archive storage that leaves the
-- runner's own copy in place, so the sandbox can start on another runner when its own is gone.
-- backup_state is upstream's BackupState (None, Pending, InProgress, Completed, Error);
-- backup_key names the newest completed copy (kept until a newer one completes or the
-- sandbox is destroyed).
ALTER TABLE sandboxes ADD COLUMN backup_state TEXT NOT NULL DEFAULT 'None';
ALTER TABLE sandboxes ADD COLUMN backup_key TEXT;
ALTER TABLE sandboxes ADD COLUMN backup_created_at TEXT;
ALTER TABLE sandboxes ADD COLUMN backup_error TEXT;
