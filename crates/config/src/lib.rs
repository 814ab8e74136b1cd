//! Typed configuration, read from the environment variables of upstream Daytona's deployment guide
//! (API, runner, SSH gateway and proxy tables) with the same names and defaults, so an existing
//! compose file keeps working. [`Config::from_env`] reads everything at once and reports every bad
//! variable, each as `invalid NAME="value": expected <form>`.
//!
//! Value rules: a blank value counts as unset. Booleans accept `true/false`, `1/0`, `yes/no` in any
//! case. Durations use Go's syntax (`30s`, `1m`, `1h30m`, `500ms`) or a bare number of seconds, and
//! documented minimums are enforced. `*_SEC`, `*_MIN`, `*_HOURS`, `*_DAYS` variables are whole
//! numbers of that unit. URLs whose default has a scheme must have one too.
//!
//! Variables that several services read (`PROXY_API_KEY`, `PROXY_PROTOCOL`, `OIDC_CLIENT_ID`,
//! `OIDC_AUDIENCE`, `REDIS_HOST`, `REDIS_PORT`, `DAYTONA_API_URL`, `ENVIRONMENT`) are one field each.
//! `ENVIRONMENT` defaults to the API's `dev` (the runner's table says `development`).
//!
//! ## Our additions
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | `DAYTONA_DATA_DIR` | `/var/lib/daytona` as root, else `$XDG_DATA_HOME/daytona` or `$HOME/.local/share/daytona` | SQLite database, object store, images, sandboxes |
//! | `DAYTONA_BIND_ADDRESS` | `0.0.0.0` | IP address the API, proxy, runner and SSH gateway listeners bind |
//! | `DAYTONA_DAEMON_PATH` | (none: next to the server binary) | Path of the static daemon binary mounted into sandboxes |
//! | `DAYTONA_BRIDGE_NAME` | `daytona0` | Linux bridge the sandboxes attach to |
//! | `DAYTONA_SANDBOX_DNS` | the host's first non-loopback resolver | Where sandbox DNS queries (to their gateway) are forwarded: an IPv4 address, or `none` to refuse them |
//! | `DAYTONA_SANDBOX_USERNS` | `false` | Run new sandboxes in a user namespace: root inside is an unprivileged range of 65536 host ids per sandbox (from 2^30), image layers are idmapped |
//! | `DAYTONA_EGRESS_PROXY_PORT` | `3128` | Port of the egress proxy (on the bridge's gateway address) that puts organization secrets into sandboxes' HTTP(S) requests |
//! | `DAYTONA_EGRESS_EXTRA_CA_FILE` | (none) | PEM certificates the egress proxy trusts, besides the host's and the bundled web roots, when it verifies the hosts it sends secrets to |
//! | `DAYTONA_SANDBOX_SUBNET` | `100.100.0.0/16` | IPv4 network for sandboxes; must lie inside `100.64.0.0/10`, at most /30 |
//! | `DAYTONA_INSECURE_REGISTRIES` | (none) | Comma-separated `host[:port]` of image registries pulled over plain HTTP; loopback registries always are |
//! | `DAYTONA_ROLES` | `api,proxy,runner,ssh-gateway` | Comma-separated services this process runs |
//! | `DAYTONA_PUSH_ACCESS_TTL` | `3600` | Seconds the temporary credentials of `GET /api/object-storage/push-access` for the embedded S3 endpoint stay valid |
//! | `DAYTONA_METRICS_INTERVAL` | `15s` | How often the usage of every running sandbox is sampled for `GET /api/sandbox/{id}/telemetry/metrics` |
//! | `DAYTONA_METRICS_RETENTION` | `6h` | How long those samples are kept |
//! | `DAYTONA_REGISTRY_TOKEN_REALM` | (none: registries use their own auth) | Turns the API into the Docker token-auth server of the transient/internal registry; the URL clients fetch tokens from (`<API URL>/docker-registry/token`) |
//! | `DAYTONA_REGISTRY_TOKEN_SERVICE` | `daytona-registry` | The registry's `service` (the tokens' audience) |
//! | `DAYTONA_REGISTRY_TOKEN_ISSUER` | `daytona` | The tokens' issuer |
//! | `DAYTONA_REGISTRY_TOKEN_KEY`, `DAYTONA_REGISTRY_TOKEN_CERT` | `<data dir>/registry-token/key.pem`, `cert.pem` | Signing key and its certificate (the registry's `rootcertbundle`); made when both are missing. Set both for API replicas |
//! | `DAYTONA_REGISTRY_TOKEN_TTL` | `300` | Seconds an issued registry token is valid |
//! | `DAYTONA_LOG` | `info` | `tracing` filter directives, e.g. `info,daytona_runner=debug` |
//!
//! ## Deliberate differences from the seed's defaults
//!
//! | Variable(s) | Here | Why |
//! |---|---|---|
//! | `DB_HOST`, `REDIS_HOST`, `S3_ENDPOINT`, `SMTP_HOST`, `*_REGISTRY_URL`, `OIDC_ISSUER_BASE_URL`/`OIDC_DOMAIN`, `CLICKHOUSE_HOST` | the service is used only when this variable is set; its other variables keep the seed's defaults | the seed's defaults are compose host names; unset means the embedded backend (SQLite, in-process, local store, no mail, API keys only) |
//! | `OTEL_COLLECTOR_URL` | traces are exported only when set (and `OTEL_ENABLED` is not false) | the default `http://jaeger:4318/v1/traces` names a compose-only host |
//! | `POSTHOG_API_KEY` | analytics only when set | the seed's default key is upstream's own project |
//! | `RESOURCE_LIMITS_DISABLED` | `false` | the seed's `true` works around Docker-in-Docker cgroups |
//! | `LOG_FILE_PATH` | none (tracing only) | the seed's path exists only inside upstream's runner container |
//! | `PROXY_TEMPLATE_URL` | `{PROXY_PROTOCOL}://{{PORT}}-{{sandboxId}}.{PROXY_DOMAIN}` | equals the seed's value with default protocol and domain, and follows them when they change |
//! | `OIDC_DOMAIN` / `OIDC_ISSUER_BASE_URL`, `OIDC_PUBLIC_DOMAIN` / `PUBLIC_OIDC_DOMAIN`, `API_KEY` / `SSH_GATEWAY_API_KEY`, `API_URL` / `DAYTONA_API_URL`, `DAYTONA_RUNNER_TOKEN` / `DEFAULT_RUNNER_API_KEY`, `AWS_*` / `S3_*` | each defaults to its counterpart | the proxy/gateway/runner and the API must agree; in one process it is one setting |
//! | `S3_ACCOUNT_ID`, `S3_ROLE_NAME` | none | the seed's table shows `/` |
//! | `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` | lowercase spellings honoured too | common convention |
//! | `VOLUME_CLEANUP_INTERVAL` etc. | bare numbers are seconds | the seed documents it as a number of seconds with default `30s` |

mod error;
mod net;
mod reader;
mod secret;
mod sections;

pub use error::{ConfigError, InvalidVar};
pub use net::{Ipv4Cidr, Role, Roles, SHARED_ADDRESS_SPACE};
pub use secret::{Secret, write_private_file};
pub use sections::{
    AdminConfig, ApiConfig, BuildConfig, BuildEngine, ClickHouseConfig, DefaultRunnerConfig,
    MiscConfig, ObjectStorage, OidcConfig, OidcManagementApi, OtelConfig, OtlpExport,
    PostgresConfig, PosthogConfig, Protocol, ProxyConfig, Quotas, RateLimit, RateLimits,
    RedisConfig, RegionConfig, RegistriesConfig, RegistryConfig, RegistryTokenAuth, RunnerConfig,
    S3Config, SandboxDns, SchedulerConfig, ServerConfig, SmtpConfig, SshGatewayConfig,
};

use reader::Reader;

/// Everything the server's roles read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub api: ApiConfig,
    pub db: Option<PostgresConfig>,
    pub redis: Option<RedisConfig>,
    pub oidc: Option<OidcConfig>,
    pub s3: Option<S3Config>,
    pub smtp: Option<SmtpConfig>,
    pub registries: RegistriesConfig,
    pub otel: OtelConfig,
    pub proxy: ProxyConfig,
    pub ssh_gateway: SshGatewayConfig,
    pub runner: RunnerConfig,
    pub default_runner: DefaultRunnerConfig,
    pub org_quotas: Quotas,
    pub admin: AdminConfig,
    pub rate_limits: RateLimits,
    pub region: RegionConfig,
    pub clickhouse: Option<ClickHouseConfig>,
    pub posthog: Option<PosthogConfig>,
    pub build: BuildConfig,
    pub scheduler: SchedulerConfig,
    pub misc: MiscConfig,
}

impl Config {
    /// Reads the process environment. Values that are not valid UTF-8 are read lossily and then
    /// validated like any other value.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads variables through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let running_as_root = unsafe { libc::geteuid() } == 0;
        Self::read(&lookup, running_as_root)
    }

    fn read(
        lookup: &dyn Fn(&str) -> Option<String>,
        running_as_root: bool,
    ) -> Result<Config, ConfigError> {
        let mut r = Reader::new(lookup);
        let default_runner = DefaultRunnerConfig::read(&mut r);
        let config = Config {
            server: ServerConfig::read(&mut r, running_as_root),
            api: ApiConfig::read(&mut r),
            db: PostgresConfig::read(&mut r),
            redis: RedisConfig::read(&mut r),
            oidc: OidcConfig::read(&mut r),
            s3: S3Config::read(&mut r),
            smtp: SmtpConfig::read(&mut r),
            registries: RegistriesConfig::read(&mut r),
            otel: OtelConfig::read(&mut r),
            proxy: ProxyConfig::read(&mut r),
            ssh_gateway: SshGatewayConfig::read(&mut r),
            runner: RunnerConfig::read(&mut r, &default_runner.api_key),
            default_runner,
            org_quotas: Quotas::read(&mut r, "DEFAULT_ORG_QUOTA_", &Quotas::DEFAULT_ORG),
            admin: AdminConfig::read(&mut r),
            rate_limits: RateLimits::read(&mut r),
            region: RegionConfig::read(&mut r),
            clickhouse: ClickHouseConfig::read(&mut r),
            posthog: PosthogConfig::read(&mut r),
            build: BuildConfig::read(&mut r),
            scheduler: SchedulerConfig::read(&mut r),
            misc: MiscConfig::read(&mut r),
        };
        if r.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                problems: r.problems,
            })
        }
    }

    /// The toolbox URL handed to SDKs (`toolboxProxyUrl`): `PROXY_TOOLBOX_BASE_URL` + `/toolbox`.
    pub fn toolbox_proxy_url(&self) -> String {
        self.proxy.toolbox_proxy_url()
    }

    /// Every secret in use, by variable name. Secrets of services that are not configured are left
    /// out, since their placeholder values protect nothing.
    fn secrets_in_use(&self) -> Vec<(&'static str, &Secret)> {
        let mut secrets = vec![
            ("ENCRYPTION_KEY", &self.api.encryption_key),
            ("ENCRYPTION_SALT", &self.api.encryption_salt),
            ("HEALTH_CHECK_API_KEY", &self.api.health_check_api_key),
            ("PROXY_API_KEY", &self.proxy.api_key),
            ("DEFAULT_RUNNER_API_KEY", &self.default_runner.api_key),
            ("DAYTONA_RUNNER_TOKEN", &self.runner.token),
            ("SSH_GATEWAY_API_KEY", &self.ssh_gateway.api_key),
            ("API_KEY", &self.ssh_gateway.gateway_api_key),
        ];
        let optional = [
            ("ADMIN_API_KEY", self.admin.api_key.as_ref()),
            ("DB_PASSWORD", self.db.as_ref().map(|db| &db.password)),
            (
                "OIDC_CLIENT_SECRET",
                self.oidc.as_ref().and_then(|o| o.client_secret.as_ref()),
            ),
            (
                "OIDC_MANAGEMENT_API_CLIENT_SECRET",
                self.oidc
                    .as_ref()
                    .and_then(|o| o.management_api.as_ref())
                    .map(|m| &m.client_secret),
            ),
            (
                "S3_ACCESS_KEY",
                self.s3.as_ref().map(|s| &s.storage.access_key),
            ),
            (
                "S3_SECRET_KEY",
                self.s3.as_ref().map(|s| &s.storage.secret_key),
            ),
            (
                "AWS_ACCESS_KEY_ID",
                self.runner.storage.as_ref().map(|s| &s.access_key),
            ),
            (
                "AWS_SECRET_ACCESS_KEY",
                self.runner.storage.as_ref().map(|s| &s.secret_key),
            ),
            (
                "SMTP_PASSWORD",
                self.smtp.as_ref().and_then(|s| s.password.as_ref()),
            ),
            (
                "TRANSIENT_REGISTRY_PASSWORD",
                self.registries.transient.as_ref().map(|r| &r.password),
            ),
            (
                "INTERNAL_REGISTRY_PASSWORD",
                self.registries.internal.as_ref().map(|r| &r.password),
            ),
            (
                "OTEL_COLLECTOR_API_KEY",
                self.otel.api_traces.as_ref().map(|o| &o.api_key),
            ),
            (
                "CLICKHOUSE_PASSWORD",
                self.clickhouse.as_ref().and_then(|c| c.password.as_ref()),
            ),
        ];
        secrets.extend(
            optional
                .into_iter()
                .filter_map(|(name, secret)| Some((name, secret?))),
        );
        secrets
    }

    /// One message per secret in use that still holds a well-known placeholder. The caller prints
    /// them when the server listens beyond loopback (see [`ServerConfig::binds_loopback_only`]).
    pub fn placeholder_secret_warnings(&self) -> Vec<String> {
        self.secrets_in_use()
            .into_iter()
            .filter(|(_, secret)| secret.is_placeholder())
            .map(|(name, secret)| {
                format!(
                    "{name} still has the published placeholder value {:?}; set a unique value \
                     (e.g. `openssl rand -hex 16`) before exposing this server to a network",
                    secret.expose()
                )
            })
            .collect()
    }
}
