//! Quota checks. A refusal is a 403 that names the quota, its limit and the current use.

use crate::error::{ApiError, ApiResult};
use crate::store::{OrgQuotas, ResourceUse};

/// Resources a sandbox asks for.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub cpu: i64,
    pub memory: i64,
    pub disk: i64,
}

/// Checks per-sandbox maxima and organization totals. `running` says whether the sandbox will
/// hold cpu and memory (disk is held by every sandbox that exists).
pub fn check(q: &OrgQuotas, used: ResourceUse, req: Request, running: bool) -> ApiResult<()> {
    for (what, value, max) in [
        ("CPU", req.cpu, q.max_cpu_per_sandbox),
        ("memory (GiB)", req.memory, q.max_memory_per_sandbox),
        ("disk (GiB)", req.disk, q.max_disk_per_sandbox),
    ] {
        if max > 0 && value > max {
            return Err(ApiError::Forbidden(format!(
                "Per-sandbox {what} limit exceeded: requested {value}, maximum {max} per sandbox"
            )));
        }
    }
    let mut totals = vec![("disk (GiB)", req.disk, used.disk, q.total_disk_quota)];
    if running {
        totals.insert(0, ("CPU", req.cpu, used.cpu, q.total_cpu_quota));
        totals.insert(
            1,
            (
                "memory (GiB)",
                req.memory,
                used.memory,
                q.total_memory_quota,
            ),
        );
    }
    for (what, value, in_use, limit) in totals {
        if limit > 0 && in_use + value > limit {
            return Err(ApiError::Forbidden(format!(
                "Total {what} quota exceeded: requested {value}, in use {in_use}, limit {limit}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> OrgQuotas {
        OrgQuotas {
            total_cpu_quota: 4,
            total_memory_quota: 8,
            total_disk_quota: 20,
            max_cpu_per_sandbox: 2,
            max_memory_per_sandbox: 4,
            max_disk_per_sandbox: 10,
            ..Default::default()
        }
    }

    #[test]
    fn per_sandbox_maxima_name_the_limit() {
        let err = check(
            &quotas(),
            ResourceUse::default(),
            Request {
                cpu: 3,
                memory: 1,
                disk: 1,
            },
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("CPU") && err.contains("requested 3") && err.contains("maximum 2"),
            "{err}"
        );
    }

    #[test]
    fn totals_count_current_use() {
        let used = ResourceUse {
            cpu: 3,
            memory: 2,
            disk: 5,
        };
        let err = check(
            &quotas(),
            used,
            Request {
                cpu: 2,
                memory: 1,
                disk: 1,
            },
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("Total CPU") && err.contains("in use 3") && err.contains("limit 4"),
            "{err}"
        );
        // A stopped sandbox holds no cpu.
        assert!(
            check(
                &quotas(),
                used,
                Request {
                    cpu: 2,
                    memory: 1,
                    disk: 1
                },
                false
            )
            .is_ok()
        );
        let err = check(
            &quotas(),
            ResourceUse { disk: 15, ..used },
            Request {
                cpu: 1,
                memory: 1,
                disk: 10,
            },
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("disk") && err.contains("limit 20"), "{err}");
    }

    #[test]
    fn zero_means_unlimited() {
        let q = OrgQuotas::default();
        let used = ResourceUse {
            cpu: 1000,
            memory: 1000,
            disk: 1000,
        };
        assert!(
            check(
                &q,
                used,
                Request {
                    cpu: 64,
                    memory: 256,
                    disk: 1000
                },
                true
            )
            .is_ok()
        );
    }
}
