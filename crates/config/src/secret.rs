use std::fmt;

/// A credential read from the environment. `Debug` redacts it and there is no `Display`, so a
/// secret only reaches a log or an error through an explicit [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it (an auth header, a connection string).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// Values shipped in upstream's compose file and documentation; a server reachable from the network
/// must not keep any of them.
pub(crate) const PLACEHOLDER_SECRETS: &[&str] = &[
    "supersecretkey",
    "supersecretsalt",
    "super_secret_key",
    "secret_api_token",
    "ssh_secret_api_token",
    "otel_collector_api_key",
    "minioadmin",
    "password",
    "pass",
    "secret",
    "changeme",
    "admin",
];

impl Secret {
    pub(crate) fn is_placeholder(&self) -> bool {
        PLACEHOLDER_SECRETS
            .iter()
            .any(|p| self.0.eq_ignore_ascii_case(p))
    }
}

/// Writes a key or other credential file readable by its owner only (0600), atomically: the
/// contents go to a temporary file beside `path` first, so `path` is either absent or complete.
pub fn write_private_file(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    std::fs::rename(&tmp, path)
}
