//! Organization quotas and the resource use they are checked against.

use super::Store;

/// An organization's limits; 0 means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct OrgQuotas {
    pub total_cpu_quota: i64,
    pub total_memory_quota: i64,
    pub total_disk_quota: i64,
    pub max_cpu_per_sandbox: i64,
    pub max_memory_per_sandbox: i64,
    pub max_disk_per_sandbox: i64,
    pub snapshot_quota: i64,
    pub max_snapshot_size: i64,
    pub volume_quota: i64,
}

impl From<&daytona_config::Quotas> for OrgQuotas {
    fn from(q: &daytona_config::Quotas) -> Self {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        OrgQuotas {
            total_cpu_quota: n(q.total_cpu),
            total_memory_quota: n(q.total_memory),
            total_disk_quota: n(q.total_disk),
            max_cpu_per_sandbox: n(q.max_cpu_per_sandbox),
            max_memory_per_sandbox: n(q.max_memory_per_sandbox),
            max_disk_per_sandbox: n(q.max_disk_per_sandbox),
            snapshot_quota: n(q.snapshot_quota),
            max_snapshot_size: n(q.max_snapshot_size),
            volume_quota: n(q.volume_quota),
        }
    }
}

/// Resources an organization's sandboxes hold: cpu and memory of running ones, disk of all
/// that still exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUse {
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
}

impl Store {
    pub async fn organization_quotas(&self, org: &str) -> Result<OrgQuotas, sqlx::Error> {
        sqlx::query_as::<_, OrgQuotas>(
            "SELECT total_cpu_quota, total_memory_quota, total_disk_quota, max_cpu_per_sandbox,
             max_memory_per_sandbox, max_disk_per_sandbox, snapshot_quota, max_snapshot_size, volume_quota
             FROM organizations WHERE id = $1",
        )
        .bind(org)
        .fetch_one(self.pool())
        .await
    }

    pub async fn set_organization_quotas(
        &self,
        org: &str,
        q: &OrgQuotas,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE organizations SET total_cpu_quota = $1, total_memory_quota = $2, total_disk_quota = $3,
             max_cpu_per_sandbox = $4, max_memory_per_sandbox = $5, max_disk_per_sandbox = $6, snapshot_quota = $7,
             max_snapshot_size = $8, volume_quota = $9 WHERE id = $10",
        )
        .bind(q.total_cpu_quota)
        .bind(q.total_memory_quota)
        .bind(q.total_disk_quota)
        .bind(q.max_cpu_per_sandbox)
        .bind(q.max_memory_per_sandbox)
        .bind(q.max_disk_per_sandbox)
        .bind(q.snapshot_quota)
        .bind(q.max_snapshot_size)
        .bind(q.volume_quota)
        .bind(org)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// What `org`'s sandboxes hold now, leaving out `except` (a sandbox being started again).
    pub async fn resource_use(
        &self,
        org: &str,
        except: Option<&str>,
    ) -> Result<ResourceUse, sqlx::Error> {
        let (cpu, memory, disk): (i64, i64, i64) = sqlx::query_as(
            "SELECT
               CAST(COALESCE(SUM(CASE WHEN state NOT IN ('stopped', 'error', 'archived') THEN cpu ELSE 0 END), 0) AS BIGINT),
               CAST(COALESCE(SUM(CASE WHEN state NOT IN ('stopped', 'error', 'archived') THEN memory ELSE 0 END), 0) AS BIGINT),
               CAST(COALESCE(SUM(CASE WHEN state <> 'archived' THEN disk ELSE 0 END), 0) AS BIGINT)
             FROM sandboxes WHERE organization_id = $1 AND state <> 'destroyed' AND id <> $2",
        )
        .bind(org)
        .bind(except.unwrap_or(""))
        .fetch_one(self.pool())
        .await?;
        Ok(ResourceUse { cpu, memory, disk })
    }
}
