//! Background enforcement of the auto intervals: auto-stop after inactivity, auto-delete and
//! auto-archive after a sandbox has been stopped for its interval, and the TTL (`autoDestroyAt`).
//!
//! Auto-pause waits for pause support in the worker.

use crate::cluster::lease_for;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::service::SandboxService;
use crate::store::SandboxRow;

/// What the worker should do with a sandbox now, if anything.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    Stop,
    Delete,
    Archive,
}

fn parse(ts: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn minutes_since(ts: &str, now: DateTime<Utc>) -> Option<i64> {
    parse(ts).map(|t| (now - t).num_minutes())
}

fn due(row: &SandboxRow, now: DateTime<Utc>) -> Option<Due> {
    if row.pooled {
        return None; // a warm pool keeps it started until a create claims it
    }
    if row
        .auto_destroy_at
        .as_deref()
        .and_then(parse)
        .is_some_and(|at| at <= now)
    {
        return Some(Due::Delete);
    }
    match row.state.as_str() {
        "started" if row.auto_stop_interval > 0 => minutes_since(&row.last_activity_at, now)
            .filter(|idle| *idle >= row.auto_stop_interval)
            .map(|_| Due::Stop),
        "stopped" => {
            let stopped = minutes_since(&row.updated_at, now)?;
            if row.auto_delete_interval >= 0 && stopped >= row.auto_delete_interval {
                Some(Due::Delete)
            } else if row.auto_archive_interval > 0
                && row.auto_delete_interval != 0
                && stopped >= row.auto_archive_interval
            {
                Some(Due::Archive)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Checks every sandbox once per `period` until the process ends.
pub fn spawn(service: Arc<SandboxService>, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // One API process at a time, so a sandbox is stopped or deleted once.
            if !service.cluster().lead("lifecycle", lease_for(period)).await {
                continue;
            }
            let rows = match service.store().live_sandboxes().await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "lifecycle check could not list sandboxes");
                    continue;
                }
            };
            let now = Utc::now();
            for row in rows {
                let id = row.id.clone();
                let result = match due(&row, now) {
                    Some(Due::Stop) => {
                        tracing::info!(sandbox = %id, "auto-stopping idle sandbox");
                        service.stop_sandbox(row).await.map(|_| ())
                    }
                    Some(Due::Delete) => {
                        tracing::info!(sandbox = %id, "auto-deleting sandbox");
                        service.delete_sandbox(row).await.map(|_| ())
                    }
                    Some(Due::Archive) => {
                        tracing::info!(sandbox = %id, "auto-archiving stopped sandbox");
                        service.archive_sandbox(row).await.map(|_| ())
                    }
                    None => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!(sandbox = %id, error = %e, "lifecycle action failed");
                }
            }
        }
    })
}

/// Takes over, every `period`, the operations that API processes which died left half-done
/// (see [`SandboxService::recover_orphans`]); one process at a time. Only needed where several
/// API processes share a database: a single one reconciles at startup.
pub fn spawn_recovery(
    service: Arc<SandboxService>,
    period: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !service
                .cluster()
                .lead("orphan-recovery", lease_for(period))
                .await
            {
                continue;
            }
            if let Err(e) = service.recover_orphans().await {
                tracing::warn!(error = %e, "could not take over abandoned operations");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::dto::tests::row;

    fn at(minutes_ago: i64) -> String {
        (Utc::now() - chrono::Duration::minutes(minutes_ago)).to_rfc3339()
    }

    #[test]
    fn idle_started_sandboxes_stop_after_their_interval() {
        let mut r = row();
        r.auto_stop_interval = 15;
        r.last_activity_at = at(14);
        assert_eq!(due(&r, Utc::now()), None);
        r.last_activity_at = at(16);
        assert_eq!(due(&r, Utc::now()), Some(Due::Stop));
        r.auto_stop_interval = 0;
        assert_eq!(due(&r, Utc::now()), None, "0 disables auto-stop");
    }

    #[test]
    fn stopped_sandboxes_are_deleted_after_their_interval() {
        let mut r = row();
        r.state = "stopped".into();
        r.auto_delete_interval = -1;
        r.updated_at = at(10_000);
        assert_eq!(due(&r, Utc::now()), None, "-1 disables auto-delete");
        r.auto_delete_interval = 60;
        r.updated_at = at(30);
        assert_eq!(due(&r, Utc::now()), None);
        r.updated_at = at(61);
        assert_eq!(due(&r, Utc::now()), Some(Due::Delete));
    }

    #[test]
    fn stopped_sandboxes_are_archived_after_their_interval() {
        let mut r = row();
        r.state = "stopped".into();
        r.auto_delete_interval = -1;
        r.auto_archive_interval = 60;
        r.updated_at = at(59);
        assert_eq!(due(&r, Utc::now()), None);
        r.updated_at = at(61);
        assert_eq!(due(&r, Utc::now()), Some(Due::Archive));
        r.auto_delete_interval = 30;
        assert_eq!(due(&r, Utc::now()), Some(Due::Delete), "delete wins");
        r.auto_delete_interval = -1;
        r.state = "archived".into();
        assert_eq!(due(&r, Utc::now()), None, "archived once");
        r.state = "started".into();
        r.auto_stop_interval = 0;
        assert_eq!(due(&r, Utc::now()), None, "only stopped sandboxes");
    }

    #[test]
    fn sandboxes_waiting_in_a_warm_pool_are_never_due() {
        let mut r = row();
        r.pooled = true;
        r.auto_stop_interval = 1;
        r.last_activity_at = at(60);
        r.auto_destroy_at = Some(at(1));
        assert_eq!(due(&r, Utc::now()), None);
        r.pooled = false;
        assert_eq!(due(&r, Utc::now()), Some(Due::Delete));
    }

    #[test]
    fn ttl_deletes_in_any_state() {
        let mut r = row();
        r.auto_stop_interval = 0;
        r.auto_destroy_at = Some(at(1));
        assert_eq!(due(&r, Utc::now()), Some(Due::Delete));
        r.auto_destroy_at = Some(at(-5));
        assert_eq!(due(&r, Utc::now()), None);
    }
}
