//! `GET /api/config`: the deployment's public settings (SDK 0.226.1's `DaytonaConfiguration`),
//! served without authentication as upstream does: dashboards and CLIs read it before login.
//!
//! Only values meant for clients appear: no secrets (the PostHog key is a `Secret` in the
//! configuration, so `posthog` is left out), no billing or analytics services (this server has
//! none). Without an OIDC issuer the required `oidc` object is present with empty values and
//! provider `none`, which the SDK's model accepts and which says no browser login exists.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PublicConfiguration {
    /// This server's version.
    pub version: String,
    pub oidc: Oidc,
    pub linked_accounts_enabled: bool,
    /// Keyed by id; this server makes no announcements.
    pub announcements: BTreeMap<String, Announcement>,
    pub proxy_template_url: String,
    pub proxy_toolbox_url: String,
    pub default_snapshot: String,
    pub dashboard_url: String,
    /// Minutes.
    pub max_auto_archive_interval: i64,
    /// Upstream's spelling.
    pub maintanance_mode: bool,
    pub environment: String,
    pub ssh_gateway_command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_gateway_public_key: Option<String>,
    pub rate_limit: RateLimits,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Oidc {
    /// The issuer as browsers reach it (`PUBLIC_OIDC_DOMAIN`).
    pub issuer: String,
    pub client_id: String,
    pub audience: String,
    /// `oidc` (a standard issuer such as Dex) or `none`.
    pub provider: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Announcement {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learn_more_url: Option<String>,
}

/// The configured request limits (a limit that is off is left out).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_auth: Option<RateLimitEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<RateLimitEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_create: Option<RateLimitEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_lifecycle: Option<RateLimitEntry>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RateLimitEntry {
    /// Seconds.
    pub ttl: u64,
    pub limit: u32,
}

impl From<&daytona_config::RateLimit> for RateLimitEntry {
    fn from(l: &daytona_config::RateLimit) -> Self {
        RateLimitEntry {
            ttl: l.ttl.as_secs(),
            limit: l.limit,
        }
    }
}

impl PublicConfiguration {
    pub fn new(config: &daytona_config::Config) -> Self {
        let oidc = match &config.oidc {
            Some(o) => Oidc {
                issuer: o.public_domain.clone(),
                client_id: o.client_id.clone(),
                audience: o.audience.clone(),
                provider: "oidc".into(),
            },
            None => Oidc {
                issuer: String::new(),
                client_id: String::new(),
                audience: String::new(),
                provider: "none".into(),
            },
        };
        let limits = &config.rate_limits;
        PublicConfiguration {
            version: env!("CARGO_PKG_VERSION").into(),
            oidc,
            linked_accounts_enabled: config
                .oidc
                .as_ref()
                .is_some_and(|o| o.management_api.is_some()),
            announcements: BTreeMap::new(),
            proxy_template_url: config.proxy.template_url.clone(),
            proxy_toolbox_url: config.toolbox_proxy_url(),
            default_snapshot: config.api.default_snapshot.clone(),
            dashboard_url: config.api.dashboard_url.clone(),
            max_auto_archive_interval: config.api.max_auto_archive_interval.into(),
            maintanance_mode: config.api.maintenance_mode,
            environment: config.misc.environment.clone(),
            ssh_gateway_command: config.ssh_gateway.command.clone(),
            ssh_gateway_public_key: config.ssh_gateway.public_key.clone(),
            rate_limit: RateLimits {
                failed_auth: limits.failed_auth.as_ref().map(Into::into),
                authenticated: limits.authenticated.as_ref().map(Into::into),
                sandbox_create: limits.sandbox_create.as_ref().map(Into::into),
                sandbox_lifecycle: limits.sandbox_lifecycle.as_ref().map(Into::into),
            },
        }
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_config))
}

/// Public: no credentials needed.
#[utoipa::path(
    get,
    path = "/config",
    tag = "config",
    operation_id = "config_get",
    security(())
)]
async fn get_config(State(state): State<AppState>) -> Json<PublicConfiguration> {
    Json(state.configuration.as_ref().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> daytona_config::Config {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        daytona_config::Config::from_lookup(|name| vars.get(name).cloned()).expect("valid config")
    }

    #[test]
    fn fields_come_from_the_configuration() {
        let c = PublicConfiguration::new(&config(&[
            ("OIDC_ISSUER_BASE_URL", "http://dex:5556/dex"),
            ("PUBLIC_OIDC_DOMAIN", "https://login.example.com/dex"),
            ("OIDC_CLIENT_ID", "web"),
            ("OIDC_AUDIENCE", "api"),
            ("MAINTENANCE_MODE", "true"),
            ("MAX_AUTO_ARCHIVE_INTERVAL", "600"),
            ("ENVIRONMENT", "production"),
            ("RATE_LIMIT_SANDBOX_CREATE_TTL", "60"),
            ("RATE_LIMIT_SANDBOX_CREATE_LIMIT", "5"),
        ]));
        assert_eq!(c.oidc.issuer, "https://login.example.com/dex");
        assert_eq!(
            (c.oidc.client_id.as_str(), c.oidc.audience.as_str()),
            ("web", "api")
        );
        assert!(c.maintanance_mode);
        assert_eq!(c.max_auto_archive_interval, 600);
        assert_eq!(c.environment, "production");
        assert_eq!(
            c.rate_limit.sandbox_create,
            Some(RateLimitEntry { ttl: 60, limit: 5 })
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["maintananceMode"], true);
        assert!(json["rateLimit"].get("authenticated").is_none());
    }

    #[test]
    fn without_oidc_the_required_object_says_none() {
        let c = PublicConfiguration::new(&config(&[]));
        assert_eq!(c.oidc.provider, "none");
        assert!(c.oidc.issuer.is_empty());
        let json = serde_json::to_value(&c).unwrap();
        for field in [
            "version",
            "oidc",
            "linkedAccountsEnabled",
            "announcements",
            "proxyTemplateUrl",
            "proxyToolboxUrl",
            "defaultSnapshot",
            "dashboardUrl",
            "maxAutoArchiveInterval",
            "maintananceMode",
            "environment",
        ] {
            assert!(json.get(field).is_some(), "{field} missing");
        }
    }
}
