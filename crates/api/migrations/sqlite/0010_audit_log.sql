-- One row per mutating API call by an authenticated caller (crates/api/src/audit.rs). Actor
-- details are copied at write time so the entry survives the key or user it names.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    actor_email TEXT NOT NULL,
    actor_api_key_prefix TEXT,
    action TEXT NOT NULL,
    target_type TEXT,
    target_id TEXT,
    status_code INTEGER NOT NULL,
    error_message TEXT,
    ip_address TEXT,
    user_agent TEXT,
    source TEXT,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX audit_log_org_time ON audit_log (organization_id, created_at, id);
