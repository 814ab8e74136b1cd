//! Unpacks one image layer into an empty directory in overlayfs' own format, so that layers
//! are stored once and stacked by the kernel: a whiteout `.wh.NAME` becomes a 0/0 character
//! device `NAME`, an opaque marker `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its
//! directory. Numeric ownership, modes (setuid included), xattrs, symlinks, hardlinks and
//! device nodes are kept, and the blob's sha256 and the tar's diff id are verified.
//!
//! Paths are resolved inside the layer the way a chroot would (symlinks in the layer, even
//! absolute ones, never lead outside it), because layer contents are untrusted. Like Docker's
//! overlay2 driver, a layer is unpacked on its own: a member path that only resolves through a
//! symlink of a *lower* layer (no image builder writes such paths) becomes a real directory.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tracing::debug;

use super::error::{ImageError, IoContext};
use super::source::{Compression, LayerPlan};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// What overlayfs reads to hide a lower directory's entries.
const OVERLAY_OPAQUE: (&[u8], &[u8]) = (b"trusted.overlay.opaque", b"y");
/// Overlayfs' private xattrs (redirects, metacopy, opacity) are never taken from a layer: they
/// would make the kernel follow paths the image chose.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
/// Symlinks followed while resolving one path before giving up (Linux's own limit).
const MAX_SYMLINKS: usize = 40;
const READ_BUFFER: usize = 256 << 10;

/// Counts and hashes the bytes that pass through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads whatever is left (trailing padding the tar reader never asked for), then hashes.
    fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex::encode(self.hasher.finalize()), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// What unpacking one layer found, for the store and for logs.
#[derive(Debug, Default, Clone)]
pub(crate) struct UnpackStats {
    /// sha256 hex of the uncompressed tar.
    pub diff_id: String,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub entries: u64,
}

/// Unpacks `layer` into the empty directory `dest`; `what` names the layer in errors.
pub(crate) fn unpack_layer(
    layer: &LayerPlan,
    dest: &Path,
    what: &str,
) -> Result<UnpackStats, ImageError> {
    let mut state = Unpacker {
        root: dest.to_owned(),
        dir_times: Vec::new(),
        parent_cache: None,
    };
    let stats = state.apply_layer(layer, what)?;
    // Directory times last: creating entries inside a directory changes its mtime.
    for (path, mtime) in state.dir_times.iter().rev() {
        match set_times(path, *mtime) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other.ctx(|| format!("set times of {}", path.display()))?,
        }
    }
    Ok(stats)
}

/// Ownership, mode, time and xattrs of one tar entry.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker {
    root: PathBuf,
    dir_times: Vec<(PathBuf, i64)>,
    /// The last parent resolved for a file entry: sorted layers put siblings together, and a
    /// regular file, hardlink or device node cannot change how its parent resolves.
    parent_cache: Option<(Vec<OsString>, PathBuf)>,
}

impl Unpacker {
    fn apply_layer(&mut self, layer: &LayerPlan, what: &str) -> Result<UnpackStats, ImageError> {
        let blob = BufReader::with_capacity(READ_BUFFER, layer.location.open()?);
        let mut raw = HashingReader::new(blob);
        let applied = (|| -> Result<(String, u64, u64), ImageError> {
            let decoded: Box<dyn Read + '_> = match layer.compression {
                Compression::None => Box::new(&mut raw),
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut raw)),
                Compression::Zstd => {
                    Box::new(zstd::Decoder::new(&mut raw).ctx(|| format!("{what}: zstd"))?)
                }
            };
            let mut tar_stream = HashingReader::new(decoded);
            let entries = self.apply_tar(&mut tar_stream, what)?;
            let (diff_id, bytes) = tar_stream.finish().ctx(|| format!("{what}: read"))?;
            Ok((diff_id, bytes, entries))
        })();
        // The stored digest is checked even when unpacking failed: a corrupt blob usually breaks
        // decompression first, and the digest mismatch is the error that explains it.
        let (digest, compressed) = raw.finish().ctx(|| format!("{what}: read"))?;
        if let Some(expected) = &layer.digest {
            if compressed != layer.location.len {
                return Err(ImageError::SizeMismatch {
                    what: format!("{what} (sha256:{expected})"),
                    expected: layer.location.len,
                    actual: compressed,
                });
            }
            if *expected != digest {
                return Err(ImageError::DigestMismatch {
                    what: what.to_owned(),
                    expected: format!("sha256:{expected}"),
                    actual: format!("sha256:{digest}"),
                });
            }
        }
        let (diff_id, uncompressed, entries) = applied?;
        if let Some(expected) = &layer.diff_id
            && *expected != diff_id
        {
            return Err(ImageError::DigestMismatch {
                what: format!("{what} uncompressed (diff_id)"),
                expected: format!("sha256:{expected}"),
                actual: format!("sha256:{diff_id}"),
            });
        }
        Ok(UnpackStats {
            diff_id,
            compressed_bytes: compressed,
            uncompressed_bytes: uncompressed,
            entries,
        })
    }

    fn apply_tar(&mut self, stream: impl Read, what: &str) -> Result<u64, ImageError> {
        let mut archive = tar::Archive::new(stream);
        let mut count = 0;
        for entry in archive.entries().ctx(|| format!("{what}: read tar"))? {
            let mut entry = entry.ctx(|| format!("{what}: read tar"))?;
            let name = entry
                .path()
                .ctx(|| format!("{what}: entry name"))?
                .into_owned();
            self.apply_entry(&mut entry, &name).map_err(|e| match e {
                ImageError::Io { context, source } => ImageError::Io {
                    context: format!("{what}: {}: {context}", name.display()),
                    source,
                },
                other => other,
            })?;
            count += 1;
        }
        Ok(count)
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        name: &Path,
    ) -> Result<(), ImageError> {
        // Taken now so that any entry but a plain file (whiteouts included) invalidates it.
        let cached_parent = self.parent_cache.take();
        let kind = entry.header().entry_type();
        let mut components = normalize(name);
        let Some(base) = components.pop() else {
            // The layer's root directory: only its metadata applies.
            if kind.is_dir() {
                let meta = read_meta(entry)?;
                let root = self.root.clone();
                apply_meta(&root, &meta, false).ctx(|| "root metadata".into())?;
            }
            return Ok(());
        };
        let base_bytes = base.as_bytes();
        if base_bytes == OPAQUE_MARKER {
            let dir = self
                .resolve_parent(&components, true)?
                .expect("parents are created");
            lsetxattr(&dir, OVERLAY_OPAQUE.0, OVERLAY_OPAQUE.1)
                .ctx(|| "opaque directory".into())?;
            return Ok(());
        }
        if let Some(hidden) = base_bytes.strip_prefix(WHITEOUT_PREFIX) {
            // `.wh..wh.*` other than the opaque marker is AUFS bookkeeping with nothing to apply.
            if hidden.starts_with(WHITEOUT_PREFIX) || matches!(hidden, b"" | b"." | b"..") {
                return Ok(());
            }
            let dir = self
                .resolve_parent(&components, true)?
                .expect("parents are created");
            let target = dir.join(OsStr::from_bytes(hidden));
            // Whatever this layer itself put there stays (a whiteout hides lower layers only).
            if fs::symlink_metadata(&target).is_err() {
                mknod(&target, libc::S_IFCHR, libc::makedev(0, 0)).ctx(|| "whiteout".into())?;
            }
            return Ok(());
        }

        let parent = match cached_parent {
            Some((cached, resolved)) if cached == components => resolved,
            _ => self
                .resolve_parent(&components, true)?
                .expect("parents are created"),
        };
        let path = parent.join(&base);
        if matches!(
            kind,
            tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse
                | tar::EntryType::Link
                | tar::EntryType::Char
                | tar::EntryType::Block
                | tar::EntryType::Fifo
        ) {
            self.parent_cache = Some((components, parent.clone()));
        }
        let meta = read_meta(entry)?;
        match kind {
            tar::EntryType::Directory => {
                if !clear_for(&path, true).ctx(|| "replace".into())? {
                    fs::create_dir(&path).ctx(|| "mkdir".into())?;
                }
                apply_meta(&path, &meta, false).ctx(|| "metadata".into())?;
                self.dir_times.push((path.clone(), meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                clear_for(&path, false).ctx(|| "replace".into())?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .ctx(|| "create".into())?;
                io::copy(entry, &mut file).ctx(|| "write".into())?;
                // Through the descriptor: most entries are files, and this saves path lookups.
                std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                    .ctx(|| "chown".into())?;
                file.set_permissions(fs::Permissions::from_mode(meta.mode))
                    .ctx(|| "chmod".into())?;
                set_xattrs(&path, &meta, false).ctx(|| "xattrs".into())?;
                let time = UNIX_EPOCH + Duration::from_secs(meta.mtime.max(0) as u64);
                file.set_times(FileTimes::new().set_accessed(time).set_modified(time))
                    .ctx(|| "set times".into())?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .ctx(|| "symlink target".into())?
                    .ok_or_else(|| {
                        ImageError::malformed(name.display().to_string(), "symlink without target")
                    })?;
                clear_for(&path, false).ctx(|| "replace".into())?;
                std::os::unix::fs::symlink(&target, &path).ctx(|| "symlink".into())?;
                apply_meta(&path, &meta, true).ctx(|| "metadata".into())?;
                set_times(&path, meta.mtime).ctx(|| "set times".into())?;
            }
            tar::EntryType::Link => {
                let target_name = entry
                    .link_name()
                    .ctx(|| "hardlink target".into())?
                    .ok_or_else(|| {
                        ImageError::malformed(name.display().to_string(), "hardlink without target")
                    })?;
                let target = self.resolve_link_target(&target_name)?;
                clear_for(&path, false).ctx(|| "replace".into())?;
                fs::hard_link(&target, &path)
                    .ctx(|| format!("hardlink to {}", target.display()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                clear_for(&path, false).ctx(|| "replace".into())?;
                let header = entry.header();
                let major = header
                    .device_major()
                    .ctx(|| "device number".into())?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .ctx(|| "device number".into())?
                    .unwrap_or(0);
                let file_type = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                mknod(
                    &path,
                    file_type | (meta.mode & 0o7777),
                    libc::makedev(major, minor),
                )
                .ctx(|| "mknod".into())?;
                apply_meta(&path, &meta, false).ctx(|| "metadata".into())?;
                set_times(&path, meta.mtime).ctx(|| "set times".into())?;
            }
            other => {
                debug!(entry = %name.display(), kind = ?other, "skipping tar entry of unsupported type");
            }
        }
        Ok(())
    }

    /// Resolves a directory inside the root, following symlinks as if the root were `/`.
    /// Missing directories are created when `create` is set, else `None` is returned.
    fn resolve_parent(
        &mut self,
        components: &[OsString],
        create: bool,
    ) -> Result<Option<PathBuf>, ImageError> {
        let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut followed = 0;
        while let Some(component) = pending.pop_front() {
            if component == ".." {
                resolved.pop();
                continue;
            }
            let candidate = join_all(&self.root, &resolved).join(&component);
            match fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(ImageError::malformed(
                            candidate.display().to_string(),
                            "too many symlinks",
                        ));
                    }
                    let target = fs::read_link(&candidate)
                        .ctx(|| format!("readlink {}", candidate.display()))?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for part in symlink_components(&target).into_iter().rev() {
                        pending.push_front(part);
                    }
                }
                Ok(meta) if meta.is_dir() => resolved.push(component),
                Ok(_) if !create => return Ok(None),
                Ok(_) => {
                    return Err(ImageError::malformed(
                        candidate.display().to_string(),
                        "a path component is not a directory",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    fs::create_dir(&candidate).ctx(|| format!("mkdir {}", candidate.display()))?;
                    fs::set_permissions(&candidate, fs::Permissions::from_mode(0o755))
                        .ctx(|| format!("chmod {}", candidate.display()))?;
                    resolved.push(component);
                }
                Err(e) => return Err(ImageError::io(format!("stat {}", candidate.display()), e)),
            }
        }
        Ok(Some(join_all(&self.root, &resolved)))
    }

    /// A hardlink's target names an existing entry relative to the layer root; its last
    /// component is not followed (a link to a symlink links the symlink itself).
    fn resolve_link_target(&mut self, target: &Path) -> Result<PathBuf, ImageError> {
        let mut components = normalize(target);
        let missing = || {
            ImageError::malformed(
                target.display().to_string(),
                "hardlink target does not exist",
            )
        };
        let base = components.pop().ok_or_else(missing)?;
        let parent = self
            .resolve_parent(&components, false)?
            .ok_or_else(missing)?;
        let path = parent.join(base);
        match fs::symlink_metadata(&path) {
            Ok(meta) if !meta.is_dir() => Ok(path),
            _ => Err(missing()),
        }
    }
}

/// Lexical clean-up of a member name: no root, no `.`, and `..` never above the root.
fn normalize(path: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part.to_owned()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// A symlink target's components, keeping `..` for the resolver to apply.
fn symlink_components(target: &Path) -> Vec<OsString> {
    target
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn join_all(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut path = root.to_owned();
    path.extend(parts);
    path
}

/// Makes room for an entry at `path`. Returns true when a directory stays (merged into).
/// Existing files are unlinked, never written through, since they may be hardlinked elsewhere.
fn clear_for(path: &Path, keep_dir: bool) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => {
            if keep_dir {
                return Ok(true);
            }
            fs::remove_dir_all(path)?;
            Ok(false)
        }
        Ok(_) => {
            fs::remove_file(path)?;
            Ok(false)
        }
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<R>) -> Result<Meta, ImageError> {
    let header = entry.header();
    let bad = |field: &str, e: io::Error| ImageError::malformed(format!("tar header {field}"), e);
    let mut meta = Meta {
        uid: header.uid().map_err(|e| bad("uid", e))? as u32,
        gid: header.gid().map_err(|e| bad("gid", e))? as u32,
        mode: header.mode().map_err(|e| bad("mode", e))? & 0o7777,
        mtime: header.mtime().map_err(|e| bad("mtime", e))? as i64,
        xattrs: Vec::new(),
    };
    if let Some(extensions) = entry.pax_extensions().map_err(|e| bad("pax", e))? {
        for extension in extensions {
            let extension = extension.map_err(|e| bad("pax", e))?;
            let Ok(key) = extension.key() else { continue };
            let number = || extension.value().ok().and_then(|v| v.parse::<u32>().ok());
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if name.as_bytes().starts_with(OVERLAY_XATTR_PREFIX) {
                    continue;
                }
                meta.xattrs
                    .push((name.as_bytes().to_vec(), extension.value_bytes().to_vec()));
            } else if key == "uid" {
                meta.uid = number().unwrap_or(meta.uid);
            } else if key == "gid" {
                meta.gid = number().unwrap_or(meta.gid);
            }
        }
    }
    Ok(meta)
}

/// Owner first: chown clears setuid/setgid bits, so the mode goes on after it.
fn apply_meta(path: &Path, meta: &Meta, is_symlink: bool) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))?;
    if !is_symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))?;
    }
    set_xattrs(path, meta, is_symlink)
}

fn set_xattrs(path: &Path, meta: &Meta, is_symlink: bool) -> io::Result<()> {
    for (name, value) in &meta.xattrs {
        match lsetxattr(path, name, value) {
            // Linux refuses user.* xattrs on symlinks; tar archives carry them anyway.
            Err(e) if is_symlink && e.raw_os_error() == Some(libc::EPERM) => {}
            other => other?,
        }
    }
    Ok(())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn lsetxattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let path = c_path(path)?;
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are NUL-terminated and outlive the call; value is a valid buffer.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets atime and mtime without following a final symlink.
fn set_times(path: &Path, mtime: i64) -> io::Result<()> {
    let path = c_path(path)?;
    let time = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [time, time];
    // SAFETY: path is NUL-terminated and times points at two timespecs, as utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: path is NUL-terminated and outlives the call.
    let rc = unsafe { libc::mknod(path.as_ptr(), mode, dev) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Flushes the filesystem holding `dir`, so a renamed-into-place image survives a power loss.
pub(crate) fn sync_filesystem(dir: &Path) -> io::Result<()> {
    let file = File::open(dir)?;
    // SAFETY: the descriptor is valid for the duration of the call.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&file)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
