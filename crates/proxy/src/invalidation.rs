//! What the API tells a split proxy or SSH gateway to forget, and the wire form of that stream.
//!
//! The API serves `GET /internal/invalidations` as server-sent events: one `data:` line of JSON
//! per [`Invalidation`], and a comment line every [`HEARTBEAT`] so that a silent connection is
//! known to be dead. The stream is subscribed before the response starts, so everything changed
//! after the response headers arrive is announced on it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often the API writes a keep-alive comment on an idle stream.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Something the API changed that answers kept by a split service may depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Invalidation {
    /// The sandbox's state, address, public flag, preview token, signed preview URLs or signing
    /// key may have changed (or it is gone).
    Sandbox { id: String },
    /// An API key was revoked or a membership ended: any answer about a user's key may be stale.
    Credentials,
    /// Anything may have changed (the API missed messages of other replicas).
    All,
}

impl Invalidation {
    /// The `data:` payload of the event.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("invalidation serializes")
    }
}

/// Splits a byte stream of server-sent events into the `data` of each event (lines are joined
/// with `\n`, as the SSE format says); comments and other fields are skipped.
#[derive(Debug, Default)]
pub struct EventParser {
    pending: Vec<u8>,
    data: Option<String>,
}

impl EventParser {
    /// Feeds `chunk`; returns the data of every event it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                events.extend(self.data.take());
            } else if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                }
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_have_a_stable_wire_form() {
        let sandbox = Invalidation::Sandbox { id: "s1".into() };
        assert_eq!(sandbox.to_json(), r#"{"kind":"sandbox","id":"s1"}"#);
        assert_eq!(
            Invalidation::Credentials.to_json(),
            r#"{"kind":"credentials"}"#
        );
        for inv in [sandbox, Invalidation::Credentials] {
            assert_eq!(
                serde_json::from_str::<Invalidation>(&inv.to_json()).unwrap(),
                inv
            );
        }
    }

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut parser = EventParser::default();
        assert!(parser.feed(b": keep-alive\n\ndata: {\"a\"").is_empty());
        assert_eq!(parser.feed(b":1}\n\ndata: x\r\n"), vec![r#"{"a":1}"#]);
        assert_eq!(parser.feed(b"data:y\r\n\r\n"), vec!["x\ny"]);
        assert!(
            parser.feed(b"event: other\n\n").is_empty(),
            "no data, no event"
        );
    }
}
