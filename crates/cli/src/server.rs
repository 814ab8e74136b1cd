//! `daytona server`: API, proxy and an in-process runner with embedded defaults.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use daytona_api::object_storage::PushAccess;
use daytona_api::rate_limit::{InProcessLimiter, RateLimitPolicy};
use daytona_api::sandbox::access::{AccessService, AccessSettings};
use daytona_api::secret::SecretService;
use daytona_api::snapshot::{BuildSettings, Builds, SnapshotService};
use daytona_api::{AppState, SandboxService, SandboxSettings, Store};
use daytona_config::{Config, Roles, SandboxDns};
use daytona_egress::{Egress, EgressRules};
use daytona_runner::Runner;
use daytona_runner::image::{ImageStore, RegistryCredentials, RegistrySettings};
use daytona_runner::volume::VolumeStore;
use daytona_runtime::native::{NativeConfig, NativeRuntime};
use daytona_storage::{CredentialAuthority, ObjectStorage, S3Settings};
use tokio::net::TcpListener;

pub fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("daytona server: configuration error:\n{e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config.server.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("daytona server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("daytona server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The static daemon binary: `DAYTONA_DAEMON_PATH`, else next to this executable, else where
/// `cargo build --target x86_64-unknown-linux-gnu` puts it beside this build.
fn find_daemon(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = configured {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("DAYTONA_DAEMON_PATH={} does not exist", path.display());
    }
    let exe = std::env::current_exe().context("cannot locate the server executable")?;
    let dir = exe.parent().context("server executable has no directory")?;
    let profile = dir.file_name().map(PathBuf::from).unwrap_or_default();
    let candidates = [
        dir.join("daytona-daemon"),
        dir.join("../x86_64-unknown-linux-gnu")
            .join(&profile)
            .join("daytona-daemon"),
    ];
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "the sandbox daemon binary was not found (looked at {}); build it with \
             `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu -p daytona-daemon` \
             or set DAYTONA_DAEMON_PATH",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Split deployments need the proxy, SSH gateway and runners to reach the API over the
    // network; until they can, a subset would start a server that silently lacks services.
    let roles = &config.server.roles;
    if roles.iter().count() != Roles::all().iter().count() {
        let chosen: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        anyhow::bail!(
            "DAYTONA_ROLES={}: running a subset of roles is not supported yet; this version runs \
             api, proxy, runner and ssh-gateway together in one process (unset DAYTONA_ROLES)",
            chosen.join(",")
        );
    }
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    if !config.server.binds_loopback_only() {
        for warning in config.placeholder_secret_warnings() {
            tracing::warn!("{warning}");
        }
    }

    let store = Store::connect(&config)
        .await
        .context("cannot open the database")?;
    let admin_key = config
        .admin
        .api_key
        .as_ref()
        .map(|s| s.expose().to_string());
    if let Some(generated) =
        daytona_api::auth::ensure_admin(&store, admin_key.as_deref(), &config.admin.quotas).await?
    {
        // Printed once: only its hash is stored.
        println!("Admin API key (shown only once, store it safely): {generated}");
    }
    daytona_api::organization::ensure_default_region(&store, &config.region).await?;
    let (admin_org, _) = store
        .admin_organization()
        .await?
        .context("admin organization missing after setup")?;

    let daemon_bin = find_daemon(config.runner.daemon_path.as_deref())?;
    let base = NativeConfig::new(data_dir.join("runtime"), daemon_bin);
    let runtime = NativeRuntime::new(NativeConfig {
        bridge_name: config.runner.bridge_name.clone(),
        subnet: config.runner.sandbox_subnet,
        daemon_start_timeout: config.runner.daemon_start_timeout,
        inter_sandbox_network: config.runner.inter_sandbox_network_enabled,
        dns_upstream: match config.runner.sandbox_dns {
            SandboxDns::HostResolver => base.dns_upstream,
            SandboxDns::None => None,
            SandboxDns::Server(ip) => Some(ip),
        },
        user_namespaces: config
            .runner
            .sandbox_userns
            .then(daytona_runtime::native::IdRanges::default),
        ..base.clone()
    })
    .context("cannot initialise the sandbox runtime")?;
    let runtime = Arc::new(runtime);
    let images = ImageStore::with_registries(data_dir.join("images"), registry_settings(&config));
    let storage = object_storage(&config, &data_dir)?;
    tracing::info!(?storage, "object storage");
    let push_access = Arc::new(push_access(&config, storage.clone()));
    let volumes = VolumeStore::open(data_dir.join("volumes"))
        .with_context(|| format!("cannot open {}", data_dir.join("volumes").display()))?;
    let egress_dir = data_dir.join("egress");
    let egress = Arc::new(
        Egress::open(
            &egress_dir,
            config.runner.egress_proxy_port,
            EgressRules::new(
                config.runner.sandbox_subnet,
                config.runner.inter_sandbox_network_enabled,
            ),
            config.runner.egress_extra_ca_file.as_deref(),
        )
        .with_context(|| format!("cannot set up the egress proxy in {}", egress_dir.display()))?,
    );
    let runner = Arc::new(
        Runner::new("local", images, runtime.clone())
            .with_storage(storage)
            .with_volumes(volumes)
            .with_egress(egress.clone()),
    );

    let settings = SandboxSettings {
        toolbox_proxy_url: config.toolbox_proxy_url(),
        default_snapshot: config.api.default_snapshot.clone(),
        default_region: config.region.id.clone(),
        max_auto_archive_minutes: config.api.max_auto_archive_interval.into(),
    };
    let builds = Builds::new(BuildSettings {
        log_dir: data_dir.join("build-logs"),
        timeout: config.build.timeout,
        cpu: config.build.cpu_cores,
        memory_gib: config.build.memory_gb,
        disk_gib: BUILD_DISK_GIB,
    });
    let snapshots =
        Arc::new(SnapshotService::new(store.clone(), runner.clone()).with_builds(builds));
    // The default snapshot is pulled in the background so the first sandbox does not wait for it.
    snapshots
        .ensure_default(&admin_org, &config.api.default_snapshot)
        .await?;
    let sandboxes = Arc::new(SandboxService::new(
        store.clone(),
        runner,
        snapshots.clone(),
        settings,
    ));
    snapshots
        .reconcile()
        .await
        .context("cannot reconcile snapshot states")?;
    sandboxes
        .reconcile()
        .await
        .context("cannot reconcile sandbox states")?;
    // Images and layers left unused while the server was down (and interrupted pulls).
    let collector = snapshots.clone();
    tokio::spawn(async move { collector.collect_garbage().await });
    daytona_api::sandbox::lifecycle::spawn(sandboxes.clone(), std::time::Duration::from_secs(30));
    daytona_api::sandbox::telemetry::spawn(
        sandboxes.clone(),
        config.server.metrics_interval,
        config.server.metrics_retention,
    );
    daytona_api::warm_pool::worker::spawn(sandboxes.clone(), std::time::Duration::from_secs(1));
    let rate_limits = Arc::new(RateLimitPolicy::new(
        config.rate_limits.clone(),
        Box::new(InProcessLimiter::default()),
    ));
    let access = Arc::new(AccessService::new(AccessSettings {
        preview_url_template: config.proxy.template_url.clone(),
        ssh_command_template: config.ssh_gateway.command.clone(),
    }));
    let secrets = Arc::new(SecretService::new(
        store.clone(),
        config.api.encryption_key.expose(),
        config.api.encryption_salt.expose(),
    ));
    let state = AppState {
        secrets: secrets.clone(),
        store,
        sandboxes,
        snapshots,
        rate_limits,
        access,
        organizations: Arc::new(daytona_api::organization::OrganizationSettings {
            default_quotas: (&config.org_quotas).into(),
            default_region: config.region.id.clone(),
            mailer: config
                .smtp
                .as_ref()
                .map(|smtp| daytona_api::mail::Mailer::new(smtp, &config.api.dashboard_url))
                .transpose()
                .context("cannot set up outgoing mail")?
                .map(Arc::new),
        }),
        push_access,
        oidc: oidc_provider(&config)?,
        configuration: Arc::new(daytona_api::configuration::PublicConfiguration::new(
            &config,
        )),
    };
    let proxy_settings = proxy_settings(&config, state.oidc.clone())?;

    let bind = config.server.bind_address;
    let api_addr = SocketAddr::new(bind, config.api.port);
    let proxy_addr = SocketAddr::new(bind, config.proxy.port);
    let api_listener = TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("cannot listen on {api_addr} (PORT)"))?;
    let proxy_listener = TcpListener::bind(proxy_addr)
        .await
        .with_context(|| format!("cannot listen on {proxy_addr} (PROXY_PORT)"))?;
    let ssh_addr = SocketAddr::new(bind, config.ssh_gateway.port);
    let ssh_listener = TcpListener::bind(ssh_addr)
        .await
        .with_context(|| format!("cannot listen on {ssh_addr} (SSH_GATEWAY_PORT)"))?;
    let host_key = daytona_ssh_gateway::host_key(
        config.ssh_gateway.host_key.as_ref().map(|k| k.expose()),
        &data_dir,
    )?;
    tracing::info!(%api_addr, %proxy_addr, %ssh_addr, data_dir = %data_dir.display(), "daytona server ready");

    let shutdown = shutdown_signal();
    let (tx, rx) = tokio::sync::watch::channel(());
    // Client addresses key the anonymous and failed-auth rate limits.
    let api = axum::serve(
        api_listener,
        daytona_api::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(wait(rx.clone()));
    let proxy = axum::serve(
        proxy_listener,
        daytona_proxy::router(Arc::new(state.clone()), proxy_settings),
    )
    .with_graceful_shutdown(wait(rx.clone()));
    let ssh = daytona_ssh_gateway::serve(
        ssh_listener,
        Arc::new(SshAccess(state)),
        host_key,
        wait(rx.clone()),
    );
    let egress_proxy = daytona_egress::serve(egress, secrets, wait(rx));
    let servers = tokio::spawn(async move {
        tokio::try_join!(api.into_future(), proxy.into_future(), ssh, egress_proxy)
    });
    shutdown.await;
    tracing::info!("shutting down; running sandboxes keep running");
    drop(tx);
    servers
        .await
        .context("server task failed")?
        .context("server failed")?;
    release_network(&runtime).await;
    Ok(())
}

/// A runner that stops with no sandboxes left removes its bridge and firewall rules, so stopped
/// servers leave nothing in the host's network configuration; with sandboxes left, both stay
/// for them (and for the next start to adopt).
async fn release_network(runtime: &NativeRuntime) {
    use daytona_runtime::Runtime;
    match runtime.sandbox_specs().await {
        Ok(specs) if specs.is_empty() => match runtime.remove_network() {
            Ok(()) => {
                tracing::info!("no sandboxes left: removed the bridge and its firewall rules")
            }
            Err(e) => tracing::warn!(error = %e, "could not remove the bridge and firewall rules"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not list sandboxes; the bridge stays"),
    }
}

/// S3 when `S3_ENDPOINT` is set, else `<DAYTONA_DATA_DIR>/objects`.
fn object_storage(config: &Config, data_dir: &Path) -> anyhow::Result<ObjectStorage> {
    let storage = match &config.s3 {
        Some(s3) => ObjectStorage::s3(&S3Settings {
            endpoint: s3.storage.endpoint.clone(),
            region: s3.storage.region.clone(),
            bucket: s3.storage.bucket.clone(),
            access_key: s3.storage.access_key.expose().to_owned(),
            secret_key: s3.storage.secret_key.expose().to_owned(),
        }),
        None => ObjectStorage::local(&data_dir.join("objects")),
    };
    storage.context("cannot set up object storage")
}

/// Push access for build contexts: the configured S3, else the embedded endpoint over `storage`
/// (credentials signed with a key derived from `ENCRYPTION_KEY`).
fn push_access(config: &Config, storage: ObjectStorage) -> PushAccess {
    match &config.s3 {
        Some(s3) => PushAccess::External {
            endpoint: s3.storage.endpoint.clone(),
            bucket: s3.storage.bucket.clone(),
            region: s3.storage.region.clone(),
            access_key: s3.storage.access_key.expose().to_owned(),
            secret_key: s3.storage.secret_key.expose().to_owned(),
        },
        None => PushAccess::Embedded {
            storage,
            authority: CredentialAuthority::new(config.api.encryption_key.expose().as_bytes()),
            bucket: EMBEDDED_BUCKET.to_owned(),
            region: EMBEDDED_REGION.to_owned(),
            ttl: config.server.push_access_ttl,
        },
    }
}

/// Disk of each build step's sandbox (a sparse file: only what the step writes takes space).
const BUILD_DISK_GIB: u32 = 20;

/// Bucket and region of the embedded S3 endpoint (the seed's `S3_DEFAULT_BUCKET`/`S3_REGION`
/// defaults; those variables configure an external S3).
const EMBEDDED_BUCKET: &str = "daytona";
const EMBEDDED_REGION: &str = "us-east-1";

/// The SSH gateway's view of the API state: tokens and sandbox addresses.
struct SshAccess(AppState);

#[async_trait::async_trait]
impl daytona_ssh_gateway::SshDirectory for SshAccess {
    async fn resolve(
        &self,
        token: &str,
    ) -> Result<daytona_ssh_gateway::SshTarget, daytona_ssh_gateway::SshAccessError> {
        use daytona_proxy::{ProxyError, SandboxDirectory};
        use daytona_ssh_gateway::SshAccessError;
        let state = &self.0;
        let sandbox_id = state
            .access
            .ssh_sandbox(&state.store, token)
            .await
            .map_err(|e| SshAccessError::Unavailable(e.to_string()))?
            .ok_or(SshAccessError::InvalidToken)?;
        let ip = state.sandbox_ip(&sandbox_id).await.map_err(|e| match e {
            ProxyError::NotRunning(_) => SshAccessError::NotRunning(sandbox_id.clone()),
            other => SshAccessError::Unavailable(other.to_string()),
        })?;
        Ok(daytona_ssh_gateway::SshTarget { sandbox_id, ip })
    }

    async fn touch(&self, sandbox_id: &str) {
        use daytona_proxy::SandboxDirectory;
        self.0.touch(sandbox_id).await
    }
}

/// Preview hosts of `PROXY_DOMAIN` and of `PROXY_TEMPLATE_URL` (usually the same shape).
/// Plain-HTTP registries (`DAYTONA_INSECURE_REGISTRIES`, plus configured `http://` ones) and
/// the credentials of the `TRANSIENT_REGISTRY_*` / `INTERNAL_REGISTRY_*` registries.
fn registry_settings(config: &Config) -> RegistrySettings {
    let mut settings = RegistrySettings {
        insecure: config.runner.insecure_registries.clone(),
        credentials: Vec::new(),
    };
    let configured = [&config.registries.transient, &config.registries.internal];
    for registry in configured.into_iter().flatten() {
        let (scheme, rest) = registry
            .url
            .split_once("://")
            .unwrap_or(("https", &registry.url));
        let host = rest
            .split('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if host.is_empty() {
            continue;
        }
        if scheme.eq_ignore_ascii_case("http") {
            settings.insecure.push(host.clone());
        }
        settings.credentials.push((
            host,
            RegistryCredentials {
                username: registry.admin.clone(),
                password: registry.password.expose().to_owned(),
            },
        ));
    }
    settings
}

/// The OIDC issuer, when `OIDC_ISSUER_BASE_URL` (or `OIDC_DOMAIN`) is set. In one process the
/// API and the proxy share it (and its key cache).
fn oidc_provider(config: &Config) -> anyhow::Result<Option<Arc<daytona_oidc::Provider>>> {
    let Some(oidc) = &config.oidc else {
        return Ok(None);
    };
    let provider = daytona_oidc::Provider::new(daytona_oidc::ProviderSettings {
        issuer_url: oidc.issuer_base_url.clone(),
        public_url: oidc.public_domain.clone(),
        audiences: audiences(oidc),
    })?;
    tracing::info!(issuer = %oidc.issuer_base_url, "OIDC login enabled");
    Ok(Some(Arc::new(provider)))
}

/// `OIDC_AUDIENCE` (access tokens) and the client id (ID tokens).
fn audiences(oidc: &daytona_config::OidcConfig) -> Vec<String> {
    let mut audiences = vec![oidc.audience.clone()];
    if oidc.client_id != oidc.audience {
        audiences.push(oidc.client_id.clone());
    }
    audiences
}

fn proxy_settings(
    config: &Config,
    oidc: Option<Arc<daytona_oidc::Provider>>,
) -> anyhow::Result<daytona_proxy::ProxySettings> {
    use daytona_proxy::HostPattern;
    let mut preview_hosts = vec![HostPattern::for_domain(&config.proxy.domain)];
    let template =
        HostPattern::from_template(&config.proxy.template_url).context("PROXY_TEMPLATE_URL")?;
    if !preview_hosts.contains(&template) {
        preview_hosts.push(template);
    }
    Ok(daytona_proxy::ProxySettings {
        preview_hosts,
        toolbox_only: config.proxy.toolbox_only_mode,
        preview_warning: config.proxy.preview_warning_enabled,
        cookie_domain: Some(config.proxy.cookie_domain.clone()),
        login: proxy_login(config, oidc)?,
    })
}

/// The proxy's browser login: the API's issuer unless `OIDC_DOMAIN`/`OIDC_PUBLIC_DOMAIN` name
/// another one.
fn proxy_login(
    config: &Config,
    api_provider: Option<Arc<daytona_oidc::Provider>>,
) -> anyhow::Result<Option<daytona_proxy::BrowserLogin>> {
    let Some(oidc) = &config.oidc else {
        return Ok(None);
    };
    let provider = match api_provider {
        Some(p)
            if oidc.proxy_domain == oidc.issuer_base_url
                && oidc.proxy_public_domain == oidc.public_domain =>
        {
            p
        }
        _ => Arc::new(daytona_oidc::Provider::new(
            daytona_oidc::ProviderSettings {
                issuer_url: oidc.proxy_domain.clone(),
                public_url: oidc.proxy_public_domain.clone(),
                audiences: audiences(oidc),
            },
        )?),
    };
    // The callback is on the proxy's own host (`PROXY_DOMAIN`), as the seed's issuer
    // configuration lists it.
    Ok(Some(daytona_proxy::BrowserLogin {
        provider,
        client: daytona_oidc::OidcClient {
            client_id: oidc.client_id.clone(),
            client_secret: oidc.client_secret.as_ref().map(|s| s.expose().to_string()),
            redirect_uri: format!(
                "{}://{}/callback",
                config.proxy.protocol, config.proxy.domain
            ),
        },
        cookie_key: config.proxy.api_key.expose().as_bytes().to_vec(),
    }))
}

async fn wait(mut rx: tokio::sync::watch::Receiver<()>) {
    let _ = rx.changed().await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
