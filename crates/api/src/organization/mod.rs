//! Organizations (`/api/organizations`): create, list, get, delete, leave, default region,
//! usage and quotas; members, roles and invitations live in the submodules, regions in
//! `regions.rs`.
//!
//! Tenancy rule: these routes act for the caller's user in the organization they name; a
//! non-member gets 404 (ids stay hidden). Resources (sandboxes, snapshots, keys, audit) are
//! only ever reached through a key of their own organization.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{AuthContext, MemberRole};
use crate::error::{ApiError, ApiResult};
use crate::json::JsonBody;
use crate::store::{OrgQuotas, OrganizationRow};

pub mod invitations;
pub mod members;
pub mod regions;
pub mod roles;

/// Most shared organizations one user may create (upstream's limit).
const MAX_CREATED_ORGANIZATIONS: i64 = 10;

/// Deployment-wide defaults for new organizations.
#[derive(Debug, Clone)]
pub struct OrganizationSettings {
    /// `DEFAULT_ORG_QUOTA_*`.
    pub default_quotas: OrgQuotas,
    /// `DEFAULT_REGION_ID`: the region of organizations that name none.
    pub default_region: String,
    /// Sends invitation mails when `SMTP_HOST` is set.
    pub mailer: Option<std::sync::Arc<crate::mail::Mailer>>,
}

/// Records the configured default region, so `GET /regions` and sandbox targets know it.
pub async fn ensure_default_region(
    store: &crate::Store,
    region: &daytona_config::RegionConfig,
) -> Result<(), sqlx::Error> {
    store
        .ensure_region(&region.id, &region.name, region.enforce_quotas)
        .await
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, delete))
        .routes(routes!(leave))
        .routes(routes!(set_default_region))
        .routes(routes!(usage))
        .routes(routes!(update_quota))
        .routes(routes!(update_region_quota))
        .merge(members::router())
        .merge(roles::router())
        .merge(invitations::router())
        .merge(regions::router())
}

/// The organization a route names and the caller's user's role in it.
pub(crate) struct OrgScope {
    pub row: OrganizationRow,
    pub role: MemberRole,
}

impl OrgScope {
    /// Refuses with 403 unless the caller's user owns this organization.
    pub fn require_owner(&self, action: &str) -> ApiResult<()> {
        match self.role {
            MemberRole::Owner => Ok(()),
            MemberRole::Member => Err(ApiError::Forbidden(format!(
                "Only owners of organization {} can {action}",
                self.row.id
            ))),
        }
    }
}

/// The organization a route names, if the caller's user is a member of it. Managing
/// organizations acts for the user (as upstream's path-named organization does), so any key of
/// a member works; to everyone else the organization does not exist.
pub(crate) async fn scope(
    state: &AppState,
    ctx: &AuthContext,
    organization_id: &str,
) -> ApiResult<OrgScope> {
    let role = state
        .store
        .member_role(organization_id, &ctx.user_id)
        .await?
        .and_then(|r| MemberRole::parse(&r))
        .ok_or_else(|| not_found(organization_id))?;
    let row = state
        .store
        .organization(organization_id)
        .await?
        .ok_or_else(|| not_found(organization_id))?;
    Ok(OrgScope { row, role })
}

fn not_found(organization_id: &str) -> ApiError {
    ApiError::NotFound(format!("Organization {organization_id} not found"))
}

/// `Organization`. Fields this server has no setting for carry what it actually does: no
/// per-organization rate limits (null), never suspended, snapshots never deactivated (0).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationDto {
    id: String,
    name: String,
    created_by: String,
    personal: bool,
    created_at: String,
    updated_at: String,
    default_region_id: String,
    max_cpu_per_sandbox: i64,
    max_memory_per_sandbox: i64,
    max_disk_per_sandbox: i64,
    snapshot_deactivation_timeout_minutes: i64,
    sandbox_limited_network_egress: bool,
    suspended: bool,
    suspended_at: Option<String>,
    suspension_reason: Option<String>,
    suspended_until: Option<String>,
    suspension_cleanup_grace_period_hours: i64,
    authenticated_rate_limit: Option<i64>,
    authenticated_rate_limit_ttl_seconds: Option<i64>,
    sandbox_create_rate_limit: Option<i64>,
    sandbox_create_rate_limit_ttl_seconds: Option<i64>,
    sandbox_lifecycle_rate_limit: Option<i64>,
    sandbox_lifecycle_rate_limit_ttl_seconds: Option<i64>,
    experimental_config: Option<serde_json::Value>,
    otel_config: Option<serde_json::Value>,
}

async fn to_dto(state: &AppState, row: OrganizationRow) -> ApiResult<OrganizationDto> {
    let quotas = state.store.organization_quotas(&row.id).await?;
    Ok(OrganizationDto {
        updated_at: row.updated_at.unwrap_or_else(|| row.created_at.clone()),
        default_region_id: row
            .default_region_id
            .unwrap_or_else(|| state.organizations.default_region.clone()),
        id: row.id,
        name: row.name,
        created_by: row.created_by,
        personal: row.personal,
        created_at: row.created_at,
        max_cpu_per_sandbox: quotas.max_cpu_per_sandbox,
        max_memory_per_sandbox: quotas.max_memory_per_sandbox,
        max_disk_per_sandbox: quotas.max_disk_per_sandbox,
        snapshot_deactivation_timeout_minutes: 0,
        sandbox_limited_network_egress: false,
        suspended: false,
        suspended_at: None,
        suspension_reason: None,
        suspended_until: None,
        suspension_cleanup_grace_period_hours: 0,
        authenticated_rate_limit: None,
        authenticated_rate_limit_ttl_seconds: None,
        sandbox_create_rate_limit: None,
        sandbox_create_rate_limit_ttl_seconds: None,
        sandbox_lifecycle_rate_limit: None,
        sandbox_lifecycle_rate_limit_ttl_seconds: None,
        experimental_config: None,
        otel_config: None,
    })
}

/// The organizations the caller's user belongs to.
#[utoipa::path(
    get,
    path = "/organizations",
    tag = "organizations",
    operation_id = "organization_list"
)]
async fn list(
    State(state): State<AppState>,
    ctx: AuthContext,
) -> ApiResult<Json<Vec<OrganizationDto>>> {
    let mut out = Vec::new();
    for row in state.store.organizations_of(&ctx.user_id).await? {
        out.push(to_dto(&state, row).await?);
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateOrganization {
    name: String,
    default_region_id: Option<String>,
}

/// A region id the organization may use, or 400 naming the known ones.
pub(crate) async fn known_region(
    state: &AppState,
    organization_id: &str,
    field: &str,
    region: &str,
) -> ApiResult<String> {
    region_of(&state.store, organization_id, field, region).await
}

/// Where a new sandbox of `organization_id` runs: the requested `target`, else the
/// organization's default region, else the deployment's.
pub async fn sandbox_region(
    store: &crate::Store,
    organization_id: &str,
    requested: Option<&str>,
    fallback: &str,
) -> ApiResult<String> {
    match requested {
        Some(region) => region_of(store, organization_id, "target", region).await,
        None => Ok(store
            .organization(organization_id)
            .await?
            .and_then(|o| o.default_region_id)
            .unwrap_or_else(|| fallback.to_string())),
    }
}

async fn region_of(
    store: &crate::Store,
    organization_id: &str,
    field: &str,
    region: &str,
) -> ApiResult<String> {
    if store.region(organization_id, region).await?.is_some() {
        return Ok(region.to_string());
    }
    let known: Vec<String> = store
        .regions(organization_id)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    Err(ApiError::BadRequest(format!(
        "{field}: unknown region '{region}'; available: {}",
        known.join(", ")
    )))
}

#[utoipa::path(
    post,
    path = "/organizations",
    tag = "organizations",
    operation_id = "organization_create"
)]
async fn create(
    State(state): State<AppState>,
    ctx: AuthContext,
    JsonBody(body): JsonBody<CreateOrganization>,
) -> ApiResult<(StatusCode, Json<OrganizationDto>)> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::BadRequest(
            "name: must be 1-255 characters".into(),
        ));
    }
    let region = match body.default_region_id.as_deref() {
        Some(region) => {
            known_region(&state, &ctx.organization_id, "defaultRegionId", region).await?
        }
        None => state.organizations.default_region.clone(),
    };
    let created = state.store.organizations_created_by(&ctx.user_id).await?;
    if created >= MAX_CREATED_ORGANIZATIONS {
        return Err(ApiError::Forbidden(format!(
            "Organization limit reached: a user can create at most {MAX_CREATED_ORGANIZATIONS} organizations"
        )));
    }
    let id = state
        .store
        .create_organization(
            name,
            &ctx.user_id,
            &region,
            &state.organizations.default_quotas,
        )
        .await?;
    let row = state
        .store
        .organization(&id)
        .await?
        .ok_or_else(|| ApiError::Internal("organization vanished after insert".into()))?;
    Ok((StatusCode::CREATED, Json(to_dto(&state, row).await?)))
}

#[utoipa::path(get, path = "/organizations/{organization_id}", tag = "organizations", operation_id = "organization_get_one", params(("organization_id" = String, Path)))]
async fn get_one(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
) -> ApiResult<Json<OrganizationDto>> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let row = &scoped.row;
    Ok(Json(to_dto(&state, row.clone()).await?))
}

/// Deletes a shared organization that holds no sandboxes or snapshots; its keys stop working.
#[utoipa::path(delete, path = "/organizations/{organization_id}", tag = "organizations", operation_id = "organization_delete", params(("organization_id" = String, Path)))]
async fn delete(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
) -> ApiResult<StatusCode> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let row = &scoped.row;
    scoped.require_owner("delete it")?;
    if row.personal {
        return Err(ApiError::Forbidden(
            "A personal organization cannot be deleted".into(),
        ));
    }
    let held = state.store.holdings(&row.id).await?;
    if held.sandboxes > 0 || held.snapshots > 0 {
        return Err(ApiError::Conflict(format!(
            "Organization {} still has {} sandbox(es) and {} snapshot(s); delete them first",
            row.id, held.sandboxes, held.snapshots
        )));
    }
    state.store.delete_organization(&row.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's user leaves the organization (its keys there stop working).
#[utoipa::path(post, path = "/organizations/{organization_id}/leave", tag = "organizations", operation_id = "organization_leave", params(("organization_id" = String, Path)))]
async fn leave(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
) -> ApiResult<StatusCode> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let row = &scoped.row;
    if row.personal {
        return Err(ApiError::Forbidden(
            "A personal organization cannot be left".into(),
        ));
    }
    members::ensure_owner_remains(&state, &row.id, &ctx.user_id).await?;
    state.store.remove_member(&row.id, &ctx.user_id).await?;
    state.sandboxes.invalidations().credentials();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DefaultRegion {
    default_region_id: String,
}

#[utoipa::path(patch, path = "/organizations/{organization_id}/default-region", tag = "organizations", operation_id = "organization_set_default_region", params(("organization_id" = String, Path)))]
async fn set_default_region(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
    JsonBody(body): JsonBody<DefaultRegion>,
) -> ApiResult<StatusCode> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let row = &scoped.row;
    scoped.require_owner("change its default region")?;
    let region = known_region(&state, &row.id, "defaultRegionId", &body.default_region_id).await?;
    state.store.set_default_region(&row.id, &region).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `RegionUsageOverview` of the one region this server runs sandboxes in.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RegionUsage {
    region_id: String,
    sandbox_class: &'static str,
    total_cpu_quota: i64,
    total_memory_quota: i64,
    total_disk_quota: i64,
    total_gpu_quota: i64,
    current_cpu_usage: i64,
    current_memory_usage: i64,
    current_disk_usage: i64,
    current_gpu_usage: i64,
    max_cpu_per_sandbox: Option<i64>,
    max_memory_per_sandbox: Option<i64>,
    max_disk_per_sandbox: Option<i64>,
    max_cpu_per_gpu_sandbox: Option<i64>,
    max_memory_per_gpu_sandbox: Option<i64>,
    max_disk_per_gpu_sandbox: Option<i64>,
    max_disk_per_non_ephemeral_sandbox: Option<i64>,
    allowed_gpu_types: Vec<String>,
}

/// `OrganizationUsageOverview`; a quota of 0 means unlimited.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageOverview {
    region_usage: Vec<RegionUsage>,
    total_snapshot_quota: i64,
    current_snapshot_usage: i64,
    total_volume_quota: i64,
    current_volume_usage: i64,
}

#[utoipa::path(get, path = "/organizations/{organization_id}/usage", tag = "organizations", operation_id = "organization_usage", params(("organization_id" = String, Path)))]
async fn usage(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
) -> ApiResult<Json<UsageOverview>> {
    let scoped = scope(&state, &ctx, &organization_id).await?;
    let row = &scoped.row;
    let quotas = state.store.organization_quotas(&row.id).await?;
    let used = state.store.resource_use(&row.id, None).await?;
    let snapshots = state.store.snapshot_count(&row.id).await?;
    let limit = |v: i64| (v > 0).then_some(v);
    Ok(Json(UsageOverview {
        region_usage: vec![RegionUsage {
            region_id: row
                .default_region_id
                .clone()
                .unwrap_or_else(|| state.organizations.default_region.clone()),
            sandbox_class: "container",
            total_cpu_quota: quotas.total_cpu_quota,
            total_memory_quota: quotas.total_memory_quota,
            total_disk_quota: quotas.total_disk_quota,
            total_gpu_quota: 0,
            current_cpu_usage: used.cpu,
            current_memory_usage: used.memory,
            current_disk_usage: used.disk,
            current_gpu_usage: 0,
            max_cpu_per_sandbox: limit(quotas.max_cpu_per_sandbox),
            max_memory_per_sandbox: limit(quotas.max_memory_per_sandbox),
            max_disk_per_sandbox: limit(quotas.max_disk_per_sandbox),
            max_cpu_per_gpu_sandbox: None,
            max_memory_per_gpu_sandbox: None,
            max_disk_per_gpu_sandbox: None,
            max_disk_per_non_ephemeral_sandbox: None,
            allowed_gpu_types: Vec::new(),
        }],
        total_snapshot_quota: quotas.snapshot_quota,
        current_snapshot_usage: snapshots,
        total_volume_quota: quotas.volume_quota,
        // This server has no volumes yet, so none are in use.
        current_volume_usage: 0,
    }))
}

/// `UpdateOrganizationQuota`: null keeps a value. Per-organization rate limits and snapshot
/// deactivation are not settings of this server, so a value for them is refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateQuota {
    max_cpu_per_sandbox: Option<i64>,
    max_memory_per_sandbox: Option<i64>,
    max_disk_per_sandbox: Option<i64>,
    snapshot_quota: Option<i64>,
    max_snapshot_size: Option<i64>,
    volume_quota: Option<i64>,
    authenticated_rate_limit: Option<serde_json::Value>,
    authenticated_rate_limit_ttl_seconds: Option<serde_json::Value>,
    sandbox_create_rate_limit: Option<serde_json::Value>,
    sandbox_create_rate_limit_ttl_seconds: Option<serde_json::Value>,
    sandbox_lifecycle_rate_limit: Option<serde_json::Value>,
    sandbox_lifecycle_rate_limit_ttl_seconds: Option<serde_json::Value>,
    snapshot_deactivation_timeout_minutes: Option<serde_json::Value>,
}

/// The per-sandbox maxima both quota routes accept; null keeps a value. (Not flattened into the
/// bodies: serde's flatten would lose the field name in type errors.)
struct PerSandboxMaxima {
    max_cpu_per_sandbox: Option<i64>,
    max_memory_per_sandbox: Option<i64>,
    max_disk_per_sandbox: Option<i64>,
}

impl PerSandboxMaxima {
    fn apply(&self, q: OrgQuotas) -> ApiResult<OrgQuotas> {
        Ok(OrgQuotas {
            max_cpu_per_sandbox: quota_value(
                "maxCpuPerSandbox",
                self.max_cpu_per_sandbox,
                q.max_cpu_per_sandbox,
            )?,
            max_memory_per_sandbox: quota_value(
                "maxMemoryPerSandbox",
                self.max_memory_per_sandbox,
                q.max_memory_per_sandbox,
            )?,
            max_disk_per_sandbox: quota_value(
                "maxDiskPerSandbox",
                self.max_disk_per_sandbox,
                q.max_disk_per_sandbox,
            )?,
            ..q
        })
    }
}

fn quota_value(field: &str, value: Option<i64>, current: i64) -> ApiResult<i64> {
    match value {
        None => Ok(current),
        Some(v) if v >= 0 => Ok(v),
        Some(v) => Err(ApiError::BadRequest(format!(
            "{field}: must be 0 (unlimited) or more, got {v}"
        ))),
    }
}

fn refuse_unsupported(fields: &[(&str, &Option<serde_json::Value>)]) -> ApiResult<()> {
    match fields.iter().find(|(_, v)| v.is_some()) {
        Some((name, _)) => Err(ApiError::BadRequest(format!(
            "{name}: per-organization setting not supported by this server (rate limits are set \
             with RATE_LIMIT_* for the deployment)"
        ))),
        None => Ok(()),
    }
}

/// Admin only, as upstream: members cannot raise their own limits.
#[utoipa::path(patch, path = "/organizations/{organization_id}/quota", tag = "organizations", operation_id = "organization_update_quota", params(("organization_id" = String, Path)))]
async fn update_quota(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path(organization_id): Path<String>,
    JsonBody(body): JsonBody<UpdateQuota>,
) -> ApiResult<StatusCode> {
    ctx.require_system_admin()?;
    let org = admin_target(&state, &organization_id).await?;
    refuse_unsupported(&[
        ("authenticatedRateLimit", &body.authenticated_rate_limit),
        (
            "authenticatedRateLimitTtlSeconds",
            &body.authenticated_rate_limit_ttl_seconds,
        ),
        ("sandboxCreateRateLimit", &body.sandbox_create_rate_limit),
        (
            "sandboxCreateRateLimitTtlSeconds",
            &body.sandbox_create_rate_limit_ttl_seconds,
        ),
        (
            "sandboxLifecycleRateLimit",
            &body.sandbox_lifecycle_rate_limit,
        ),
        (
            "sandboxLifecycleRateLimitTtlSeconds",
            &body.sandbox_lifecycle_rate_limit_ttl_seconds,
        ),
        (
            "snapshotDeactivationTimeoutMinutes",
            &body.snapshot_deactivation_timeout_minutes,
        ),
    ])?;
    let q = state.store.organization_quotas(&org.id).await?;
    let q = PerSandboxMaxima {
        max_cpu_per_sandbox: body.max_cpu_per_sandbox,
        max_memory_per_sandbox: body.max_memory_per_sandbox,
        max_disk_per_sandbox: body.max_disk_per_sandbox,
    }
    .apply(q)?;
    let updated = OrgQuotas {
        snapshot_quota: quota_value("snapshotQuota", body.snapshot_quota, q.snapshot_quota)?,
        max_snapshot_size: quota_value(
            "maxSnapshotSize",
            body.max_snapshot_size,
            q.max_snapshot_size,
        )?,
        volume_quota: quota_value("volumeQuota", body.volume_quota, q.volume_quota)?,
        ..q
    };
    state
        .store
        .set_organization_quotas(&org.id, &updated)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `UpdateOrganizationRegionQuota`: the totals (and per-sandbox maxima) in one region.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateRegionQuota {
    total_cpu_quota: Option<i64>,
    total_memory_quota: Option<i64>,
    total_disk_quota: Option<i64>,
    total_gpu_quota: Option<i64>,
    max_cpu_per_sandbox: Option<i64>,
    max_memory_per_sandbox: Option<i64>,
    max_disk_per_sandbox: Option<i64>,
}

#[utoipa::path(patch, path = "/organizations/{organization_id}/quota/{region_id}", tag = "organizations", operation_id = "organization_update_region_quota", params(("organization_id" = String, Path), ("region_id" = String, Path)))]
async fn update_region_quota(
    State(state): State<AppState>,
    ctx: AuthContext,
    Path((organization_id, region_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateRegionQuota>,
) -> ApiResult<StatusCode> {
    ctx.require_system_admin()?;
    let org = admin_target(&state, &organization_id).await?;
    known_region(&state, &org.id, "regionId", &region_id).await?;
    if body.total_gpu_quota.unwrap_or(0) > 0 {
        return Err(ApiError::BadRequest(
            "totalGpuQuota: this server has no GPUs".into(),
        ));
    }
    let q = state.store.organization_quotas(&org.id).await?;
    let q = PerSandboxMaxima {
        max_cpu_per_sandbox: body.max_cpu_per_sandbox,
        max_memory_per_sandbox: body.max_memory_per_sandbox,
        max_disk_per_sandbox: body.max_disk_per_sandbox,
    }
    .apply(q)?;
    let updated = OrgQuotas {
        total_cpu_quota: quota_value("totalCpuQuota", body.total_cpu_quota, q.total_cpu_quota)?,
        total_memory_quota: quota_value(
            "totalMemoryQuota",
            body.total_memory_quota,
            q.total_memory_quota,
        )?,
        total_disk_quota: quota_value("totalDiskQuota", body.total_disk_quota, q.total_disk_quota)?,
        ..q
    };
    state
        .store
        .set_organization_quotas(&org.id, &updated)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Any live organization, for system administrators.
async fn admin_target(state: &AppState, organization_id: &str) -> ApiResult<OrganizationRow> {
    state
        .store
        .organization(organization_id)
        .await?
        .ok_or_else(|| not_found(organization_id))
}
