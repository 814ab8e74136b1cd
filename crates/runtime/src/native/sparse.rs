//! A sparse file as a stream and back: only its data extents travel, so a sandbox disk image of
//! several GiB with a few MB written exports as a few MB (before compression) and comes back
//! just as sparse.
//!
//! Format (integers little-endian): the magic `DTNSPRS1`, the file length (u64), then records
//! `offset (u64), length (u64), bytes`, in increasing offset order, ended by a record with
//! offset `u64::MAX` and length 0.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"DTNSPRS1";
const END: u64 = u64::MAX;
/// Extents are read in pieces of at most this many bytes.
const PIECE: u64 = 1 << 20;

/// Reads a file as the sparse stream.
pub struct SparseReader {
    file: File,
    len: u64,
    /// Bytes produced but not yet handed out (headers).
    pending: Vec<u8>,
    pending_at: usize,
    /// Where to look for the next data extent.
    next: u64,
    /// The extent being copied: current offset and its end.
    extent: Option<(u64, u64)>,
    done: bool,
}

impl SparseReader {
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let mut pending = MAGIC.to_vec();
        pending.extend_from_slice(&len.to_le_bytes());
        Ok(SparseReader {
            file,
            len,
            pending,
            pending_at: 0,
            next: 0,
            extent: None,
            done: false,
        })
    }

    /// The next data extent at or after `self.next`, if any.
    fn find_extent(&self) -> io::Result<Option<(u64, u64)>> {
        if self.next >= self.len {
            return Ok(None);
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: lseek on an owned descriptor.
        let data = unsafe { libc::lseek(fd, self.next as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some((data as u64, (hole as u64).min(self.len))))
    }

    fn record(&mut self, offset: u64, len: u64) {
        self.pending.clear();
        self.pending_at = 0;
        self.pending.extend_from_slice(&offset.to_le_bytes());
        self.pending.extend_from_slice(&len.to_le_bytes());
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pending_at < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.pending_at);
                buf[..n].copy_from_slice(&self.pending[self.pending_at..self.pending_at + n]);
                self.pending_at += n;
                return Ok(n);
            }
            if let Some((at, end)) = self.extent {
                if at < end {
                    let want = buf.len().min((end - at) as usize);
                    let n = self.file.read_at(&mut buf[..want], at)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file shrank while being read",
                        ));
                    }
                    self.extent = Some((at + n as u64, end));
                    return Ok(n);
                }
                self.extent = None;
            }
            if self.done {
                return Ok(0);
            }
            match self.find_extent()? {
                Some((data, hole)) => {
                    let end = hole.min(data + PIECE);
                    self.next = end;
                    self.record(data, end - data);
                    self.extent = Some((data, end));
                }
                None => {
                    self.record(END, 0);
                    self.done = true;
                }
            }
        }
    }
}

/// Writes the sparse stream read from `input` into a new file at `dest` (replaced); returns
/// the file's length. Holes stay holes.
pub fn restore(mut input: impl Read, dest: &Path) -> io::Result<u64> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut header = [0u8; 16];
    input.read_exact(&mut header)?;
    if &header[..8] != MAGIC {
        return Err(bad("not a sparse disk stream (bad magic)".into()));
    }
    let len = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
    let file = File::create(dest)?;
    file.set_len(len)?;
    let mut out = io::BufWriter::with_capacity(PIECE as usize, &file);
    let mut position = 0u64;
    let mut buf = vec![0u8; PIECE as usize];
    loop {
        let mut record = [0u8; 16];
        input.read_exact(&mut record)?;
        let offset = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
        let size = u64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
        if offset == END && size == 0 {
            break;
        }
        if offset < position || offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(bad(format!(
                "extent {offset}+{size} is out of order or past the end ({len})"
            )));
        }
        if offset > position {
            out.flush()?;
            use std::io::Seek;
            out.get_mut().seek(io::SeekFrom::Start(offset))?;
        }
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            input.read_exact(&mut buf[..n])?;
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        position = offset + size;
    }
    out.flush()?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_round_trip_with_their_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let file = File::create(&src).unwrap();
        let len = 64u64 << 20;
        file.set_len(len).unwrap();
        // Data at the start, a 3 MB extent in the middle (longer than one piece), and the end.
        file.write_all_at(b"start", 0).unwrap();
        let middle: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&middle, 20 << 20).unwrap();
        file.write_all_at(b"end", len - 3).unwrap();
        drop(file);

        let mut stream = Vec::new();
        SparseReader::new(File::open(&src).unwrap())
            .unwrap()
            .read_to_end(&mut stream)
            .unwrap();
        assert!(
            (stream.len() as u64) < 8 << 20,
            "holes must not travel: {} bytes",
            stream.len()
        );

        let dest = dir.path().join("dest.img");
        assert_eq!(restore(stream.as_slice(), &dest).unwrap(), len);
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dest).unwrap());
        assert!(a == b, "contents differ");
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&dest).unwrap().blocks() * 512;
        assert!(
            allocated < 16 << 20,
            "restored file is not sparse: {allocated}"
        );
    }

    #[test]
    fn damaged_streams_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let err = restore(&b"NOTMAGIC\0\0\0\0\0\0\0\0"[..], &dest).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");

        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(&10u64.to_le_bytes());
        stream.extend_from_slice(&8u64.to_le_bytes());
        stream.extend_from_slice(&5u64.to_le_bytes());
        stream.extend_from_slice(b"12345");
        let err = restore(stream.as_slice(), &dest).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");

        // Truncated: no end record.
        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(&10u64.to_le_bytes());
        assert_eq!(
            restore(stream.as_slice(), &dest).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
