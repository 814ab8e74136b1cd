//! Volumes on this host: one directory per volume under the runner's volume root
//! (`<DAYTONA_DATA_DIR>/volumes/<volume id>`), bind-mounted into every sandbox that uses it
//! (see `daytona_runtime::Mount`), so sandboxes share its files live.
//!
//! Two backings. Local (the embedded default): the directory holds the files. S3 (`AWS_*` set):
//! the volume is the prefix `volumes/<volume id>/` of the bucket, mounted at that directory with
//! s3fs when a sandbox on this runner first needs it, so sandboxes on every runner share it; a
//! mount is verified before use, and removed when the volume is deleted or the runner stops.
//!
//! The root is root's only (0700); a volume's own directory is 0777 and owned by root (s3fs:
//! `umask=0000`, `allow_other`), so every user of every sandbox can create files in it,
//! whatever the image's users are.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daytona_storage::S3Settings;

/// Prefix of a volume directory being removed (renamed first, so a half-removed volume is
/// never mounted).
const REMOVING_PREFIX: &str = ".removing-";
/// Filesystem type of an s3fs mount in `/proc/self/mountinfo`.
const S3FS_TYPE: &str = "fuse.s3fs";
/// The system's CAs and `NODE_EXTRA_CA_CERTS` for s3fs, in the volumes root (no volume id
/// starts with a dot).
const S3FS_CA_BUNDLE: &str = ".s3fs-ca-bundle.pem";
/// Proxy variables libcurl reads; s3fs gets only the configured ones.
const PROXY_VARIABLES: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
    "all_proxy",
    "ALL_PROXY",
];
/// How long a new or existing mount may take to list its root before it counts as broken.
const MOUNT_CHECK_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
    s3: Option<Arc<S3Volumes>>,
}

/// Volumes as prefixes of an S3 bucket, mounted with s3fs.
struct S3Volumes {
    settings: S3Settings,
    /// Serializes mounts and unmounts (two sandboxes of one volume starting at once mount once).
    lock: Mutex<()>,
}

impl std::fmt::Debug for S3Volumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "s3fs volumes in bucket {} at {}",
            self.settings.bucket, self.settings.endpoint
        )
    }
}

/// Volume ids become directory names: only letters, digits and `-` (UUIDs).
fn checked(id: &str) -> io::Result<&str> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("volume id {id:?} is not a UUID"),
        ));
    }
    Ok(id)
}

impl VolumeStore {
    /// Uses (creating if needed) `root`; removals a crash interrupted are finished.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(&root)?.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(REMOVING_PREFIX)
            {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(VolumeStore { root, s3: None })
    }

    /// Keeps volumes' files in `settings`' bucket instead of local directories.
    pub fn with_s3(mut self, settings: S3Settings) -> Self {
        self.s3 = Some(Arc::new(S3Volumes {
            settings,
            lock: Mutex::new(()),
        }));
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The volume's directory (it may not exist).
    pub fn path(&self, id: &str) -> io::Result<PathBuf> {
        Ok(self.root.join(checked(id)?))
    }

    /// Creates the volume's directory; an existing one is kept with its files. In S3 the
    /// prefix needs no creating: it is mounted when a sandbox first uses it.
    pub fn create(&self, id: &str) -> io::Result<()> {
        let path = self.path(id)?;
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(e),
        }
        // Not through the umask: every sandbox user may write here.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
    }

    /// The directory to bind-mount for volume `id`, ready for use: in S3, mounted (and
    /// answering); locally, existing (`None` when it does not).
    pub fn prepare(&self, id: &str) -> io::Result<Option<PathBuf>> {
        let path = self.path(id)?;
        match &self.s3 {
            Some(s3) => {
                s3.ensure_mounted(id, &path)?;
                Ok(Some(path))
            }
            None => Ok(path.is_dir().then_some(path)),
        }
    }

    /// Removes the volume and its files; a missing volume is fine. Symlinks inside are removed,
    /// never followed. In S3 the files are deleted through the mount (another runner may be
    /// doing the same: what is already gone is fine), then it is unmounted.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        let path = self.path(id)?;
        if let Some(s3) = &self.s3 {
            s3.ensure_mounted(id, &path)?;
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                let removed = if entry.file_type()?.is_dir() {
                    std::fs::remove_dir_all(entry.path())
                } else {
                    std::fs::remove_file(entry.path())
                };
                match removed {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            s3.unmount(&path)?;
        }
        let doomed = self.root.join(format!("{REMOVING_PREFIX}{id}"));
        match std::fs::rename(&path, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::remove_dir_all(&doomed) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Unmounts every S3 volume mounted under the root (runner shutdown). Sandboxes still
    /// running keep their own bind mounts (detached unmount), so their volumes go on working.
    pub fn unmount_all(&self) -> io::Result<()> {
        let Some(s3) = &self.s3 else { return Ok(()) };
        for path in s3fs_mounts_under(&self.root)? {
            s3.unmount(&path)?;
        }
        Ok(())
    }
}

impl S3Volumes {
    fn prefix(&self, id: &str) -> String {
        format!("volumes/{id}")
    }

    /// Mounts `volumes/<id>/` at `path` unless a working mount is there already. A mount that
    /// does not answer (s3fs cannot reach the bucket) is removed again and reported.
    fn ensure_mounted(&self, id: &str, path: &Path) -> io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let described = || {
            format!(
                "s3fs mount of s3://{}/{}/ ({})",
                self.settings.bucket,
                self.prefix(id),
                self.settings.endpoint
            )
        };
        if s3fs_mounts_under(path)?.iter().any(|m| m == path) {
            match check_answers(path) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(volume = id, error = %e, "an s3fs mount stopped answering; mounting again");
                    detach(path)?;
                }
            }
        }
        std::fs::create_dir_all(path)?;
        let settings = &self.settings;
        let options = format!(
            "url={},endpoint={},use_path_request_style,allow_other,umask=0000,stat_cache_expire=1,retries=2",
            settings.endpoint.trim_end_matches('/'),
            settings.region
        );
        let mut s3fs = Command::new("s3fs");
        s3fs.arg(format!("{}:/{}", settings.bucket, self.prefix(id)))
            .arg(path)
            .args(["-o", &options])
            .env("AWSACCESSKEYID", &settings.access_key)
            .env("AWSSECRETACCESSKEY", &settings.secret_key)
            .stdin(Stdio::null());
        // s3fs (libcurl) takes proxies from its environment and one CA bundle in place of the
        // system's: both come from the configuration only.
        for variable in PROXY_VARIABLES {
            s3fs.env_remove(variable);
        }
        s3fs.envs(settings.outbound.proxy_env());
        if let Some(bundle) = settings
            .outbound
            .write_ca_bundle(&path.with_file_name(S3FS_CA_BUNDLE))?
        {
            s3fs.env("CURL_CA_BUNDLE", bundle);
        }
        let output = s3fs.output().map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                " (install s3fs: Debian package s3fs)"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("cannot run s3fs{hint}: {e}"))
        })?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "{} failed ({}): {}",
                described(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        // s3fs reaches the bucket only after it has daemonized: a listing tells.
        if let Err(e) = check_answers(path) {
            let _ = detach(path);
            return Err(io::Error::new(
                e.kind(),
                format!("{} does not work: {e}", described()),
            ));
        }
        tracing::info!(volume = id, path = %path.display(), "volume mounted from S3");
        Ok(())
    }

    fn unmount(&self, path: &Path) -> io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if s3fs_mounts_under(path)?.iter().any(|m| m == path) {
            detach(path)?;
        }
        Ok(())
    }
}

/// Lists `path` on another thread: a FUSE mount whose daemon hangs would block forever.
fn check_answers(path: &Path) -> io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_dir(&owned).and_then(|mut d| d.next().transpose()));
    });
    match rx.recv_timeout(MOUNT_CHECK_TIMEOUT) {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "listing it did not answer within {}s",
                MOUNT_CHECK_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Detached unmount: the mount disappears from this namespace now; sandboxes holding a bind
/// mount of it keep theirs until they stop.
fn detach(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot unmount {}: {e}", path.display()),
        ));
    }
    Ok(())
}

/// s3fs mount points at or below `dir` in this process's mount namespace.
fn s3fs_mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_s3fs_mounts(&mountinfo)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect())
}

/// Mount points of type s3fs in `/proc/self/mountinfo` text (the fifth field, octal escapes
/// decoded; the type follows the ` - ` separator).
fn parse_s3fs_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, rest) = line.split_once(" - ")?;
            let fstype = rest.split(' ').next()?;
            let point = mount.split(' ').nth(4)?;
            (fstype == S3FS_TYPE).then(|| PathBuf::from(unescape(point)))
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = |b: &u8| (b'0'..=b'7').contains(b);
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(octal) {
            out.push(u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn create_keeps_files_and_remove_never_follows_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let store = VolumeStore::open(dir.path().join("volumes")).unwrap();
        let id = "0b9c6a3e-1f7e-4c7e-9a51-6c3b8f0e2d11";
        store.create(id).unwrap();
        let path = store.path(id).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o777
        );
        std::fs::write(path.join("f"), "data").unwrap();
        store.create(id).unwrap();
        assert_eq!(std::fs::read_to_string(path.join("f")).unwrap(), "data");
        symlink(&outside, path.join("link")).unwrap();
        store.remove(id).unwrap();
        assert!(!path.exists());
        assert!(
            outside.join("keep").is_file(),
            "the symlink's target is kept"
        );
        store.remove(id).unwrap();
        for bad in ["../x", "a/b", "", "."] {
            assert!(store.path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn s3fs_mounts_are_read_from_mountinfo() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
91 22 0:52 / /data/volumes/v1 rw,nosuid,nodev,relatime shared:50 - fuse.s3fs s3fs rw,user_id=0,group_id=0,allow_other
92 22 0:53 / /data/with\\040space/v2 rw,relatime shared:51 - fuse.s3fs s3fs rw
93 22 0:54 / /data/volumes/other rw,relatime shared:52 - fuse.sshfs host: rw
";
        assert_eq!(
            parse_s3fs_mounts(mountinfo),
            [
                PathBuf::from("/data/volumes/v1"),
                PathBuf::from("/data/with space/v2")
            ]
        );
    }

    /// Needs s3fs (Debian package s3fs, installed by scripts/test.sh) and /dev/fuse.
    #[test]
    fn an_s3_volume_whose_bucket_cannot_be_reached_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A loopback port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = VolumeStore::open(dir.path().join("volumes"))
            .unwrap()
            .with_s3(S3Settings {
                endpoint: format!("http://127.0.0.1:{port}"),
                region: "us-east-1".into(),
                bucket: "volumes-test".into(),
                access_key: "key".into(),
                secret_key: "secret".into(),
                outbound: daytona_outbound::Outbound::direct(),
            });
        let id = "5d0c2f8e-3a51-4c39-9d0e-6f1b2a7c8e90";
        store.create(id).unwrap();
        let error = store.prepare(id).unwrap_err().to_string();
        assert!(
            error.contains(&format!("s3://volumes-test/volumes/{id}/")),
            "{error}"
        );
        assert!(!error.contains("install s3fs"), "s3fs is missing: {error}");
        assert!(
            s3fs_mounts_under(dir.path()).unwrap().is_empty(),
            "the failed mount is removed"
        );
        store.remove(id).unwrap_err();
        assert!(s3fs_mounts_under(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn interrupted_removals_are_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("volumes");
        std::fs::create_dir_all(root.join(".removing-v1/sub")).unwrap();
        std::fs::create_dir_all(root.join("v2")).unwrap();
        VolumeStore::open(&root).unwrap();
        assert!(!root.join(".removing-v1").exists());
        assert!(root.join("v2").is_dir());
    }
}
