//! Volumes on this host: one directory per volume under the runner's volume root
//! (`<DAYTONA_DATA_DIR>/volumes/<volume id>`), bind-mounted into every sandbox that uses it
//! (see `daytona_runtime::Mount`), so sandboxes share its files live.
//!
//! The root is root's only (0700); a volume's own directory is 0777 and owned by root, so
//! every user of every sandbox can create files in it (their own, with their umask), whatever
//! the image's users are. Multi-host deployments need shared storage here instead.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Prefix of a volume directory being removed (renamed first, so a half-removed volume is
/// never mounted).
const REMOVING_PREFIX: &str = ".removing-";

#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
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
        Ok(VolumeStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The volume's directory (it may not exist).
    pub fn path(&self, id: &str) -> io::Result<PathBuf> {
        Ok(self.root.join(checked(id)?))
    }

    /// Creates the volume's directory; an existing one is kept with its files.
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

    /// Removes the volume and its files; a missing volume is fine. Symlinks inside are removed,
    /// never followed.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        let path = self.path(id)?;
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
