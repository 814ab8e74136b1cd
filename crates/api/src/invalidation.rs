//! Telling split proxies and SSH gateways what changed, so that they drop the answers they keep
//! (`daytona_proxy::remote`) at once instead of after their safety-net TTL.
//!
//! A change is published on the cluster's [`channel::INVALIDATIONS`] (so it reaches the streams
//! of every API replica), and each connected service reads `GET /internal/invalidations`: the
//! invalidations as server-sent events ([`daytona_proxy::invalidation`] is the wire form).
//! Publishing never fails the change: a lost message costs a service at most its TTL.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use daytona_proxy::invalidation::{HEARTBEAT, Invalidation};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use crate::cluster::{Cluster, channel};

/// Publishes invalidations and serves them to the services connected to this process.
pub struct Invalidations {
    cluster: Arc<dyn Cluster>,
    /// Set at shutdown: every stream ends, so a graceful shutdown does not wait for them.
    closed: watch::Sender<bool>,
}

impl Invalidations {
    pub fn new(cluster: Arc<dyn Cluster>) -> Self {
        Invalidations {
            cluster,
            closed: watch::Sender::new(false),
        }
    }

    /// Answers about sandbox `id` may be stale. Called after the change is stored.
    pub fn sandbox(&self, id: &str) {
        self.publish(&Invalidation::Sandbox { id: id.to_owned() });
    }

    /// Answers about users' keys may be stale (a key revoked, a membership ended).
    pub fn credentials(&self) {
        self.publish(&Invalidation::Credentials);
    }

    fn publish(&self, invalidation: &Invalidation) {
        tracing::debug!(?invalidation, "publishing invalidation");
        self.cluster
            .publish(channel::INVALIDATIONS, invalidation.to_json());
    }

    /// Ends every stream served by this process (at shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The invalidations published from now on, on any replica, until [`close`](Self::close).
    /// Subscribed before it returns, so nothing published after the response starts is missed.
    fn stream(&self) -> impl Stream<Item = String> + Send + 'static + use<> {
        let mut closed = self.closed.subscribe();
        let messages = self.cluster.subscribe(channel::INVALIDATIONS);
        messages.take_until(async move {
            let _ = closed.wait_for(|closed| *closed).await;
        })
    }

    /// The response of `GET /internal/invalidations`.
    pub fn events(
        &self,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>> + Send + 'static + use<>> {
        let events = self
            .stream()
            .map(|json| Ok::<_, Infallible>(Event::default().data(json)));
        Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::InProcessCluster;

    #[tokio::test]
    async fn published_invalidations_reach_open_streams_until_closed() {
        let hub = Invalidations::new(Arc::new(InProcessCluster::default()));
        let mut stream = Box::pin(hub.stream());
        hub.sandbox("s1");
        hub.credentials();
        assert_eq!(
            stream.next().await.unwrap(),
            r#"{"kind":"sandbox","id":"s1"}"#
        );
        assert_eq!(stream.next().await.unwrap(), r#"{"kind":"credentials"}"#);
        hub.close();
        assert_eq!(stream.next().await, None, "closed at shutdown");
    }
}
