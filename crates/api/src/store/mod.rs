//! Persistent state of the control plane.
//!
//! One set of queries serves two backends through sqlx's `Any` driver: SQLite in the data
//! directory (the embedded default, WAL mode) and PostgreSQL (`DB_HOST` …). The SQL is portable:
//! numbered placeholders (`$1`), `ON CONFLICT`, `TRUE`/`FALSE`, timestamps passed from Rust as
//! RFC 3339 text, JSON kept as text. Each backend has its own migration directory
//! (`migrations/sqlite`, `migrations/postgres`) with the same versions and the same schema in
//! that backend's types; [`Backend`] holds the few spellings that differ.

use std::path::Path;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

mod access;
mod accounts;
mod audit;
mod backups;
mod builds;
mod metrics;
mod organization_secrets;
mod organizations;
mod quotas;
mod registry_credentials;
mod runners;
mod sandboxes;
mod secrets;
mod snapshots;
mod types;
mod volumes;
mod warm_pools;

pub use access::NewSshAccess;
pub use accounts::{ApiKeyRow, CredentialRow, NewApiKey};
pub use audit::{AuditEntry, AuditSelection, NewAuditEntry};
pub use backups::BackupOutcome;
pub use builds::SnapshotBuildRow;
pub use metrics::MetricSample;
pub use organization_secrets::{OrgSecretRow, SecretFilter, SecretSort};
pub use organizations::{
    Holdings, InvitationRow, MemberRow, NewInvitation, NewUser, OrganizationRow, RegionRow,
    RoleRow, UserRow,
};
pub use quotas::{OrgQuotas, ResourceUse};
pub use registry_credentials::RegistryCredentialRow;
pub use runners::{JobRow, RunnerAllocation, RunnerReport, RunnerRow};
pub use sandboxes::{SandboxFilter, SandboxRow, SandboxSetting, SandboxSort};
pub use secrets::SecretKind;
pub use snapshots::{SnapshotFilter, SnapshotRow};
pub use types::{Flag, JsonText};
pub use volumes::{MountingSandbox, VolumeRow};
pub use warm_pools::{Claim, WarmPoolRow};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database holds the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn migrator(self) -> &'static Migrator {
        match self {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        }
    }

    /// A condition comparing the value of one key of the JSON text column `labels` with a
    /// parameter: the key is parameter `$key` (bound as [`Backend::label_key`]), the value `$value`.
    fn label_condition(self, key: usize, value: usize) -> String {
        match self {
            Backend::Sqlite => format!("json_extract(labels, ${key}) = ${value}"),
            Backend::Postgres => format!("(labels::jsonb ->> ${key}) = ${value}"),
        }
    }

    /// How a label key is bound for [`Backend::label_condition`]: SQLite takes a JSON path
    /// (the key quoted, so any text is safe), PostgreSQL the key itself.
    fn label_key(self, key: &str) -> String {
        match self {
            Backend::Sqlite => format!("$.\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\"")),
            Backend::Postgres => key.to_owned(),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot connect to the {backend:?} database: {source}")]
    Connect {
        backend: Backend,
        source: sqlx::Error,
    },
    #[error("cannot migrate the {backend:?} database: {source}")]
    Migrate {
        backend: Backend,
        source: sqlx::migrate::MigrateError,
    },
    #[error(
        "the database schema is not current (missing migrations {missing:?}) and RUN_MIGRATIONS is \
         false: run once with RUN_MIGRATIONS=true"
    )]
    NotMigrated { missing: Vec<i64> },
    #[error("invalid database location: {0}")]
    Location(String),
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Characters escaped in a SQLite file path inside a URL (everything but path-safe ones).
const PATH_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.');

impl Store {
    /// Opens (creating if needed) `daytona.db` in `data_dir` and applies migrations.
    pub async fn open(data_dir: &Path) -> Result<Self, OpenError> {
        Self::open_sqlite(data_dir, true).await
    }

    /// The store the configuration names: PostgreSQL when `DB_HOST` is set, otherwise SQLite in
    /// the data directory; migrations run when `RUN_MIGRATIONS` is true, otherwise the schema
    /// must already be current.
    pub async fn connect(config: &daytona_config::Config) -> Result<Self, OpenError> {
        let migrate = config.api.run_migrations;
        match &config.db {
            None => Self::open_sqlite(&config.server.data_dir, migrate).await,
            Some(db) => {
                let url = postgres_url(db, config.misc.extra_ca_certs.as_deref())?;
                Self::open_url(&url, migrate).await
            }
        }
    }

    async fn open_sqlite(data_dir: &Path, migrate: bool) -> Result<Self, OpenError> {
        let file = data_dir.join("daytona.db");
        let file = file
            .to_str()
            .ok_or_else(|| OpenError::Location(format!("{} is not UTF-8", file.display())))?;
        let url = format!(
            "sqlite://{}?mode=rwc",
            utf8_percent_encode(file, PATH_ESCAPES)
        );
        Self::open_url(&url, migrate).await
    }

    /// Opens the database at `url` (`sqlite://…` or `postgres://…`).
    pub async fn open_url(url: &str, migrate: bool) -> Result<Self, OpenError> {
        sqlx::any::install_default_drivers();
        let backend = match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Backend::Sqlite,
            Some("postgres" | "postgresql") => Backend::Postgres,
            _ => {
                return Err(OpenError::Location(
                    "expected a sqlite:// or postgres:// URL".into(),
                ));
            }
        };
        let connect = |source| OpenError::Connect { backend, source };
        let options: AnyConnectOptions = url.parse().map_err(connect)?;
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    // Per-connection settings (journal_mode is stored in the file, the rest are not).
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .connect_with(options)
                    .await
            }
        }
        .map_err(connect)?;
        let store = Store { pool, backend };
        if migrate {
            backend
                .migrator()
                .run(&store.pool)
                .await
                .map_err(|source| OpenError::Migrate { backend, source })?;
        } else {
            store.check_migrated().await?;
        }
        Ok(store)
    }

    /// Whether the database answers a query (readiness).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Fails unless every migration this build knows has been applied.
    async fn check_migrated(&self) -> Result<(), OpenError> {
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        let missing: Vec<i64> = self
            .backend
            .migrator()
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(OpenError::NotMigrated { missing })
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// The connection URL for the seed's `DB_*` settings. `DB_TLS_ENABLED` turns TLS on;
/// `DB_TLS_REJECT_UNAUTHORIZED` then decides whether the server's certificate and name are
/// verified (against the public roots plus `NODE_EXTRA_CA_CERTS`, if given).
pub fn postgres_url(
    db: &daytona_config::PostgresConfig,
    extra_ca_certs: Option<&Path>,
) -> Result<String, OpenError> {
    let bad = |what: &str| OpenError::Location(format!("{what} cannot be used in a database URL"));
    let mut url = url::Url::parse("postgres://localhost").expect("static URL");
    url.set_host(Some(&db.host)).map_err(|_| bad("DB_HOST"))?;
    url.set_port(Some(db.port)).map_err(|_| bad("DB_PORT"))?;
    url.set_username(&db.username)
        .map_err(|_| bad("DB_USERNAME"))?;
    url.set_password(Some(db.password.expose()))
        .map_err(|_| bad("DB_PASSWORD"))?;
    url.set_path(&utf8_percent_encode(&db.database, NON_ALPHANUMERIC).to_string());
    let ssl_mode = match (db.tls_enabled, db.tls_reject_unauthorized) {
        (false, _) => "disable",
        (true, false) => "require",
        (true, true) => "verify-full",
    };
    url.query_pairs_mut().append_pair("sslmode", ssl_mode);
    if let (true, Some(ca)) = (db.tls_enabled, extra_ca_certs) {
        let ca = ca.to_str().ok_or_else(|| bad("NODE_EXTRA_CA_CERTS"))?;
        url.query_pairs_mut().append_pair("sslrootcert", ca);
    }
    Ok(url.into())
}
