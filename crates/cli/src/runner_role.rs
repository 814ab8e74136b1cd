//! `DAYTONA_ROLES=runner`: the local runner (image store + native runtime) is the whole process
//! and works for the API at `DAYTONA_API_URL` through the job protocol. On `API_PORT` it serves
//! its sandboxes' traffic to the proxy and SSH gateway (`runner_traffic.rs`), and its
//! egress proxy takes sandboxes' policies and secrets from the API.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use daytona_config::Config;
use daytona_runner::agent::{Agent, AgentError, AgentSettings};
use daytona_runner::{Runner, SandboxRunner};
use daytona_storage::ObjectStorage;
use tokio::net::TcpListener;

use crate::server::{release_network, release_volumes, s3_settings, shutdown_signal, start_runner};

/// `DAYTONA_ROLES=runner`: registers with the API, then takes jobs until SIGTERM/SIGINT; serves
/// `GET /` (health) and its sandboxes' traffic on `API_PORT`, and the egress proxy.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    // `AWS_*` (defaulting to `S3_*`) when set, so archives reach every runner; else local.
    let storage = match &config.runner.storage {
        Some(s3) => ObjectStorage::s3(&s3_settings(&config, s3)?),
        None => ObjectStorage::local(&data_dir.join("objects")),
    }
    .context("cannot set up the runner's object storage (AWS_*)")?;
    let (runner, runtime, egress) = start_runner(&config, storage)?;

    let addr = SocketAddr::new(config.server.bind_address, config.runner.api_port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (API_PORT)"))?;
    let own_url = format!(
        "http://{}:{}",
        config
            .runner
            .domain
            .clone()
            .unwrap_or_else(|| config.server.bind_address.to_string()),
        config.runner.api_port
    );
    let agent = Agent::new(
        AgentSettings {
            api_url: config.misc.api_url.clone(),
            token: config.runner.token.expose().to_owned(),
            poll_timeout: config.runner.poll_timeout,
            poll_limit: config.runner.poll_limit,
            healthcheck_interval: config.runner.healthcheck_interval,
            healthcheck_timeout: config.runner.healthcheck_timeout,
            app_version: config.runner.version.clone(),
            domain: config.runner.domain.clone(),
            own_url: Some(own_url),
            data_dir: data_dir.clone(),
        },
        runner.clone(),
        crate::server::outbound(&config)?.client_builder(),
    )?;
    // Registration: a refused token stops the process; an API that is not up yet is waited for.
    loop {
        match agent.register().await {
            Ok(()) => break,
            Err(e @ AgentError::Refused { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the API yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
    tracing::info!(%addr, api = %config.misc.api_url, data_dir = %data_dir.display(), "daytona runner ready");

    let (tx, mut rx) = tokio::sync::watch::channel(());
    let routes = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .merge(crate::runner_traffic::router(
            Arc::new(LocalSandboxes(runner)),
            config.runner.token.expose(),
        ));
    let server = axum::serve(listener, routes).with_graceful_shutdown(async move {
        let _ = rx.changed().await;
    });
    let server = tokio::spawn(async move { server.await });
    let egress = {
        let mut rx = tx.subscribe();
        let directory: Arc<dyn daytona_egress::EgressDirectory> = agent.clone();
        tokio::spawn(daytona_egress::serve(egress, directory, async move {
            let _ = rx.changed().await;
        }))
    };
    let outcome = tokio::select! {
        result = agent.run() => result.map_err(anyhow::Error::from),
        () = shutdown_signal() => {
            tracing::info!("shutting down; running sandboxes keep running");
            Ok(())
        }
    };
    drop(tx);
    let _ = server.await;
    match egress.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "egress proxy failed"),
        Err(e) => tracing::warn!(error = %e, "egress proxy task failed"),
        Ok(Ok(())) => {}
    }
    release_network(&runtime).await;
    release_volumes(&config);
    outcome
}

/// The sandboxes this runner holds, for the traffic it serves.
struct LocalSandboxes(Arc<Runner>);

#[async_trait::async_trait]
impl crate::runner_traffic::LocalSandboxes for LocalSandboxes {
    async fn address(&self, sandbox_id: &str) -> Result<Option<IpAddr>, String> {
        self.0
            .daemon_address(sandbox_id)
            .await
            .map(|addr| addr.map(|a| a.ip()))
            .map_err(|e| e.to_string())
    }
}
