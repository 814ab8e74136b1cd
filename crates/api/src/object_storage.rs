//! Object storage for clients: `GET /api/object-storage/push-access` (where and with which
//! credentials the SDK uploads build contexts) and, in the embedded default, the S3 endpoint
//! itself.
//!
//! Embedded (no `S3_ENDPOINT`): the API's own listener serves one path-style bucket at
//! `/<bucket>/…` (outside `/api`, so a client signs the same path the server sees) over the
//! local object store; push access hands out temporary credentials (an access key, its secret
//! and a session token) that expire after `DAYTONA_PUSH_ACCESS_TTL` and reach only the
//! caller's organization prefix. With `S3_ENDPOINT` set the configured bucket is used and push
//! access returns the configured keys (no STS: the session token is empty).

use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::error_handling::HandleError;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use daytona_storage::{CredentialAuthority, ObjectStorage};
use serde::Serialize;

use crate::AppState;
use crate::auth::AuthContext;
use crate::error::ApiResult;

/// Where build contexts are pushed, and how push credentials are made.
pub enum PushAccess {
    /// The embedded S3 endpoint over the server's object storage.
    Embedded {
        storage: ObjectStorage,
        authority: CredentialAuthority,
        bucket: String,
        region: String,
        ttl: Duration,
    },
    /// An external S3 service (`S3_ENDPOINT`), reached with the configured keys.
    External {
        endpoint: String,
        bucket: String,
        region: String,
        access_key: String,
        secret_key: String,
    },
}

/// `StorageAccessDto`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageAccess {
    pub access_key: String,
    pub secret: String,
    pub session_token: String,
    pub storage_url: String,
    pub organization_id: String,
    pub bucket: String,
    pub region: String,
}

impl PushAccess {
    /// Credentials for `organization_id`; `origin` is how the caller reached the API
    /// (`scheme://host[:port]`), which is where the embedded endpoint lives too.
    pub fn grant(&self, organization_id: &str, origin: &str) -> StorageAccess {
        match self {
            PushAccess::Embedded {
                authority,
                bucket,
                region,
                ttl,
                ..
            } => {
                let creds = authority.issue(organization_id, *ttl);
                StorageAccess {
                    access_key: creds.access_key,
                    secret: creds.secret,
                    session_token: creds.session_token,
                    storage_url: origin.to_owned(),
                    organization_id: organization_id.to_owned(),
                    bucket: bucket.clone(),
                    region: region.clone(),
                }
            }
            PushAccess::External {
                endpoint,
                bucket,
                region,
                access_key,
                secret_key,
            } => StorageAccess {
                access_key: access_key.clone(),
                secret: secret_key.clone(),
                session_token: String::new(),
                storage_url: endpoint.clone(),
                organization_id: organization_id.to_owned(),
                bucket: bucket.clone(),
                region: region.clone(),
            },
        }
    }

    /// The embedded S3 endpoint's routes (`/<bucket>` and below); none for an external S3.
    pub fn s3_routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let PushAccess::Embedded {
            storage,
            authority,
            bucket,
            ..
        } = self
        else {
            return Router::new();
        };
        let service = daytona_storage::s3::service(storage.clone(), bucket, authority.clone());
        let service = HandleError::new(service, |e: daytona_storage::s3::HttpError| async move {
            tracing::warn!(error = ?e, "S3 request failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "S3 request failed").into_response()
        });
        Router::new()
            .route_service(&format!("/{bucket}"), service.clone())
            .route_service(&format!("/{bucket}/{{*key}}"), service)
    }
}

/// `scheme://host` the request was addressed to (proxies: `X-Forwarded-Proto`/`-Host`).
fn origin(headers: &HeaderMap) -> String {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let scheme = header("x-forwarded-proto").unwrap_or_else(|| "http".into());
    let host = header("x-forwarded-host")
        .or_else(|| header("host"))
        .unwrap_or_else(|| "localhost".into());
    format!("{scheme}://{host}")
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(push_access))
}

#[utoipa::path(
    get,
    path = "/object-storage/push-access",
    tag = "object-storage",
    operation_id = "object_storage_push_access"
)]
async fn push_access(
    State(state): State<AppState>,
    ctx: AuthContext,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let access = state
        .push_access
        .grant(&ctx.organization_id, &origin(&headers));
    Ok(Json(access).into_response())
}
