//! An overlay upper directory as an OCI image layer (an uncompressed tar).
//!
//! Overlayfs and OCI layers record the same changes differently:
//! - a deleted lower file is a whiteout in the upper dir: a character device 0/0 (or, in
//!   user-xattr overlays, an empty file marked `trusted.overlay.whiteout`) → an empty entry
//!   `.wh.<name>` next to it;
//! - a directory replacing a lower one (deleted and made again) is marked opaque with the
//!   xattr `trusted.overlay.opaque=y` → the directory plus an entry `<dir>/.wh..wh..opq`;
//! - overlay's own bookkeeping (`trusted.overlay.*` xattrs) is not part of the files and is
//!   dropped; other xattrs (file capabilities, user xattrs) travel as PAX `SCHILY.xattr.*`.
//!
//! Entries are written in sorted order so the same changes give the same bytes. Hard links
//! between files of the layer stay hard links.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";
const WHITEOUT_XATTR: &[u8] = b"trusted.overlay.whiteout";
pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What went into a layer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub file_bytes: u64,
}

/// Writes the changes recorded in the overlay upper dir `upper` as a layer tar to `out`.
pub fn write_layer(upper: &Path, out: impl Write) -> io::Result<LayerStats> {
    let mut writer = LayerWriter {
        builder: tar::Builder::new(out),
        links: HashMap::new(),
        stats: LayerStats::default(),
    };
    writer.builder.follow_symlinks(false);
    writer.directory(upper, Path::new(""))?;
    writer.builder.into_inner()?.flush()?;
    Ok(writer.stats)
}

struct LayerWriter<W: Write> {
    builder: tar::Builder<W>,
    /// (dev, ino) of files with several links → the layer path written first.
    links: HashMap<(u64, u64), PathBuf>,
    stats: LayerStats,
}

impl<W: Write> LayerWriter<W> {
    /// Writes the entries inside `dir` (layer path `rel`), recursively.
    fn directory(&mut self, dir: &Path, rel: &Path) -> io::Result<()> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(|e| with_path(e, dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|e| with_path(e, dir))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel_path = rel.join(&name);
            self.entry(&path, &rel_path, &name)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &Path, name: &OsStr) -> io::Result<()> {
        let meta = fs::symlink_metadata(path).map_err(|e| with_path(e, path))?;
        let kind = meta.file_type();
        let xattrs = list_xattrs(path).map_err(|e| with_path(e, path))?;
        let is_whiteout = (kind.is_char_device() && meta.rdev() == 0)
            || (kind.is_file() && meta.len() == 0 && has_flag(&xattrs, WHITEOUT_XATTR));
        if is_whiteout {
            let mut marker = OsString::from(WHITEOUT_PREFIX);
            marker.push(name);
            let whiteout = rel.with_file_name(marker);
            self.empty_file(&whiteout, &meta)?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // A file really named `.wh.*` cannot be expressed in an OCI layer.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} cannot be stored in an image layer: names starting with {WHITEOUT_PREFIX} mark deletions",
                    rel.display()
                ),
            ));
        }
        let mut header = header_for(&meta);
        if kind.is_file() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                // The first entry carried the data and xattrs.
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                let first = first.clone();
                self.stats.entries += 1;
                return self.builder.append_link(&mut header, rel, first);
            }
            self.links.insert(key, rel.to_path_buf());
        }
        let pax = pax_xattrs(&xattrs);
        if !pax.is_empty() {
            self.pax_header(&pax)?;
        }
        self.stats.entries += 1;
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            self.builder
                .append_data(&mut header, dir_name(rel), io::empty())?;
            if has_flag(&xattrs, OPAQUE_XATTR) {
                self.empty_file(&rel.join(OPAQUE_MARKER), &meta)?;
                self.stats.opaque_dirs += 1;
            }
            return self.directory(path, rel);
        }
        if kind.is_symlink() {
            let target = fs::read_link(path).map_err(|e| with_path(e, path))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            return self.builder.append_link(&mut header, rel, target);
        }
        if kind.is_file() {
            let file = fs::File::open(path).map_err(|e| with_path(e, path))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            self.stats.file_bytes += meta.len();
            // A file that changes size while being read would corrupt the archive: the
            // caller freezes running sandboxes, and `take` keeps the header honest anyway.
            return self
                .builder
                .append_data(&mut header, rel, PadTo::new(file, meta.len()));
        }
        let entry_type = if kind.is_char_device() {
            tar::EntryType::Char
        } else if kind.is_block_device() {
            tar::EntryType::Block
        } else if kind.is_fifo() {
            tar::EntryType::Fifo
        } else {
            // Sockets have no tar representation (and mean nothing in an image).
            self.stats.entries -= 1;
            return Ok(());
        };
        header.set_entry_type(entry_type);
        header.set_size(0);
        let rdev = meta.rdev();
        header.set_device_major(libc::major(rdev))?;
        header.set_device_minor(libc::minor(rdev))?;
        self.builder.append_data(&mut header, rel, io::empty())
    }

    /// A PAX extended header that applies to the next entry.
    fn pax_header(&mut self, records: &[(String, Vec<u8>)]) -> io::Result<()> {
        let mut data = Vec::new();
        for (key, value) in records {
            data.extend_from_slice(&pax_record(key, value));
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        self.builder
            .append_data(&mut header, "PaxHeader", data.as_slice())
    }

    fn empty_file(&mut self, rel: &Path, like: &fs::Metadata) -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(0);
        header.set_mode(0o644);
        header.set_mtime(like.mtime().max(0) as u64);
        self.builder.append_data(&mut header, rel, io::empty())
    }
}

/// Directory entries end with `/` (as tar tools write them).
fn dir_name(rel: &Path) -> PathBuf {
    let mut s = rel.as_os_str().to_owned();
    s.push("/");
    PathBuf::from(s)
}

fn header_for(meta: &fs::Metadata) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(u64::from(meta.uid()));
    header.set_gid(u64::from(meta.gid()));
    header.set_mtime(meta.mtime().max(0) as u64);
    header
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn has_flag(xattrs: &[(Vec<u8>, Vec<u8>)], name: &[u8]) -> bool {
    xattrs
        .iter()
        .any(|(k, v)| k == name && matches!(v.as_slice(), b"y" | b"y\0" | b""))
}

/// One PAX record, `<length> <key>=<value>\n`, where the length counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

fn pax_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    xattrs
        .iter()
        .filter(|(k, _)| !k.starts_with(OVERLAY_XATTR_PREFIX))
        .filter_map(|(k, v)| {
            let name = String::from_utf8(k.clone()).ok()?;
            Some((format!("SCHILY.xattr.{name}"), v.clone()))
        })
        .collect()
}

/// Extended attributes of `path` itself (symlinks not followed).
fn list_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let names = grow(|buf| {
        // SAFETY: valid path and buffer of the given length.
        unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    })?;
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let value = match grow(|buf| {
            // SAFETY: valid strings and buffer.
            unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            }
        }) {
            Ok(v) => v,
            // Removed between list and get.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

/// Calls a size-probing xattr syscall with a buffer that grows until the value fits.
fn grow(mut call: impl FnMut(&mut [u8]) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = call(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
}

/// Exactly `len` bytes of a reader: cut if it grew, zero-padded if it shrank.
struct PadTo<R> {
    inner: io::Take<R>,
    missing: u64,
}

impl<R: io::Read> PadTo<R> {
    fn new(inner: R, len: u64) -> Self {
        PadTo {
            inner: io::Read::take(inner, len),
            missing: len,
        }
    }
}

impl<R: io::Read> io::Read for PadTo<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.missing -= n as u64;
            return Ok(n);
        }
        let pad = buf.len().min(self.missing as usize);
        buf[..pad].fill(0);
        self.missing -= pad as u64;
        Ok(pad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read;

    fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: valid strings and buffer.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn mknod_whiteout(path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Entries of a tar: path → (type, size, link target, xattrs).
    fn read_tar(bytes: &[u8]) -> BTreeMap<String, (tar::EntryType, Vec<u8>, Option<String>)> {
        let mut archive = tar::Archive::new(bytes);
        let mut out = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let link = entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.insert(path, (kind, data, link));
        }
        out
    }

    /// Needs root (whiteout device nodes, trusted.* xattrs) and a filesystem with xattrs.
    fn upper_dir() -> Option<tempfile::TempDir> {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        fs::write(&probe, "").unwrap();
        let ok = set_xattr(&probe, "trusted.overlay.opaque", b"y").is_ok()
            && mknod_whiteout(&dir.path().join("probe-wh")).is_ok();
        fs::remove_file(&probe).unwrap();
        let _ = fs::remove_file(dir.path().join("probe-wh"));
        if !ok {
            eprintln!("skipping: needs root and trusted xattrs");
            return None;
        }
        Some(dir)
    }

    #[test]
    fn overlay_changes_become_oci_entries() {
        let Some(dir) = upper_dir() else { return };
        let upper = dir.path();
        // A new file, a deleted base file, a replaced (opaque) directory, a symlink, a hard link.
        fs::create_dir_all(upper.join("home/daytona")).unwrap();
        fs::write(upper.join("home/daytona/new.txt"), "hello").unwrap();
        fs::hard_link(
            upper.join("home/daytona/new.txt"),
            upper.join("home/daytona/same.txt"),
        )
        .unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        mknod_whiteout(&upper.join("etc/motd")).unwrap();
        fs::create_dir_all(upper.join("opt/app")).unwrap();
        set_xattr(&upper.join("opt/app"), "trusted.overlay.opaque", b"y").unwrap();
        fs::write(upper.join("opt/app/only.txt"), "x").unwrap();
        std::os::unix::fs::symlink("new.txt", upper.join("home/daytona/link")).unwrap();
        set_xattr(&upper.join("home/daytona/new.txt"), "user.note", b"kept").unwrap();
        set_xattr(&upper.join("home"), "trusted.overlay.origin", b"junk").unwrap();

        let mut bytes = Vec::new();
        let stats = write_layer(upper, &mut bytes).unwrap();
        assert_eq!((stats.whiteouts, stats.opaque_dirs), (1, 1));
        assert_eq!(stats.file_bytes, 6);
        let entries = read_tar(&bytes);
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/.wh.motd",
                "home/",
                "home/daytona/",
                "home/daytona/link",
                "home/daytona/new.txt",
                "home/daytona/same.txt",
                "opt/",
                "opt/app/",
                "opt/app/.wh..wh..opq",
                "opt/app/only.txt",
            ]
        );
        assert_eq!(entries["etc/.wh.motd"].0, tar::EntryType::Regular);
        assert!(entries["etc/.wh.motd"].1.is_empty());
        assert_eq!(entries["home/daytona/new.txt"].1, b"hello");
        assert_eq!(entries["home/daytona/same.txt"].0, tar::EntryType::Link);
        assert_eq!(
            entries["home/daytona/same.txt"].2.as_deref(),
            Some("home/daytona/new.txt")
        );
        assert_eq!(entries["home/daytona/link"].0, tar::EntryType::Symlink);
        assert_eq!(entries["home/daytona/link"].2.as_deref(), Some("new.txt"));

        // User xattrs travel; overlay bookkeeping does not.
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if let Some(pax) = entry.pax_extensions().unwrap() {
                for ext in pax {
                    let ext = ext.unwrap();
                    seen.push((path.clone(), ext.key().unwrap().to_owned()));
                }
            }
        }
        assert_eq!(
            seen,
            [(
                "home/daytona/new.txt".to_owned(),
                "SCHILY.xattr.user.note".to_owned()
            )]
        );

        // Same changes, same bytes.
        let mut again = Vec::new();
        write_layer(upper, &mut again).unwrap();
        assert!(again == bytes);
    }

    #[test]
    fn files_named_like_whiteouts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".wh.sneaky"), "x").unwrap();
        let err = write_layer(dir.path(), io::sink()).unwrap_err();
        assert!(err.to_string().contains(".wh.sneaky"), "{err}");
    }
}
