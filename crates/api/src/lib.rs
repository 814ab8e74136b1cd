//! The control plane: REST API under `/api`, authentication, the sandbox state machine and the
//! store. It drives runners through [`daytona_runner::SandboxRunner`] and answers the proxy's
//! toolbox and preview lookups through [`daytona_proxy::SandboxDirectory`] (`sandbox/access.rs`).

use std::sync::Arc;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod configuration;
pub mod error;
pub mod events;
pub mod health;
pub mod internal;
pub mod invalidation;
mod json;
pub mod mail;
pub mod maintenance;
pub mod object_storage;
pub mod oidc;
pub mod oidc_management;
pub mod organization;
pub mod quota;
pub mod rate_limit;
pub mod registry_token;
pub mod runner;
pub mod sandbox;
pub mod secret;
pub mod snapshot;
pub mod store;
pub mod users;
pub mod volume;
pub mod warm_pool;

pub use sandbox::{SandboxService, SandboxSettings};
pub use store::Store;

use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub sandboxes: Arc<SandboxService>,
    pub snapshots: Arc<snapshot::SnapshotService>,
    pub rate_limits: Arc<rate_limit::RateLimitPolicy>,
    pub access: Arc<sandbox::access::AccessService>,
    pub organizations: Arc<organization::OrganizationSettings>,
    /// Where the SDK uploads build contexts (and the embedded S3 endpoint, if any).
    pub push_access: Arc<object_storage::PushAccess>,
    /// The OIDC issuer whose tokens authenticate users besides API keys (`OIDC_ISSUER_BASE_URL`).
    pub oidc: Option<Arc<daytona_oidc::Provider>>,
    /// What `GET /config` shows.
    pub configuration: Arc<configuration::PublicConfiguration>,
    /// Organization secrets; also the egress proxy's directory.
    pub secrets: Arc<secret::SecretService>,
    /// The registered remote runners, when this API runs without a runner of its own.
    pub runners: Option<Arc<runner::Fleet>>,
    /// What `GET /health/ready` checks and who may ask.
    pub readiness: Arc<health::Readiness>,
    /// The registry token server (`DAYTONA_REGISTRY_TOKEN_REALM`).
    pub registry_tokens: Option<Arc<registry_token::RegistryTokens>>,
    /// The issuer's Auth0 Management API (`OIDC_MANAGEMENT_API_ENABLED`).
    pub oidc_management: Option<Arc<oidc_management::ManagementClient>>,
}

/// The API's router; every route lives under `/api`, including the Socket.IO event gateway,
/// except the embedded S3 endpoint's bucket (`/<bucket>`, see [`object_storage`]).
/// Must be called inside a Tokio runtime (the gateway spawns its event forwarder).
pub fn router(state: AppState) -> Router {
    let events = events::socketio::layer(&state);
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(sandbox::routes::router())
        .merge(sandbox::settings::router())
        .merge(sandbox::telemetry::router())
        .merge(snapshot::router())
        .merge(api_keys::router())
        .merge(sandbox::access::router())
        .merge(internal::router())
        .merge(audit::router())
        .merge(organization::router())
        .merge(users::router())
        .merge(volume::routes::router())
        .merge(secret::routes::router())
        .merge(object_storage::router())
        .merge(warm_pool::routes::router())
        .merge(configuration::router())
        .merge(runner::routes::router())
        .merge(registry_token::routes::router())
        .merge(oidc_management::router())
        .split_for_parts();
    // After routing, so the audit knows each call's route template.
    let api = api
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            maintenance::guard,
        ))
        .fallback(not_found);
    // The embedded S3 endpoint signs and routes by path, so it lives beside `/api`, not in it.
    let s3 = state.push_access.s3_routes();
    Router::new()
        // The document is served with the `/api` prefix its paths are relative to.
        .merge(SwaggerUi::new("/api/docs").url("/api/openapi.json", with_server(openapi)))
        .nest("/api", api)
        .merge(s3)
        .fallback(not_found)
        .layer(events)
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(daytona_telemetry::server_span::<axum::body::Body>),
        )
        .with_state(state)
}

/// The OpenAPI document's frame; the paths come from the routers' `#[utoipa::path]` handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Daytona",
        description = "Control-plane API of the Daytona-compatible sandbox server (paths are under /api)."
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Every route takes an API key (or, for some, a token) as `Authorization: Bearer`.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        doc.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

fn with_server(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    doc.servers = Some(vec![utoipa::openapi::Server::new("/api")]);
    doc
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("Cannot find route {}", uri.path()))
}
