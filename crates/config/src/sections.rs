//! One struct per concern, each read from the seed's variables with the seed's defaults.
//! Concerns that have an embedded default (SQLite, in-process caches, a local object store, ...)
//! are `Option`s: `Some` only when the operator names the external service.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::net::{Ipv4Cidr, Roles, SHARED_ADDRESS_SPACE};
use crate::reader::{Reader, Unit};
use crate::secret::Secret;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }

    fn read(r: &mut Reader, name: &str, default: Protocol) -> Protocol {
        r.parse(name, default, "http or https", |v| {
            match v.to_ascii_lowercase().as_str() {
                "http" => Some(Protocol::Http),
                "https" => Some(Protocol::Https),
                _ => None,
            }
        })
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Our own process-level settings (not in the seed).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `DAYTONA_DATA_DIR`
    pub data_dir: PathBuf,
    /// `DAYTONA_BIND_ADDRESS`: the IP every listener (API, proxy, runner, SSH gateway) binds.
    pub bind_address: IpAddr,
    /// `DAYTONA_ROLES`
    pub roles: Roles,
    /// `DAYTONA_LOG`: a `tracing_subscriber::EnvFilter` directive string.
    pub log: String,
    /// `DAYTONA_PUSH_ACCESS_TTL` (3600 s): how long the temporary credentials of
    /// `GET /object-storage/push-access` for the embedded S3 endpoint stay valid.
    pub push_access_ttl: Duration,
    /// `DAYTONA_METRICS_INTERVAL` (15s): how often the usage of every running sandbox is sampled
    /// for `GET /sandbox/{id}/telemetry/metrics`.
    pub metrics_interval: Duration,
    /// `DAYTONA_METRICS_RETENTION` (6h): how long samples are kept.
    pub metrics_retention: Duration,
}

impl ServerConfig {
    pub(crate) fn read(r: &mut Reader, running_as_root: bool) -> Self {
        let data_dir = match r.absolute_path("DAYTONA_DATA_DIR") {
            Some(dir) => dir,
            None => default_data_dir(r, running_as_root).unwrap_or_else(|| {
                r.reject(
                    "DAYTONA_DATA_DIR",
                    "",
                    "an absolute path (HOME and XDG_DATA_HOME are unset, so there is no default)",
                );
                PathBuf::new()
            }),
        };
        Self {
            data_dir,
            bind_address: r.parse(
                "DAYTONA_BIND_ADDRESS",
                IpAddr::from([0, 0, 0, 0]),
                "an IP address such as 0.0.0.0, 127.0.0.1 or ::",
                |v| v.parse().ok(),
            ),
            roles: r.parse(
                "DAYTONA_ROLES",
                Roles::all(),
                "a comma-separated list of api, proxy, runner, ssh-gateway",
                |v| v.parse().ok(),
            ),
            log: r.string("DAYTONA_LOG", "info"),
            push_access_ttl: r.whole("DAYTONA_PUSH_ACCESS_TTL", 3600, 1, Unit::Seconds),
            metrics_interval: r.duration(
                "DAYTONA_METRICS_INTERVAL",
                Duration::from_secs(15),
                Duration::from_secs(1),
            ),
            metrics_retention: r.duration(
                "DAYTONA_METRICS_RETENTION",
                Duration::from_secs(6 * 3600),
                Duration::from_secs(60),
            ),
        }
    }

    /// Whether listeners are reachable only from this machine (placeholder secrets are then harmless).
    pub fn binds_loopback_only(&self) -> bool {
        self.bind_address.is_loopback()
    }
}

/// `/var/lib/daytona` for root, else the XDG data directory.
pub(crate) fn default_data_dir(r: &Reader, running_as_root: bool) -> Option<PathBuf> {
    if running_as_root {
        return Some(PathBuf::from("/var/lib/daytona"));
    }
    // The XDG spec says relative values are invalid and must be ignored.
    let xdg = r
        .raw("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        r.raw("HOME")
            .map(|home| PathBuf::from(home).join(".local/share"))
            .filter(|p| p.is_absolute())
    })?;
    Some(base.join("daytona"))
}

/// The API service's own settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `PORT` (3000)
    pub port: u16,
    /// `ENCRYPTION_KEY` (supersecretkey)
    pub encryption_key: Secret,
    /// `ENCRYPTION_SALT` (supersecretsalt)
    pub encryption_salt: Secret,
    /// `DEFAULT_SNAPSHOT` (daytonaio/sandbox:0.4.3)
    pub default_snapshot: String,
    /// `DASHBOARD_URL` (http://localhost:3000/dashboard)
    pub dashboard_url: String,
    /// `DASHBOARD_BASE_API_URL` (http://localhost:3000)
    pub dashboard_base_api_url: String,
    /// `MAX_AUTO_ARCHIVE_INTERVAL` (43200). The seed's table says seconds, but upstream compares it
    /// with a sandbox's `autoArchiveInterval`, which the SDK sends in minutes (43200 min = 30 days),
    /// so it is kept as a bare number in that unit.
    pub max_auto_archive_interval: u32,
    /// `MAINTENANCE_MODE` (false)
    pub maintenance_mode: bool,
    /// `RUN_MIGRATIONS` (true)
    pub run_migrations: bool,
    /// `SKIP_USER_EMAIL_VERIFICATION` (true)
    pub skip_user_email_verification: bool,
    /// `HEALTH_CHECK_API_KEY` (supersecretkey)
    pub health_check_api_key: Secret,
    /// `NOTIFICATION_GATEWAY_DISABLED` (false)
    pub notification_gateway_disabled: bool,
}

impl ApiConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        Self {
            port: r.port("PORT", 3000),
            encryption_key: r.secret("ENCRYPTION_KEY", "supersecretkey"),
            encryption_salt: r.secret("ENCRYPTION_SALT", "supersecretsalt"),
            default_snapshot: r.string("DEFAULT_SNAPSHOT", "daytonaio/sandbox:0.4.3"),
            dashboard_url: r.url("DASHBOARD_URL", "http://localhost:3000/dashboard"),
            dashboard_base_api_url: r.url("DASHBOARD_BASE_API_URL", "http://localhost:3000"),
            max_auto_archive_interval: r.count("MAX_AUTO_ARCHIVE_INTERVAL", 43_200),
            maintenance_mode: r.flag("MAINTENANCE_MODE", false),
            run_migrations: r.flag("RUN_MIGRATIONS", true),
            skip_user_email_verification: r.flag("SKIP_USER_EMAIL_VERIFICATION", true),
            health_check_api_key: r.secret("HEALTH_CHECK_API_KEY", "supersecretkey"),
            notification_gateway_disabled: r.flag("NOTIFICATION_GATEWAY_DISABLED", false),
        }
    }
}

/// PostgreSQL; `Some` when `DB_HOST` is set, otherwise state lives in SQLite in the data dir.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `DB_HOST` (db)
    pub host: String,
    /// `DB_PORT` (5432)
    pub port: u16,
    /// `DB_USERNAME` (user)
    pub username: String,
    /// `DB_PASSWORD` (pass)
    pub password: Secret,
    /// `DB_DATABASE` (daytona)
    pub database: String,
    /// `DB_TLS_ENABLED` (false)
    pub tls_enabled: bool,
    /// `DB_TLS_REJECT_UNAUTHORIZED` (true)
    pub tls_reject_unauthorized: bool,
}

impl PostgresConfig {
    pub(crate) fn read(r: &mut Reader) -> Option<Self> {
        let config = Self {
            host: r.string("DB_HOST", "db"),
            port: r.port("DB_PORT", 5432),
            username: r.string("DB_USERNAME", "user"),
            password: r.secret("DB_PASSWORD", "pass"),
            database: r.string("DB_DATABASE", "daytona"),
            tls_enabled: r.flag("DB_TLS_ENABLED", false),
            tls_reject_unauthorized: r.flag("DB_TLS_REJECT_UNAUTHORIZED", true),
        };
        r.is_set("DB_HOST").then_some(config)
    }
}

/// Redis (shared by API and proxy); `Some` when `REDIS_HOST` is set, otherwise in-process.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_HOST` (redis)
    pub host: String,
    /// `REDIS_PORT` (6379)
    pub port: u16,
}

impl RedisConfig {
    pub(crate) fn read(r: &mut Reader) -> Option<Self> {
        let config = Self {
            host: r.string("REDIS_HOST", "redis"),
            port: r.port("REDIS_PORT", 6379),
        };
        r.is_set("REDIS_HOST").then_some(config)
    }
}

/// An OIDC issuer; `Some` when `OIDC_ISSUER_BASE_URL` (API) or `OIDC_DOMAIN` (proxy) is set,
/// otherwise only API keys authenticate. API and proxy variables with the same meaning default to
/// each other so a single-process server needs each value once.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// `OIDC_ISSUER_BASE_URL` (http://dex:5556/dex; defaults to `OIDC_DOMAIN` when only that is set)
    pub issuer_base_url: String,
    /// `OIDC_DOMAIN`, the proxy's issuer (defaults to `OIDC_ISSUER_BASE_URL`)
    pub proxy_domain: String,
    /// `PUBLIC_OIDC_DOMAIN`, the issuer as browsers reach it (http://localhost:5556/dex)
    pub public_domain: String,
    /// `OIDC_PUBLIC_DOMAIN`, the proxy's name for the same (defaults to `PUBLIC_OIDC_DOMAIN`)
    pub proxy_public_domain: String,
    /// `OIDC_CLIENT_ID` (daytona; API and proxy)
    pub client_id: String,
    /// `OIDC_CLIENT_SECRET` (empty; proxy)
    pub client_secret: Option<Secret>,
    /// `OIDC_AUDIENCE` (daytona; API and proxy)
    pub audience: String,
    /// `OIDC_MANAGEMENT_API_ENABLED` (false) and its `OIDC_MANAGEMENT_API_*` settings
    pub management_api: Option<OidcManagementApi>,
}

#[derive(Debug, Clone)]
pub struct OidcManagementApi {
    /// `OIDC_MANAGEMENT_API_CLIENT_ID`
    pub client_id: String,
    /// `OIDC_MANAGEMENT_API_CLIENT_SECRET`
    pub client_secret: Secret,
    /// `OIDC_MANAGEMENT_API_AUDIENCE`
    pub audience: String,
}

impl OidcConfig {
    pub(crate) fn read(r: &mut Reader) -> Option<Self> {
        const ISSUER: &str = "http://dex:5556/dex";
        const PUBLIC: &str = "http://localhost:5556/dex";
        let proxy_domain_given = r.opt_url("OIDC_DOMAIN");
        let issuer_base_url = r.url(
            "OIDC_ISSUER_BASE_URL",
            proxy_domain_given.as_deref().unwrap_or(ISSUER),
        );
        let proxy_public_given = r.opt_url("OIDC_PUBLIC_DOMAIN");
        let public_domain = r.url(
            "PUBLIC_OIDC_DOMAIN",
            proxy_public_given.as_deref().unwrap_or(PUBLIC),
        );
        let management_enabled = r.flag("OIDC_MANAGEMENT_API_ENABLED", false);
        let management_api = if management_enabled {
            const WHY: &str = "when OIDC_MANAGEMENT_API_ENABLED is true";
            let client_id = r.required("OIDC_MANAGEMENT_API_CLIENT_ID", WHY);
            let client_secret = r.required("OIDC_MANAGEMENT_API_CLIENT_SECRET", WHY);
            let audience = r.required("OIDC_MANAGEMENT_API_AUDIENCE", WHY);
            Some(OidcManagementApi {
                client_id: client_id.unwrap_or_default(),
                client_secret: Secret::new(client_secret.unwrap_or_default()),
                audience: audience.unwrap_or_default(),
            })
        } else {
            None
        };
        let config = Self {
            proxy_domain: proxy_domain_given.unwrap_or_else(|| issuer_base_url.clone()),
            issuer_base_url,
            proxy_public_domain: proxy_public_given.unwrap_or_else(|| public_domain.clone()),
            public_domain,
            client_id: r.string("OIDC_CLIENT_ID", "daytona"),
            client_secret: r.opt_secret("OIDC_CLIENT_SECRET"),
            audience: r.string("OIDC_AUDIENCE", "daytona"),
            management_api,
        };
        (r.is_set("OIDC_ISSUER_BASE_URL") || r.is_set("OIDC_DOMAIN")).then_some(config)
    }
}

/// An S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    pub endpoint: String,
    pub region: String,
    pub access_key: Secret,
    pub secret_key: Secret,
    pub bucket: String,
}

/// The API's object storage; `Some` when `S3_ENDPOINT` is set, otherwise a local directory in the
/// data dir that is itself served as an S3 endpoint.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `S3_ENDPOINT` (http://minio:9000), `S3_REGION` (us-east-1), `S3_ACCESS_KEY` (minioadmin),
    /// `S3_SECRET_KEY` (minioadmin), `S3_DEFAULT_BUCKET` (daytona)
    pub storage: ObjectStorage,
    /// `S3_STS_ENDPOINT` (http://minio:9000/minio/v1/assume-role)
    pub sts_endpoint: String,
    /// `S3_ACCOUNT_ID` (the seed's table shows `/`, i.e. none)
    pub account_id: Option<String>,
    /// `S3_ROLE_NAME` (the seed's table shows `/`, i.e. none)
    pub role_name: Option<String>,
}

impl S3Config {
    pub(crate) fn read(r: &mut Reader) -> Option<Self> {
        let config = Self {
            storage: ObjectStorage {
                endpoint: r.url("S3_ENDPOINT", "http://minio:9000"),
                region: r.string("S3_REGION", "us-east-1"),
                access_key: r.secret("S3_ACCESS_KEY", "minioadmin"),
                secret_key: r.secret("S3_SECRET_KEY", "minioadmin"),
                bucket: r.string("S3_DEFAULT_BUCKET", "daytona"),
            },
            sts_endpoint: r.url("S3_STS_ENDPOINT", "http://minio:9000/minio/v1/assume-role"),
            account_id: r.opt_string("S3_ACCOUNT_ID").filter(|v| v != "/"),
            role_name: r.opt_string("S3_ROLE_NAME").filter(|v| v != "/"),
        };
        r.is_set("S3_ENDPOINT").then_some(config)
    }
}

/// Outgoing mail; `Some` when `SMTP_HOST` is set, otherwise no mail is sent.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// `SMTP_HOST` (maildev)
    pub host: String,
    /// `SMTP_PORT` (1025)
    pub port: u16,
    /// `SMTP_USER` (empty)
    pub user: Option<String>,
    /// `SMTP_PASSWORD` (empty)
    pub password: Option<Secret>,
    /// `SMTP_SECURE` (empty: let the transport decide from the port)
    pub secure: Option<bool>,
    /// `SMTP_EMAIL_FROM` (Daytona Team <no-reply@daytona.io>)
    pub email_from: String,
}

impl SmtpConfig {
    pub(crate) fn read(r: &mut Reader) -> Option<Self> {
        let config = Self {
            host: r.string("SMTP_HOST", "maildev"),
            port: r.port("SMTP_PORT", 1025),
            user: r.opt_string("SMTP_USER"),
            password: r.opt_secret("SMTP_PASSWORD"),
            secure: r.opt_flag("SMTP_SECURE"),
            email_from: r.string("SMTP_EMAIL_FROM", "Daytona Team <no-reply@daytona.io>"),
        };
        r.is_set("SMTP_HOST").then_some(config)
    }
}

/// A Docker registry the API pushes snapshots to.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `*_REGISTRY_URL` (http://registry:6000)
    pub url: String,
    /// `*_REGISTRY_ADMIN` (admin)
    pub admin: String,
    /// `*_REGISTRY_PASSWORD` (password)
    pub password: Secret,
    /// `*_REGISTRY_PROJECT_ID` (daytona)
    pub project_id: String,
}

/// `TRANSIENT_REGISTRY_*` and `INTERNAL_REGISTRY_*`; each `Some` when its URL is set, otherwise
/// images stay in the runner's local store.
#[derive(Debug, Clone)]
pub struct RegistriesConfig {
    pub transient: Option<RegistryConfig>,
    pub internal: Option<RegistryConfig>,
    /// The API as the registry's token-auth server; `Some` when `DAYTONA_REGISTRY_TOKEN_REALM`
    /// is set.
    pub token_auth: Option<RegistryTokenAuth>,
}

impl RegistriesConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        Self {
            transient: RegistryConfig::read(r, "TRANSIENT"),
            internal: RegistryConfig::read(r, "INTERNAL"),
            token_auth: RegistryTokenAuth::read(r),
        }
    }
}

/// The Docker registry token-auth server the API runs for the transient and internal registries
/// (the registry's `auth: token:` section names the same realm, service, issuer and certificate).
#[derive(Debug, Clone)]
pub struct RegistryTokenAuth {
    /// `DAYTONA_REGISTRY_TOKEN_REALM`: where clients fetch tokens, the API's
    /// `…/api/docker-registry/token` as the registry's clients reach it.
    pub realm: String,
    /// `DAYTONA_REGISTRY_TOKEN_SERVICE` (daytona-registry): the registry's `service`, the tokens'
    /// audience.
    pub service: String,
    /// `DAYTONA_REGISTRY_TOKEN_ISSUER` (daytona): the tokens' issuer.
    pub issuer: String,
    /// `DAYTONA_REGISTRY_TOKEN_KEY` and `DAYTONA_REGISTRY_TOKEN_CERT`: the signing key (PEM) and
    /// its self-signed certificate (the registry's `rootcertbundle`); made there when both are
    /// missing. Unset: `<DAYTONA_DATA_DIR>/registry-token/{key,cert}.pem`.
    pub key_path: Option<PathBuf>,
    pub cert_path: Option<PathBuf>,
    /// `DAYTONA_REGISTRY_TOKEN_TTL` (300 s): how long an issued token is valid.
    pub token_ttl: Duration,
}

impl RegistryTokenAuth {
    fn read(r: &mut Reader) -> Option<Self> {
        let realm = r.opt_url("DAYTONA_REGISTRY_TOKEN_REALM");
        let key_path = r.absolute_path("DAYTONA_REGISTRY_TOKEN_KEY");
        let cert_path = r.absolute_path("DAYTONA_REGISTRY_TOKEN_CERT");
        if key_path.is_some() != cert_path.is_some() {
            r.reject(
                "DAYTONA_REGISTRY_TOKEN_KEY",
                &key_path
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
                    .to_string(),
                "DAYTONA_REGISTRY_TOKEN_KEY and DAYTONA_REGISTRY_TOKEN_CERT set together",
            );
        }
        let config = Self {
            realm: realm.clone().unwrap_or_default(),
            service: r.string("DAYTONA_REGISTRY_TOKEN_SERVICE", "daytona-registry"),
            issuer: r.string("DAYTONA_REGISTRY_TOKEN_ISSUER", "daytona"),
            key_path,
            cert_path,
            token_ttl: r.whole("DAYTONA_REGISTRY_TOKEN_TTL", 300, 10, Unit::Seconds),
        };
        realm.is_some().then_some(config)
    }
}

impl RegistryConfig {
    /// Whether the registry is reached over plain HTTP, and its `host[:port]` (lower case);
    /// `None` without a host.
    pub fn host(&self) -> Option<(bool, String)> {
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("https", &self.url));
        let host = rest
            .split('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        (!host.is_empty()).then(|| (scheme.eq_ignore_ascii_case("http"), host))
    }

    fn read(r: &mut Reader, kind: &str) -> Option<Self> {
        let var = |field: &str| format!("{kind}_REGISTRY_{field}");
        let config = Self {
            url: r.url(&var("URL"), "http://registry:6000"),
            admin: r.string(&var("ADMIN"), "admin"),
            password: r.secret(&var("PASSWORD"), "password"),
            project_id: r.string(&var("PROJECT_ID"), "daytona"),
        };
        r.is_set(&var("URL")).then_some(config)
    }
}

/// OpenTelemetry for the API, the sandboxes and the runner.
#[derive(Debug, Clone)]
pub struct OtelConfig {
    /// `OTEL_ENABLED` (true)
    pub enabled: bool,
    /// Where the API exports traces: `Some` when `OTEL_ENABLED` is true and `OTEL_COLLECTOR_URL` is
    /// set. The seed's default URL (http://jaeger:4318/v1/traces) names a compose-only host, so it is
    /// not used implicitly; the embedded default is logs only.
    pub api_traces: Option<OtlpExport>,
    /// `OTEL_COLLECTOR_ENDPOINT_URL`, or its older name `SANDBOX_OTEL_ENDPOINT_URL` (empty)
    pub sandbox_endpoint_url: Option<String>,
    /// `OTEL_LOGGING_ENABLED` (false; runner)
    pub runner_logging_enabled: bool,
    /// `OTEL_TRACING_ENABLED` (false; runner)
    pub runner_tracing_enabled: bool,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (empty; runner)
    pub runner_exporter_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_HEADERS` (empty; runner). Secret because it usually carries auth.
    pub runner_exporter_headers: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct OtlpExport {
    /// `OTEL_COLLECTOR_URL`
    pub collector_url: String,
    /// `OTEL_COLLECTOR_API_KEY` (otel_collector_api_key)
    pub api_key: Secret,
}

impl OtelConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        let enabled = r.flag("OTEL_ENABLED", true);
        let collector_url = r.opt_url("OTEL_COLLECTOR_URL");
        let api_key = r.secret("OTEL_COLLECTOR_API_KEY", "otel_collector_api_key");
        Self {
            enabled,
            api_traces: collector_url
                .filter(|_| enabled)
                .map(|collector_url| OtlpExport {
                    collector_url,
                    api_key,
                }),
            sandbox_endpoint_url: r
                .opt_string("OTEL_COLLECTOR_ENDPOINT_URL")
                .or_else(|| r.opt_string("SANDBOX_OTEL_ENDPOINT_URL")),
            runner_logging_enabled: r.flag("OTEL_LOGGING_ENABLED", false),
            runner_tracing_enabled: r.flag("OTEL_TRACING_ENABLED", false),
            runner_exporter_endpoint: r.opt_string("OTEL_EXPORTER_OTLP_ENDPOINT"),
            runner_exporter_headers: r.opt_secret("OTEL_EXPORTER_OTLP_HEADERS"),
        }
    }
}

/// The preview/toolbox proxy, and the API's view of it.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `PROXY_PORT` (4000)
    pub port: u16,
    /// `PROXY_API_KEY` (super_secret_key; API and proxy)
    pub api_key: Secret,
    /// `PROXY_PROTOCOL` (http; API and proxy)
    pub protocol: Protocol,
    /// `PROXY_DOMAIN` (proxy.localhost:4000)
    pub domain: String,
    /// `PROXY_TEMPLATE_URL`, keeping its `{{PORT}}` and `{{sandboxId}}` placeholders. Defaults to
    /// `{PROXY_PROTOCOL}://{{PORT}}-{{sandboxId}}.{PROXY_DOMAIN}`, which with the other defaults is
    /// the seed's http://{{PORT}}-{{sandboxId}}.proxy.localhost:4000.
    pub template_url: String,
    /// `PROXY_TOOLBOX_BASE_URL` (`{PROXY_PROTOCOL}://{PROXY_DOMAIN}`)
    pub toolbox_base_url: String,
    /// `COOKIE_DOMAIN` (`PROXY_DOMAIN`)
    pub cookie_domain: String,
    /// `TOOLBOX_ONLY_MODE` (false)
    pub toolbox_only_mode: bool,
    /// `PREVIEW_WARNING_ENABLED` (false)
    pub preview_warning_enabled: bool,
    /// `SHUTDOWN_TIMEOUT_SEC` (3600)
    pub shutdown_timeout: Duration,
}

impl ProxyConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        let protocol = Protocol::read(r, "PROXY_PROTOCOL", Protocol::Http);
        let domain = r.string("PROXY_DOMAIN", "proxy.localhost:4000");
        Self {
            port: r.port("PROXY_PORT", 4000),
            api_key: r.secret("PROXY_API_KEY", "super_secret_key"),
            template_url: r.url(
                "PROXY_TEMPLATE_URL",
                &format!("{protocol}://{{{{PORT}}}}-{{{{sandboxId}}}}.{domain}"),
            ),
            toolbox_base_url: r.url("PROXY_TOOLBOX_BASE_URL", &format!("{protocol}://{domain}")),
            cookie_domain: r.string("COOKIE_DOMAIN", &domain),
            toolbox_only_mode: r.flag("TOOLBOX_ONLY_MODE", false),
            preview_warning_enabled: r.flag("PREVIEW_WARNING_ENABLED", false),
            shutdown_timeout: r.whole("SHUTDOWN_TIMEOUT_SEC", 3600, 0, Unit::Seconds),
            protocol,
            domain,
        }
    }

    /// The toolbox URL the API hands to SDKs: the toolbox base URL plus `/toolbox`, no trailing slash.
    pub fn toolbox_proxy_url(&self) -> String {
        format!("{}/toolbox", self.toolbox_base_url.trim_end_matches('/'))
    }

    /// The preview URL for `port` of `sandbox_id`, from the template.
    pub fn preview_url(&self, port: u16, sandbox_id: &str) -> String {
        self.template_url
            .replace("{{PORT}}", &port.to_string())
            .replace("{{sandboxId}}", sandbox_id)
    }
}

/// The SSH gateway, and the API's view of it.
#[derive(Debug, Clone)]
pub struct SshGatewayConfig {
    /// `SSH_GATEWAY_API_KEY` (ssh_secret_api_token): the key the API accepts from the gateway.
    pub api_key: Secret,
    /// `API_KEY`: the key the gateway presents to the API (defaults to `SSH_GATEWAY_API_KEY`).
    pub gateway_api_key: Secret,
    /// `API_URL` (`DAYTONA_API_URL`, else http://api:3000/api): how the gateway reaches the API.
    pub api_url: String,
    /// `SSH_GATEWAY_COMMAND` (`ssh -p 2222 {{TOKEN}}@localhost`), keeping `{{TOKEN}}`.
    pub command: String,
    /// `SSH_GATEWAY_URL` (localhost:2222)
    pub url: String,
    /// `SSH_GATEWAY_PUBLIC_KEY`: base64 OpenSSH public key the runners trust (generated when unset).
    pub public_key: Option<String>,
    /// `SSH_PRIVATE_KEY`: base64 OpenSSH private key the gateway authenticates to runners with.
    pub private_key: Option<Secret>,
    /// `SSH_HOST_KEY`: base64 OpenSSH host key the gateway presents to clients.
    pub host_key: Option<Secret>,
    /// `SSH_GATEWAY_PORT` (2222)
    pub port: u16,
}

impl SshGatewayConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        let api_key = r.secret("SSH_GATEWAY_API_KEY", "ssh_secret_api_token");
        Self {
            gateway_api_key: r.secret("API_KEY", api_key.expose()),
            api_key,
            // One variable can serve every split role; a blank value counts as unset.
            api_url: {
                let shared = r
                    .raw("DAYTONA_API_URL")
                    .unwrap_or_else(|| "http://api:3000/api".into());
                r.url("API_URL", &shared)
            },
            command: r.string("SSH_GATEWAY_COMMAND", "ssh -p 2222 {{TOKEN}}@localhost"),
            url: r.string("SSH_GATEWAY_URL", "localhost:2222"),
            public_key: base64_key(r, "SSH_GATEWAY_PUBLIC_KEY"),
            private_key: base64_key(r, "SSH_PRIVATE_KEY").map(Secret::new),
            host_key: base64_key(r, "SSH_HOST_KEY").map(Secret::new),
            port: r.port("SSH_GATEWAY_PORT", 2222),
        }
    }

    /// The command a user runs to reach a sandbox with `token`.
    pub fn ssh_command(&self, token: &str) -> String {
        self.command.replace("{{TOKEN}}", token)
    }
}

fn base64_key(r: &mut Reader, name: &str) -> Option<String> {
    // Only the alphabet is checked here; the SSH crate decodes and validates the key itself.
    r.parse_opt(name, "a base64-encoded OpenSSH key", |v| {
        v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=\r\n".contains(&b))
            .then(|| v.to_owned())
    })
}

/// Docker image build engine of the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildEngine {
    Buildkit,
    Legacy,
}

/// The runner service.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// `DAYTONA_RUNNER_TOKEN`: the runner's key for the API (defaults to `DEFAULT_RUNNER_API_KEY`,
    /// whose default is the seed's secret_api_token; the seed sets both from one generated value).
    pub token: Secret,
    /// `VERSION` (0.0.1)
    pub version: String,
    /// `API_PORT` (3003)
    pub api_port: u16,
    /// `API_VERSION` (2)
    pub api_version: u32,
    /// `LOG_FILE_PATH`. The seed's compose sets /home/daytona/runner/runner.log inside its container;
    /// here there is no default and the runner logs through tracing only.
    pub log_file_path: Option<PathBuf>,
    /// `RESOURCE_LIMITS_DISABLED`. Default false: the seed's `true` works around cgroups it cannot
    /// partition inside Docker-in-Docker, which does not apply to a runner that owns its cgroups.
    pub resource_limits_disabled: bool,
    /// `AWS_*`: `Some` when `AWS_ENDPOINT_URL` or the API's `S3_ENDPOINT` is set; each `AWS_*`
    /// defaults to its `S3_*` counterpart, then to the seed's MinIO values.
    pub storage: Option<ObjectStorage>,
    /// `DAEMON_START_TIMEOUT_SEC` (60)
    pub daemon_start_timeout: Duration,
    /// `SANDBOX_START_TIMEOUT_SEC` (30)
    pub sandbox_start_timeout: Duration,
    /// `USE_SNAPSHOT_ENTRYPOINT` (false)
    pub use_snapshot_entrypoint: bool,
    /// `RUNNER_DOMAIN` (none)
    pub domain: Option<String>,
    /// `VOLUME_CLEANUP_INTERVAL` (30s, at least 10s)
    pub volume_cleanup_interval: Duration,
    /// `COLLECTOR_WINDOW_SIZE` (60 samples)
    pub collector_window_size: u32,
    /// `CPU_USAGE_SNAPSHOT_INTERVAL` (5s, at least 1s)
    pub cpu_usage_snapshot_interval: Duration,
    /// `ALLOCATED_RESOURCES_SNAPSHOT_INTERVAL` (5s, at least 1s)
    pub allocated_resources_snapshot_interval: Duration,
    /// `POLL_TIMEOUT` (30s)
    pub poll_timeout: Duration,
    /// `POLL_LIMIT` (10, 1 to 100)
    pub poll_limit: u32,
    /// `HEALTHCHECK_INTERVAL` (30s, at least 10s)
    pub healthcheck_interval: Duration,
    /// `HEALTHCHECK_TIMEOUT` (10s)
    pub healthcheck_timeout: Duration,
    /// `SNAPSHOT_ERROR_CACHE_RETENTION` (10m, at least 5m)
    pub snapshot_error_cache_retention: Duration,
    /// `CONTAINER_NETWORK` (none; docker backend)
    pub container_network: Option<String>,
    /// `INTER_SANDBOX_NETWORK_ENABLED` (false)
    pub inter_sandbox_network_enabled: bool,
    /// `BUILD_ENGINE` (buildkit)
    pub build_engine: BuildEngine,
    /// `DAYTONA_DAEMON_PATH`: the static daemon binary to mount into sandboxes (none: look beside
    /// the server binary).
    pub daemon_path: Option<PathBuf>,
    /// `DAYTONA_BRIDGE_NAME` (daytona0)
    pub bridge_name: String,
    /// `DAYTONA_SANDBOX_SUBNET` (100.100.0.0/16, inside 100.64.0.0/10)
    pub sandbox_subnet: Ipv4Cidr,
    /// `DAYTONA_SANDBOX_DNS`: where sandboxes' DNS queries to their gateway go. Unset: the
    /// host's first non-loopback resolver; `none`: refused; an IPv4 address: that resolver.
    pub sandbox_dns: SandboxDns,
    /// `DAYTONA_SANDBOX_USERNS` (false): new sandboxes run in a user namespace, their root
    /// mapped to an unprivileged range of host ids.
    pub sandbox_userns: bool,
    /// `DAYTONA_INSECURE_REGISTRIES`: comma-separated `host[:port]` of registries pulled over
    /// plain HTTP (loopback registries always are; a `host` without port means every port).
    pub insecure_registries: Vec<String>,
    /// `DAYTONA_EGRESS_PROXY_PORT` (3128): port of the egress proxy on the bridge's gateway
    /// address, through which sandboxes that mount secrets send HTTP(S).
    pub egress_proxy_port: u16,
    /// `DAYTONA_EGRESS_EXTRA_CA_FILE`: PEM certificates the egress proxy trusts besides the host's
    /// and the bundled web roots when it verifies the hosts it sends secrets to.
    pub egress_extra_ca_file: Option<PathBuf>,
}

/// `host[:port]` entries, blanks ignored; `None` when one has a scheme, a path or a bad port.
fn parse_registry_hosts(v: &str) -> Option<Vec<String>> {
    v.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (h, None),
            };
            let host_ok = !host.is_empty() && !host.contains(['/', '@', ' ']) && !h.contains("://");
            let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
            (host_ok && port_ok).then(|| h.to_ascii_lowercase())
        })
        .collect()
}

/// Upstream resolver for sandbox DNS (`DAYTONA_SANDBOX_DNS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxDns {
    HostResolver,
    None,
    Server(std::net::Ipv4Addr),
}

impl RunnerConfig {
    pub(crate) fn read(r: &mut Reader, default_runner_api_key: &Secret) -> Self {
        let secs = Duration::from_secs;
        Self {
            token: r.secret("DAYTONA_RUNNER_TOKEN", default_runner_api_key.expose()),
            version: r.string("VERSION", "0.0.1"),
            api_port: r.port("API_PORT", 3003),
            api_version: r.count("API_VERSION", 2),
            log_file_path: r.absolute_path("LOG_FILE_PATH"),
            resource_limits_disabled: r.flag("RESOURCE_LIMITS_DISABLED", false),
            storage: runner_storage(r),
            daemon_start_timeout: r.whole("DAEMON_START_TIMEOUT_SEC", 60, 1, Unit::Seconds),
            sandbox_start_timeout: r.whole("SANDBOX_START_TIMEOUT_SEC", 30, 1, Unit::Seconds),
            use_snapshot_entrypoint: r.flag("USE_SNAPSHOT_ENTRYPOINT", false),
            domain: r.opt_string("RUNNER_DOMAIN"),
            volume_cleanup_interval: r.duration("VOLUME_CLEANUP_INTERVAL", secs(30), secs(10)),
            collector_window_size: r.int("COLLECTOR_WINDOW_SIZE", 60, 1, u32::MAX),
            cpu_usage_snapshot_interval: r.duration(
                "CPU_USAGE_SNAPSHOT_INTERVAL",
                secs(5),
                secs(1),
            ),
            allocated_resources_snapshot_interval: r.duration(
                "ALLOCATED_RESOURCES_SNAPSHOT_INTERVAL",
                secs(5),
                secs(1),
            ),
            poll_timeout: r.duration("POLL_TIMEOUT", secs(30), Duration::ZERO),
            poll_limit: r.int("POLL_LIMIT", 10, 1, 100),
            healthcheck_interval: r.duration("HEALTHCHECK_INTERVAL", secs(30), secs(10)),
            healthcheck_timeout: r.duration("HEALTHCHECK_TIMEOUT", secs(10), Duration::ZERO),
            snapshot_error_cache_retention: r.duration(
                "SNAPSHOT_ERROR_CACHE_RETENTION",
                secs(600),
                secs(300),
            ),
            container_network: r.opt_string("CONTAINER_NETWORK"),
            inter_sandbox_network_enabled: r.flag("INTER_SANDBOX_NETWORK_ENABLED", false),
            build_engine: r.parse(
                "BUILD_ENGINE",
                BuildEngine::Buildkit,
                "buildkit or legacy",
                |v| match v.to_ascii_lowercase().as_str() {
                    "buildkit" => Some(BuildEngine::Buildkit),
                    "legacy" => Some(BuildEngine::Legacy),
                    _ => None,
                },
            ),
            daemon_path: r.absolute_path("DAYTONA_DAEMON_PATH"),
            bridge_name: r.parse(
                "DAYTONA_BRIDGE_NAME",
                "daytona0".to_owned(),
                "a network interface name (1-15 characters, no '/', ':' or whitespace)",
                |v| is_interface_name(v).then(|| v.to_owned()),
            ),
            sandbox_subnet: sandbox_subnet(r),
            insecure_registries: r.parse(
                "DAYTONA_INSECURE_REGISTRIES",
                Vec::new(),
                "comma-separated host[:port] entries without a scheme or path",
                parse_registry_hosts,
            ),
            sandbox_dns: r.parse(
                "DAYTONA_SANDBOX_DNS",
                SandboxDns::HostResolver,
                "an IPv4 address or `none`",
                |v| match v {
                    v if v.eq_ignore_ascii_case("none") => Some(SandboxDns::None),
                    v => v.parse().ok().map(SandboxDns::Server),
                },
            ),
            sandbox_userns: r.flag("DAYTONA_SANDBOX_USERNS", false),
            egress_proxy_port: r.port("DAYTONA_EGRESS_PROXY_PORT", 3128),
            egress_extra_ca_file: r.absolute_path("DAYTONA_EGRESS_EXTRA_CA_FILE"),
        }
    }
}

fn runner_storage(r: &mut Reader) -> Option<ObjectStorage> {
    let s3 = |name: &str, seed: &str| r.raw(name).unwrap_or_else(|| seed.to_owned());
    let endpoint_default = s3("S3_ENDPOINT", "http://minio:9000");
    let region_default = s3("S3_REGION", "us-east-1");
    let access_default = s3("S3_ACCESS_KEY", "minioadmin");
    let secret_default = s3("S3_SECRET_KEY", "minioadmin");
    let bucket_default = s3("S3_DEFAULT_BUCKET", "daytona");
    let storage = ObjectStorage {
        endpoint: r.url("AWS_ENDPOINT_URL", &endpoint_default),
        region: r.string("AWS_REGION", &region_default),
        access_key: r.secret("AWS_ACCESS_KEY_ID", &access_default),
        secret_key: r.secret("AWS_SECRET_ACCESS_KEY", &secret_default),
        bucket: r.string("AWS_DEFAULT_BUCKET", &bucket_default),
    };
    (r.is_set("AWS_ENDPOINT_URL") || r.is_set("S3_ENDPOINT")).then_some(storage)
}

/// Linux limits interface names to IFNAMSIZ-1 bytes and forbids '/', ':' and whitespace.
fn is_interface_name(v: &str) -> bool {
    (1..=15).contains(&v.len())
        && v != "."
        && v != ".."
        && !v
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

fn sandbox_subnet(r: &mut Reader) -> Ipv4Cidr {
    const NAME: &str = "DAYTONA_SANDBOX_SUBNET";
    let default = Ipv4Cidr::new([100, 100, 0, 0].into(), 16).expect("valid default subnet");
    let Some(raw) = r.raw(NAME) else {
        return default;
    };
    match raw.parse::<Ipv4Cidr>() {
        Err(()) => r.reject(
            NAME,
            &raw,
            "an IPv4 network in CIDR form with host bits zero, such as 100.100.0.0/16",
        ),
        Ok(net) if !SHARED_ADDRESS_SPACE.covers(&net) => r.reject(
            NAME,
            &raw,
            "a network inside 100.64.0.0/10 (shared address space), such as 100.100.0.0/16; \
             sandboxes never use 10/8, 172.16/12, 192.168/16 or public ranges, which may clash \
             with the host's networks",
        ),
        Ok(net) if net.prefix_len() > 30 => r.reject(
            NAME,
            &raw,
            "a network of /30 or larger, with room for the bridge and at least one sandbox",
        ),
        Ok(net) => return net,
    }
    default
}

/// The runner the API registers on first start (`DEFAULT_RUNNER_*`).
#[derive(Debug, Clone)]
pub struct DefaultRunnerConfig {
    /// `DEFAULT_RUNNER_DOMAIN` (runner:3003)
    pub domain: String,
    /// `DEFAULT_RUNNER_API_URL` (http://runner:3003)
    pub api_url: String,
    /// `DEFAULT_RUNNER_PROXY_URL` (http://runner:3003)
    pub proxy_url: String,
    /// `DEFAULT_RUNNER_API_KEY` (secret_api_token)
    pub api_key: Secret,
    /// `DEFAULT_RUNNER_CPU` (4)
    pub cpu: u32,
    /// `DEFAULT_RUNNER_MEMORY` (8 GB)
    pub memory_gb: u32,
    /// `DEFAULT_RUNNER_DISK` (50 GB)
    pub disk_gb: u32,
    /// `DEFAULT_RUNNER_API_VERSION` (0)
    pub api_version: String,
}

impl DefaultRunnerConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        Self {
            domain: r.string("DEFAULT_RUNNER_DOMAIN", "runner:3003"),
            api_url: r.url("DEFAULT_RUNNER_API_URL", "http://runner:3003"),
            proxy_url: r.url("DEFAULT_RUNNER_PROXY_URL", "http://runner:3003"),
            api_key: r.secret("DEFAULT_RUNNER_API_KEY", "secret_api_token"),
            cpu: r.count("DEFAULT_RUNNER_CPU", 4),
            memory_gb: r.count("DEFAULT_RUNNER_MEMORY", 8),
            disk_gb: r.count("DEFAULT_RUNNER_DISK", 50),
            api_version: r.string("DEFAULT_RUNNER_API_VERSION", "0"),
        }
    }
}

/// Resource quotas; the same nine settings exist for new organizations (`DEFAULT_ORG_QUOTA_*`) and
/// for the admin organization created on first start (`ADMIN_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    pub total_cpu: u64,
    pub total_memory: u64,
    pub total_disk: u64,
    pub max_cpu_per_sandbox: u64,
    pub max_memory_per_sandbox: u64,
    pub max_disk_per_sandbox: u64,
    pub snapshot_quota: u64,
    pub max_snapshot_size: u64,
    pub volume_quota: u64,
}

impl Quotas {
    /// `DEFAULT_ORG_QUOTA_*` defaults.
    pub const DEFAULT_ORG: Quotas = Quotas {
        total_cpu: 10_000,
        total_memory: 10_000,
        total_disk: 100_000,
        max_cpu_per_sandbox: 100,
        max_memory_per_sandbox: 100,
        max_disk_per_sandbox: 1000,
        snapshot_quota: 1000,
        max_snapshot_size: 1000,
        volume_quota: 10_000,
    };

    /// `ADMIN_*` defaults (0 meaning "unset" as in the seed).
    pub const ADMIN: Quotas = Quotas {
        total_cpu: 0,
        total_memory: 0,
        total_disk: 0,
        max_cpu_per_sandbox: 0,
        max_memory_per_sandbox: 0,
        max_disk_per_sandbox: 0,
        snapshot_quota: 100,
        max_snapshot_size: 100,
        volume_quota: 0,
    };

    pub(crate) fn read(r: &mut Reader, prefix: &str, defaults: &Quotas) -> Self {
        let mut q = |suffix: &str, default: u64| r.count(&format!("{prefix}{suffix}"), default);
        Self {
            total_cpu: q("TOTAL_CPU_QUOTA", defaults.total_cpu),
            total_memory: q("TOTAL_MEMORY_QUOTA", defaults.total_memory),
            total_disk: q("TOTAL_DISK_QUOTA", defaults.total_disk),
            max_cpu_per_sandbox: q("MAX_CPU_PER_SANDBOX", defaults.max_cpu_per_sandbox),
            max_memory_per_sandbox: q("MAX_MEMORY_PER_SANDBOX", defaults.max_memory_per_sandbox),
            max_disk_per_sandbox: q("MAX_DISK_PER_SANDBOX", defaults.max_disk_per_sandbox),
            snapshot_quota: q("SNAPSHOT_QUOTA", defaults.snapshot_quota),
            max_snapshot_size: q("MAX_SNAPSHOT_SIZE", defaults.max_snapshot_size),
            volume_quota: q("VOLUME_QUOTA", defaults.volume_quota),
        }
    }
}

/// The admin account created on first start.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `ADMIN_API_KEY` (empty: generated, printed once and stored hashed)
    pub api_key: Option<Secret>,
    /// `ADMIN_*` quotas
    pub quotas: Quotas,
}

impl AdminConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        Self {
            api_key: r.opt_secret("ADMIN_API_KEY"),
            quotas: Quotas::read(r, "ADMIN_", &Quotas::ADMIN),
        }
    }
}

/// `limit` requests per `ttl` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub ttl: Duration,
    pub limit: u32,
}

/// `RATE_LIMIT_*_TTL` (seconds) and `RATE_LIMIT_*_LIMIT` pairs; a limit is on only when both halves
/// are set, and setting one half alone is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub anonymous: Option<RateLimit>,
    pub authenticated: Option<RateLimit>,
    pub sandbox_create: Option<RateLimit>,
    pub sandbox_lifecycle: Option<RateLimit>,
    pub failed_auth: Option<RateLimit>,
}

impl RateLimits {
    pub(crate) fn read(r: &mut Reader) -> Self {
        Self {
            anonymous: RateLimit::read(r, "ANONYMOUS"),
            authenticated: RateLimit::read(r, "AUTHENTICATED"),
            sandbox_create: RateLimit::read(r, "SANDBOX_CREATE"),
            sandbox_lifecycle: RateLimit::read(r, "SANDBOX_LIFECYCLE"),
            failed_auth: RateLimit::read(r, "FAILED_AUTH"),
        }
    }
}

impl RateLimit {
    fn read(r: &mut Reader, kind: &str) -> Option<Self> {
        let ttl_var = format!("RATE_LIMIT_{kind}_TTL");
        let limit_var = format!("RATE_LIMIT_{kind}_LIMIT");
        let ttl = r.opt_int::<u64>(&ttl_var, 1, u64::MAX);
        let limit = r.opt_int::<u32>(&limit_var, 1, u32::MAX);
        match (ttl, limit) {
            (Some(ttl), Some(limit)) => Some(Self {
                ttl: Duration::from_secs(ttl),
                limit,
            }),
            (Some(_), None) if !r.is_set(&limit_var) => {
                r.reject(
                    &limit_var,
                    "",
                    format!("a request count when {ttl_var} is set"),
                );
                None
            }
            (None, Some(_)) if !r.is_set(&ttl_var) => {
                r.reject(
                    &ttl_var,
                    "",
                    format!("a number of seconds when {limit_var} is set"),
                );
                None
            }
            _ => None,
        }
    }
}

/// The region runners join unless told otherwise.
#[derive(Debug, Clone)]
pub struct RegionConfig {
    /// `DEFAULT_REGION_ID` (us)
    pub id: String,
    /// `DEFAULT_REGION_NAME` (us)
    pub name: String,
    /// `DEFAULT_REGION_ENFORCE_QUOTAS` (false)
    pub enforce_quotas: bool,
}

impl RegionConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        Self {
            id: r.string("DEFAULT_REGION_ID", "us"),
            name: r.string("DEFAULT_REGION_NAME", "us"),
            enforce_quotas: r.flag("DEFAULT_REGION_ENFORCE_QUOTAS", false),
        }
    }
}

/// ClickHouse for sandbox telemetry queries; `Some` when `CLICKHOUSE_HOST` is set.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    /// `CLICKHOUSE_HOST`
    pub host: String,
    /// `CLICKHOUSE_DATABASE` (otel)
    pub database: String,
    /// `CLICKHOUSE_PORT` (8123)
    pub port: u16,
    /// `CLICKHOUSE_USERNAME` (empty)
    pub username: Option<String>,
    /// `CLICKHOUSE_PASSWORD` (empty)
    pub password: Option<Secret>,
    /// `CLICKHOUSE_PROTOCOL` (https)
    pub protocol: Protocol,
}

impl ClickHouseConfig {
    pub(crate) fn read(r: &mut Reader) -> Option<Self> {
        let database = r.string("CLICKHOUSE_DATABASE", "otel");
        let port = r.port("CLICKHOUSE_PORT", 8123);
        let protocol = Protocol::read(r, "CLICKHOUSE_PROTOCOL", Protocol::Https);
        Some(Self {
            host: r.opt_string("CLICKHOUSE_HOST")?,
            database,
            port,
            username: r.opt_string("CLICKHOUSE_USERNAME"),
            password: r.opt_secret("CLICKHOUSE_PASSWORD"),
            protocol,
        })
    }
}

/// Product analytics; `Some` only when `POSTHOG_API_KEY` is set. The seed's default key belongs to
/// upstream's own PostHog project, so it is never used implicitly.
#[derive(Debug, Clone)]
pub struct PosthogConfig {
    /// `POSTHOG_API_KEY`
    pub api_key: Secret,
    /// `POSTHOG_HOST` (https://d18ag4dodbta3l.cloudfront.net)
    pub host: String,
    /// `POSTHOG_ENVIRONMENT` (local)
    pub environment: String,
}

impl PosthogConfig {
    pub(crate) fn read(r: &mut Reader) -> Option<Self> {
        let host = r.url("POSTHOG_HOST", "https://d18ag4dodbta3l.cloudfront.net");
        let environment = r.string("POSTHOG_ENVIRONMENT", "local");
        Some(Self {
            api_key: r.opt_secret("POSTHOG_API_KEY")?,
            host,
            environment,
        })
    }
}

/// Image builds (runner limits) and the API's build/snapshot housekeeping.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// `BUILD_TIMEOUT_MIN` (120, at least 1)
    pub timeout: Duration,
    /// `BUILD_CPU_CORES` (4, at least 1)
    pub cpu_cores: u32,
    /// `BUILD_MEMORY_GB` (8, at least 1)
    pub memory_gb: u32,
    /// `BUILD_INFO_MAX_SANDBOXES_PER_RUNNER` (30; 0 disables the cap)
    pub max_sandboxes_per_runner: u32,
    /// `SANDBOX_SNAPSHOTTING_TIMEOUT_MIN` (60)
    pub sandbox_snapshotting_timeout: Duration,
    /// `FAILED_SNAPSHOT_RUNNER_RETENTION_HOURS` (3)
    pub failed_snapshot_runner_retention: Duration,
    /// `BUILDINFO_SNAPSHOT_RUNNER_STALENESS_DAYS` (7)
    pub snapshot_runner_staleness: Duration,
}

impl BuildConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        Self {
            timeout: r.whole("BUILD_TIMEOUT_MIN", 120, 1, Unit::Minutes),
            cpu_cores: r.int("BUILD_CPU_CORES", 4, 1, u32::MAX),
            memory_gb: r.int("BUILD_MEMORY_GB", 8, 1, u32::MAX),
            max_sandboxes_per_runner: r.count("BUILD_INFO_MAX_SANDBOXES_PER_RUNNER", 30),
            sandbox_snapshotting_timeout: r.whole(
                "SANDBOX_SNAPSHOTTING_TIMEOUT_MIN",
                60,
                1,
                Unit::Minutes,
            ),
            failed_snapshot_runner_retention: r.whole(
                "FAILED_SNAPSHOT_RUNNER_RETENTION_HOURS",
                3,
                0,
                Unit::Hours,
            ),
            snapshot_runner_staleness: r.whole(
                "BUILDINFO_SNAPSHOT_RUNNER_STALENESS_DAYS",
                7,
                0,
                Unit::Days,
            ),
        }
    }
}

/// How the API ranks runners when placing sandboxes.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// `RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD` (10)
    pub declarative_build_score_threshold: u32,
    /// `RUNNER_AVAILABILITY_SCORE_THRESHOLD` (10)
    pub availability_score_threshold: u32,
    /// `RUNNER_START_SCORE_THRESHOLD` (3)
    pub start_score_threshold: u32,
    /// `RUNNER_HEALTH_TIMEOUT_SECONDS` (3)
    pub runner_health_timeout: Duration,
}

impl SchedulerConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        Self {
            declarative_build_score_threshold: r
                .count("RUNNER_DECLARATIVE_BUILD_SCORE_THRESHOLD", 10),
            availability_score_threshold: r.count("RUNNER_AVAILABILITY_SCORE_THRESHOLD", 10),
            start_score_threshold: r.count("RUNNER_START_SCORE_THRESHOLD", 3),
            runner_health_timeout: r.whole("RUNNER_HEALTH_TIMEOUT_SECONDS", 3, 1, Unit::Seconds),
        }
    }
}

/// Settings shared by several services, and the process environment conventions.
#[derive(Debug, Clone)]
pub struct MiscConfig {
    /// `ENVIRONMENT`: the API's table says `dev`, the runner's `development`; one field, `dev`.
    pub environment: String,
    /// `DAYTONA_API_URL` (http://api:3000/api): how the runner and the proxy reach the API.
    pub api_url: String,
    /// `HTTP_PROXY` (or `http_proxy`); secret because it may embed credentials.
    pub http_proxy: Option<Secret>,
    /// `HTTPS_PROXY` (or `https_proxy`)
    pub https_proxy: Option<Secret>,
    /// `NO_PROXY` (or `no_proxy`): comma-separated hosts that bypass the proxy.
    pub no_proxy: Option<String>,
    /// `NODE_EXTRA_CA_CERTS`: a PEM bundle of extra trusted CAs for outgoing TLS.
    pub extra_ca_certs: Option<PathBuf>,
}

impl MiscConfig {
    pub(crate) fn read(r: &mut Reader) -> Self {
        let either = |upper: &str, lower: &str| r.raw(upper).or_else(|| r.raw(lower));
        Self {
            environment: r.string("ENVIRONMENT", "dev"),
            http_proxy: either("HTTP_PROXY", "http_proxy").map(Secret::new),
            https_proxy: either("HTTPS_PROXY", "https_proxy").map(Secret::new),
            no_proxy: either("NO_PROXY", "no_proxy"),
            api_url: r.url("DAYTONA_API_URL", "http://api:3000/api"),
            extra_ca_certs: r.opt_string("NODE_EXTRA_CA_CERTS").map(PathBuf::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir(vars: &[(&str, &str)], root: bool) -> Option<PathBuf> {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        default_data_dir(&Reader::new(&lookup), root)
    }

    #[test]
    fn insecure_registries_are_host_port_lists() {
        assert_eq!(
            parse_registry_hosts(" Registry:6000, 127.0.0.1:5000,,mirror.local ,[::1]:5000"),
            Some(vec![
                "registry:6000".to_owned(),
                "127.0.0.1:5000".to_owned(),
                "mirror.local".to_owned(),
                "[::1]:5000".to_owned()
            ])
        );
        assert_eq!(parse_registry_hosts(""), Some(vec![]));
        for bad in [
            "http://registry:6000",
            "registry/path",
            "host:0",
            "host:http",
            ":5000",
        ] {
            assert_eq!(parse_registry_hosts(bad), None, "{bad}");
        }
    }

    #[test]
    fn data_dir_defaults_by_user() {
        let home = [("HOME", "/home/u")];
        assert_eq!(data_dir(&home, true), Some("/var/lib/daytona".into()));
        assert_eq!(
            data_dir(&home, false),
            Some("/home/u/.local/share/daytona".into())
        );
        let xdg = [("HOME", "/home/u"), ("XDG_DATA_HOME", "/data")];
        assert_eq!(data_dir(&xdg, false), Some("/data/daytona".into()));
        let relative_xdg = [("HOME", "/home/u"), ("XDG_DATA_HOME", "data")];
        assert_eq!(
            data_dir(&relative_xdg, false),
            Some("/home/u/.local/share/daytona".into())
        );
        assert_eq!(data_dir(&[], false), None);
    }

    #[test]
    fn missing_home_is_reported_against_the_data_dir() {
        let lookup = |_: &str| None;
        let mut r = Reader::new(&lookup);
        ServerConfig::read(&mut r, false);
        assert_eq!(r.problems.len(), 1);
        assert_eq!(r.problems[0].var, "DAYTONA_DATA_DIR");
    }
}
