-- Per-organization quotas; 0 means unlimited.
ALTER TABLE organizations
    ADD COLUMN total_cpu_quota BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN total_memory_quota BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN total_disk_quota BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN max_cpu_per_sandbox BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN max_memory_per_sandbox BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN max_disk_per_sandbox BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN snapshot_quota BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN max_snapshot_size BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN volume_quota BIGINT NOT NULL DEFAULT 0;
