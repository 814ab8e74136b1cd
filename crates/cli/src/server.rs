//! `daytona server`: the API with its in-process runner, the proxy and the SSH gateway, all in one
//! process by default. `DAYTONA_ROLES` (or `--roles`) picks a subset: `api,runner` serves the
//! control plane, `proxy` and `ssh-gateway` run on their own and reach the API over HTTP, `api`
//! without `runner` places sandboxes on registered remote runners, and `runner` alone is one of
//! them (`runner_role.rs`). Each role starts from its own function below.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use daytona_api::cluster::{Cluster, InProcessCluster, RedisCluster};
use daytona_api::events::ClusterEventBus;
use daytona_api::internal::ServiceKeys;
use daytona_api::object_storage::PushAccess;
use daytona_api::rate_limit::{InProcessLimiter, RateLimitPolicy, RateLimiter, RedisLimiter};
use daytona_api::registry_token::RegistryTokens;
use daytona_api::runner::{Fleet, FleetSettings};
use daytona_api::sandbox::access::{AccessService, AccessSettings};
use daytona_api::secret::SecretService;
use daytona_api::snapshot::{BuildSettings, Builds, SnapshotService};
use daytona_api::{AppState, SandboxService, SandboxSettings, Store};
use daytona_config::{Config, Role, Roles, SandboxDns};
use daytona_egress::{Egress, EgressRules};
use daytona_proxy::remote::{ApiClient, IdentityError, RemoteDirectory};
use daytona_runner::image::{ImageStore, RegistryCredentials, RegistrySettings};
use daytona_runner::volume::VolumeStore;
use daytona_runner::{InternalRegistry, Runner, SandboxRunner};
use daytona_runtime::native::{NativeConfig, NativeRuntime};
use daytona_storage::{CredentialAuthority, ObjectStorage, S3Settings};
use tokio::net::TcpListener;

pub fn main(roles: Option<String>) -> ExitCode {
    // `--roles` stands for `DAYTONA_ROLES` and is validated like it.
    let config = match Config::from_lookup(|name| match (name, &roles) {
        ("DAYTONA_ROLES", Some(roles)) => Some(roles.clone()),
        _ => std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()),
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("daytona server: configuration error:\n{e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match outbound(&config).and_then(|outbound| {
        let export = daytona_telemetry::Export::from_config(&config)?;
        Ok(daytona_telemetry::init(
            &config.server.log,
            export,
            &outbound,
        )?)
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("daytona server: {e}");
            return ExitCode::from(2);
        }
    };
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
    let served = runtime.block_on(serve(config));
    // Spans still queued are sent before the process ends.
    telemetry.shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("daytona server: {e:#}");
            ExitCode::FAILURE
        }
    }
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

/// A role's server, running until the shutdown signal.
type RoleServer = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

async fn serve(config: Config) -> anyhow::Result<()> {
    let roles = &config.server.roles;
    check_roles(roles)?;
    if roles.iter().eq([Role::Runner]) {
        return crate::runner_role::serve(config).await;
    }
    if !config.server.binds_loopback_only() {
        for warning in config.placeholder_secret_warnings() {
            tracing::warn!("{warning}");
        }
    }
    let (tx, rx) = tokio::sync::watch::channel(());
    let mut servers: Vec<RoleServer> = Vec::new();
    let mut listening = Vec::new();

    // The control plane and its in-process runner; the proxy and SSH gateway ask it directly when
    // they run in this process, else the API over HTTP.
    let control = if roles.contains(Role::Api) {
        let control = ControlPlane::start(&config).await?;
        let (server, addr) = serve_api(&config, control.state.clone(), rx.clone()).await?;
        servers.push(server);
        listening.push(format!("api {addr}"));
        if let Some(egress) = &control.egress {
            let egress = daytona_egress::serve(
                egress.clone(),
                control.state.secrets.clone(),
                wait(rx.clone()),
            );
            servers.push(Box::pin(async move {
                egress.await.context("egress proxy failed")
            }));
        }
        Some(control)
    } else {
        None
    };
    if roles.contains(Role::Proxy) {
        // In one process the proxy shares the API's issuer (and its key cache).
        let (directory, oidc): (Arc<dyn daytona_proxy::SandboxDirectory>, _) = match &control {
            Some(control) => (Arc::new(control.state.clone()), control.state.oidc.clone()),
            None => (
                Arc::new(remote_directory(&config, Role::Proxy).await?),
                oidc_provider(&config)?,
            ),
        };
        let (server, addr) = serve_proxy(&config, directory, oidc, rx.clone()).await?;
        servers.push(server);
        listening.push(format!("proxy {addr}"));
    }
    if roles.contains(Role::SshGateway) {
        let directory: Arc<dyn daytona_ssh_gateway::SshDirectory> = match &control {
            Some(control) => Arc::new(SshAccess(control.state.clone())),
            None => Arc::new(daytona_ssh_gateway::remote::RemoteSshDirectory::new(
                remote_directory(&config, Role::SshGateway).await?,
            )),
        };
        let (server, addr) = serve_ssh_gateway(&config, directory, rx.clone()).await?;
        servers.push(server);
        listening.push(format!("ssh-gateway {addr}"));
    }
    drop(rx);
    tracing::info!(
        roles = %roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
        listening = %listening.join(", "),
        data_dir = %config.server.data_dir.display(),
        "daytona server ready"
    );

    let servers = tokio::spawn(futures::future::try_join_all(servers));
    shutdown_signal().await;
    tracing::info!("shutting down; running sandboxes keep running");
    if let Some(control) = &control {
        // Split services' streams never end by themselves; they reconnect to another replica.
        control.state.sandboxes.invalidations().close();
    }
    drop(tx);
    servers.await.context("server task failed")??;
    if let Some(runtime) = control.and_then(|c| c.runtime) {
        release_network(&runtime).await;
        release_volumes(&config);
    }
    Ok(())
}

/// Which role sets run today: a runner works for an API in this process, or alone for one
/// elsewhere (it has no store to serve a proxy or gateway from); the API without a runner uses
/// remote ones; the proxy and the SSH gateway run beside the API or on their own.
fn check_roles(roles: &Roles) -> anyhow::Result<()> {
    if roles.contains(Role::Runner) && !roles.contains(Role::Api) && roles.iter().count() > 1 {
        let chosen: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        anyhow::bail!(
            "DAYTONA_ROLES={}: a runner without the api role runs alone (DAYTONA_ROLES=runner); \
             start the proxy and SSH gateway as their own processes",
            chosen.join(",")
        );
    }
    Ok(())
}

/// What the `api` role needs from the `runner` role, and the runner's runtime (for shutdown);
/// without the runner role the API uses remote runners and has neither.
struct ControlPlane {
    state: AppState,
    runtime: Option<Arc<NativeRuntime>>,
    /// The runner's egress proxy (secrets substitution), served beside the API.
    egress: Option<Arc<Egress>>,
}

impl ControlPlane {
    /// The store, the in-process runner, the services and their background workers.
    async fn start(config: &Config) -> anyhow::Result<Self> {
        let data_dir = config.server.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let store = Store::connect(config)
            .await
            .context("cannot open the database")?;
        let admin_key = config
            .admin
            .api_key
            .as_ref()
            .map(|s| s.expose().to_string());
        if let Some(generated) =
            daytona_api::auth::ensure_admin(&store, admin_key.as_deref(), &config.admin.quotas)
                .await?
        {
            // Printed once: only its hash is stored.
            println!("Admin API key (shown only once, store it safely): {generated}");
        }
        daytona_api::organization::ensure_default_region(&store, &config.region).await?;
        let (admin_org, _) = store
            .admin_organization()
            .await?
            .context("admin organization missing after setup")?;

        // With Redis, the locks, leases, events and rate limits of every API replica are shared.
        let redis = match &config.redis {
            Some(redis) => Some(
                RedisCluster::connect(&redis.host, redis.port)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot connect to Redis at {}:{} (REDIS_HOST, REDIS_PORT)",
                            redis.host, redis.port
                        )
                    })?,
            ),
            None => None,
        };
        let cluster: Arc<dyn Cluster> = match &redis {
            Some(redis) => redis.clone(),
            None => Arc::new(InProcessCluster::default()),
        };
        let storage = object_storage(config, &data_dir)?;
        tracing::info!(?storage, "object storage");
        // The in-process runner, or (without the runner role) the registered remote runners.
        let (runner, runtime, egress, fleet): (Arc<dyn SandboxRunner>, _, _, _) =
            if config.server.roles.contains(Role::Runner) {
                let (runner, runtime, egress) = start_runner(config, storage.clone())?;
                (runner, Some(runtime), Some(egress), None)
            } else {
                let fleet = remote_fleet(config, &store, cluster.clone()).await?;
                (fleet.clone(), None, None, Some(fleet))
            };
        let push_access = Arc::new(push_access(config, storage));

        let settings = SandboxSettings {
            toolbox_proxy_url: config.toolbox_proxy_url(),
            default_snapshot: config.api.default_snapshot.clone(),
            default_region: config.region.id.clone(),
            max_auto_archive_minutes: config.api.max_auto_archive_interval.into(),
        };
        let builds = Builds::new(BuildSettings {
            timeout: config.build.timeout,
            cpu: config.build.cpu_cores,
            memory_gib: config.build.memory_gb,
            disk_gib: BUILD_DISK_GIB,
        });
        let mut snapshots = SnapshotService::new(store.clone(), runner.clone())
            .with_builds(builds)
            .with_cluster(cluster.clone());
        if let Some(transient) = &config.registries.transient
            && let Some((_, host)) = transient.host()
        {
            snapshots = snapshots.with_transient_registry(&host, &transient.project_id);
        }
        let snapshots = Arc::new(snapshots);
        // The default snapshot is pulled in the background so the first sandbox does not wait for it.
        snapshots
            .ensure_default(&admin_org, &config.api.default_snapshot)
            .await?;
        let mut sandboxes = SandboxService::new(store.clone(), runner, snapshots.clone(), settings)
            .with_cluster(cluster.clone());
        if redis.is_some() {
            sandboxes = sandboxes.with_event_bus(Arc::new(ClusterEventBus::new(cluster.clone())));
        }
        let sandboxes = Arc::new(sandboxes);
        snapshots
            .reconcile()
            .await
            .context("cannot reconcile snapshot states")?;
        sandboxes
            .reconcile()
            .await
            .context("cannot reconcile sandbox states")?;
        // Upstream's maintenance mode stops every scheduled job; reads and accepted work go on.
        if config.api.maintenance_mode {
            tracing::warn!("MAINTENANCE_MODE: scheduled jobs are off and the API refuses changes");
        } else {
            // Images and layers left unused while the server was down (and interrupted pulls).
            let collector = snapshots.clone();
            tokio::spawn(async move { collector.collect_garbage().await });
            daytona_api::sandbox::lifecycle::spawn(
                sandboxes.clone(),
                std::time::Duration::from_secs(30),
            );
            daytona_api::sandbox::telemetry::spawn(
                sandboxes.clone(),
                config.server.metrics_interval,
                config.server.metrics_retention,
            );
            daytona_api::sandbox::backup::spawn(sandboxes.clone());
            daytona_api::warm_pool::worker::spawn(
                sandboxes.clone(),
                std::time::Duration::from_secs(1),
            );
            if let Some(fleet) = &fleet {
                fleet.spawn_monitor();
            }
            // Replicas on Redis take over the operations a dead replica left half-done.
            if redis.is_some() {
                daytona_api::sandbox::lifecycle::spawn_recovery(
                    sandboxes.clone(),
                    std::time::Duration::from_secs(5),
                );
            }
        }
        let rate_limits = Arc::new(RateLimitPolicy::new(
            config.rate_limits.clone(),
            match &redis {
                Some(redis) => {
                    Box::new(RedisLimiter::new(redis.connection())) as Box<dyn RateLimiter>
                }
                None => Box::new(InProcessLimiter::default()),
            },
        ));
        let access = AccessService::new(AccessSettings {
            preview_url_template: config.proxy.template_url.clone(),
            ssh_command_template: config.ssh_gateway.command.clone(),
        })
        .with_service_keys(service_keys(config));
        let secrets = Arc::new(SecretService::new(
            store.clone(),
            config.api.encryption_key.expose(),
            config.api.encryption_salt.expose(),
        ));
        let registry_tokens = RegistryTokens::from_config(store.clone(), config)
            .context("cannot set up the registry token server")?
            .map(Arc::new);
        let state = AppState {
            secrets,
            store,
            sandboxes,
            snapshots,
            rate_limits,
            access: Arc::new(access),
            organizations: Arc::new(daytona_api::organization::OrganizationSettings {
                default_quotas: (&config.org_quotas).into(),
                default_region: config.region.id.clone(),
                mailer: config
                    .smtp
                    .as_ref()
                    .map(|smtp| {
                        daytona_api::mail::Mailer::new(
                            smtp,
                            &config.api.dashboard_url,
                            &outbound(config)?,
                        )
                        .context("cannot set up outgoing mail")
                    })
                    .transpose()?
                    .map(Arc::new),
            }),
            push_access,
            oidc: oidc_provider(config)?,
            configuration: Arc::new(daytona_api::configuration::PublicConfiguration::new(config)),
            runners: fleet,
            readiness: Arc::new(daytona_api::health::Readiness::new(
                config.api.health_check_api_key.expose(),
                config.redis.as_ref(),
            )),
            registry_tokens,
            oidc_management: oidc_management(config)?,
        };
        Ok(ControlPlane {
            state,
            runtime,
            egress,
        })
    }
}

/// The keys of the services that run elsewhere (`PROXY_API_KEY`, `SSH_GATEWAY_API_KEY`); one
/// that runs in this process needs none, so its key (often the published placeholder) opens
/// nothing here.
fn service_keys(config: &Config) -> ServiceKeys {
    let roles = &config.server.roles;
    let elsewhere = |role, key: &daytona_config::Secret| {
        (!roles.contains(role)).then(|| key.expose().to_string())
    };
    ServiceKeys::new(
        elsewhere(Role::Proxy, &config.proxy.api_key).as_deref(),
        elsewhere(Role::SshGateway, &config.ssh_gateway.api_key).as_deref(),
    )
}

/// The `runner` role: the image store and native runtime of this host.
pub(crate) fn start_runner(
    config: &Config,
    storage: ObjectStorage,
) -> anyhow::Result<(Arc<Runner>, Arc<NativeRuntime>, Arc<Egress>)> {
    let data_dir = &config.server.data_dir;
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
    let images = ImageStore::with_registries(data_dir.join("images"), registry_settings(config)?);
    let volumes = volume_store(config)?;
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
    let mut runner = Runner::new("local", images, runtime.clone())
        .with_storage(storage)
        .with_volumes(volumes)
        .with_egress(egress.clone());
    if let Some(internal) = internal_registry(config) {
        tracing::info!(registry = %internal.registry, project = %internal.project, "images are pushed to the internal registry");
        runner = runner.with_internal_registry(internal);
    }
    let runner = Arc::new(runner);
    Ok((runner, runtime, egress))
}

/// The remote runners this API places sandboxes on; the default runner (`DEFAULT_RUNNER_API_KEY`)
/// is registered (`ControlPlane::start` watches for runners that go silent).
async fn remote_fleet(
    config: &Config,
    store: &Store,
    cluster: Arc<dyn Cluster>,
) -> anyhow::Result<Arc<Fleet>> {
    let fleet = Fleet::new(
        store.clone(),
        FleetSettings {
            availability_score_threshold: config.scheduler.availability_score_threshold.into(),
            declarative_build_score_threshold: config
                .scheduler
                .declarative_build_score_threshold
                .into(),
            start_score_threshold: config.scheduler.start_score_threshold.into(),
            health_timeout: config.scheduler.runner_health_timeout,
            default_region: config.region.id.clone(),
            runner_wait: RUNNER_WAIT,
        },
        cluster,
    );
    fleet
        .ensure_default_runner(config.default_runner.api_key.expose())
        .await
        .context("cannot register the default runner")?;
    Ok(fleet)
}

/// How long work that needs any runner (a snapshot's pull) waits for one to join.
const RUNNER_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

async fn listen(config: &Config, port: u16, variable: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(config.server.bind_address, port);
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({variable})"))
}

/// The `api` role on `PORT`.
async fn serve_api(
    config: &Config,
    state: AppState,
    rx: tokio::sync::watch::Receiver<()>,
) -> anyhow::Result<(RoleServer, SocketAddr)> {
    let listener = listen(config, config.api.port, "PORT").await?;
    let addr = listener.local_addr()?;
    // Client addresses key the anonymous and failed-auth rate limits.
    let app = daytona_api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(wait(rx));
    Ok((
        Box::pin(async move { server.await.context("API server failed") }),
        addr,
    ))
}

/// The `proxy` role on `PROXY_PORT`.
async fn serve_proxy(
    config: &Config,
    directory: Arc<dyn daytona_proxy::SandboxDirectory>,
    oidc: Option<Arc<daytona_oidc::Provider>>,
    rx: tokio::sync::watch::Receiver<()>,
) -> anyhow::Result<(RoleServer, SocketAddr)> {
    let settings = proxy_settings(config, oidc)?;
    let listener = listen(config, config.proxy.port, "PROXY_PORT").await?;
    let addr = listener.local_addr()?;
    let server = axum::serve(listener, daytona_proxy::router(directory, settings))
        .with_graceful_shutdown(wait(rx));
    Ok((
        Box::pin(async move { server.await.context("proxy failed") }),
        addr,
    ))
}

/// The `ssh-gateway` role on `SSH_GATEWAY_PORT`.
async fn serve_ssh_gateway(
    config: &Config,
    directory: Arc<dyn daytona_ssh_gateway::SshDirectory>,
    rx: tokio::sync::watch::Receiver<()>,
) -> anyhow::Result<(RoleServer, SocketAddr)> {
    let data_dir = &config.server.data_dir;
    let host_key = daytona_ssh_gateway::host_key(
        config.ssh_gateway.host_key.as_ref().map(|k| k.expose()),
        data_dir,
    )?;
    let listener = listen(config, config.ssh_gateway.port, "SSH_GATEWAY_PORT").await?;
    let addr = listener.local_addr()?;
    let server = daytona_ssh_gateway::serve(listener, directory, host_key, wait(rx));
    Ok((
        Box::pin(async move { server.await.context("SSH gateway failed") }),
        addr,
    ))
}

/// The API as a split proxy (`DAYTONA_API_URL`, `PROXY_API_KEY`) or SSH gateway (`API_URL`,
/// `API_KEY`) sees it. A key the API refuses stops startup; an API that does not answer yet
/// does not (requests fail with 503 until it does).
async fn remote_directory(config: &Config, role: Role) -> anyhow::Result<RemoteDirectory> {
    let (url, key, key_variable) = match role {
        Role::Proxy => (&config.misc.api_url, &config.proxy.api_key, "PROXY_API_KEY"),
        _ => (
            &config.ssh_gateway.api_url,
            &config.ssh_gateway.gateway_api_key,
            "API_KEY",
        ),
    };
    let api = ApiClient::new(
        url,
        key.expose(),
        key_variable,
        outbound(config)?.client_builder(),
    )
    .context("cannot set up the HTTP client for the API")?;
    match api.check_identity(role.as_str()).await {
        Ok(()) => tracing::info!(api = %url, "{role}: the API accepts this {key_variable}"),
        Err(IdentityError::Refused(message)) => anyhow::bail!("{role}: {message}"),
        Err(IdentityError::Unavailable(message)) => tracing::warn!(
            "{role}: cannot check {key_variable} yet ({message}); starting anyway, requests fail \
             until the API answers"
        ),
    }
    let directory = RemoteDirectory::new(api);
    directory.follow_invalidations();
    Ok(directory)
}

/// A runner that stops with no sandboxes left removes its bridge and firewall rules, so stopped
/// servers leave nothing in the host's network configuration; with sandboxes left, both stay
/// for them (and for the next start to adopt).
pub(crate) async fn release_network(runtime: &NativeRuntime) {
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

/// Volumes in `<DAYTONA_DATA_DIR>/volumes`: directories there, or mounts of the runner's bucket
/// (`AWS_*`) so that sandboxes on every runner share them.
fn volume_store(config: &Config) -> anyhow::Result<VolumeStore> {
    let root = config.server.data_dir.join("volumes");
    let volumes =
        VolumeStore::open(&root).with_context(|| format!("cannot open {}", root.display()))?;
    Ok(match &config.runner.storage {
        Some(s3) => volumes.with_s3(s3_settings(config, s3)?),
        None => volumes,
    })
}

/// At shutdown: volumes mounted from S3 are unmounted (running sandboxes keep theirs).
pub(crate) fn release_volumes(config: &Config) {
    if let Err(e) = volume_store(config).and_then(|v| Ok(v.unmount_all()?)) {
        tracing::warn!(error = %e, "could not unmount the S3 volumes");
    }
}

pub(crate) fn s3_settings(
    config: &Config,
    s3: &daytona_config::ObjectStorage,
) -> anyhow::Result<S3Settings> {
    Ok(S3Settings {
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        bucket: s3.bucket.clone(),
        access_key: s3.access_key.expose().to_owned(),
        secret_key: s3.secret_key.expose().to_owned(),
        outbound: outbound(config)?,
    })
}

/// S3 when `S3_ENDPOINT` is set, else `<DAYTONA_DATA_DIR>/objects`.
fn object_storage(config: &Config, data_dir: &Path) -> anyhow::Result<ObjectStorage> {
    let storage = match &config.s3 {
        Some(s3) => ObjectStorage::s3(&s3_settings(config, &s3.storage)?),
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
        use daytona_proxy::SandboxDirectory;
        use daytona_ssh_gateway::SshAccessError;
        let state = &self.0;
        let sandbox_id = state
            .access
            .ssh_sandbox(&state.store, token)
            .await
            .map_err(|e| SshAccessError::Unavailable(e.to_string()))?
            .ok_or(SshAccessError::InvalidToken)?;
        let route = state
            .sandbox_route(&sandbox_id)
            .await
            .map_err(|e| daytona_ssh_gateway::target_error(&sandbox_id, e))?;
        Ok(daytona_ssh_gateway::SshTarget { sandbox_id, route })
    }

    async fn touch(&self, sandbox_id: &str) {
        use daytona_proxy::SandboxDirectory;
        self.0.touch(sandbox_id).await
    }
}

/// Preview hosts of `PROXY_DOMAIN` and of `PROXY_TEMPLATE_URL` (usually the same shape).
/// Plain-HTTP registries (`DAYTONA_INSECURE_REGISTRIES`, plus configured `http://` ones) and
/// the credentials of the `TRANSIENT_REGISTRY_*` / `INTERNAL_REGISTRY_*` registries.
fn registry_settings(config: &Config) -> anyhow::Result<RegistrySettings> {
    let mut settings = RegistrySettings {
        insecure: config.runner.insecure_registries.clone(),
        credentials: Vec::new(),
        outbound: outbound(config)?,
    };
    // The internal registry's credentials win when both name the same host.
    let configured = [&config.registries.internal, &config.registries.transient];
    for registry in configured.into_iter().flatten() {
        let Some((plain_http, host)) = registry.host() else {
            continue;
        };
        if plain_http {
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
    Ok(settings)
}

/// Proxies and extra CAs for every outbound connection (`HTTP_PROXY`…, `NODE_EXTRA_CA_CERTS`).
pub(crate) fn outbound(config: &Config) -> anyhow::Result<daytona_outbound::Outbound> {
    Ok(daytona_outbound::Outbound::from_config(&config.misc)?)
}

/// Where runners push the images they pull, build and capture (`INTERNAL_REGISTRY_*`).
fn internal_registry(config: &Config) -> Option<InternalRegistry> {
    let registry = config.registries.internal.as_ref()?;
    let (_, host) = registry.host()?;
    Some(InternalRegistry {
        registry: host,
        project: registry.project_id.trim_matches('/').to_owned(),
    })
}

/// The OIDC issuer, when `OIDC_ISSUER_BASE_URL` (or `OIDC_DOMAIN`) is set. In one process the
/// API and the proxy share it (and its key cache).
fn oidc_provider(config: &Config) -> anyhow::Result<Option<Arc<daytona_oidc::Provider>>> {
    let Some(oidc) = &config.oidc else {
        return Ok(None);
    };
    let provider = daytona_oidc::Provider::new(
        daytona_oidc::ProviderSettings {
            issuer_url: oidc.issuer_base_url.clone(),
            public_url: oidc.public_domain.clone(),
            audiences: audiences(oidc),
        },
        outbound(config)?.client_builder(),
    )?;
    tracing::info!(issuer = %oidc.issuer_base_url, "OIDC login enabled");
    Ok(Some(Arc::new(provider)))
}

/// The issuer's Auth0 Management API, when `OIDC_MANAGEMENT_API_ENABLED`.
fn oidc_management(
    config: &Config,
) -> anyhow::Result<Option<Arc<daytona_api::oidc_management::ManagementClient>>> {
    let Some((oidc, settings)) = config
        .oidc
        .as_ref()
        .and_then(|o| o.management_api.as_ref().map(|m| (o, m)))
    else {
        return Ok(None);
    };
    let client = daytona_api::oidc_management::ManagementClient::new(
        &oidc.issuer_base_url,
        settings,
        outbound(config)?.client_builder(),
    )
    .map_err(anyhow::Error::msg)?;
    tracing::info!(issuer = %oidc.issuer_base_url, "OIDC management API enabled (linked accounts, MFA enrolment)");
    Ok(Some(Arc::new(client)))
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
            outbound(config)?.client_builder(),
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

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
