//! Linked accounts and SMS MFA enrolment through the issuer's Auth0 Management API
//! (`OIDC_MANAGEMENT_API_*`): `POST /users/linked-accounts`,
//! `DELETE /users/linked-accounts/{provider}/{providerUserId}` and `POST /users/mfa/sms/enroll`.
//!
//! They act on the caller's own identity at the issuer, so they take the user's login token (an
//! API key, possibly scoped to one organization, does not speak for the identity). This server
//! talks to the Management API with a client-credentials token of the machine-to-machine
//! application, kept until shortly before it expires.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use daytona_config::{OidcManagementApi, Secret};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use url::Url;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;

const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// A token is renewed this long before the issuer says it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// The Management API answered the call with an error of its own (`status` is its status).
    #[error("the identity provider refused: {message}")]
    Refused { status: u16, message: String },
    /// This server's credentials were refused (`OIDC_MANAGEMENT_API_*` or their permissions).
    #[error("the identity provider refused this server's Management API credentials: {0}")]
    Credentials(String),
    /// The issuer could not be reached or answered something unreadable.
    #[error("the identity provider's Management API at {url} failed: {reason}")]
    Upstream { url: String, reason: String },
}

struct CachedToken {
    value: String,
    renew_at: Instant,
}

/// The Auth0 Management API v2 of the OIDC issuer.
pub struct ManagementClient {
    http: reqwest::Client,
    /// `OIDC_ISSUER_BASE_URL`; the token endpoint and `/api/v2` live under it.
    issuer: Url,
    client_id: String,
    client_secret: Secret,
    audience: String,
    token: Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for ManagementClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementClient")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl ManagementClient {
    /// `http` carries the deployment's proxies and trusted CAs (`daytona_outbound`).
    pub fn new(
        issuer_base_url: &str,
        settings: &OidcManagementApi,
        http: reqwest::ClientBuilder,
    ) -> Result<Self, String> {
        let mut issuer = Url::parse(issuer_base_url)
            .map_err(|e| format!("OIDC_ISSUER_BASE_URL={issuer_base_url}: {e}"))?;
        if issuer.cannot_be_a_base() {
            return Err(format!(
                "OIDC_ISSUER_BASE_URL={issuer_base_url}: not a base URL"
            ));
        }
        // Path segments are appended to it; a trailing slash would leave an empty one.
        issuer
            .path_segments_mut()
            .expect("checked above")
            .pop_if_empty();
        let http = http
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self {
            http,
            issuer,
            client_id: settings.client_id.clone(),
            client_secret: settings.client_secret.clone(),
            audience: settings.audience.clone(),
            token: Mutex::new(None),
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.issuer.clone();
        url.path_segments_mut()
            .expect("checked in new")
            .extend(segments);
        url
    }

    /// Links the identity `provider`/`user_id` to `primary` as a secondary account.
    pub async fn link(
        &self,
        primary: &str,
        provider: &str,
        user_id: &str,
    ) -> Result<(), ManagementError> {
        let url = self.url(&["api", "v2", "users", primary, "identities"]);
        let body = json!({ "provider": provider, "user_id": user_id });
        self.call(reqwest::Method::POST, url, Some(&body)).await?;
        Ok(())
    }

    /// Detaches the secondary identity `provider`/`user_id` from `primary`.
    pub async fn unlink(
        &self,
        primary: &str,
        provider: &str,
        user_id: &str,
    ) -> Result<(), ManagementError> {
        let url = self.url(&[
            "api",
            "v2",
            "users",
            primary,
            "identities",
            provider,
            user_id,
        ]);
        self.call(reqwest::Method::DELETE, url, None).await?;
        Ok(())
    }

    /// A Guardian enrolment ticket for an SMS (phone) factor of `user`: the URL where the user
    /// enrols.
    pub async fn sms_enrolment_url(&self, user: &str) -> Result<String, ManagementError> {
        let url = self.url(&["api", "v2", "guardian", "enrollments", "ticket"]);
        let body = json!({ "user_id": user, "send_mail": false, "factor": "phone" });
        let answer = self
            .call(reqwest::Method::POST, url.clone(), Some(&body))
            .await?;
        answer
            .get("ticket_url")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ManagementError::Upstream {
                url: url.to_string(),
                reason: "the enrolment ticket has no ticket_url".into(),
            })
    }

    /// One Management API call; a token refused as stale is renewed once.
    async fn call(
        &self,
        method: reqwest::Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, ManagementError> {
        let upstream = |reason: String| ManagementError::Upstream {
            url: url.to_string(),
            reason,
        };
        let mut renewed = false;
        loop {
            let token = self.token(renewed).await?;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(&token);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|e| upstream(e.to_string()))?;
            let status = response.status();
            let text = response.text().await.map_err(|e| upstream(e.to_string()))?;
            if status == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                continue;
            }
            if status.is_success() {
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_str(&text)
                    .map_err(|e| upstream(format!("unreadable answer: {e}")));
            }
            let message = error_message(&text, status);
            tracing::warn!(%url, status = status.as_u16(), %message, "Management API call refused");
            return Err(match status.as_u16() {
                401 | 403 => ManagementError::Credentials(message),
                s @ 400..=499 => ManagementError::Refused { status: s, message },
                s => upstream(format!("status {s}: {message}")),
            });
        }
    }

    /// The cached client-credentials token, or a new one when it is near expiry or `renew`.
    async fn token(&self, renew: bool) -> Result<String, ManagementError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && !renew
            && Instant::now() < token.renew_at
        {
            return Ok(token.value.clone());
        }
        let url = self.url(&["oauth", "token"]);
        let failed = |reason: String| ManagementError::Upstream {
            url: url.to_string(),
            reason,
        };
        let response = self
            .http
            .post(url.clone())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose()),
                ("audience", self.audience.as_str()),
            ])
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| failed(e.to_string()))?;
        if !status.is_success() {
            let message = error_message(&text, status);
            return Err(if status.is_client_error() {
                ManagementError::Credentials(format!(
                    "{url} refused OIDC_MANAGEMENT_API_CLIENT_ID/CLIENT_SECRET/AUDIENCE: {message}"
                ))
            } else {
                failed(format!("status {}: {message}", status.as_u16()))
            });
        }
        #[derive(Deserialize)]
        struct Granted {
            access_token: String,
            expires_in: Option<u64>,
        }
        let granted: Granted = serde_json::from_str(&text)
            .map_err(|e| failed(format!("unreadable token answer: {e}")))?;
        // Auth0's tokens last a day; one with no stated lifetime is used for one call only.
        let lifetime = Duration::from_secs(granted.expires_in.unwrap_or(0));
        *cached = Some(CachedToken {
            value: granted.access_token.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(RENEW_BEFORE),
        });
        Ok(granted.access_token)
    }
}

/// Auth0 errors are `{statusCode, error, message, errorCode}`; OAuth ones `{error, error_description}`.
fn error_message(body: &str, status: reqwest::StatusCode) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    field("message")
        .or_else(|| field("error_description"))
        .or_else(|| field("error"))
        .unwrap_or_else(|| {
            let text: String = body.chars().take(200).collect();
            if text.trim().is_empty() {
                status.to_string()
            } else {
                text
            }
        })
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(link_account))
        .routes(routes!(unlink_account))
        .routes(routes!(enroll_in_sms_mfa))
}

/// The management client, for a caller logged in with the issuer's token.
fn management<'a>(state: &'a AppState, ctx: &AuthContext) -> ApiResult<&'a ManagementClient> {
    let client = state.oidc_management.as_deref().ok_or_else(|| {
        ApiError::NotImplemented(
            "Linked accounts and MFA enrolment need the identity provider's management API: \
             set OIDC_MANAGEMENT_API_ENABLED=true (with OIDC_MANAGEMENT_API_CLIENT_ID, \
             OIDC_MANAGEMENT_API_CLIENT_SECRET and OIDC_MANAGEMENT_API_AUDIENCE)"
                .into(),
        )
    })?;
    if ctx.api_key_id.is_some() {
        return Err(ApiError::Forbidden(
            "This call changes the user's identity: authenticate with the user's login token, \
             not an API key"
                .into(),
        ));
    }
    Ok(client)
}

/// `CreateLinkedAccount`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateLinkedAccount {
    provider: String,
    user_id: String,
}

fn non_empty<'a>(field: &str, value: &'a str) -> ApiResult<&'a str> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::BadRequest(format!("{field}: must not be empty")));
    }
    Ok(value)
}

#[utoipa::path(post, path = "/users/linked-accounts", tag = "users", operation_id = "linkAccount",
    responses((status = 204, description = "Account linked successfully")))]
async fn link_account(
    State(state): State<AppState>,
    ctx: AuthContext,
    JsonBody(body): JsonBody<CreateLinkedAccount>,
) -> ApiResult<StatusCode> {
    let client = management(&state, &ctx)?;
    let provider = non_empty("provider", &body.provider)?;
    let user_id = non_empty("userId", &body.user_id)?;
    client.link(&ctx.user_id, provider, user_id).await?;
    tracing::info!(user = %ctx.user_id, provider, "account linked");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/users/linked-accounts/{provider}/{providerUserId}", tag = "users",
    operation_id = "unlinkAccount",
    params(("provider" = String, Path), ("providerUserId" = String, Path)),
    responses((status = 204, description = "Account unlinked successfully")))]
async fn unlink_account(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((provider, provider_user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let client = management(&state, &ctx)?;
    client
        .unlink(&ctx.user_id, &provider, &provider_user_id)
        .await?;
    tracing::info!(user = %ctx.user_id, provider, "account unlinked");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/users/mfa/sms/enroll", tag = "users", operation_id = "enrollInSmsMfa",
    responses((status = 200, description = "SMS MFA enrollment URL", body = String)))]
async fn enroll_in_sms_mfa(
    State(state): State<AppState>,
    ctx: AuthContext,
) -> ApiResult<Json<String>> {
    let client = management(&state, &ctx)?;
    Ok(Json(client.sms_enrolment_url(&ctx.user_id).await?))
}
