-- Access to a sandbox's previews and SSH (crates/api/src/sandbox/access.rs).

-- The per-sandbox preview token, created on first use (replaced by sandbox_secrets in 0008).
CREATE TABLE sandbox_preview_tokens (
    sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    token TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

-- Signed preview URLs: the token names the sandbox and one port until it expires.
CREATE TABLE signed_preview_tokens (
    token_hash TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    port BIGINT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX signed_preview_tokens_sandbox ON signed_preview_tokens (sandbox_id);

-- SSH gateway tokens (the SSH user name); only their SHA-256 is stored.
CREATE TABLE ssh_access (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX ssh_access_sandbox ON ssh_access (sandbox_id);
