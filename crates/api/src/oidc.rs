//! Users logged in through the OIDC issuer (`OIDC_ISSUER_BASE_URL`): `Authorization: Bearer
//! <JWT>` besides API keys. The token's `sub` is the user id; a user seen for the first time is
//! created with its personal organization, like an administrator-created one. A request acts in
//! the organization `X-Daytona-Organization-ID` names (the user must be a member) or, without
//! it, in the user's personal organization, with the member's permissions (owners all).

use daytona_oidc::{Claims, OidcError, Provider};

use crate::AppState;
use crate::auth::{AuthContext, MemberRole};
use crate::error::{ApiError, ApiResult};
use crate::store::{NewUser, UserRow};

/// Resolves a user's token to its context in `requested_org` (or its personal organization).
pub async fn authenticate(
    state: &AppState,
    provider: &Provider,
    token: &str,
    requested_org: Option<&str>,
) -> ApiResult<AuthContext> {
    let claims = provider.verify(token).await.map_err(|e| match e {
        OidcError::Token(e) => ApiError::Unauthorized(format!("Invalid token: {e}")),
        OidcError::Issuer(e) => ApiError::Unavailable(e.to_string()),
    })?;
    let user = user_for(state, &claims).await?;
    let organization_id = match requested_org {
        Some(org) => org.to_string(),
        None => crate::users::personal_organization(state, &user.id).await?,
    };
    // As for any route naming another organization: to non-members it does not exist.
    let member_role = state
        .store
        .member_role(&organization_id, &user.id)
        .await?
        .and_then(|r| MemberRole::parse(&r))
        .ok_or_else(|| ApiError::NotFound(format!("Organization {organization_id} not found")))?;
    let permissions = match member_role {
        MemberRole::Owner => vec!["*".to_string()],
        MemberRole::Member => {
            state
                .store
                .assigned_permissions(&organization_id, &user.id)
                .await?
        }
    };
    Ok(AuthContext {
        organization_id,
        user_id: user.id,
        api_key_id: None,
        permissions,
        member_role,
        system_admin: user.role == "admin",
    })
}

/// The token's user, created at its first login.
async fn user_for(state: &AppState, claims: &Claims) -> ApiResult<UserRow> {
    if let Some(user) = state.store.user(&claims.sub).await? {
        return Ok(user);
    }
    let name = claims
        .name
        .as_deref()
        .or(claims.preferred_username.as_deref())
        .or(claims.email.as_deref())
        .unwrap_or(&claims.sub);
    let name: String = name.chars().take(255).collect();
    let settings = &state.organizations;
    let created = crate::users::provision(
        state,
        NewUser {
            id: &claims.sub,
            name: &name,
            email: claims.email.as_deref(),
            role: "user",
            quotas: &settings.default_quotas,
            default_region: Some(&settings.default_region),
        },
    )
    .await;
    match created {
        Ok(user) => {
            tracing::info!(user = %user.id, "user created at first OIDC login");
            Ok(user)
        }
        // A concurrent first request created it.
        Err(e) => state.store.user(&claims.sub).await?.ok_or(e),
    }
}
