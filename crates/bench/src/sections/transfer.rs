//! Upload and download throughput through the toolbox proxy (the SDK's bulk-upload and
//! bulk-download), next to a plain local copy of the same file on this machine. Files are
//! streamed from and to disk, never held in memory whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::RngExt;

use crate::client::{Client, Sandbox};
use crate::error::{BenchError, Result};
use crate::report::SectionReport;
use crate::{Options, Tracker};

const MIB: u64 = 1024 * 1024;
/// Files up to this size are compared byte for byte after the round trip.
const VERIFY_UP_TO: u64 = 64 * MIB;

pub async fn run(client: &Client, tracker: &Tracker, opts: &Options) -> Result<SectionReport> {
    let scratch = opts
        .scratch_dir
        .join(format!("daytona-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| BenchError::io(format!("create {}", scratch.display()), e))?;
    let sb = tracker.create(client, "transfer").await;
    let result = match &sb {
        Ok(sb) => measure(client, sb, opts, &scratch).await,
        Err(_) => Ok(SectionReport::new("transfer", "")),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let sb = sb?;
    tracker.delete(client, &sb.id).await?;
    result
}

async fn measure(
    client: &Client,
    sb: &Sandbox,
    opts: &Options,
    scratch: &Path,
) -> Result<SectionReport> {
    let mut report = SectionReport::new(
        "transfer",
        "file transfer through the proxy vs a local copy",
    );
    let large = opts.large_transfer_mib * MIB;
    let sizes = [(MIB, 10), (large, if large >= 256 * MIB { 1 } else { 3 })];
    for (size, runs) in sizes {
        let label = size_label(size);
        let src = scratch.join("source.bin");
        let back = scratch.join("downloaded.bin");
        let copy = scratch.join("copy.bin");
        blocking(write_random(src.clone(), size)).await?;
        let remote = format!("/tmp/daytona-bench-{size}.bin");
        let (mut up, mut down, mut local) = (vec![], vec![], vec![]);
        for _ in 0..runs {
            let t0 = Instant::now();
            client.upload_file(sb, &src, &remote).await?;
            up.push(rate(size, t0));

            let t0 = Instant::now();
            let got = client.download_file(sb, &remote, &back).await?;
            down.push(rate(size, t0));
            if got != size {
                return Err(BenchError::Response {
                    what: format!("download {remote}"),
                    detail: format!("{got} bytes, expected {size}"),
                });
            }

            let t0 = Instant::now();
            blocking(copy_file(src.clone(), copy.clone())).await?;
            local.push(rate(size, t0));
        }
        if size <= VERIFY_UP_TO {
            let (a, b) = (read(&src)?, read(&back)?);
            if a != b {
                return Err(BenchError::Response {
                    what: format!("download {remote}"),
                    detail: "content differs from what was uploaded".into(),
                });
            }
        }
        client.exec_ok(sb, &format!("rm -f {remote}")).await?;
        for f in [&src, &back, &copy] {
            let _ = std::fs::remove_file(f);
        }
        report.metric(format!("upload {label} (proxy)"), "MiB/s", up);
        report.metric(format!("download {label} (proxy)"), "MiB/s", down);
        report.metric(format!("local copy {label}"), "MiB/s", local);
    }
    report.note("upload = fs.upload_file (multipart bulk-upload), download = fs.download_file (multipart bulk-download)");
    report.note("local copy = std::fs::copy on the scratch dir's filesystem (page cache warm, like the transfers)");
    Ok(report)
}

fn size_label(size: u64) -> String {
    if size >= 1024 * MIB && size.is_multiple_of(1024 * MIB) {
        format!("{} GiB", size / (1024 * MIB))
    } else {
        format!("{} MiB", size / MIB)
    }
}

/// MiB/s for `size` bytes since `t0`.
fn rate(size: u64, t0: Instant) -> f64 {
    size as f64 / MIB as f64 / t0.elapsed().as_secs_f64()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BenchError::Host(format!("file task failed: {e}")))?
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| BenchError::io(format!("read {}", path.display()), e))
}

/// A file of `size` random bytes, written in chunks (one random 4 MiB block repeated).
fn write_random(path: PathBuf, size: u64) -> impl FnOnce() -> Result<()> + Send {
    move || {
        let mut block = vec![0u8; (4 * MIB).min(size) as usize];
        rand::rng().fill(&mut block[..]);
        let io = |e| BenchError::io(format!("write {}", path.display()), e);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io)?);
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n]).map_err(io)?;
            left -= n as u64;
        }
        f.flush().map_err(io)
    }
}

fn copy_file(from: PathBuf, to: PathBuf) -> impl FnOnce() -> Result<()> + Send {
    move || {
        std::fs::copy(&from, &to)
            .map(|_| ())
            .map_err(|e| BenchError::io(format!("copy {} to {}", from.display(), to.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(size_label(MIB), "1 MiB");
        assert_eq!(size_label(1024 * MIB), "1 GiB");
        assert_eq!(size_label(8 * MIB), "8 MiB");
    }

    #[test]
    fn random_file_has_the_size_and_copies() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_random(a.clone(), 5 * MIB + 3)().unwrap();
        assert_eq!(std::fs::metadata(&a).unwrap().len(), 5 * MIB + 3);
        copy_file(a.clone(), b.clone())().unwrap();
        assert_eq!(read(&a).unwrap(), read(&b).unwrap());
    }
}
