use std::io;
use std::path::PathBuf;

/// Why an image could not be resolved or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("cannot reach registry {registry}: {reason}")]
    RegistryUnreachable { registry: String, reason: String },

    #[error("image {reference} not found: {reason}")]
    ImageNotFound { reference: String, reason: String },

    #[error("registry {registry} refused access to {reference}: {reason}")]
    RegistryAuth {
        registry: String,
        reference: String,
        reason: String,
    },

    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },

    #[error("registry {registry} did not answer within {secs}s while {doing}")]
    RegistryTimeout {
        registry: String,
        secs: u64,
        doing: String,
    },

    #[error("image source {} does not exist", .0.display())]
    NotFound(PathBuf),

    #[error("no image in {source_name} matches {wanted}")]
    NoMatchingManifest { source_name: String, wanted: String },

    #[error("blob {0} is missing from the image")]
    MissingBlob(String),

    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("unsupported {what}: {value}")]
    UnsupportedFormat { what: &'static str, value: String },

    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("image garbage collection skipped: {0}")]
    GcAborted(String),

    #[error("image task failed: {0}")]
    Task(String),
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl ToString) -> Self {
        ImageError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// Adds a context line to I/O results, so errors name the file that failed.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(context(), e))
    }
}
