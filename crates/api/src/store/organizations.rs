//! Organizations, their members, permission roles, invitations and the regions they run in.

use super::{Flag, OrgQuotas, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrganizationRow {
    pub id: String,
    pub name: String,
    #[sqlx(try_from = "Flag")]
    pub personal: bool,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: Option<String>,
    pub default_region_id: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRow {
    pub organization_id: String,
    pub user_id: String,
    pub name: String,
    pub email: Option<String>,
    pub role: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RoleRow {
    pub id: String,
    pub organization_id: Option<String>,
    pub name: String,
    pub description: String,
    /// Comma-separated permissions.
    pub permissions: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InvitationRow {
    pub id: String,
    pub organization_id: String,
    pub organization_name: String,
    pub email: String,
    pub invited_by: String,
    pub role: String,
    pub status: String,
    pub expires_at: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RegionRow {
    pub id: String,
    pub name: String,
    pub region_type: String,
    pub organization_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub role: String,
    pub created_at: String,
}

/// What a new user and its personal organization start with.
pub struct NewUser<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub email: Option<&'a str>,
    /// System role: `admin` or `user`.
    pub role: &'a str,
    pub quotas: &'a OrgQuotas,
    pub default_region: Option<&'a str>,
}

pub struct NewInvitation<'a> {
    pub organization_id: &'a str,
    pub email: &'a str,
    pub invited_by: &'a str,
    pub role: &'a str,
    pub role_ids: &'a [String],
    pub expires_at: &'a str,
}

/// How many live things an organization still holds (it cannot be deleted while it does).
#[derive(Debug, Clone, Copy, Default)]
pub struct Holdings {
    pub sandboxes: i64,
    pub snapshots: i64,
}

const INVITATION_SELECT: &str =
    "SELECT i.id, i.organization_id, o.name AS organization_name, i.email, i.invited_by, i.role,
 i.status, i.expires_at, i.created_at, i.updated_at FROM organization_invitations i
 JOIN organizations o ON o.id = i.organization_id AND o.deleted_at IS NULL";

impl Store {
    // --- users ---------------------------------------------------------------------------------

    pub async fn user(&self, id: &str) -> Result<Option<UserRow>, sqlx::Error> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, name, email, role, created_at FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, sqlx::Error> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, name, email, role, created_at FROM users ORDER BY created_at, id",
        )
        .fetch_all(self.pool())
        .await
    }

    /// Creates a user with its personal organization (owner, quotas, default region) in one
    /// transaction; returns the organization's id.
    pub async fn create_user(&self, user: NewUser<'_>) -> Result<String, sqlx::Error> {
        let org_id = uuid::Uuid::new_v4().to_string();
        let ts = now();
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO users (id, name, email, role, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(user.id)
        .bind(user.name)
        .bind(user.email)
        .bind(user.role)
        .bind(&ts)
        .execute(&mut *tx)
        .await?;
        insert_organization(
            &mut tx,
            &org_id,
            "Personal",
            true,
            user.id,
            user.default_region,
            user.quotas,
            &ts,
        )
        .await?;
        tx.commit().await?;
        Ok(org_id)
    }

    // --- organizations -------------------------------------------------------------------------

    pub async fn organization(&self, id: &str) -> Result<Option<OrganizationRow>, sqlx::Error> {
        sqlx::query_as::<_, OrganizationRow>(
            "SELECT id, name, personal, created_by, created_at, updated_at, default_region_id
             FROM organizations WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn organizations_of(&self, user: &str) -> Result<Vec<OrganizationRow>, sqlx::Error> {
        sqlx::query_as::<_, OrganizationRow>(
            "SELECT o.id, o.name, o.personal, o.created_by, o.created_at, o.updated_at, o.default_region_id
             FROM organizations o JOIN organization_members m ON m.organization_id = o.id
             WHERE m.user_id = $1 AND o.deleted_at IS NULL ORDER BY o.created_at, o.id",
        )
        .bind(user)
        .fetch_all(self.pool())
        .await
    }

    /// Shared organizations `user` created that still exist.
    pub async fn organizations_created_by(&self, user: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM organizations WHERE created_by = $1 AND personal = $2 AND deleted_at IS NULL",
        )
        .bind(user)
        .bind(false)
        .fetch_one(self.pool())
        .await
    }

    /// A shared organization with `owner` as its owner; returns its id.
    pub async fn create_organization(
        &self,
        name: &str,
        owner: &str,
        default_region: &str,
        quotas: &OrgQuotas,
    ) -> Result<String, sqlx::Error> {
        let id = uuid::Uuid::new_v4().to_string();
        let ts = now();
        let mut tx = self.pool().begin().await?;
        insert_organization(
            &mut tx,
            &id,
            name,
            false,
            owner,
            Some(default_region),
            quotas,
            &ts,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn set_default_region(&self, org: &str, region: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE organizations SET default_region_id = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(region)
        .bind(now())
        .bind(org)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn holdings(&self, org: &str) -> Result<Holdings, sqlx::Error> {
        let sandboxes = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sandboxes WHERE organization_id = $1 AND state <> 'destroyed'
             AND pooled = FALSE",
        )
        .bind(org)
        .fetch_one(self.pool())
        .await?;
        let snapshots = self.snapshot_count(org).await?;
        Ok(Holdings {
            sandboxes,
            snapshots,
        })
    }

    pub async fn snapshot_count(&self, org: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM snapshots WHERE organization_id = $1")
            .bind(org)
            .fetch_one(self.pool())
            .await
    }

    /// Hides the organization and removes everything that gives access to it: keys, members,
    /// role assignments, invitations, its own roles and its secrets; its warm pools go too (the
    /// pool worker then destroys their sandboxes).
    pub async fn delete_organization(&self, org: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        for sql in [
            "DELETE FROM api_keys WHERE organization_id = $1",
            "DELETE FROM organization_role_assignments WHERE organization_id = $1",
            "DELETE FROM organization_members WHERE organization_id = $1",
            "DELETE FROM organization_invitation_roles WHERE invitation_id IN
               (SELECT id FROM organization_invitations WHERE organization_id = $1)",
            "DELETE FROM organization_invitations WHERE organization_id = $1",
            "DELETE FROM organization_roles WHERE organization_id = $1",
            "DELETE FROM warm_pools WHERE organization_id = $1",
            "DELETE FROM organization_secrets WHERE organization_id = $1",
        ] {
            sqlx::query(sql).bind(org).execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE organizations SET deleted_at = $1 WHERE id = $2")
            .bind(now())
            .bind(org)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    // --- members -------------------------------------------------------------------------------

    /// `user`'s member role in `org` (`owner` or `member`), if it is a member of a live one.
    pub async fn member_role(&self, org: &str, user: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT m.role FROM organization_members m JOIN organizations o ON o.id = m.organization_id
             WHERE m.organization_id = $1 AND m.user_id = $2 AND o.deleted_at IS NULL",
        )
        .bind(org)
        .bind(user)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn members(&self, org: &str) -> Result<Vec<MemberRow>, sqlx::Error> {
        sqlx::query_as::<_, MemberRow>(
            "SELECT m.organization_id, m.user_id, u.name, u.email, m.role, m.created_at, m.updated_at
             FROM organization_members m JOIN users u ON u.id = m.user_id
             WHERE m.organization_id = $1 ORDER BY m.created_at, u.id",
        )
        .bind(org)
        .fetch_all(self.pool())
        .await
    }

    pub async fn member(&self, org: &str, user: &str) -> Result<Option<MemberRow>, sqlx::Error> {
        sqlx::query_as::<_, MemberRow>(
            "SELECT m.organization_id, m.user_id, u.name, u.email, m.role, m.created_at, m.updated_at
             FROM organization_members m JOIN users u ON u.id = m.user_id
             WHERE m.organization_id = $1 AND m.user_id = $2",
        )
        .bind(org)
        .bind(user)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn owner_count(&self, org: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM organization_members WHERE organization_id = $1 AND role = 'owner'",
        )
        .bind(org)
        .fetch_one(self.pool())
        .await
    }

    /// Sets a member's role and replaces its assigned roles.
    pub async fn set_member_access(
        &self,
        org: &str,
        user: &str,
        role: &str,
        role_ids: &[String],
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE organization_members SET role = $1, updated_at = $2 WHERE organization_id = $3 AND user_id = $4",
        )
        .bind(role)
        .bind(now())
        .bind(org)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM organization_role_assignments WHERE organization_id = $1 AND user_id = $2",
        )
        .bind(org)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        assign_roles(&mut tx, org, user, role_ids).await?;
        tx.commit().await
    }

    /// Removes a member together with its role assignments and its API keys for `org`.
    pub async fn remove_member(&self, org: &str, user: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        for sql in [
            "DELETE FROM api_keys WHERE organization_id = $1 AND user_id = $2",
            "DELETE FROM organization_role_assignments WHERE organization_id = $1 AND user_id = $2",
            "DELETE FROM organization_members WHERE organization_id = $1 AND user_id = $2",
        ] {
            sqlx::query(sql)
                .bind(org)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// `(user id, role)` pairs of the roles assigned in `org`.
    pub async fn role_assignments(&self, org: &str) -> Result<Vec<(String, RoleRow)>, sqlx::Error> {
        let rows = sqlx::query_as::<
            _,
            (
                String,
                String,
                Option<String>,
                String,
                String,
                String,
                String,
                String,
            ),
        >(
            "SELECT a.user_id, r.id, r.organization_id, r.name, r.description, r.permissions, r.created_at, r.updated_at
             FROM organization_role_assignments a JOIN organization_roles r ON r.id = a.role_id
             WHERE a.organization_id = $1 ORDER BY r.created_at, r.id",
        )
        .bind(org)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    user,
                    id,
                    organization_id,
                    name,
                    description,
                    permissions,
                    created_at,
                    updated_at,
                )| {
                    (
                        user,
                        RoleRow {
                            id,
                            organization_id,
                            name,
                            description,
                            permissions,
                            created_at,
                            updated_at,
                        },
                    )
                },
            )
            .collect())
    }

    /// Permissions `user` holds in `org` through its assigned roles.
    pub async fn assigned_permissions(
        &self,
        org: &str,
        user: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let lists: Vec<String> = sqlx::query_scalar(
            "SELECT r.permissions FROM organization_role_assignments a
             JOIN organization_roles r ON r.id = a.role_id
             WHERE a.organization_id = $1 AND a.user_id = $2",
        )
        .bind(org)
        .bind(user)
        .fetch_all(self.pool())
        .await?;
        let mut permissions: Vec<String> = lists
            .iter()
            .flat_map(|l| l.split(','))
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        permissions.sort();
        permissions.dedup();
        Ok(permissions)
    }

    // --- roles ---------------------------------------------------------------------------------

    /// The global roles and `org`'s own.
    pub async fn roles(&self, org: &str) -> Result<Vec<RoleRow>, sqlx::Error> {
        sqlx::query_as::<_, RoleRow>(
            "SELECT id, organization_id, name, description, permissions, created_at, updated_at
             FROM organization_roles WHERE organization_id IS NULL OR organization_id = $1
             ORDER BY organization_id IS NOT NULL, created_at, id",
        )
        .bind(org)
        .fetch_all(self.pool())
        .await
    }

    pub async fn create_role(
        &self,
        org: &str,
        name: &str,
        description: &str,
        permissions: &str,
    ) -> Result<String, sqlx::Error> {
        let id = uuid::Uuid::new_v4().to_string();
        let ts = now();
        sqlx::query(
            "INSERT INTO organization_roles (id, organization_id, name, description, permissions, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(org)
        .bind(name)
        .bind(description)
        .bind(permissions)
        .bind(&ts)
        .bind(&ts)
        .execute(self.pool())
        .await?;
        Ok(id)
    }

    pub async fn update_role(
        &self,
        id: &str,
        name: &str,
        description: &str,
        permissions: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE organization_roles SET name = $1, description = $2, permissions = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(name)
        .bind(description)
        .bind(permissions)
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deletes an organization's own role; members and invitations lose it.
    pub async fn delete_role(&self, id: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        for sql in [
            "DELETE FROM organization_role_assignments WHERE role_id = $1",
            "DELETE FROM organization_invitation_roles WHERE role_id = $1",
            "DELETE FROM organization_roles WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    // --- invitations ---------------------------------------------------------------------------

    pub async fn create_invitation(&self, inv: NewInvitation<'_>) -> Result<String, sqlx::Error> {
        let id = uuid::Uuid::new_v4().to_string();
        let ts = now();
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO organization_invitations (id, organization_id, email, invited_by, role, status, expires_at,
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8)",
        )
        .bind(&id)
        .bind(inv.organization_id)
        .bind(inv.email)
        .bind(inv.invited_by)
        .bind(inv.role)
        .bind(inv.expires_at)
        .bind(&ts)
        .bind(&ts)
        .execute(&mut *tx)
        .await?;
        set_invitation_roles(&mut tx, &id, inv.role_ids).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn invitation(&self, id: &str) -> Result<Option<InvitationRow>, sqlx::Error> {
        sqlx::query_as::<_, InvitationRow>(sqlx::AssertSqlSafe(format!(
            "{INVITATION_SELECT} WHERE i.id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await
    }

    /// Pending invitations of an organization.
    pub async fn pending_invitations_of_org(
        &self,
        org: &str,
    ) -> Result<Vec<InvitationRow>, sqlx::Error> {
        sqlx::query_as::<_, InvitationRow>(sqlx::AssertSqlSafe(format!(
            "{INVITATION_SELECT} WHERE i.organization_id = $1 AND i.status = 'pending' ORDER BY i.created_at, i.id"
        )))
        .bind(org)
        .fetch_all(self.pool())
        .await
    }

    /// Pending invitations addressed to `email` that have not expired at `now`.
    pub async fn pending_invitations_for(
        &self,
        email: &str,
        now: &str,
    ) -> Result<Vec<InvitationRow>, sqlx::Error> {
        sqlx::query_as::<_, InvitationRow>(sqlx::AssertSqlSafe(format!(
            "{INVITATION_SELECT} WHERE i.email = $1 AND i.status = 'pending' AND i.expires_at > $2
             ORDER BY i.created_at, i.id"
        )))
        .bind(email)
        .bind(now)
        .fetch_all(self.pool())
        .await
    }

    pub async fn invitation_roles(&self, invitation: &str) -> Result<Vec<RoleRow>, sqlx::Error> {
        sqlx::query_as::<_, RoleRow>(
            "SELECT r.id, r.organization_id, r.name, r.description, r.permissions, r.created_at, r.updated_at
             FROM organization_invitation_roles ir JOIN organization_roles r ON r.id = ir.role_id
             WHERE ir.invitation_id = $1 ORDER BY r.created_at, r.id",
        )
        .bind(invitation)
        .fetch_all(self.pool())
        .await
    }

    pub async fn update_invitation(
        &self,
        id: &str,
        role: &str,
        role_ids: &[String],
        expires_at: &str,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE organization_invitations SET role = $1, expires_at = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(role)
        .bind(expires_at)
        .bind(now())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM organization_invitation_roles WHERE invitation_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        set_invitation_roles(&mut tx, id, role_ids).await?;
        tx.commit().await
    }

    /// Moves a pending invitation to `status`; false when it was no longer pending.
    pub async fn close_invitation(&self, id: &str, status: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE organization_invitations SET status = $1, updated_at = $2 WHERE id = $3 AND status = 'pending'",
        )
        .bind(status)
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Accepts a pending invitation for `user`: the invitation's role and roles become the
    /// user's membership, in one transaction. False when it was no longer pending.
    pub async fn accept_invitation(
        &self,
        invitation: &InvitationRow,
        user: &str,
    ) -> Result<bool, sqlx::Error> {
        let ts = now();
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE organization_invitations SET status = 'accepted', updated_at = $1 WHERE id = $2 AND status = 'pending'",
        )
        .bind(&ts)
        .bind(&invitation.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO organization_members (organization_id, user_id, role, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&invitation.organization_id)
        .bind(user)
        .bind(&invitation.role)
        .bind(&ts)
        .bind(&ts)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO organization_role_assignments (organization_id, user_id, role_id)
             SELECT $1, $2, role_id FROM organization_invitation_roles WHERE invitation_id = $3",
        )
        .bind(&invitation.organization_id)
        .bind(user)
        .bind(&invitation.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    // --- regions -------------------------------------------------------------------------------

    /// Records the deployment's shared region (its name follows the configuration).
    pub async fn ensure_region(
        &self,
        id: &str,
        name: &str,
        enforce_quotas: bool,
    ) -> Result<(), sqlx::Error> {
        let ts = now();
        sqlx::query(
            "INSERT INTO regions (id, name, region_type, organization_id, enforce_quotas, created_at, updated_at)
             VALUES ($1, $2, 'shared', NULL, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, enforce_quotas = excluded.enforce_quotas",
        )
        .bind(id)
        .bind(name)
        .bind(enforce_quotas)
        .bind(&ts)
        .bind(&ts)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Regions `org` may use: shared ones and its own.
    pub async fn regions(&self, org: &str) -> Result<Vec<RegionRow>, sqlx::Error> {
        sqlx::query_as::<_, RegionRow>(
            "SELECT id, name, region_type, organization_id, created_at, updated_at FROM regions
             WHERE organization_id IS NULL OR organization_id = $1 ORDER BY created_at, id",
        )
        .bind(org)
        .fetch_all(self.pool())
        .await
    }

    pub async fn region(&self, org: &str, id: &str) -> Result<Option<RegionRow>, sqlx::Error> {
        sqlx::query_as::<_, RegionRow>(
            "SELECT id, name, region_type, organization_id, created_at, updated_at FROM regions
             WHERE id = $1 AND (organization_id IS NULL OR organization_id = $2)",
        )
        .bind(id)
        .bind(org)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn shared_regions(&self) -> Result<Vec<RegionRow>, sqlx::Error> {
        sqlx::query_as::<_, RegionRow>(
            "SELECT id, name, region_type, organization_id, created_at, updated_at FROM regions
             WHERE region_type = 'shared' ORDER BY created_at, id",
        )
        .fetch_all(self.pool())
        .await
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

#[allow(clippy::too_many_arguments)]
async fn insert_organization(
    tx: &mut Tx<'_>,
    id: &str,
    name: &str,
    personal: bool,
    owner: &str,
    default_region: Option<&str>,
    q: &OrgQuotas,
    ts: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO organizations (id, name, personal, created_by, created_at, updated_at, default_region_id,
         total_cpu_quota, total_memory_quota, total_disk_quota, max_cpu_per_sandbox, max_memory_per_sandbox,
         max_disk_per_sandbox, snapshot_quota, max_snapshot_size, volume_quota)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(id)
    .bind(name)
    .bind(personal)
    .bind(owner)
    .bind(ts)
    .bind(ts)
    .bind(default_region)
    .bind(q.total_cpu_quota)
    .bind(q.total_memory_quota)
    .bind(q.total_disk_quota)
    .bind(q.max_cpu_per_sandbox)
    .bind(q.max_memory_per_sandbox)
    .bind(q.max_disk_per_sandbox)
    .bind(q.snapshot_quota)
    .bind(q.max_snapshot_size)
    .bind(q.volume_quota)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO organization_members (organization_id, user_id, role, created_at, updated_at)
         VALUES ($1, $2, 'owner', $3, $4)",
    )
    .bind(id)
    .bind(owner)
    .bind(ts)
    .bind(ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn assign_roles(
    tx: &mut Tx<'_>,
    org: &str,
    user: &str,
    role_ids: &[String],
) -> Result<(), sqlx::Error> {
    for role in role_ids {
        sqlx::query(
            "INSERT INTO organization_role_assignments (organization_id, user_id, role_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(org)
        .bind(user)
        .bind(role)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn set_invitation_roles(
    tx: &mut Tx<'_>,
    invitation: &str,
    role_ids: &[String],
) -> Result<(), sqlx::Error> {
    for role in role_ids {
        sqlx::query(
            "INSERT INTO organization_invitation_roles (invitation_id, role_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(invitation)
        .bind(role)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
