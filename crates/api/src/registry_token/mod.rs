//! The API as the Docker token-auth server of the transient and internal registries
//! (distribution's `auth: token:`; the Docker registry v2 token spec).
//!
//! `GET /docker-registry/registry-push-access` gives a user a temporary credential (an hour)
//! for its organization's part of the transient registry, `{project}/{organization id}/…`;
//! only its SHA-256 is stored. The registry sends clients to the realm,
//! `GET /docker-registry/token`, with basic auth and the `scope`s they need; the answer is a
//! short-lived ES256 JWT (`iss`, `aud` = the service, `access` = what was granted of what was
//! asked). The configured registry administrators (`TRANSIENT_REGISTRY_ADMIN`,
//! `INTERNAL_REGISTRY_ADMIN`, the runners' credentials) get everything they ask for; a temporary
//! credential gets `pull`/`push` in its organization's repositories and nothing else.

mod keys;
pub mod routes;

use std::path::Path;

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use daytona_config::{Config, RegistryConfig, RegistryTokenAuth};
use rand::RngExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use keys::{SigningKey, key_paths, libtrust_key_id};

use crate::error::ApiError;
use crate::store::{RegistryCredentialRow, Store};

/// How long a temporary push credential is valid (upstream's robot accounts: one hour).
pub const PUSH_ACCESS_TTL: ChronoDuration = ChronoDuration::hours(1);
const USERNAME_PREFIX: &str = "daytona-push-";

#[derive(Debug, thiserror::Error)]
pub enum RegistryTokenError {
    #[error("registry token signing key {0}")]
    Key(String),
}

/// `RegistryPushAccessDto`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryPushAccess {
    pub username: String,
    pub secret: String,
    /// `host[:port]` of the registry.
    pub registry_url: String,
    pub registry_id: String,
    /// Where the credential may push: `{project}/{organization id}`.
    pub project: String,
    pub expires_at: String,
}

/// One `type:name:actions` entry of a token request's `scope`, or of a token's `access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    /// Parses one scope; the name may hold `:` (a `host:port/` prefix), the type may carry a
    /// class (`repository(plugin)`).
    pub fn parse(scope: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::BadRequest(format!("scope: '{scope}' is not type:name:actions"));
        let (kind, rest) = scope.split_once(':').ok_or_else(bad)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
        if kind.is_empty() || name.is_empty() {
            return Err(bad());
        }
        Ok(Access {
            kind: kind.split('(').next().unwrap_or(kind).to_owned(),
            name: name.to_owned(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// Who asked for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A configured registry administrator (the transient registry's, or the runners').
    Administrator(String),
    /// A temporary push credential of one organization.
    Organization {
        username: String,
        organization_id: String,
    },
}

impl Principal {
    fn subject(&self) -> &str {
        match self {
            Principal::Administrator(name) => name,
            Principal::Organization { username, .. } => username,
        }
    }
}

/// A token answer (both names: older clients read `token`, OAuth2 ones `access_token`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    nbf: i64,
    iat: i64,
    jti: String,
    access: &'a [Access],
}

pub struct RegistryTokens {
    store: Store,
    auth: RegistryTokenAuth,
    key: SigningKey,
    transient: Option<RegistryConfig>,
    /// (username, password) of the configured registry administrators.
    administrators: Vec<(String, String)>,
}

impl RegistryTokens {
    /// The token server `config` describes, or `None` without `DAYTONA_REGISTRY_TOKEN_REALM`.
    pub fn from_config(store: Store, config: &Config) -> Result<Option<Self>, RegistryTokenError> {
        let Some(auth) = config.registries.token_auth.clone() else {
            return Ok(None);
        };
        let (key_path, cert_path) = key_paths(&auth, &config.server.data_dir);
        let key = SigningKey::load_or_create(&key_path, &cert_path)?;
        let registries = [&config.registries.transient, &config.registries.internal];
        let administrators = registries
            .into_iter()
            .flatten()
            .map(|r| (r.admin.clone(), r.password.expose().to_owned()))
            .collect();
        Ok(Some(RegistryTokens {
            store,
            auth,
            key,
            transient: config.registries.transient.clone(),
            administrators,
        }))
    }

    /// A temporary credential for `organization_id`'s repositories of the transient registry.
    pub async fn push_access(
        &self,
        organization_id: &str,
        user_id: &str,
    ) -> Result<RegistryPushAccess, ApiError> {
        let registry = self.transient.as_ref().ok_or_else(|| {
            ApiError::Unavailable(
                "no transient registry is configured (TRANSIENT_REGISTRY_URL)".into(),
            )
        })?;
        let (_, host) = registry.host().ok_or_else(|| {
            ApiError::Internal(format!(
                "TRANSIENT_REGISTRY_URL '{}' names no host",
                registry.url
            ))
        })?;
        let now = Utc::now();
        let expires = now + PUSH_ACCESS_TTL;
        let random: [u8; 32] = rand::rng().random();
        let secret = hex::encode(random);
        let username = format!(
            "{USERNAME_PREFIX}{}",
            &hex::encode(Sha256::digest(random))[..16]
        );
        let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        self.store
            .delete_expired_registry_credentials(&stamp(now))
            .await?;
        self.store
            .insert_registry_credential(&RegistryCredentialRow {
                username: username.clone(),
                secret_hash: hex::encode(Sha256::digest(secret.as_bytes())),
                organization_id: organization_id.to_owned(),
                created_by: user_id.to_owned(),
                created_at: stamp(now),
                expires_at: stamp(expires),
            })
            .await?;
        tracing::info!(%username, organization_id, "issued transient registry push access");
        Ok(RegistryPushAccess {
            username,
            secret,
            registry_id: registry_id(&registry.url),
            registry_url: host,
            project: organization_project(&registry.project_id, organization_id),
            expires_at: stamp(expires),
        })
    }

    /// Who `username`/`password` is; unknown, wrong and expired credentials are refused alike.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Principal, ApiError> {
        let refused = || ApiError::Unauthorized("invalid registry credentials".into());
        if self
            .administrators
            .iter()
            .any(|(user, pass)| user == username && constant_time_eq(pass, password))
        {
            return Ok(Principal::Administrator(username.to_owned()));
        }
        if !username.starts_with(USERNAME_PREFIX) {
            return Err(refused());
        }
        let row = self
            .store
            .live_registry_credential(username, &crate::store::now())
            .await?
            .ok_or_else(refused)?;
        let hash = hex::encode(Sha256::digest(password.as_bytes()));
        if !constant_time_eq(&row.secret_hash, &hash) {
            return Err(refused());
        }
        Ok(Principal::Organization {
            username: row.username,
            organization_id: row.organization_id,
        })
    }

    /// What `principal` gets of `requested`: entries granting nothing are left out.
    pub fn grant(&self, principal: &Principal, requested: &[Access]) -> Vec<Access> {
        let mut granted: Vec<Access> = Vec::new();
        for want in requested {
            let allowed: &[&str] = match principal {
                Principal::Administrator(_) => match want.kind.as_str() {
                    "repository" => &["pull", "push", "delete", "*"],
                    "registry" => &["*"],
                    _ => &[],
                },
                Principal::Organization {
                    organization_id, ..
                } => {
                    let own = match &self.transient {
                        Some(registry) => format!(
                            "{}/",
                            organization_project(&registry.project_id, organization_id)
                        ),
                        None => String::new(),
                    };
                    if want.kind == "repository" && !own.is_empty() && want.name.starts_with(&own) {
                        &["pull", "push"]
                    } else {
                        &[]
                    }
                }
            };
            let actions: Vec<String> = want
                .actions
                .iter()
                .filter(|a| allowed.contains(&a.as_str()))
                .cloned()
                .collect();
            if actions.is_empty() {
                continue;
            }
            match granted
                .iter_mut()
                .find(|g| g.kind == want.kind && g.name == want.name)
            {
                Some(entry) => {
                    for action in actions {
                        if !entry.actions.contains(&action) {
                            entry.actions.push(action);
                        }
                    }
                }
                None => granted.push(Access {
                    kind: want.kind.clone(),
                    name: want.name.clone(),
                    actions,
                }),
            }
        }
        granted
    }

    /// A signed token for `principal` holding `access`, for `service` (which must be ours).
    pub fn issue(
        &self,
        principal: &Principal,
        service: Option<&str>,
        access: &[Access],
    ) -> Result<TokenResponse, ApiError> {
        if let Some(service) = service
            && service != self.auth.service
        {
            return Err(ApiError::BadRequest(format!(
                "service: '{service}' is not this token server's service '{}'",
                self.auth.service
            )));
        }
        let now = Utc::now();
        let ttl = self.auth.token_ttl.as_secs();
        let jti: [u8; 16] = rand::rng().random();
        let claims = Claims {
            iss: &self.auth.issuer,
            sub: principal.subject(),
            aud: &self.auth.service,
            exp: now.timestamp() + ttl as i64,
            nbf: now.timestamp(),
            iat: now.timestamp(),
            jti: hex::encode(jti),
            access,
        };
        let token = self
            .key
            .sign(&claims)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: ttl,
            issued_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
        })
    }
}

/// The repository prefix of one organization in a registry project.
fn organization_project(project: &str, organization_id: &str) -> String {
    format!("{project}/{organization_id}")
}

/// A stable id for the registry at `url` (there is no registry table): UUID-shaped bytes of
/// its digest.
fn registry_id(url: &str) -> String {
    let digest = Sha256::digest(format!("transient-registry:{url}").as_bytes());
    let bytes: [u8; 16] = digest[..16].try_into().expect("a digest has 16 bytes");
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The registry's `auth:` section for this token server (YAML), trusting `cert_path`.
pub fn registry_auth_config(auth: &RegistryTokenAuth, cert_path: &Path) -> String {
    format!(
        "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
        yaml_string(&auth.realm),
        yaml_string(&auth.service),
        yaml_string(&auth.issuer),
        yaml_string(&cert_path.display().to_string()),
    )
}

/// A double-quoted YAML scalar (JSON strings are valid YAML).
fn yaml_string(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

#[cfg(test)]
mod tests;
