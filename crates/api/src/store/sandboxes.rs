//! Sandbox rows.

use sqlx::AssertSqlSafe;

use super::{Flag, Store, now};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SandboxRow {
    pub id: String,
    pub organization_id: String,
    pub name: String,
    pub snapshot: Option<String>,
    pub image_ref: String,
    pub os_user: String,
    /// JSON object of strings.
    pub env: String,
    /// JSON object of strings.
    pub labels: String,
    #[sqlx(try_from = "Flag")]
    pub public: bool,
    #[sqlx(try_from = "Flag")]
    pub network_block_all: bool,
    pub network_allow_list: Option<String>,
    pub domain_allow_list: Option<String>,
    pub target: String,
    pub cpu: i64,
    pub gpu: i64,
    pub memory: i64,
    pub disk: i64,
    pub state: String,
    pub desired_state: String,
    pub error_reason: Option<String>,
    pub auto_stop_interval: i64,
    pub auto_archive_interval: i64,
    pub auto_delete_interval: i64,
    pub auto_pause_interval: i64,
    pub runner_id: Option<String>,
    pub daemon_version: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub last_activity_at: String,
    /// RFC 3339 time after which the sandbox is deleted (`ttl`), if set.
    pub auto_destroy_at: Option<String>,
    /// JSON array of the volumes it mounts (`{volumeId, mountPath, subpath?}`).
    pub volumes: String,
    /// The warm pool it was made for, if any (kept once a create claimed it).
    pub warm_pool_id: Option<String>,
    /// Still waiting in that pool: not yet its organization's to see or use.
    #[sqlx(try_from = "Flag")]
    pub pooled: bool,
    /// JSON array of the secrets it mounts (`{env, secretId, placeholder}`).
    pub secrets: String,
    /// Upstream's `BackupState`: `None`, `Pending`, `InProgress`, `Completed`, `Error`.
    pub backup_state: String,
    /// Object key of the newest completed backup of its disk.
    pub backup_key: Option<String>,
    /// When that backup was taken.
    pub backup_created_at: Option<String>,
    /// Why the last backup failed.
    pub backup_error: Option<String>,
}

/// Column used to order a sandbox listing (the SDK's `sort` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxSort {
    Name,
    Cpu,
    Memory,
    Disk,
    LastActivityAt,
    CreatedAt,
}

impl SandboxSort {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "name" => SandboxSort::Name,
            "cpu" => SandboxSort::Cpu,
            "memoryGib" => SandboxSort::Memory,
            "diskGib" => SandboxSort::Disk,
            "lastActivityAt" => SandboxSort::LastActivityAt,
            "createdAt" => SandboxSort::CreatedAt,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            SandboxSort::Name => "name",
            SandboxSort::Cpu => "cpu",
            SandboxSort::Memory => "memory",
            SandboxSort::Disk => "disk",
            SandboxSort::LastActivityAt => "last_activity_at",
            SandboxSort::CreatedAt => "created_at",
        }
    }
}

#[derive(Debug, Default)]
pub struct SandboxFilter {
    pub id: Option<String>,
    pub name: Option<String>,
    pub labels: Vec<(String, String)>,
    pub states: Vec<String>,
    /// Also the sandboxes waiting in the organization's warm pools.
    pub include_warm: bool,
    pub sort: Option<SandboxSort>,
    pub descending: bool,
    pub offset: i64,
    pub limit: i64,
}

pub(super) const COLUMNS: &str = "id, organization_id, name, snapshot, image_ref, os_user, env, labels, public,
    network_block_all, network_allow_list, domain_allow_list, target, cpu, gpu, memory, disk, state, desired_state,
    error_reason, auto_stop_interval, auto_archive_interval, auto_delete_interval, auto_pause_interval,
    runner_id, daemon_version, created_at, updated_at, last_activity_at, auto_destroy_at, volumes,
    warm_pool_id, pooled, secrets, backup_state, backup_key, backup_created_at, backup_error";

impl Store {
    pub async fn insert_sandbox(&self, row: &SandboxRow) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO sandboxes ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38)"
        )))
        .bind(&row.id)
        .bind(&row.organization_id)
        .bind(&row.name)
        .bind(&row.snapshot)
        .bind(&row.image_ref)
        .bind(&row.os_user)
        .bind(&row.env)
        .bind(&row.labels)
        .bind(row.public)
        .bind(row.network_block_all)
        .bind(&row.network_allow_list)
        .bind(&row.domain_allow_list)
        .bind(&row.target)
        .bind(row.cpu)
        .bind(row.gpu)
        .bind(row.memory)
        .bind(row.disk)
        .bind(&row.state)
        .bind(&row.desired_state)
        .bind(&row.error_reason)
        .bind(row.auto_stop_interval)
        .bind(row.auto_archive_interval)
        .bind(row.auto_delete_interval)
        .bind(row.auto_pause_interval)
        .bind(&row.runner_id)
        .bind(&row.daemon_version)
        .bind(&row.created_at)
        .bind(&row.updated_at)
        .bind(&row.last_activity_at)
        .bind(&row.auto_destroy_at)
        .bind(&row.volumes)
        .bind(&row.warm_pool_id)
        .bind(row.pooled)
        .bind(&row.secrets)
        .bind(&row.backup_state)
        .bind(&row.backup_key)
        .bind(&row.backup_created_at)
        .bind(&row.backup_error)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A live (not destroyed) sandbox of `org` by id or, failing that, by name; sandboxes waiting
    /// in a warm pool are not the organization's yet.
    pub async fn find_sandbox(
        &self,
        org: &str,
        id_or_name: &str,
    ) -> Result<Option<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE organization_id = $1 AND state <> 'destroyed'
             AND pooled = FALSE AND (id = $2 OR name = $2) ORDER BY (id = $2) DESC LIMIT 1"
        )))
        .bind(org)
        .bind(id_or_name)
        .fetch_optional(self.pool())
        .await
    }

    /// Any live sandbox by id, whatever its organization (for the proxy and the reconciler).
    pub async fn sandbox_by_id(&self, id: &str) -> Result<Option<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE id = $1 AND state <> 'destroyed'"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await
    }

    /// The sandbox in any state, `destroyed` included (it is then only a record).
    pub async fn sandbox_record(&self, id: &str) -> Result<Option<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await
    }

    pub async fn live_sandboxes(&self) -> Result<Vec<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE state <> 'destroyed'"
        )))
        .fetch_all(self.pool())
        .await
    }

    /// One page of `org`'s live sandboxes (those waiting in a warm pool only if asked); fetches `limit + 1` rows so the caller knows whether
    /// another page follows.
    pub async fn list_sandboxes(
        &self,
        org: &str,
        f: &SandboxFilter,
    ) -> Result<Vec<SandboxRow>, sqlx::Error> {
        let mut sql = format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE organization_id = $1 AND state <> 'destroyed'"
        );
        if !f.include_warm {
            sql.push_str(" AND pooled = FALSE");
        }
        let mut params = 1;
        let mut param = || {
            params += 1;
            params
        };
        if f.id.is_some() {
            sql.push_str(&format!(" AND id = ${}", param()));
        }
        if f.name.is_some() {
            sql.push_str(&format!(" AND name = ${}", param()));
        }
        for _ in &f.labels {
            let (key, value) = (param(), param());
            sql.push_str(" AND ");
            sql.push_str(&self.backend.label_condition(key, value));
        }
        if !f.states.is_empty() {
            let states: Vec<String> = f.states.iter().map(|_| format!("${}", param())).collect();
            sql.push_str(&format!(" AND state IN ({})", states.join(", ")));
        }
        let column = f.sort.unwrap_or(SandboxSort::CreatedAt).column();
        let dir = if f.descending { "DESC" } else { "ASC" };
        let (limit, offset) = (param(), param());
        sql.push_str(&format!(
            " ORDER BY {column} {dir}, id {dir} LIMIT ${limit} OFFSET ${offset}"
        ));

        let mut q = sqlx::query_as::<_, SandboxRow>(AssertSqlSafe(sql)).bind(org);
        if let Some(id) = &f.id {
            q = q.bind(id);
        }
        if let Some(name) = &f.name {
            q = q.bind(name);
        }
        for (k, v) in &f.labels {
            q = q.bind(self.backend.label_key(k)).bind(v);
        }
        for s in &f.states {
            q = q.bind(s);
        }
        q.bind(f.limit + 1)
            .bind(f.offset)
            .fetch_all(self.pool())
            .await
    }

    pub async fn set_sandbox_state(
        &self,
        id: &str,
        state: &str,
        error_reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE sandboxes SET state = $1, error_reason = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(state)
        .bind(error_reason)
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn set_sandbox_desired_state(
        &self,
        id: &str,
        desired: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET desired_state = $1, updated_at = $2 WHERE id = $3")
            .bind(desired)
            .bind(now())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records a sandbox as started; `runner_id` is recorded only when the sandbox was on no
    /// runner (restored from an archive): placement records it otherwise.
    pub async fn set_sandbox_started(
        &self,
        id: &str,
        runner_id: &str,
        daemon_version: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let ts = now();
        sqlx::query(
            "UPDATE sandboxes SET state = 'started', error_reason = NULL, runner_id = COALESCE(runner_id, $1),
             daemon_version = COALESCE($2, daemon_version), updated_at = $3, last_activity_at = $4,
             backup_state = CASE WHEN backup_state = 'InProgress' THEN backup_state ELSE 'None' END
             WHERE id = $5",
        )
        .bind(runner_id)
        .bind(daemon_version)
        .bind(&ts)
        .bind(&ts)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// A setting of a sandbox that the SDK can change after create.
#[derive(Debug, Clone)]
pub enum SandboxSetting {
    Labels(String),
    Public(bool),
    AutoStop(i64),
    AutoArchive(i64),
    AutoDelete(i64),
    AutoPause(i64),
    AutoDestroyAt(Option<String>),
    Network {
        block_all: bool,
        allow_list: Option<String>,
        domain_allow_list: Option<String>,
    },
}

impl Store {
    pub async fn update_sandbox_setting(
        &self,
        id: &str,
        setting: &SandboxSetting,
    ) -> Result<(), sqlx::Error> {
        let ts = now();
        let q = match setting {
            SandboxSetting::Labels(json) => sqlx::query("UPDATE sandboxes SET labels = $1, updated_at = $2 WHERE id = $3").bind(json.clone()),
            SandboxSetting::Public(v) => sqlx::query("UPDATE sandboxes SET public = $1, updated_at = $2 WHERE id = $3").bind(*v),
            SandboxSetting::AutoStop(v) => {
                sqlx::query("UPDATE sandboxes SET auto_stop_interval = $1, updated_at = $2 WHERE id = $3").bind(*v)
            }
            SandboxSetting::AutoArchive(v) => {
                sqlx::query("UPDATE sandboxes SET auto_archive_interval = $1, updated_at = $2 WHERE id = $3").bind(*v)
            }
            SandboxSetting::AutoDelete(v) => {
                sqlx::query("UPDATE sandboxes SET auto_delete_interval = $1, updated_at = $2 WHERE id = $3").bind(*v)
            }
            SandboxSetting::AutoPause(v) => {
                sqlx::query("UPDATE sandboxes SET auto_pause_interval = $1, updated_at = $2 WHERE id = $3").bind(*v)
            }
            SandboxSetting::AutoDestroyAt(at) => {
                sqlx::query("UPDATE sandboxes SET auto_destroy_at = $1, updated_at = $2 WHERE id = $3").bind(at.clone())
            }
            SandboxSetting::Network { block_all, allow_list, domain_allow_list } => sqlx::query(
                "UPDATE sandboxes SET network_block_all = $1, network_allow_list = $2, domain_allow_list = $3,
                 updated_at = $4 WHERE id = $5",
            )
            .bind(*block_all)
            .bind(allow_list.clone())
            .bind(domain_allow_list.clone()),
        };
        q.bind(ts).bind(id).execute(self.pool()).await?;
        Ok(())
    }

    pub async fn set_sandbox_resources(
        &self,
        id: &str,
        cpu: i64,
        memory: i64,
        disk: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE sandboxes SET cpu = $1, memory = $2, disk = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(cpu)
        .bind(memory)
        .bind(disk)
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records activity (toolbox use, SDK `refresh_activity`) that postpones auto-stop.
    pub async fn touch_sandbox(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE sandboxes SET last_activity_at = $1 WHERE id = $2 AND state <> 'destroyed'",
        )
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

impl Store {
    /// Records that `child` was forked from `parent`.
    pub async fn insert_fork(&self, parent: &str, child: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO sandbox_forks (child_id, parent_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(child)
        .bind(parent)
        .bind(now())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Live sandboxes forked from `parent`.
    pub async fn forks_of(&self, parent: &str) -> Result<Vec<SandboxRow>, sqlx::Error> {
        sqlx::query_as::<_, SandboxRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE state <> 'destroyed'
             AND id IN (SELECT child_id FROM sandbox_forks WHERE parent_id = $1) ORDER BY created_at"
        )))
        .bind(parent)
        .fetch_all(self.pool())
        .await
    }

    /// The id of the sandbox `child` was forked from, if it is a fork.
    pub async fn parent_of(&self, child: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT parent_id FROM sandbox_forks WHERE child_id = $1")
            .bind(child)
            .fetch_optional(self.pool())
            .await
    }

    /// The sandbox's files are in object storage only: it has no runner any more.
    pub async fn set_sandbox_archived(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE sandboxes SET state = 'archived', error_reason = NULL, runner_id = NULL,
             updated_at = $1 WHERE id = $2",
        )
        .bind(now())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
