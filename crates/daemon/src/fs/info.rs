//! `FileInfo` as the SDK expects it: Go-style mode string and time formats.

use std::{
    fs::Metadata,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    time::SystemTime,
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    /// Go `FileMode.String()`, e.g. `-rw-r--r--`, `drwxr-xr-x`.
    pub mode: String,
    /// Go `time.Time.String()` of the modification time.
    pub mod_time: String,
    /// Permission bits as 4 octal digits, e.g. `0644`.
    pub permissions: String,
    /// Numeric uid.
    pub owner: String,
    /// Numeric gid.
    pub group: String,
    /// RFC 3339 modification time.
    pub modified_at: String,
    pub path: String,
}

impl FileInfo {
    pub fn new(path: &Path, metadata: &Metadata) -> Self {
        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let modified: DateTime<Utc> = modified.into();
        Self {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.to_string_lossy().into_owned()),
            is_dir: metadata.is_dir(),
            size: metadata.len(),
            mode: go_mode_string(metadata.mode()),
            mod_time: go_time_string(modified),
            permissions: format!("{:04o}", metadata.permissions().mode() & 0o777),
            owner: metadata.uid().to_string(),
            group: metadata.gid().to_string(),
            modified_at: modified.to_rfc3339_opts(SecondsFormat::Secs, true),
            path: path.to_string_lossy().into_owned(),
        }
    }
}

/// Formats a Unix `st_mode` the way Go's `os.FileMode.String()` does: type and special-bit
/// letters in Go's order (`dalTLDpSugct?`), then `rwxrwxrwx`.
pub fn go_mode_string(st_mode: u32) -> String {
    let kind = st_mode & libc::S_IFMT;
    let flags = [
        ('d', kind == libc::S_IFDIR),
        ('L', kind == libc::S_IFLNK),
        ('D', kind == libc::S_IFBLK || kind == libc::S_IFCHR),
        ('p', kind == libc::S_IFIFO),
        ('S', kind == libc::S_IFSOCK),
        ('u', st_mode & libc::S_ISUID != 0),
        ('g', st_mode & libc::S_ISGID != 0),
        ('c', kind == libc::S_IFCHR),
        ('t', st_mode & libc::S_ISVTX != 0),
    ];
    let mut out: String = flags
        .iter()
        .filter(|(_, on)| *on)
        .map(|(c, _)| *c)
        .collect();
    if out.is_empty() {
        out.push('-');
    }
    for (i, letter) in "rwxrwxrwx".chars().enumerate() {
        out.push(if st_mode & (1 << (8 - i)) != 0 {
            letter
        } else {
            '-'
        });
    }
    out
}

/// Go's `time.Time.String()` for a UTC time: `2006-01-02 15:04:05.999999999 +0000 UTC`
/// (fraction without trailing zeros, omitted when zero).
pub fn go_time_string(time: DateTime<Utc>) -> String {
    let mut out = time.format("%Y-%m-%d %H:%M:%S").to_string();
    let nanos = time.timestamp_subsec_nanos();
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn mode_strings_match_go() {
        assert_eq!(go_mode_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(go_mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(go_mode_string(libc::S_IFLNK | 0o777), "Lrwxrwxrwx");
        assert_eq!(go_mode_string(libc::S_IFDIR | 0o1777), "dtrwxrwxrwx");
        assert_eq!(go_mode_string(libc::S_IFCHR | 0o666), "Dcrw-rw-rw-");
        assert_eq!(go_mode_string(libc::S_IFREG | 0o4755), "urwxr-xr-x");
    }

    #[test]
    fn time_strings_match_go() {
        let t = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(go_time_string(t), "2024-01-02 03:04:05 +0000 UTC");
        let t = t + chrono::Duration::nanoseconds(120_000_000);
        assert_eq!(go_time_string(t), "2024-01-02 03:04:05.12 +0000 UTC");
    }
}
