use std::io;
use std::path::PathBuf;

/// Why an image could not be resolved or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("registry pulls not supported yet; use oci-archive:PATH (got {0:?})")]
    Unsupported(String),

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
