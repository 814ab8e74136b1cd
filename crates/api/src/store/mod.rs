//! Persistent state of the control plane.
//!
//! Embedded default: one SQLite file in the data directory (WAL mode). The SQL is kept portable
//! so the PostgreSQL backend can reuse the same queries.

use std::path::Path;
use std::str::FromStr;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

mod accounts;
mod builds;
mod organizations;
mod quotas;
mod sandboxes;
mod secrets;
mod snapshots;
mod volumes;

pub use accounts::{ApiKeyRow, CredentialRow, NewApiKey};
pub use builds::SnapshotBuildRow;
pub use organizations::{
    Holdings, InvitationRow, MemberRow, NewInvitation, NewUser, OrganizationRow, RegionRow,
    RoleRow, UserRow,
};
pub use quotas::{OrgQuotas, ResourceUse};
pub use sandboxes::{SandboxFilter, SandboxRow, SandboxSetting, SandboxSort};
pub use secrets::SecretKind;
pub use snapshots::{SnapshotFilter, SnapshotRow};
pub use volumes::{MountingSandbox, VolumeRow};

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Opens (creating if needed) `daytona.db` in `data_dir` and applies migrations.
    pub async fn open(data_dir: &Path) -> Result<Self, sqlx::Error> {
        let url = format!("sqlite://{}", data_dir.join("daytona.db").display());
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}
