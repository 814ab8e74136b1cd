use std::time::Duration;

/// Why a benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: unexpected response: {detail}")]
    Response { what: String, detail: String },
    #[error("sandbox {id} entered state {state}: {reason}")]
    SandboxFailed {
        id: String,
        state: String,
        reason: String,
    },
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A host-side measurement is impossible (e.g. the server runs on another machine).
    #[error("{0}")]
    Host(String),
    #[error("{tool}: {detail}")]
    Tool { tool: String, detail: String },
    #[error("bad argument: {0}")]
    Usage(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
