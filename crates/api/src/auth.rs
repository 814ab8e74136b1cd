//! Authentication: API keys, and with an OIDC issuer configured users' tokens (`oidc.rs`).
//!
//! Keys look like `dtn_<64 hex>`; only their SHA-256 is stored (keys are high-entropy, so a
//! plain digest is enough and keeps every request's lookup one indexed query).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::ApiError;
use crate::store::{NewApiKey, Store};

pub const KEY_PREFIX: &str = "dtn_";
/// Selects the organization a user's token acts in.
pub const ORGANIZATION_HEADER: &str = "x-daytona-organization-id";

/// A user's role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    Owner,
    Member,
}

impl MemberRole {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "owner" => Some(MemberRole::Owner),
            "member" => Some(MemberRole::Member),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Owner => "owner",
            MemberRole::Member => "member",
        }
    }
}

/// Who is calling: resolved from the bearer credential.
#[derive(Debug, Clone)]
pub struct AuthContext {
    /// The organization the call acts in (an API key's own; for a user's token the one
    /// `X-Daytona-Organization-ID` names, or the personal one).
    pub organization_id: String,
    pub user_id: String,
    /// None for a user's token.
    pub api_key_id: Option<String>,
    /// Effective permissions: the key's, narrowed to the member's assigned roles unless the
    /// user owns the organization (a user's token: all for owners, the roles' for members);
    /// `*` grants all.
    pub permissions: Vec<String>,
    pub member_role: MemberRole,
    /// System role `admin` (the `/admin` routes).
    pub system_admin: bool,
}

impl AuthContext {
    /// Refuses with 403 naming the permission the caller's key lacks.
    pub fn require(&self, permission: &str) -> Result<(), ApiError> {
        if self.permissions.iter().any(|p| p == "*" || p == permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "This API key lacks the '{permission}' permission"
            )))
        }
    }

    /// Refuses with 403 unless the caller is a system administrator.
    pub fn require_system_admin(&self) -> Result<(), ApiError> {
        if self.system_admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "This route is reserved for system administrators".into(),
            ))
        }
    }
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Resolves a bearer token to its organization, user and effective permissions. A key whose
/// user has left its organization (or whose organization was deleted) is invalid.
pub async fn authenticate(store: &Store, token: &str) -> Result<AuthContext, ApiError> {
    let credential = store
        .api_key_credential(&hash_key(token))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("Invalid API key".into()))?;
    let key = credential.key;
    if let Some(expires) = key.expires_at.as_deref()
        && chrono::DateTime::parse_from_rfc3339(expires).is_ok_and(|t| t < chrono::Utc::now())
    {
        return Err(ApiError::Unauthorized("API key has expired".into()));
    }
    // Record use at most once a minute: a write per request would cost more than the request.
    let stale = key
        .last_used_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    if stale.is_none_or(|t| {
        chrono::Utc::now() - t.with_timezone(&chrono::Utc) > chrono::Duration::minutes(1)
    }) {
        let _ = store.touch_api_key(&key.id).await;
    }
    let member_role = MemberRole::parse(&credential.member_role).ok_or_else(|| {
        ApiError::Internal(format!("unknown member role '{}'", credential.member_role))
    })?;
    let key_permissions: Vec<String> = key.permissions.split(',').map(str::to_string).collect();
    // Owners hold every permission; a member holds those of its assigned roles, and a key never
    // grants more than its user holds now (a demotion takes effect on existing keys).
    let permissions = match member_role {
        MemberRole::Owner => key_permissions,
        MemberRole::Member => {
            let held = store
                .assigned_permissions(&key.organization_id, &key.user_id)
                .await?;
            if key_permissions.iter().any(|p| p == "*") {
                held
            } else {
                key_permissions
                    .into_iter()
                    .filter(|p| held.contains(p))
                    .collect()
            }
        }
    };
    Ok(AuthContext {
        organization_id: key.organization_id,
        user_id: key.user_id,
        api_key_id: Some(key.id),
        permissions,
        member_role,
        system_admin: credential.system_role == "admin",
    })
}

/// The caller's address for per-client rate limits (`ConnectInfo` of the connection).
pub fn client_address(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Resolves a bearer credential: a user's token (a JWT, when an OIDC issuer is configured)
/// acting in `requested_org` or the user's personal organization, otherwise an API key, which
/// acts in its own organization whatever `requested_org` says.
pub async fn authenticate_bearer(
    state: &AppState,
    token: &str,
    requested_org: Option<&str>,
) -> Result<AuthContext, ApiError> {
    match &state.oidc {
        Some(provider) if daytona_oidc::looks_like_jwt(token) => {
            crate::oidc::authenticate(state, provider, token, requested_org).await
        }
        _ => authenticate(&state.store, token).await,
    }
}

/// [`authenticate_bearer`], counted against the rate limits: per organization when the token
/// is valid, per client address when it is not.
pub async fn authenticate_limited(
    state: &AppState,
    token: &str,
    requested_org: Option<&str>,
    client: &str,
) -> Result<AuthContext, ApiError> {
    use crate::rate_limit::Kind;
    match authenticate_bearer(state, token, requested_org).await {
        Ok(ctx) => {
            state
                .rate_limits
                .check(Kind::Authenticated, &ctx.organization_id)
                .await?;
            Ok(ctx)
        }
        Err(e @ ApiError::Unauthorized(_)) => {
            state.rate_limits.check(Kind::FailedAuth, client).await?;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

impl FromRequestParts<AppState> for AuthContext {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        use crate::rate_limit::Kind;
        let client = client_address(&parts.extensions);
        let Some(token) = bearer(&parts.headers) else {
            state.rate_limits.check(Kind::Anonymous, &client).await?;
            return Err(ApiError::Unauthorized(
                "Missing credentials: send 'Authorization: Bearer <API key or token>'".into(),
            ));
        };
        // An API key acts only in its own organization. As upstream, `X-Daytona-Organization-ID`
        // selects the organization for user logins (JWT) only and is ignored for keys: SDK 0.226.1
        // even puts an SSH token there (`revoke_ssh_access(id, token)` fills the header slot).
        let requested_org = parts
            .headers
            .get(ORGANIZATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let ctx = authenticate_limited(state, token, requested_org, &client).await?;
        if let Some(slot) = parts.extensions.get::<crate::audit::AuditSlot>() {
            slot.record(&ctx);
        }
        Ok(ctx)
    }
}

/// `admin` for the first admin key, `admin-<digest prefix>` for keys added later.
async fn admin_key_name(
    store: &Store,
    org: &str,
    user: &str,
    hash: &str,
) -> Result<String, ApiError> {
    Ok(match store.api_key_by_name(org, user, "admin").await? {
        None => "admin".to_string(),
        Some(_) => format!("admin-{}", &hash[..8]),
    })
}

/// First-start setup: the admin user, its personal organization and its API key.
///
/// `ADMIN_API_KEY` is used when set; otherwise a key is generated and returned so the caller can
/// print it once. On later starts a configured `ADMIN_API_KEY` that is not stored yet is added,
/// so changing the variable never locks the operator out.
pub async fn ensure_admin(
    store: &Store,
    configured_key: Option<&str>,
    quotas: &daytona_config::Quotas,
) -> Result<Option<String>, ApiError> {
    let (org_id, user_id, generated) = match store.admin_organization().await? {
        Some((org, user)) => (org, user, None),
        None => {
            let user_id = "daytona-admin".to_string();
            let org = store
                .create_user_with_personal_org(&user_id, "Daytona Admin", "admin")
                .await?;
            // Quotas are set once, at initial setup (`ADMIN_*` as upstream).
            store.set_organization_quotas(&org, &quotas.into()).await?;
            let generated = configured_key.is_none().then(generate_key);
            (org, user_id, generated)
        }
    };
    let Some(key) = configured_key
        .map(str::to_string)
        .or_else(|| generated.clone())
    else {
        return Ok(None);
    };
    let hash = hash_key(&key);
    if store.api_key_by_hash(&hash).await?.is_none() {
        let prefix: String = key.chars().take(8).collect();
        store
            .insert_api_key(NewApiKey {
                organization_id: &org_id,
                user_id: &user_id,
                name: &admin_key_name(store, &org_id, &user_id, &hash).await?,
                key_hash: &hash,
                key_prefix: &prefix,
                permissions: "*",
                expires_at: None,
            })
            .await?;
    }
    Ok(generated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_prefixed_and_unique() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_ne!(a, b);
        assert_ne!(hash_key(&a), hash_key(&b));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[tokio::test]
    async fn admin_setup_is_idempotent_and_honours_configured_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let generated = ensure_admin(&store, None, &daytona_config::Quotas::ADMIN)
            .await
            .unwrap()
            .expect("a key is generated at first start");
        let ctx = authenticate(&store, &generated).await.unwrap();
        assert_eq!(ctx.user_id, "daytona-admin");
        assert!(
            ensure_admin(&store, None, &daytona_config::Quotas::ADMIN)
                .await
                .unwrap()
                .is_none(),
            "printed only once"
        );
        assert!(
            ensure_admin(
                &store,
                Some("dtn_configured"),
                &daytona_config::Quotas::ADMIN
            )
            .await
            .unwrap()
            .is_none()
        );
        let ctx2 = authenticate(&store, "dtn_configured").await.unwrap();
        assert_eq!(ctx.organization_id, ctx2.organization_id);
        assert!(matches!(
            authenticate(&store, "nope").await,
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[tokio::test]
    async fn member_keys_hold_only_assigned_permissions_and_die_with_membership() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store
            .create_user_with_personal_org("owner", "Owner", "user")
            .await
            .unwrap();
        store
            .create_user_with_personal_org("dev", "Dev", "user")
            .await
            .unwrap();
        let org = store
            .create_organization("team", "owner", "us", &Default::default())
            .await
            .unwrap();
        let developer = "00000000-0000-0000-0000-000000000001".to_string();
        store
            .create_invitation(crate::store::NewInvitation {
                organization_id: &org,
                email: "dev@example.com",
                invited_by: "owner",
                role: "member",
                role_ids: std::slice::from_ref(&developer),
                expires_at: "2999-01-01T00:00:00.000Z",
            })
            .await
            .unwrap();
        let invitation = store
            .pending_invitations_for("dev@example.com", &crate::store::now())
            .await
            .unwrap()
            .remove(0);
        assert!(store.accept_invitation(&invitation, "dev").await.unwrap());
        assert!(
            !store.accept_invitation(&invitation, "dev").await.unwrap(),
            "accepted once"
        );
        let key = generate_key();
        store
            .insert_api_key(NewApiKey {
                organization_id: &org,
                user_id: "dev",
                name: "k",
                key_hash: &hash_key(&key),
                key_prefix: &key[..8],
                permissions: "*",
                expires_at: None,
            })
            .await
            .unwrap();
        let ctx = authenticate(&store, &key).await.unwrap();
        assert_eq!(ctx.member_role, MemberRole::Member);
        assert_eq!(ctx.permissions, vec!["write:sandboxes".to_string()]);
        assert!(ctx.require("write:sandboxes").is_ok());
        assert!(ctx.require("delete:sandboxes").is_err());

        store.remove_member(&org, "dev").await.unwrap();
        assert!(matches!(
            authenticate(&store, &key).await,
            Err(ApiError::Unauthorized(_))
        ));
    }
}
