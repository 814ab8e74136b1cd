-- A user's keys in an organization are addressed by name.
CREATE UNIQUE INDEX api_keys_org_user_name ON api_keys (organization_id, user_id, name);
