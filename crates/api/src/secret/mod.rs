//! Organization secrets (`/api/secret`) and their use by sandboxes.
//!
//! A secret has a name (unique in its organization), a value (sealed at rest, [`seal`], and
//! never returned), an opaque `placeholder` made once at create, and the `hosts` the value may
//! be sent to (empty: any host). A sandbox mounts secrets as environment variables
//! (`secrets: [{"ENV": "secret-name"}]` at create, `PUT /sandbox/{id}/secrets` later) whose
//! values are the placeholders; the runner's egress proxy (`daytona_egress`) replaces a
//! placeholder by the value in requests to the secret's hosts, asking [`SecretService`] (as
//! its [`EgressDirectory`]) on every request, so updates and deletions apply at once.

pub mod routes;
pub mod seal;

use std::collections::{BTreeMap, HashSet};

use daytona_egress::{
    DirectoryError, EgressDirectory, EgressGrant, EgressPolicy, HostPattern, ResolvedSecret,
};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::store::{OrgSecretRow, SandboxRow, SecretFilter, Store, now};

/// Longest value accepted (bytes).
const MAX_VALUE_LEN: usize = 64 * 1024;
const MAX_DESCRIPTION_LEN: usize = 1024;
const MAX_HOSTS: usize = 100;
const MAX_NAME_LEN: usize = 255;

/// `Secret` as SDK 0.226.1 reads it; the value is never part of it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretDto {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub created_at: String,
    pub placeholder: String,
    pub hosts: Vec<String>,
    pub updated_at: String,
}

/// No `Debug`: it holds the value.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSecret {
    pub name: String,
    pub value: String,
    pub description: Option<String>,
    pub hosts: Option<Vec<String>>,
}

/// Omitted fields stay as they are. No `Debug`: it holds the value.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateSecret {
    pub value: Option<String>,
    pub description: Option<String>,
    pub hosts: Option<Vec<String>>,
}

/// One secret mounted in a sandbox (stored as JSON in its row). The placeholder is copied
/// because it never changes, so the runner's environment needs no lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretMount {
    pub env: String,
    pub secret_id: String,
    pub placeholder: String,
}

/// A sandbox's stored mounts (written by this module, so well-formed; unreadable means none).
pub fn parse_mounts(json: &str) -> Vec<SecretMount> {
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::error!(error = %e, "stored sandbox secrets are not valid JSON");
        Vec::new()
    })
}

/// The environment a sandbox's stored mounts give it: variable → placeholder.
pub fn mount_env(json: &str) -> BTreeMap<String, String> {
    parse_mounts(json)
        .into_iter()
        .map(|m| (m.env, m.placeholder))
        .collect()
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c == '-' || c.is_ascii_alphanumeric())
}

/// Checked, normalized host entries (lower case, duplicates dropped, order kept).
fn parse_hosts(hosts: &[String]) -> ApiResult<Vec<String>> {
    if hosts.len() > MAX_HOSTS {
        return Err(ApiError::BadRequest(format!(
            "hosts: at most {MAX_HOSTS} entries"
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, entry) in hosts.iter().enumerate() {
        let pattern = HostPattern::parse(entry)
            .map_err(|e| ApiError::BadRequest(format!("hosts[{i}]: {e}")))?
            .to_string();
        if seen.insert(pattern.clone()) {
            out.push(pattern);
        }
    }
    Ok(out)
}

fn check_value(value: &str) -> ApiResult<()> {
    if value.is_empty() {
        return Err(ApiError::BadRequest("value: must not be empty".into()));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(ApiError::BadRequest(format!(
            "value: at most {MAX_VALUE_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_description(description: Option<&str>) -> ApiResult<()> {
    match description {
        Some(d) if d.len() > MAX_DESCRIPTION_LEN => Err(ApiError::BadRequest(format!(
            "description: at most {MAX_DESCRIPTION_LEN} bytes"
        ))),
        _ => Ok(()),
    }
}

fn hosts_of(row: &OrgSecretRow) -> Vec<String> {
    serde_json::from_str(&row.hosts).unwrap_or_else(|e| {
        tracing::error!(secret = %row.id, error = %e, "stored secret hosts are not valid JSON");
        Vec::new()
    })
}

impl From<OrgSecretRow> for SecretDto {
    fn from(row: OrgSecretRow) -> Self {
        SecretDto {
            hosts: hosts_of(&row),
            id: row.id,
            name: row.name,
            description: row.description,
            created_at: row.created_at,
            placeholder: row.placeholder,
            updated_at: row.updated_at,
        }
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("Secret with ID {id} not found"))
}

pub struct SecretService {
    store: Store,
    sealer: seal::Sealer,
}

impl SecretService {
    /// `key` and `salt` are `ENCRYPTION_KEY` and `ENCRYPTION_SALT`.
    pub fn new(store: Store, key: &str, salt: &str) -> Self {
        SecretService {
            store,
            sealer: seal::Sealer::new(key, salt),
        }
    }

    pub async fn create(&self, org: &str, body: CreateSecret) -> ApiResult<SecretDto> {
        if !is_valid_name(&body.name) {
            return Err(ApiError::BadRequest(format!(
                "name: '{}' is invalid; it must start with a letter or '_' and contain only \
                 letters, digits, '_' and '-' (at most {MAX_NAME_LEN})",
                body.name
            )));
        }
        check_value(&body.value)?;
        check_description(body.description.as_deref())?;
        let hosts = parse_hosts(body.hosts.as_deref().unwrap_or_default())?;
        let conflict =
            || ApiError::Conflict(format!("Secret with name {} already exists", body.name));
        if self
            .store
            .org_secret_by_name(org, &body.name)
            .await?
            .is_some()
        {
            return Err(conflict());
        }
        let id = uuid::Uuid::new_v4().to_string();
        let ts = now();
        let row = OrgSecretRow {
            value_sealed: self.sealer.seal(org, &id, &body.value),
            id,
            organization_id: org.to_owned(),
            name: body.name.clone(),
            description: body.description.clone(),
            placeholder: daytona_egress::new_placeholder(),
            hosts: serde_json::to_string(&hosts).expect("strings serialize"),
            created_at: ts.clone(),
            updated_at: ts,
        };
        self.store
            .insert_org_secret(&row)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => conflict(),
                e => e.into(),
            })?;
        tracing::info!(secret = %row.id, name = %row.name, "secret created");
        Ok(row.into())
    }

    pub async fn get(&self, org: &str, id: &str) -> ApiResult<SecretDto> {
        self.store
            .org_secret(org, id)
            .await?
            .map(Into::into)
            .ok_or_else(|| not_found(id))
    }

    /// One page and the total; `more` tells whether another page follows.
    pub async fn list(
        &self,
        org: &str,
        filter: &SecretFilter,
    ) -> ApiResult<(Vec<SecretDto>, i64, bool)> {
        let (mut rows, total) = self.store.list_org_secrets(org, filter).await?;
        let more = rows.len() as i64 > filter.limit;
        rows.truncate(filter.limit as usize);
        Ok((rows.into_iter().map(Into::into).collect(), total, more))
    }

    pub async fn update(&self, org: &str, id: &str, body: UpdateSecret) -> ApiResult<SecretDto> {
        let mut row = self
            .store
            .org_secret(org, id)
            .await?
            .ok_or_else(|| not_found(id))?;
        if let Some(value) = &body.value {
            check_value(value)?;
            row.value_sealed = self.sealer.seal(org, id, value);
        }
        if let Some(description) = body.description {
            check_description(Some(&description))?;
            row.description = Some(description);
        }
        if let Some(hosts) = &body.hosts {
            row.hosts = serde_json::to_string(&parse_hosts(hosts)?).expect("strings serialize");
        }
        row.updated_at = now();
        self.store.update_org_secret(&row).await?;
        tracing::info!(secret = %row.id, value_changed = body.value.is_some(), "secret updated");
        Ok(row.into())
    }

    pub async fn delete(&self, org: &str, id: &str) -> ApiResult<()> {
        if !self.store.delete_org_secret(org, id).await? {
            return Err(not_found(id));
        }
        tracing::info!(secret = %id, "secret deleted");
        Ok(())
    }

    /// The store behind the service (for the sandbox routes that mount secrets).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Checks a request's `secrets` (`[{"ENV": "secret-name"}, …]`) against `org`'s secrets and
/// the sandbox's own `env`, and resolves the names.
pub async fn resolve_mounts(
    store: &Store,
    org: &str,
    requested: &[BTreeMap<String, String>],
    env: &BTreeMap<String, String>,
) -> ApiResult<Vec<SecretMount>> {
    let mut mounts: Vec<SecretMount> = Vec::new();
    for entry in requested {
        for (var, name) in entry {
            if !crate::sandbox::service::is_valid_env_key(var) {
                return Err(ApiError::BadRequest(format!(
                    "secrets: '{var}' is not a valid environment variable name"
                )));
            }
            if env.contains_key(var) {
                return Err(ApiError::BadRequest(format!(
                    "secrets: {var} is also set in env; a variable holds either a value or a secret"
                )));
            }
            if mounts.iter().any(|m| m.env == *var) {
                return Err(ApiError::BadRequest(format!(
                    "secrets: {var} is given more than once"
                )));
            }
            let secret = store.org_secret_by_name(org, name).await?.ok_or_else(|| {
                ApiError::BadRequest(format!("secrets: secret '{name}' (for {var}) not found"))
            })?;
            mounts.push(SecretMount {
                env: var.clone(),
                secret_id: secret.id,
                placeholder: secret.placeholder,
            });
        }
    }
    Ok(mounts)
}

/// The egress policy stored with a sandbox (validated when it was set).
fn policy_of(row: &SandboxRow) -> Result<EgressPolicy, DirectoryError> {
    let allow_list = match row.network_allow_list.as_deref() {
        Some(list) => daytona_runtime::NetworkPolicy::parse_allow_list(list)
            .map_err(|e| DirectoryError(format!("sandbox {}: {e}", row.id)))?,
        None => Vec::new(),
    };
    Ok(EgressPolicy {
        block_all: row.network_block_all,
        allow_list,
    })
}

#[async_trait::async_trait]
impl EgressDirectory for SecretService {
    async fn grant(&self, sandbox_id: &str) -> Result<Option<EgressGrant>, DirectoryError> {
        let db = |e: sqlx::Error| DirectoryError(format!("database: {e}"));
        let Some(row) = self.store.sandbox_by_id(sandbox_id).await.map_err(db)? else {
            return Ok(None);
        };
        let policy = policy_of(&row)?;
        let mounts = parse_mounts(&row.secrets);
        let ids: Vec<String> = mounts.iter().map(|m| m.secret_id.clone()).collect();
        let mut secrets = Vec::with_capacity(ids.len());
        // Deleted secrets are simply gone: their placeholders are no longer replaced.
        for secret in self
            .store
            .org_secrets_by_ids(&row.organization_id, &ids)
            .await
            .map_err(db)?
        {
            let value = self
                .sealer
                .open(&secret.organization_id, &secret.id, &secret.value_sealed)
                .map_err(|e| DirectoryError(format!("secret {}: {e}", secret.id)))?;
            let hosts = hosts_of(&secret)
                .iter()
                .filter_map(|h| HostPattern::parse(h).ok())
                .collect();
            secrets.push(ResolvedSecret {
                placeholder: secret.placeholder,
                value,
                hosts,
            });
        }
        Ok(Some(EgressGrant { policy, secrets }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_sdk_pattern() {
        for good in ["a", "_x", "OPENAI_key-2"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "1a", "-a", "a.b", "a b", &"x".repeat(256)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_are_normalized_and_checked_by_index() {
        let hosts =
            parse_hosts(&["API.x.com".into(), "*.x.com".into(), "api.x.com".into()]).unwrap();
        assert_eq!(hosts, ["api.x.com", "*.x.com"]);
        let e = parse_hosts(&["a.com".into(), "b.com:443".into()]).unwrap_err();
        assert!(e.to_string().starts_with("hosts[1]: 'b.com:443'"), "{e}");
    }

    #[test]
    fn stored_mounts_become_the_environment() {
        let json = r#"[{"env":"TOKEN","secretId":"s1","placeholder":"daytona-secret-1"}]"#;
        assert_eq!(mount_env(json)["TOKEN"], "daytona-secret-1");
        assert!(mount_env("[]").is_empty());
    }
}
