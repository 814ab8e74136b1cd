//! Builds small OCI images in the test itself (tar + gzip/zstd from Rust) and resolves them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
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

/// The three-layer image the behaviour tests share: lower content, then whiteouts on top.
fn layers() -> Vec<BuiltLayer> {
    vec![lower_layer(), upper_layer(), top_layer()]
}

fn lower_layer() -> BuiltLayer {
    Layer::new()
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
        .file("lib/through-symlink", "x", 0o644, 0)
        .dir("home", 0o755, 0)
        .xattr("user.daytona", b"yes")
        .dir("home/daytona", 0o750, 1000)
        .file("home/daytona/.bashrc", "# rc", 0o644, 1000)
        // Overlayfs' own xattrs are never taken from an image.
        .xattr("trusted.overlay.opaque", b"y")
        .dir("srv", 0o755, 0)
        .compress(GZIP)
}

fn upper_layer() -> BuiltLayer {
    Layer::new()
        .file("etc/.wh.gone.conf", "", 0o644, 0)
        .file("etc/keep.conf", "new", 0o600, 0)
        .file("opt/.wh..wh..opq", "", 0o644, 0)
        .file("opt/new", "n", 0o644, 0)
        .file("usr/bin/sh", "sh-v2", 0o755, 0)
        .compress(ZSTD)
}

fn top_layer() -> BuiltLayer {
    Layer::new().dir("tmp", 0o1777, 0).compress(PLAIN)
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

/// The layers of `image` as the kernel stacks them, at a temporary mount point (root only;
/// `None` otherwise). Unmounted on drop.
struct Merged {
    dir: tempfile::TempDir,
}

impl Merged {
    fn mount(image: &Image) -> Option<Merged> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: overlay view not checked");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // Without an upper dir the kernel wants two lower dirs: an empty one goes at the bottom.
        let empty = dir.path().join("empty");
        let target = dir.path().join("merged");
        fs::create_dir(&empty).unwrap();
        fs::create_dir(&target).unwrap();
        let lower: Vec<String> = image
            .layers
            .iter()
            .rev()
            .chain([&empty])
            .map(|l| l.display().to_string())
            .collect();
        let options = std::ffi::CString::new(format!("lowerdir={}", lower.join(":"))).unwrap();
        let target = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                target.as_ptr(),
                c"overlay".as_ptr(),
                libc::MS_RDONLY,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount overlay: {}", std::io::Error::last_os_error());
        Some(Merged { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("merged")
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        let target =
            std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn layers_unpack_in_overlay_form_and_stack_into_the_image() {
    let f = fixture();
    let image = f
        .store
        .resolve(&format!("oci-archive:{}", f.archive.display()))
        .await
        .unwrap();
    assert_eq!(image.digest, format!("sha256:{}", f.manifest_hex));
    let diff_ids: Vec<String> = layers().into_iter().map(|l| l.diff_id).collect();
    let expected: Vec<PathBuf> = diff_ids
        .iter()
        .map(|d| f.store.root().join("layers").join(d))
        .collect();
    assert_eq!(image.layers, expected);
    let [lower, upper, _top] = &image.layers[..] else {
        panic!("three layers expected")
    };

    // Whiteouts in overlayfs' form: a 0/0 character device, and the opaque xattr.
    let gone = fs::symlink_metadata(upper.join("etc/gone.conf")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &gone.file_type()
    ));
    assert_eq!(gone.rdev(), 0);
    assert_eq!(
        xattr(&upper.join("opt"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(names(&upper.join("opt")), ["new"]);
    assert!(!upper.join("opt/old1").exists());
    assert_eq!(xattr(&lower.join("srv"), "trusted.overlay.opaque"), None);
    assert_eq!(xattr(&lower.join("opt"), "trusted.overlay.opaque"), None);

    // Setuid survives chown; numeric ownership kept.
    let sudo = fs::metadata(lower.join("usr/bin/sudo")).unwrap();
    assert_eq!(sudo.mode() & 0o7777, 0o4755);
    let home = fs::metadata(lower.join("home/daytona")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    assert_eq!(
        xattr(&lower.join("home/daytona"), "user.daytona").as_deref(),
        Some(&b"yes"[..])
    );
    // Symlinks are stored as written, and resolved inside the layer while unpacking.
    assert_eq!(
        fs::read_link(lower.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert_eq!(
        fs::read_link(lower.join("lib")).unwrap(),
        Path::new("/usr/lib")
    );
    assert_eq!(read(lower, "usr/lib/through-symlink"), "x");
    assert!(!Path::new("/usr/lib/through-symlink").exists());
    let py = fs::metadata(lower.join("usr/bin/python3")).unwrap();
    assert_eq!(
        py.ino(),
        fs::metadata(lower.join("usr/bin/python3.11"))
            .unwrap()
            .ino()
    );
    assert_eq!(
        fs::metadata(lower.join("etc/keep.conf")).unwrap().mtime(),
        1_700_000_000
    );

    // What a sandbox sees: the kernel applies the whiteouts.
    if let Some(merged) = Merged::mount(&image) {
        let root = &merged.path();
        assert!(!root.join("etc/gone.conf").exists());
        assert_eq!(read(root, "etc/keep.conf"), "new");
        assert_eq!(
            fs::metadata(root.join("etc/keep.conf")).unwrap().mode() & 0o7777,
            0o600
        );
        assert_eq!(names(&root.join("opt")), ["new"]);
        assert_eq!(read(root, "bin/sh"), "sh-v2");
        // Replacing one name of a hardlink pair does not write through to the other.
        assert_eq!(read(root, "usr/bin/sh-hard"), "sh-v1");
        assert_eq!(read(root, "usr/lib/through-symlink"), "x");
        assert_eq!(
            fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        assert_eq!(fs::metadata(root.join("home/daytona")).unwrap().uid(), 1000);
    }

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

    // The same image through the layout directory and by tag: same digest, nothing unpacked
    // again, and a fresh store over the same root finds it on disk.
    let by_dir = f
        .store
        .resolve(&format!("oci:{}:v1", f.layout.display()))
        .await
        .unwrap();
    assert_eq!(by_dir, image);
    assert_eq!(f.store.layers_unpacked(), 3);
    let reopened = ImageStore::new(f.store.root().to_owned());
    assert_eq!(
        reopened
            .resolve(&format!("oci:{}:v1", f.layout.display()))
            .await
            .unwrap(),
        image
    );
    assert_eq!(reopened.layers_unpacked(), 0);
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
    let root = f.store.root();
    assert!(
        !root
            .join("images")
            .join(format!("{}.json", f.manifest_hex))
            .exists()
    );
    assert!(!root.join("layers").join(&upper_layer().diff_id).exists());
    assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    // The intact layer below it is kept for the next attempt.
    assert_eq!(f.store.layers_unpacked(), 1);
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
    assert_eq!(f.store.layers_unpacked(), 3);

    let started = Instant::now();
    let again = f.store.resolve(&reference).await.unwrap();
    assert_eq!(again, images[0]);
    eprintln!("cached resolve took {:?}", started.elapsed());

    // A rewritten archive is read again, but nothing is unpacked twice.
    archive(&f.layout, &f.archive);
    assert_eq!(f.store.resolve(&reference).await.unwrap(), images[0]);
    assert_eq!(f.store.layers_unpacked(), 3);
}

/// Image B: the fixture's lower layer plus one of its own.
fn second_image(layout: &Path) -> String {
    let own = Layer::new().file("b-only", "b", 0o644, 0).compress(GZIP);
    let desc = put_image(layout, &[lower_layer(), own], "amd64");
    desc["digest"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn images_share_layers_and_gc_removes_only_unused_ones() {
    let f = fixture();
    let b_layout = f.layout.parent().unwrap().join("b-layout");
    let b_digest = second_image(&b_layout);
    put_index(&b_layout, vec![]);
    let index = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": [
        json!({ "mediaType": MANIFEST, "digest": b_digest,
                "size": fs::metadata(b_layout.join("blobs/sha256").join(&b_digest[7..])).unwrap().len() })
    ]});
    fs::write(b_layout.join("index.json"), index.to_string()).unwrap();

    let a = f
        .store
        .resolve(&format!("oci-archive:{}", f.archive.display()))
        .await
        .unwrap();
    let b = f
        .store
        .resolve(&format!("oci:{}", b_layout.display()))
        .await
        .unwrap();
    assert_eq!(b.digest, b_digest);
    // The shared base layer is stored once.
    assert_eq!(a.layers[0], b.layers[0]);
    assert_eq!(f.store.layers_unpacked(), 4);
    assert_eq!(names(&f.store.root().join("layers")).len(), 4);

    // A leftover of a crashed unpack goes with the first collection.
    let stale = f.store.root().join("tmp/layer-1-1");
    fs::create_dir_all(stale.join("etc")).unwrap();

    // Keep A: B's own layer goes, the shared one stays.
    let report = f
        .store
        .gc(std::slice::from_ref(&a.digest), async { Ok(vec![]) })
        .await
        .unwrap();
    assert_eq!(
        report,
        GcReport {
            images: 1,
            layers: 1
        }
    );
    assert!(!b.layers[1].exists());
    assert!(a.layers.iter().all(|l| l.is_dir()));
    assert!(!stale.exists());

    // Keep nothing, but a sandbox still mounts A's top layer.
    let report = f
        .store
        .gc(&[], async { Ok(vec![a.layers[2].clone()]) })
        .await
        .unwrap();
    assert_eq!(
        report,
        GcReport {
            images: 1,
            layers: 2
        }
    );
    assert_eq!(
        names(&f.store.root().join("layers")),
        [a.layers[2].file_name().unwrap().to_string_lossy()]
    );

    // Resolving A again brings back only what was removed.
    let again = f
        .store
        .resolve(&format!("oci-archive:{}", f.archive.display()))
        .await
        .unwrap();
    assert_eq!(again, a);
    assert_eq!(f.store.layers_unpacked(), 6);

    // A failed listing of sandboxes removes nothing.
    let err = f
        .store
        .gc(&[], async { Err("runtime down".to_owned()) })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("runtime down"), "{err}");
    assert!(a.layers.iter().all(|l| l.is_dir()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_waits_for_pinned_images() {
    let f = fixture();
    let pinned = f
        .store
        .resolve_pinned(&format!("oci-archive:{}", f.archive.display()))
        .await
        .unwrap();
    let store = f.store.clone();
    let gc = tokio::spawn(async move { store.gc(&[], async { Ok(vec![]) }).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !gc.is_finished(),
        "collection ran while an image was pinned"
    );
    assert!(pinned.image.layers.iter().all(|l| l.is_dir()));
    drop(pinned);
    let report = gc.await.unwrap().unwrap();
    assert_eq!(
        report,
        GcReport {
            images: 1,
            layers: 3
        }
    );
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
    assert_eq!(read(&image.layers[0], "arch"), "amd64");
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
    assert_eq!(read(&image.layers[0], "hello"), "docker");
    assert_eq!(image.cmd, ["sh"]);
}

#[tokio::test]
async fn bad_references_are_refused_clearly() {
    let f = fixture();
    // Registry references follow Docker's grammar; the message says what was expected.
    let err = f.store.resolve("Ubuntu:22.04").await.unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("Ubuntu:22.04"), "{message}");
    assert!(message.contains("oci-archive:PATH"), "{message}");
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

    let merged = Merged::mount(&image).expect("run as root");
    let root = &merged.path();
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

/// Pulls from a small in-test registry that serves an OCI layout over plain HTTP/1.1 on
/// loopback and counts what it is asked for.
mod registry_pulls {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[derive(Default)]
    struct Counts {
        blob_gets: AtomicUsize,
        manifest_gets: AtomicUsize,
    }

    struct TestRegistry {
        addr: SocketAddr,
        counts: Arc<Counts>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestRegistry {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    struct Served {
        layout: PathBuf,
        tags: HashMap<String, String>,
        /// `user:password` the registry demands (basic auth), if any.
        basic: Option<String>,
        /// Blob responses wait this long, so concurrent pulls overlap.
        blob_delay: Duration,
    }

    impl TestRegistry {
        async fn start(served: Served) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let counts = Arc::new(Counts::default());
            let served = Arc::new(served);
            let task = {
                let counts = counts.clone();
                tokio::spawn(async move {
                    loop {
                        let (conn, _) = listener.accept().await.unwrap();
                        tokio::spawn(serve(conn, served.clone(), counts.clone()));
                    }
                })
            };
            TestRegistry { addr, counts, task }
        }

        fn blob_gets(&self) -> usize {
            self.counts.blob_gets.load(Ordering::SeqCst)
        }

        fn manifest_gets(&self) -> usize {
            self.counts.manifest_gets.load(Ordering::SeqCst)
        }
    }

    fn error_body(code: &str) -> Vec<u8> {
        json!({ "errors": [{ "code": code, "message": code.to_lowercase().replace('_', " ") }] })
            .to_string()
            .into_bytes()
    }

    async fn serve(mut conn: tokio::net::TcpStream, served: Arc<Served>, counts: Arc<Counts>) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or_default().to_owned();
        let mut parts = request_line.split(' ');
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let authorization = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim().to_owned());
        let mut headers = vec![(
            "Docker-Distribution-API-Version".to_owned(),
            "registry/2.0".to_owned(),
        )];
        let authorized = match &served.basic {
            None => true,
            Some(pair) => {
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                );
                authorization.as_deref() == Some(expected.as_str())
            }
        };
        let (status, body) = if !authorized {
            headers.push((
                "WWW-Authenticate".to_owned(),
                "Basic realm=\"test\"".to_owned(),
            ));
            ("401 Unauthorized", error_body("UNAUTHORIZED"))
        } else if path == "/v2/" {
            ("200 OK", b"{}".to_vec())
        } else if let Some((_, reference)) = path.split_once("/manifests/") {
            counts.manifest_gets.fetch_add(1, Ordering::SeqCst);
            let digest = served
                .tags
                .get(reference)
                .cloned()
                .unwrap_or_else(|| reference.to_owned());
            match digest
                .strip_prefix("sha256:")
                .and_then(|hex| fs::read(served.layout.join("blobs/sha256").join(hex)).ok())
            {
                Some(bytes) => {
                    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    let media_type = value["mediaType"].as_str().unwrap_or(MANIFEST).to_owned();
                    headers.push(("Content-Type".to_owned(), media_type));
                    headers.push(("Docker-Content-Digest".to_owned(), digest));
                    ("200 OK", bytes)
                }
                None => ("404 Not Found", error_body("MANIFEST_UNKNOWN")),
            }
        } else if let Some((_, digest)) = path.split_once("/blobs/") {
            counts.blob_gets.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(served.blob_delay).await;
            match digest
                .strip_prefix("sha256:")
                .and_then(|hex| fs::read(served.layout.join("blobs/sha256").join(hex)).ok())
            {
                Some(bytes) => {
                    headers.push((
                        "Content-Type".to_owned(),
                        "application/octet-stream".to_owned(),
                    ));
                    ("200 OK", bytes)
                }
                None => ("404 Not Found", error_body("BLOB_UNKNOWN")),
            }
        } else {
            ("404 Not Found", error_body("NAME_UNKNOWN"))
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            response.push_str(&format!("{k}: {v}\r\n"));
        }
        response.push_str("\r\n");
        let _ = conn.write_all(response.as_bytes()).await;
        if method != "HEAD" {
            let _ = conn.write_all(&body).await;
        }
        let _ = conn.shutdown().await;
    }

    /// A layout with the fixture image (amd64) and an arm64 one behind one index tagged
    /// `multi`, and the amd64 manifest tagged `plain`. Returns (layout dir, tags, amd64 digest).
    fn multi_arch_layout(dir: &Path) -> (PathBuf, HashMap<String, String>, String) {
        let layout = dir.join("served");
        let arm = put_image(
            &layout,
            &[Layer::new().file("arch", "arm64", 0o644, 0).compress(GZIP)],
            "arm64",
        );
        let amd = put_image(&layout, &layers(), "amd64");
        let index =
            json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": [arm, amd.clone()] });
        let index = put_blob(&layout, INDEX, index.to_string().as_bytes());
        let amd_digest = amd["digest"].as_str().unwrap().to_owned();
        let tags = HashMap::from([
            (
                "multi".to_owned(),
                index["digest"].as_str().unwrap().to_owned(),
            ),
            ("plain".to_owned(), amd_digest.clone()),
        ]);
        (layout, tags, amd_digest)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_pulls_fetch_each_blob_once_and_share_layers_with_archives() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, tags, amd_digest) = multi_arch_layout(dir.path());
        let registry = TestRegistry::start(Served {
            layout,
            tags,
            basic: None,
            blob_delay: Duration::from_millis(100),
        })
        .await;
        let store = ImageStore::new(dir.path().join("store"));
        let reference = format!("{}/team/app:multi", registry.addr);

        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let (store, reference) = (store.clone(), reference.clone());
            tasks.spawn(async move { store.pull(&reference, None).await.unwrap() });
        }
        let images: Vec<Image> = tasks.join_all().await;
        assert!(images.iter().all(|i| *i == images[0]));
        let image = &images[0];
        // The index was resolved to this host's platform.
        assert_eq!(image.digest, amd_digest);
        assert_eq!(read(&image.layers[1], "etc/keep.conf"), "new");
        // Config + three layers (gzip, zstd, plain), each fetched once for six pulls.
        assert_eq!(registry.blob_gets(), 4);
        assert_eq!(store.blob_fetches(), 4);
        assert_eq!(store.layers_unpacked(), 3);
        assert!(store.bytes_downloaded() > 0);

        // A pull asks for the tag again but fetches no blob; resolve does not even ask.
        let manifests = registry.manifest_gets();
        assert_eq!(store.pull(&reference, None).await.unwrap(), *image);
        assert!(registry.manifest_gets() > manifests);
        assert_eq!(registry.blob_gets(), 4);
        let manifests = registry.manifest_gets();
        assert_eq!(store.resolve(&reference).await.unwrap(), *image);
        let by_digest = format!("{}/team/app@{amd_digest}", registry.addr);
        assert_eq!(store.pull(&by_digest, None).await.unwrap(), *image);
        assert_eq!(registry.manifest_gets(), manifests);

        // The same layers imported from an archive are not unpacked again.
        let f = fixture();
        let local = ImageStore::new(store.root().to_owned());
        let from_archive = local
            .resolve(&format!("oci-archive:{}", f.archive.display()))
            .await
            .unwrap();
        assert_eq!(from_archive.layers, image.layers);
        assert_eq!(local.layers_unpacked(), 0);
    }

    #[tokio::test]
    async fn registry_failures_name_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, tags, _) = multi_arch_layout(dir.path());
        let registry = TestRegistry::start(Served {
            layout,
            tags,
            basic: Some("admin:s3cret".to_owned()),
            blob_delay: Duration::ZERO,
        })
        .await;
        let host = registry.addr.to_string();
        let store = ImageStore::new(dir.path().join("anonymous"));

        // No credentials, then wrong ones.
        let err = store
            .pull(&format!("{host}/team/app:plain"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::RegistryAuth { .. }), "{err}");
        assert!(err.to_string().contains(&host), "{err}");
        let wrong = RegistryCredentials {
            username: "admin".into(),
            password: "nope".into(),
        };
        let err = store
            .pull(&format!("{host}/team/app:plain"), Some(&wrong))
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::RegistryAuth { .. }), "{err}");

        // Configured credentials for the host, or ones given with the pull.
        let right = RegistryCredentials {
            username: "admin".into(),
            password: "s3cret".into(),
        };
        let configured = ImageStore::with_registries(
            dir.path().join("configured"),
            RegistrySettings {
                insecure: Vec::new(),
                credentials: vec![(host.clone(), right.clone())],
                ..Default::default()
            },
        );
        configured
            .pull(&format!("{host}/team/app:plain"), None)
            .await
            .unwrap();
        store
            .pull(&format!("{host}/team/app:multi"), Some(&right))
            .await
            .unwrap();

        // A tag the registry does not have.
        let err = configured
            .pull(&format!("{host}/team/app:missing"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::ImageNotFound { .. }), "{err}");
        assert!(err.to_string().contains("team/app:missing"), "{err}");

        // Nothing listens: refused at once, not a hang.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let started = Instant::now();
        let err = store
            .pull(&format!("127.0.0.1:{port}/team/app:plain"), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImageError::RegistryUnreachable { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        eprintln!(
            "unreachable registry reported in {:?}: {err}",
            started.elapsed()
        );

        // Nothing half-made stays behind.
        assert_eq!(
            fs::read_dir(store.root().join("tmp")).map_or(0, |d| d.count()),
            0
        );
    }

    /// Every entry under `dir`: kind, mode, owner, mtime, links, device, xattrs, content. Times
    /// of directories and whiteout devices are left out: unpacking sets them to the current time.
    fn tree(dir: &Path) -> std::collections::BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
            for name in names(dir) {
                let path = dir.join(&name);
                let meta = fs::symlink_metadata(&path).unwrap();
                let kind = meta.file_type();
                let content = if kind.is_symlink() {
                    format!("-> {}", fs::read_link(&path).unwrap().display())
                } else if kind.is_file() {
                    String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned()
                } else {
                    String::new()
                };
                let xattrs: Vec<_> = ["user.daytona", "trusted.overlay.opaque"]
                    .into_iter()
                    .filter_map(|x| xattr(&path, x).map(|v| (x, v)))
                    .collect();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let mtime = if kind.is_dir() || kind.is_char_device() {
                    "-".to_string()
                } else {
                    meta.mtime().to_string()
                };
                out.insert(
                    rel,
                    format!(
                        "{:?} {:o} {}:{} t={} n={} dev={} {xattrs:?} {content}",
                        kind,
                        meta.mode(),
                        meta.uid(),
                        meta.gid(),
                        mtime,
                        meta.nlink(),
                        meta.rdev(),
                    ),
                );
                if kind.is_dir() {
                    walk(root, &path, out);
                }
            }
        }
        let mut out = std::collections::BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    /// Entry names of the layer blob `digest` in the layout `layout` (zstd).
    fn blob_entries(layout: &Path, digest: &str) -> Vec<String> {
        let blob = layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let tar = zstd::decode_all(fs::File::open(blob).unwrap()).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    fn changes(files: &[(&str, &str)]) -> Box<dyn std::io::Read + Send> {
        let mut layer = Layer::new().file("etc/.wh.keep.conf", "", 0o644, 0);
        for (path, content) in files {
            layer = layer.file(path, content, 0o644, 1000);
        }
        let mut tar = layer.0;
        tar.finish().unwrap();
        Box::new(std::io::Cursor::new(tar.into_inner().unwrap()))
    }

    #[tokio::test]
    async fn registry_images_commit_by_writing_their_layers_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, tags, _) = multi_arch_layout(dir.path());
        let registry = TestRegistry::start(Served {
            layout,
            tags,
            basic: None,
            blob_delay: Duration::ZERO,
        })
        .await;
        let store = ImageStore::new(dir.path().join("store"));
        let reference = format!("{}/team/app:plain", registry.addr);
        let base = store.resolve(&reference).await.unwrap();
        assert_eq!(store.layers_unpacked(), 3);

        let committed = store
            .commit(&reference, changes(&[("etc/added", "a")]))
            .await
            .unwrap();
        assert_eq!(store.layers_converted(), 3);
        let image = store.resolve(&committed.reference).await.unwrap();
        assert_eq!(image.digest, committed.digest);
        // Only the new layer was unpacked: the base layers are the pulled image's directories.
        assert_eq!(store.layers_unpacked(), 4);
        assert_eq!(image.layers[..3], base.layers[..]);
        assert_eq!(image.entrypoint, base.entrypoint);
        assert_eq!(image.env, base.env);

        // A second snapshot of the same base writes no base layer back again, and needs no
        // registry: the store has the image.
        drop(registry);
        let second = store
            .commit(&reference, changes(&[("etc/other", "b")]))
            .await
            .unwrap();
        assert_eq!(store.layers_converted(), 3);
        let second = store.resolve(&second.reference).await.unwrap();
        assert_eq!(store.layers_unpacked(), 5);
        assert_eq!(second.layers[..3], base.layers[..]);

        // Overlay whiteouts went back to OCI ones.
        let committed_dir = PathBuf::from(committed.reference.trim_start_matches("oci:"));
        let index: serde_json::Value =
            serde_json::from_str(&read(&committed_dir, "index.json")).unwrap();
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(
            &fs::read(
                committed_dir
                    .join("blobs/sha256")
                    .join(manifest_digest.trim_start_matches("sha256:")),
            )
            .unwrap(),
        )
        .unwrap();
        let upper = blob_entries(
            &committed_dir,
            manifest["layers"][1]["digest"].as_str().unwrap(),
        );
        for entry in ["etc/.wh.gone.conf", "opt/.wh..wh..opq", "opt/new"] {
            assert!(
                upper.contains(&entry.to_owned()),
                "{entry} not in {upper:?}"
            );
        }

        // The layout stands on its own: a fresh store unpacks every blob, checking digests and
        // diff ids, into the same files as the registry's layers.
        let fresh = ImageStore::new(dir.path().join("fresh"));
        let copy = fresh.resolve(&committed.reference).await.unwrap();
        assert_eq!(fresh.layers_unpacked(), 4);
        for (original, round_trip) in base.layers.iter().zip(&copy.layers) {
            assert_eq!(tree(original), tree(round_trip), "{}", original.display());
        }
        if let Some(merged) = Merged::mount(&copy) {
            let root = &merged.path();
            assert_eq!(read(root, "etc/added"), "a");
            assert!(root.join("etc/gone.conf").symlink_metadata().is_err());
            assert!(root.join("etc/keep.conf").symlink_metadata().is_err());
            assert_eq!(names(&root.join("opt")), ["new"]);
            assert_eq!(read(root, "usr/bin/sh"), "sh-v2");
        }

        // Once the pulled layers are collected, the aliases go too, and the committed image
        // unpacks from its own blobs.
        store.gc(&[], async { Ok(Vec::new()) }).await.unwrap();
        assert_eq!(
            names(&store.root().join("layer-aliases")),
            Vec::<String>::new()
        );
        let again = store.resolve(&committed.reference).await.unwrap();
        assert_eq!(store.layers_unpacked(), 9);
        for (layer, round_trip) in again.layers.iter().zip(&copy.layers) {
            assert_eq!(tree(layer), tree(round_trip));
        }
    }
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
    let Some(merged) = Merged::mount(&image) else {
        return;
    };
    let root = &merged.path();
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
    let second = f.store.resolve(&second.reference).await.unwrap();
    let merged = Merged::mount(&second).expect("root, as above");
    assert_eq!(read(&merged.path(), "etc/added"), "from the sandbox");
    assert_eq!(read(&merged.path(), "etc/second"), "2");

    let err = f
        .store
        .commit("oci-archive:/nonexistent.tar", changes())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
}
