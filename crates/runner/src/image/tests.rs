//! Builds small OCI images in the test itself (tar + gzip/zstd from Rust) and resolves them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::*;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One layer's tar, entry by entry.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(1_700_000_000);
        header.set_size(0);
        header
    }

    fn dir(mut self, path: &str, mode: u32, owner: u64) -> Self {
        let mut header = Self::header(tar::EntryType::Directory, mode, owner, owner);
        self.0
            .append_data(&mut header, path, std::io::empty())
            .unwrap();
        self
    }

    fn file(mut self, path: &str, content: &str, mode: u32, owner: u64) -> Self {
        let mut header = Self::header(tar::EntryType::Regular, mode, owner, owner);
        header.set_size(content.len() as u64);
        self.0
            .append_data(&mut header, path, content.as_bytes())
            .unwrap();
        self
    }

    /// An xattr for the next entry (a PAX header precedes the entry it describes).
    fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        let key = format!("SCHILY.xattr.{name}");
        self.0
            .append_pax_extensions([(key.as_str(), value)])
            .unwrap();
        self
    }

    fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.0.append_link(&mut header, path, target).unwrap();
        self
    }

    fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut header = Self::header(tar::EntryType::Link, 0o644, 0, 0);
        self.0.append_link(&mut header, path, target).unwrap();
        self
    }

    fn compress(self, media_type: &'static str) -> BuiltLayer {
        let tar = self.0.into_inner().unwrap();
        let blob = match media_type {
            GZIP => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(&tar).unwrap();
                encoder.finish().unwrap()
            }
            ZSTD => zstd::encode_all(tar.as_slice(), 3).unwrap(),
            _ => tar.clone(),
        };
        BuiltLayer {
            media_type,
            diff_id: sha256(&tar),
            blob,
        }
    }
}

struct BuiltLayer {
    media_type: &'static str,
    diff_id: String,
    blob: Vec<u8>,
}

/// Writes a blob into an OCI layout and returns its descriptor.
fn put_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let hex = sha256(bytes);
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    json!({ "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len() })
}

/// Writes config + manifest for `layers`; returns the manifest descriptor (digest hex inside).
fn put_image(layout: &Path, layers: &[BuiltLayer], arch: &str) -> serde_json::Value {
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin:/bin", "GREETING=a=b"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "WorkingDir": "/home/daytona",
            "User": "daytona"
        },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| format!("sha256:{}", l.diff_id)).collect::<Vec<_>>() }
    });
    let config = put_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| put_blob(layout, l.media_type, &l.blob))
        .collect();
    let manifest = json!({ "schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layer_descs });
    let mut desc = put_blob(layout, MANIFEST, manifest.to_string().as_bytes());
    desc["platform"] = json!({ "architecture": arch, "os": "linux" });
    desc
}

fn put_index(layout: &Path, manifests: Vec<serde_json::Value>) {
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": manifests });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
}

fn tagged(mut desc: serde_json::Value, tag: &str) -> serde_json::Value {
    desc["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    desc
}

/// Packs a layout directory as an `oci-archive` tar.
fn archive(layout: &Path, out: &Path) {
    let mut builder = tar::Builder::new(fs::File::create(out).unwrap());
    builder.append_dir_all(".", layout).unwrap();
    builder.finish().unwrap();
}

/// The two-layer image the behaviour tests share: lower content, then whiteouts on top.
fn layers() -> Vec<BuiltLayer> {
    let lower = Layer::new()
        .dir("etc", 0o755, 0)
        .file("etc/keep.conf", "old", 0o644, 0)
        .file("etc/gone.conf", "bye", 0o644, 0)
        .dir("opt", 0o755, 0)
        .file("opt/old1", "1", 0o644, 0)
        .dir("opt/sub", 0o755, 0)
        .file("opt/sub/old2", "2", 0o644, 0)
        .dir("usr", 0o755, 0)
        .dir("usr/bin", 0o755, 0)
        .dir("usr/lib", 0o755, 0)
        .file("usr/bin/sudo", "#!sudo", 0o4755, 0)
        .file("usr/bin/python3", "py", 0o755, 0)
        .hardlink("usr/bin/python3.11", "usr/bin/python3")
        .file("usr/bin/sh", "sh-v1", 0o755, 0)
        .hardlink("usr/bin/sh-hard", "usr/bin/sh")
        .symlink("bin", "usr/bin")
        // Absolute: inside the image it means the image's /usr/lib, never the host's.
        .symlink("lib", "/usr/lib")
        .dir("home", 0o755, 0)
        .xattr("user.daytona", b"yes")
        .dir("home/daytona", 0o750, 1000)
        .file("home/daytona/.bashrc", "# rc", 0o644, 1000)
        .compress(GZIP);
    let upper = Layer::new()
        .file("etc/.wh.gone.conf", "", 0o644, 0)
        .file("etc/keep.conf", "new", 0o600, 0)
        .file("opt/.wh..wh..opq", "", 0o644, 0)
        .file("opt/new", "n", 0o644, 0)
        .file("lib/through-symlink", "x", 0o644, 0)
        .file("bin/sh", "sh-v2", 0o755, 0)
        .compress(ZSTD);
    let top = Layer::new().dir("tmp", 0o1777, 0).compress(PLAIN);
    vec![lower, upper, top]
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: ImageStore,
    layout: PathBuf,
    archive: PathBuf,
    manifest_hex: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let desc = put_image(&layout, &layers(), "amd64");
    let manifest_hex = desc["digest"].as_str().unwrap()["sha256:".len()..].to_owned();
    put_index(&layout, vec![tagged(desc, "v1")]);
    let archive_path = dir.path().join("image.oci.tar");
    archive(&layout, &archive_path);
    let store = ImageStore::new(dir.path().join("store"));
    Fixture {
        store,
        layout,
        archive: archive_path,
        manifest_hex,
        _dir: dir,
    }
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a writable buffer of the stated length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[tokio::test]
async fn unpacks_layers_with_whiteouts_ownership_and_links() {
    let f = fixture();
    let image = f
        .store
        .resolve(&format!("oci-archive:{}", f.archive.display()))
        .await
        .unwrap();
    let root = &image.rootfs;
    assert_eq!(image.digest, format!("sha256:{}", f.manifest_hex));
    assert_eq!(*root, f.store.root().join("rootfs").join(&f.manifest_hex));

    // Whiteout and overwrite.
    assert!(!root.join("etc/gone.conf").exists());
    assert_eq!(read(root, "etc/keep.conf"), "new");
    assert_eq!(
        fs::metadata(root.join("etc/keep.conf")).unwrap().mode() & 0o7777,
        0o600
    );
    // Opaque directory: lower entries gone, the upper layer's entry kept.
    let mut opt: Vec<_> = fs::read_dir(root.join("opt"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    opt.sort();
    assert_eq!(opt, ["new"]);
    // Setuid survives chown; numeric ownership kept.
    let sudo = fs::metadata(root.join("usr/bin/sudo")).unwrap();
    assert_eq!(sudo.mode() & 0o7777, 0o4755);
    let home = fs::metadata(root.join("home/daytona")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    assert_eq!(
        fs::metadata(root.join("home/daytona/.bashrc"))
            .unwrap()
            .uid(),
        1000
    );
    assert_eq!(
        xattr(&root.join("home/daytona"), "user.daytona").as_deref(),
        Some(&b"yes"[..])
    );
    // Symlinks are stored as written, and resolved inside the image while unpacking.
    assert_eq!(
        fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(
        fs::read_link(root.join("lib")).unwrap(),
        Path::new("/usr/lib")
    );
    assert_eq!(read(root, "usr/lib/through-symlink"), "x");
    assert!(!Path::new("/usr/lib/through-symlink").exists());
    // Hardlinks share an inode; replacing one name does not write through to the other.
    let py = fs::metadata(root.join("usr/bin/python3")).unwrap();
    assert_eq!(
        py.ino(),
        fs::metadata(root.join("usr/bin/python3.11")).unwrap().ino()
    );
    assert_eq!(read(root, "usr/bin/sh"), "sh-v2");
    assert_eq!(read(root, "usr/bin/sh-hard"), "sh-v1");
    assert_eq!(
        fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::metadata(root.join("etc/keep.conf")).unwrap().mtime(),
        1_700_000_000
    );

    // Config.
    assert_eq!(
        image.env,
        [
            ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
            ("GREETING".to_owned(), "a=b".to_owned())
        ]
    );
    assert_eq!(image.workdir.as_deref(), Some("/home/daytona"));
    assert_eq!(image.user.as_deref(), Some("daytona"));
    assert_eq!(image.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(image.cmd, ["echo hi"]);

    // The same image through the layout directory and by tag: same digest, no second unpack.
    let by_dir = f
        .store
        .resolve(&format!("oci:{}:v1", f.layout.display()))
        .await
        .unwrap();
    assert_eq!(by_dir, image);
    assert_eq!(f.store.unpack_count(), 1);
    assert_eq!(fs::read_dir(f.store.root().join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn corrupted_blob_fails_digest_check_and_leaves_nothing() {
    let f = fixture();
    // Flip one byte of the zstd layer's blob in the layout, keeping its size.
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(f.layout.join("blobs/sha256").join(&f.manifest_hex)).unwrap(),
    )
    .unwrap();
    let digest = manifest["layers"][1]["digest"].as_str().unwrap();
    let blob = f
        .layout
        .join("blobs/sha256")
        .join(&digest["sha256:".len()..]);
    let mut bytes = fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&blob, bytes).unwrap();

    let err = f
        .store
        .resolve(&format!("oci:{}", f.layout.display()))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(digest), "{err}");
    assert!(!f.store.root().join("rootfs").join(&f.manifest_hex).exists());
    assert_eq!(fs::read_dir(f.store.root().join("tmp")).unwrap().count(), 0);
    assert_eq!(f.store.unpack_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_resolves_share_one_unpack_and_repeats_are_cached() {
    let f = fixture();
    let reference = format!("oci-archive:{}:v1", f.archive.display());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, reference) = (f.store.clone(), reference.clone());
        tasks.spawn(async move { store.resolve(&reference).await.unwrap() });
    }
    let images: Vec<Image> = tasks.join_all().await;
    assert!(images.iter().all(|i| *i == images[0]));
    assert_eq!(f.store.unpack_count(), 1);

    let started = Instant::now();
    let again = f.store.resolve(&reference).await.unwrap();
    assert_eq!(again, images[0]);
    assert!(
        started.elapsed().as_millis() < 1000,
        "cached resolve took {:?}",
        started.elapsed()
    );

    // A rewritten archive is read again, but the same digest is not unpacked twice.
    archive(&f.layout, &f.archive);
    assert_eq!(f.store.resolve(&reference).await.unwrap(), images[0]);
    assert_eq!(f.store.unpack_count(), 1);
}

#[tokio::test]
async fn nested_index_picks_the_host_platform() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let arm = put_image(
        &layout,
        &[Layer::new().file("arch", "arm64", 0o644, 0).compress(GZIP)],
        "arm64",
    );
    let amd = put_image(
        &layout,
        &[Layer::new().file("arch", "amd64", 0o644, 0).compress(GZIP)],
        "amd64",
    );
    let nested = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": [arm, amd] });
    let nested = put_blob(&layout, INDEX, nested.to_string().as_bytes());
    put_index(&layout, vec![tagged(nested, "multi")]);
    let store = ImageStore::new(dir.path().join("store"));
    let image = store
        .resolve(&format!("oci:{}:multi", layout.display()))
        .await
        .unwrap();
    assert_eq!(image.digest, amd["digest"].as_str().unwrap());
    assert_eq!(read(&image.rootfs, "arch"), "amd64");
}

#[tokio::test]
async fn legacy_docker_archive_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("docker");
    fs::create_dir_all(src.join("abc")).unwrap();
    let layer = Layer::new()
        .file("hello", "docker", 0o644, 0)
        .compress(PLAIN);
    fs::write(src.join("abc/layer.tar"), &layer.blob).unwrap();
    let config = json!({
        "architecture": "amd64", "os": "linux", "config": { "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", layer.diff_id)] }
    })
    .to_string();
    let config_hex = sha256(config.as_bytes());
    fs::write(src.join(format!("{config_hex}.json")), &config).unwrap();
    let manifest = json!([{ "Config": format!("{config_hex}.json"), "RepoTags": ["hello:latest"], "Layers": ["abc/layer.tar"] }]);
    fs::write(src.join("manifest.json"), manifest.to_string()).unwrap();
    let tar_path = dir.path().join("hello.docker.tar");
    archive(&src, &tar_path);

    let store = ImageStore::new(dir.path().join("store"));
    let image = store
        .resolve(&format!(
            "docker-archive:{}:hello:latest",
            tar_path.display()
        ))
        .await
        .unwrap();
    assert_eq!(image.digest, format!("sha256:{config_hex}"));
    let as_oci = store
        .resolve(&format!("oci-archive:{}", tar_path.display()))
        .await
        .unwrap_err();
    assert!(
        as_oci.to_string().contains("docker-archive:PATH"),
        "{as_oci}"
    );
    assert_eq!(read(&image.rootfs, "hello"), "docker");
    assert_eq!(image.cmd, ["sh"]);
}

#[tokio::test]
async fn bad_references_are_refused_clearly() {
    let f = fixture();
    let err = f.store.resolve("ubuntu:22.04").await.unwrap_err();
    assert!(matches!(err, ImageError::Unsupported(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("registry pulls not supported yet; use oci-archive:PATH"),
        "{message}"
    );
    assert!(message.contains("ubuntu:22.04"), "{message}");
    assert!(matches!(
        f.store.resolve("docker.io/library/python:3.12-slim").await,
        Err(ImageError::Unsupported(_))
    ));
    assert!(matches!(
        f.store.resolve("").await,
        Err(ImageError::InvalidReference { .. })
    ));
    assert!(matches!(
        f.store.resolve("oci-archive:").await,
        Err(ImageError::InvalidReference { .. })
    ));
    assert!(matches!(
        f.store.resolve("/some/path.tar").await,
        Err(ImageError::InvalidReference { .. })
    ));
    match f.store.resolve("oci-archive:/nonexistent/x.tar:v1").await {
        Err(ImageError::NotFound(path)) => assert_eq!(path, Path::new("/nonexistent/x.tar")),
        other => panic!("{other:?}"),
    }
    let missing_tag = format!("oci-archive:{}:v2", f.archive.display());
    assert!(matches!(
        f.store.resolve(&missing_tag).await,
        Err(ImageError::NoMatchingManifest { .. })
    ));
    let not_oci = format!("oci:{}", f.store.root().parent().unwrap().display());
    assert!(matches!(
        f.store.resolve(&not_oci).await,
        Err(ImageError::Malformed { .. })
    ));
}

/// The image `scripts/build-base-image.sh` leaves in the cache. Run with
/// `cargo test -p daytona-runner --release -- --ignored base_image` after building it.
#[tokio::test]
#[ignore = "needs the base image built by scripts/build-base-image.sh"]
async fn base_image_resolves() {
    let cache = std::env::var_os("DAYTONA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
            xdg.unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
                .join("daytona")
        });
    let archive_path = cache.join("base-bookworm.oci.tar");
    assert!(
        archive_path.is_file(),
        "{} missing: run scripts/build-base-image.sh",
        archive_path.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::new(dir.path().to_owned());
    let reference = format!("oci-archive:{}", archive_path.display());

    let started = Instant::now();
    let image = store.resolve(&reference).await.unwrap();
    eprintln!("base image unpacked in {:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(store.resolve(&reference).await.unwrap(), image);
    eprintln!("base image re-resolved in {:?}", started.elapsed());

    let root = &image.rootfs;
    assert!(root.join("usr/bin/python3").exists());
    assert!(root.join("etc/sudoers.d").is_dir());
    assert_eq!(
        fs::metadata(root.join("usr/bin/sudo")).unwrap().mode() & 0o7777,
        0o4755
    );
    let home = fs::metadata(root.join("home/daytona")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    assert_eq!(image.workdir.as_deref(), Some("/home/daytona"));
    assert!(image.env.iter().any(|(k, _)| k == "PATH"));

    // Passwordless sudo works for the image's user (setuid bit and sudoers survived the unpack).
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args([
            "/usr/sbin/runuser",
            "-u",
            "daytona",
            "--",
            "sudo",
            "-n",
            "id",
            "-u",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{out:?}");
}

#[tokio::test]
async fn committed_changes_become_an_image_on_top_of_the_base() {
    let f = fixture();
    let base = format!("oci-archive:{}:v1", f.archive.display());
    let changes = || {
        let mut tar = Layer::new()
            .file("etc/added", "from the sandbox", 0o640, 1000)
            .file("etc/.wh.keep.conf", "", 0o644, 0)
            .dir("opt", 0o755, 0)
            .file("opt/.wh..wh..opq", "", 0o644, 0)
            .file("opt/only", "o", 0o644, 0)
            .0;
        tar.finish().unwrap();
        Box::new(std::io::Cursor::new(tar.into_inner().unwrap())) as Box<dyn std::io::Read + Send>
    };
    let committed = f.store.commit(&base, changes()).await.unwrap();
    assert!(committed.reference.starts_with("oci:"), "{committed:?}");

    let image = f.store.resolve(&committed.reference).await.unwrap();
    assert_eq!(image.digest, committed.digest);
    let root = &image.rootfs;
    assert_eq!(read(root, "etc/added"), "from the sandbox");
    let meta = fs::metadata(root.join("etc/added")).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o640, 1000));
    assert!(!root.join("etc/keep.conf").exists(), "whiteout applied");
    assert!(root.join("etc/gone.conf").symlink_metadata().is_err());
    assert_eq!(
        fs::read_dir(root.join("opt")).unwrap().count(),
        1,
        "opaque dir"
    );
    assert_eq!(read(root, "opt/only"), "o");
    assert_eq!(read(root, "usr/bin/python3"), "py", "base layers below");
    // The base's runtime config carries over.
    assert_eq!(image.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(image.workdir.as_deref(), Some("/home/daytona"));
    assert!(image.env.contains(&("GREETING".into(), "a=b".into())));

    // The same changes again: the same image, and base blobs are shared, not copied twice.
    let again = f.store.commit(&base, changes()).await.unwrap();
    assert_eq!(again, committed);
    let blobs = f.store.root().join("committed/blobs/sha256");
    // Three base layers, the new layer, config and manifest.
    assert_eq!(fs::read_dir(&blobs).unwrap().count(), 6);

    // Snapshots of snapshots stack.
    let mut more = Layer::new().file("etc/second", "2", 0o644, 0).0;
    more.finish().unwrap();
    let second = f
        .store
        .commit(
            &committed.reference,
            Box::new(std::io::Cursor::new(more.into_inner().unwrap())),
        )
        .await
        .unwrap();
    let root = f.store.resolve(&second.reference).await.unwrap().rootfs;
    assert_eq!(read(&root, "etc/added"), "from the sandbox");
    assert_eq!(read(&root, "etc/second"), "2");

    let err = f
        .store
        .commit("oci-archive:/nonexistent.tar", changes())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
}
