-- Per-organization quotas; 0 means unlimited.
ALTER TABLE organizations ADD COLUMN total_cpu_quota INTEGER NOT NULL DEFAULT 0;
ALTER TABLE organizations ADD COLUMN total_memory_quota INTEGER NOT NULL DEFAULT 0;
ALTER TABLE organizations ADD COLUMN total_disk_quota INTEGER NOT NULL DEFAULT 0;
ALTER TABLE organizations ADD COLUMN max_cpu_per_sandbox INTEGER NOT NULL DEFAULT 0;
ALTER TABLE organizations ADD COLUMN max_memory_per_sandbox INTEGER NOT NULL DEFAULT 0;
ALTER TABLE organizations ADD COLUMN max_disk_per_sandbox INTEGER NOT NULL DEFAULT 0;
ALTER TABLE organizations ADD COLUMN snapshot_quota INTEGER NOT NULL DEFAULT 0;
ALTER TABLE organizations ADD COLUMN max_snapshot_size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE organizations ADD COLUMN volume_quota INTEGER NOT NULL DEFAULT 0;
