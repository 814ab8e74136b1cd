-- Temporary push credentials for the transient registry (GET /docker-registry/registry-push-access),
-- checked by the API's registry token server. Only the SHA-256 of the secret is kept.
CREATE TABLE registry_credentials (
    username TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    organization_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX registry_credentials_expires_at ON registry_credentials (expires_at);
