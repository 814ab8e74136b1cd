-- PostgreSQL twin of sqlite/0011_organizations.sql.
-- Organizations as upstream has them: members with roles, assignable permission roles,
-- invitations by email, regions. Deleted organizations keep their row (sandbox history points
-- at it) and are hidden by `deleted_at`.
ALTER TABLE organizations ADD COLUMN default_region_id TEXT;
ALTER TABLE organizations ADD COLUMN updated_at TEXT;
ALTER TABLE organizations ADD COLUMN deleted_at TEXT;
ALTER TABLE organization_members ADD COLUMN created_at TEXT;
ALTER TABLE organization_members ADD COLUMN updated_at TEXT;

-- Invitations address users by email, so an email names one user.
CREATE UNIQUE INDEX users_email ON users (email);

CREATE TABLE regions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    region_type TEXT NOT NULL,
    organization_id TEXT,
    enforce_quotas BOOLEAN NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Global roles have no organization; their ids are fixed (upstream's ids and permission sets).
CREATE TABLE organization_roles (
    id TEXT PRIMARY KEY,
    organization_id TEXT REFERENCES organizations(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    permissions TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

INSERT INTO organization_roles (id, organization_id, name, description, permissions, created_at, updated_at) VALUES
('00000000-0000-0000-0000-000000000001', NULL, 'Developer', 'Grants the ability to create sandboxes and keys in the organization', 'write:sandboxes', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z'),
('00000000-0000-0000-0000-000000000002', NULL, 'Sandboxes Admin', 'Grants admin access to sandboxes in the organization', 'write:sandboxes,delete:sandboxes', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z'),
('00000000-0000-0000-0000-000000000003', NULL, 'Snapshots Admin', 'Grants admin access to snapshots in the organization', 'write:snapshots,delete:snapshots', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z'),
('00000000-0000-0000-0000-000000000004', NULL, 'Registries Admin', 'Grants admin access to registries in the organization', 'write:registries,delete:registries', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z'),
('00000000-0000-0000-0000-000000000005', NULL, 'Super Admin', 'Grants full access to all resources in the organization', 'write:registries,delete:registries,write:snapshots,delete:snapshots,write:sandboxes,delete:sandboxes,read:volumes,write:volumes,delete:volumes,write:regions,delete:regions,read:runners,write:runners,delete:runners,read:audit_logs', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z'),
('00000000-0000-0000-0000-000000000006', NULL, 'Volumes Admin', 'Grants admin access to volumes in the organization', 'read:volumes,write:volumes,delete:volumes', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z'),
('00000000-0000-0000-0000-000000000007', NULL, 'Auditor', 'Grants access to audit logs in the organization', 'read:audit_logs', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z'),
('00000000-0000-0000-0000-000000000008', NULL, 'Infrastructure Admin', 'Grants admin access to regions and runners in the organization', 'write:regions,delete:regions,read:runners,write:runners,delete:runners', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z');

CREATE TABLE organization_role_assignments (
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    role_id TEXT NOT NULL REFERENCES organization_roles(id),
    PRIMARY KEY (organization_id, user_id, role_id)
);

CREATE TABLE organization_invitations (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    email TEXT NOT NULL,
    invited_by TEXT NOT NULL,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX organization_invitations_email ON organization_invitations (email, status);
CREATE INDEX organization_invitations_org ON organization_invitations (organization_id, status);

CREATE TABLE organization_invitation_roles (
    invitation_id TEXT NOT NULL REFERENCES organization_invitations(id),
    role_id TEXT NOT NULL REFERENCES organization_roles(id),
    PRIMARY KEY (invitation_id, role_id)
);
