-- Per-sandbox secrets the API hands out again on request, one row per kind: the preview token
-- (X-Daytona-Preview-Token / DAYTONA_SANDBOX_AUTH_KEY) and the key that signs file URLs
-- (SDK download_url/upload_url). Created on first use; rotating replaces the value.
CREATE TABLE sandbox_secrets (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('preview_token', 'signing_key')),
    value TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, kind)
);

INSERT INTO sandbox_secrets (sandbox_id, kind, value, created_at)
    SELECT sandbox_id, 'preview_token', token, created_at FROM sandbox_preview_tokens;
DROP TABLE sandbox_preview_tokens;
