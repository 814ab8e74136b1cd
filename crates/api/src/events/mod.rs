//! Domain events and the bus that carries them.
//!
//! The control plane publishes what happened to a resource (a sandbox was created, its state or
//! desired state changed) to an [`EventBus`]; consumers such as the Socket.IO gateway
//! ([`socketio`]) subscribe and deliver each event to the organization it belongs to. Events are
//! hints: clients also poll, so a lost event costs latency, never correctness.
//!
//! Today the bus is in-process ([`InProcessEventBus`]); a multi-host deployment swaps in a shared
//! implementation (Redis) behind the same trait, which is why [`Event`] is plain serializable data.

pub mod socketio;

use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::cluster::{Cluster, channel};
use crate::sandbox::dto::Sandbox;
use crate::volume::VolumeDto;

/// Something that happened, addressed to one organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Only this organization's members receive the event.
    pub organization_id: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The event name (as clients see it) and its payload, in the shape the SDKs parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data")]
pub enum EventKind {
    /// Payload: the full Sandbox DTO.
    #[serde(rename = "sandbox.created")]
    SandboxCreated(Value),
    #[serde(rename = "sandbox.state.updated", rename_all = "camelCase")]
    SandboxStateUpdated {
        sandbox: Value,
        old_state: String,
        new_state: String,
    },
    #[serde(rename = "sandbox.desired-state.updated", rename_all = "camelCase")]
    SandboxDesiredStateUpdated {
        sandbox: Value,
        old_desired_state: String,
        new_desired_state: String,
    },
    /// Payload: the Volume DTO.
    #[serde(rename = "volume.created")]
    VolumeCreated(Value),
    #[serde(rename = "volume.state.updated", rename_all = "camelCase")]
    VolumeStateUpdated {
        volume: Value,
        old_state: String,
        new_state: String,
    },
}

fn sandbox_json(sandbox: &Sandbox) -> Value {
    serde_json::to_value(sandbox).expect("sandbox DTO serializes")
}

impl Event {
    pub fn sandbox_created(sandbox: &Sandbox) -> Event {
        Event {
            organization_id: sandbox.organization_id.clone(),
            kind: EventKind::SandboxCreated(sandbox_json(sandbox)),
        }
    }

    /// The events that tell a client about `sandbox` as stored now, given its state and desired
    /// state before: none when neither changed.
    pub fn sandbox_changes(
        old_state: &str,
        old_desired_state: &str,
        sandbox: &Sandbox,
    ) -> Vec<Event> {
        let state_changed = old_state != sandbox.state;
        let desired_changed = old_desired_state != sandbox.desired_state;
        if !state_changed && !desired_changed {
            return Vec::new();
        }
        let json = sandbox_json(sandbox);
        let event = |kind| Event {
            organization_id: sandbox.organization_id.clone(),
            kind,
        };
        let mut events = Vec::with_capacity(2);
        if desired_changed {
            events.push(event(EventKind::SandboxDesiredStateUpdated {
                sandbox: json.clone(),
                old_desired_state: old_desired_state.to_string(),
                new_desired_state: sandbox.desired_state.clone(),
            }));
        }
        if state_changed {
            events.push(event(EventKind::SandboxStateUpdated {
                sandbox: json,
                old_state: old_state.to_string(),
                new_state: sandbox.state.clone(),
            }));
        }
        events
    }
}

impl Event {
    pub fn volume_created(volume: &VolumeDto) -> Event {
        Event {
            organization_id: volume.organization_id.clone(),
            kind: EventKind::VolumeCreated(volume_json(volume)),
        }
    }

    /// `volume` as stored now, which was in `old_state` before.
    pub fn volume_state_updated(old_state: &str, volume: &VolumeDto) -> Event {
        Event {
            organization_id: volume.organization_id.clone(),
            kind: EventKind::VolumeStateUpdated {
                volume: volume_json(volume),
                old_state: old_state.to_string(),
                new_state: volume.state.clone(),
            },
        }
    }
}

fn volume_json(volume: &VolumeDto) -> Value {
    serde_json::to_value(volume).expect("volume DTO serializes")
}

impl EventKind {
    /// The event name clients listen for.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::SandboxCreated(_) => "sandbox.created",
            EventKind::SandboxStateUpdated { .. } => "sandbox.state.updated",
            EventKind::SandboxDesiredStateUpdated { .. } => "sandbox.desired-state.updated",
            EventKind::VolumeCreated(_) => "volume.created",
            EventKind::VolumeStateUpdated { .. } => "volume.state.updated",
        }
    }

    /// The payload clients receive with [`name`](Self::name).
    pub fn payload(&self) -> Value {
        let mut tagged = serde_json::to_value(self).expect("event serializes");
        tagged["data"].take()
    }
}

/// Events as a subscriber receives them.
pub type EventStream = BoxStream<'static, Arc<Event>>;

/// Publish/subscribe of domain events across the control plane.
pub trait EventBus: Send + Sync + 'static {
    /// Hands `event` to every current subscriber. Never fails the caller: a state change that
    /// was stored must not be undone because nobody could be told about it.
    fn publish(&self, event: Event);

    /// Every event published from now on, in publish order. A subscriber that falls too far
    /// behind skips events (and logs it) instead of slowing publishers down.
    fn subscribe(&self) -> EventStream;
}

/// A bus shared by every API process of a deployment: events travel as JSON on the cluster's
/// event channel (Redis pub/sub), so a change stored by one process reaches the clients
/// connected to another.
pub struct ClusterEventBus {
    cluster: Arc<dyn Cluster>,
}

impl ClusterEventBus {
    pub fn new(cluster: Arc<dyn Cluster>) -> Self {
        ClusterEventBus { cluster }
    }
}

impl EventBus for ClusterEventBus {
    fn publish(&self, event: Event) {
        tracing::debug!(event = event.kind.name(), org = %event.organization_id, "publishing event");
        let json = serde_json::to_string(&event).expect("event serializes");
        self.cluster.publish(channel::EVENTS, json);
    }

    fn subscribe(&self) -> EventStream {
        self.cluster
            .subscribe(channel::EVENTS)
            .filter_map(|json| async move {
                serde_json::from_str::<Event>(&json)
                    .inspect_err(|e| tracing::warn!(error = %e, "unreadable event skipped"))
                    .ok()
                    .map(Arc::new)
            })
            .boxed()
    }
}

/// How many events a slow subscriber may lag behind before it skips some.
const IN_PROCESS_CAPACITY: usize = 1024;

/// A bus for a single server process (`daytona server`).
#[derive(Debug, Clone)]
pub struct InProcessEventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for InProcessEventBus {
    fn default() -> Self {
        InProcessEventBus {
            tx: broadcast::channel(IN_PROCESS_CAPACITY).0,
        }
    }
}

impl EventBus for InProcessEventBus {
    fn publish(&self, event: Event) {
        tracing::debug!(event = event.kind.name(), org = %event.organization_id, "publishing event");
        // An error only means there is no subscriber right now.
        let _ = self.tx.send(Arc::new(event));
    }

    fn subscribe(&self) -> EventStream {
        futures::stream::unfold(self.tx.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "event subscriber fell behind; events skipped");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::dto::tests::row;

    fn sandbox(org: &str, state: &str, desired: &str) -> Sandbox {
        let row = crate::store::SandboxRow {
            id: "sbx-1".into(),
            organization_id: org.into(),
            state: state.into(),
            desired_state: desired.into(),
            ..row()
        };
        Sandbox::from_row(row, "http://proxy/toolbox")
    }

    #[test]
    fn payloads_have_the_shape_the_sdk_parses() {
        let dto = sandbox("org-a", "started", "started");
        let created = Event::sandbox_created(&dto);
        assert_eq!(created.kind.name(), "sandbox.created");
        let payload = created.kind.payload();
        assert_eq!(payload["id"], "sbx-1");
        assert_eq!(payload["toolboxProxyUrl"], "http://proxy/toolbox");
        assert_eq!(payload["state"], "started");

        let events = Event::sandbox_changes("starting", "started", &dto);
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.organization_id, "org-a");
        assert_eq!(event.kind.name(), "sandbox.state.updated");
        let payload = event.kind.payload();
        assert_eq!(payload["sandbox"]["id"], "sbx-1");
        assert_eq!(payload["sandbox"]["state"], "started");
        assert_eq!(payload["oldState"], "starting");
        assert_eq!(payload["newState"], "started");
    }

    #[test]
    fn changes_name_exactly_what_changed() {
        let dto = sandbox("org-a", "stopping", "stopped");
        assert!(Event::sandbox_changes("stopping", "stopped", &dto).is_empty());
        let events = Event::sandbox_changes("started", "started", &dto);
        let names: Vec<_> = events.iter().map(|e| e.kind.name()).collect();
        assert_eq!(
            names,
            ["sandbox.desired-state.updated", "sandbox.state.updated"]
        );
        let desired = events[0].kind.payload();
        assert_eq!(desired["oldDesiredState"], "started");
        assert_eq!(desired["newDesiredState"], "stopped");
    }

    #[test]
    fn events_round_trip_through_json() {
        // A shared bus (Redis) carries events serialized.
        let dto = sandbox("org-a", "stopped", "stopped");
        for event in Event::sandbox_changes("started", "started", &dto)
            .into_iter()
            .chain([Event::sandbox_created(&dto)])
        {
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
        }
    }

    #[tokio::test]
    async fn in_process_bus_delivers_to_every_subscriber_in_order() {
        let bus = InProcessEventBus::default();
        bus.publish(Event::sandbox_created(&sandbox(
            "org-a", "creating", "started",
        )));
        let mut first = bus.subscribe();
        let mut second = bus.subscribe();
        let a = Event::sandbox_changes(
            "creating",
            "started",
            &sandbox("org-a", "started", "started"),
        );
        let b = Event::sandbox_changes(
            "started",
            "started",
            &sandbox("org-b", "stopping", "stopped"),
        );
        for event in a.iter().chain(&b) {
            bus.publish(event.clone());
        }
        let expected: Vec<_> = a.iter().chain(&b).cloned().collect();
        for stream in [&mut first, &mut second] {
            let got: Vec<Event> = stream
                .take(expected.len())
                .map(|e| (*e).clone())
                .collect()
                .await;
            assert_eq!(
                got, expected,
                "events published before subscribing are not replayed"
            );
        }
    }
}
