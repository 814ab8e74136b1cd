"""Snapshots pulled from OCI registries: Debian's `docker-registry` (distribution 2.8) on a free
loopback port, fed with the cached base image by skopeo as a gzip, a zstd and a multi-platform
(arm64 + amd64 index) image, plus an image with one extra layer; a second registry demands
htpasswd basic auth (distribution accepts it over plain HTTP, so no TLS is needed on loopback).

Checks: each variant becomes an active snapshot that runs sandboxes, layers are shared (the base
layer is never downloaded again), two simultaneous creates of one image fetch each blob once,
deleting the snapshots collects the unused layer, the seed's registry variables authenticate
pulls, and bad references / missing tags / unreachable or refusing registries end in `error`
with a reason naming the cause."""

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, DaytonaError
from daytona_api_client import SnapshotState

from conftest import run_server
from support import make_client, unique

BASE_IMAGE = os.environ.get("DAYTONA_BASE_IMAGE", "")
REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

pytestmark = pytest.mark.skipif(
    not (Path(REGISTRY_BIN).exists() and shutil.which("skopeo") and shutil.which("htpasswd")),
    reason="needs docker-registry, skopeo and htpasswd (scripts/test.sh installs them)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    log: Path
    process: subprocess.Popen

    def requests(self, pattern: str) -> int:
        """GET requests whose URI matches `pattern` (a regex), from the access log (skopeo's
        pushes only HEAD, POST and PUT)."""
        uris = re.findall(r'"GET (\S+) HTTP', self.log.read_text(errors="replace"))
        return sum(1 for uri in uris if re.search(pattern, uri))


def _start_registry(
    root: Path, htpasswd: Path | None = None, auth: dict | None = None, port: int | None = None
) -> Registry:
    """`auth` is the config's `auth:` section (e.g. token auth), `port` a chosen free port."""
    root.mkdir(parents=True)
    port = port or _free_port()
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if htpasswd:
        config["auth"] = {"htpasswd": {"realm": "test", "path": str(htpasswd)}}
    if auth:
        config["auth"] = auth
    (root / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    log = root / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "docker-registry did not start: " + log.read_text()
        time.sleep(0.1)
    return Registry(f"127.0.0.1:{port}", log, process)


def _stop_registry(registry: Registry) -> None:
    registry.process.terminate()
    try:
        registry.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        registry.process.kill()
        registry.process.wait()


def _skopeo(*args: str) -> None:
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", *args], check=True, timeout=300)


def _put_blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes()


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip layer with `files`; returns (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def _image(layout: Path, config: dict, layers: list[dict]) -> dict:
    """Writes config + manifest; returns the manifest's descriptor."""
    config_bytes = json.dumps(config).encode()
    config_desc = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": _put_blob(layout, config_bytes),
        "size": len(config_bytes),
    }
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "config": config_desc, "layers": layers}).encode()
    return {"mediaType": MANIFEST, "digest": _put_blob(layout, manifest), "size": len(manifest)}


@dataclass
class Images:
    registry: Registry
    base_layer: str  # digest of the base image's layer blob as pushed (gzip)
    extra_layer: str  # digest of the extra image's own layer


@pytest.fixture(scope="module")
def work_dir():
    path = Path(tempfile.mkdtemp(prefix="daytona-registry-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def images(work_dir):
    """The open registry with base:gzip, base:zstd, base:multi and base:extra."""
    registry = _start_registry(work_dir / "open")
    try:
        host = registry.host
        layout = work_dir / "layout"
        _skopeo(f"oci-archive:{BASE_IMAGE}", f"oci:{layout}:amd64")
        index = json.loads((layout / "index.json").read_text())
        amd = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "amd64")
        amd = {**amd, "platform": {"architecture": "amd64", "os": "linux"}}
        amd_manifest = json.loads(_blob(layout, amd["digest"]))
        base_config = json.loads(_blob(layout, amd_manifest["config"]["digest"]))
        base_layer = amd_manifest["layers"][0]

        # A small arm64 image: a pull on this amd64 host must never pick it.
        arm_blob, arm_diff = _layer({"arch": b"arm64\n"})
        arm = _image(
            layout,
            {"architecture": "arm64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [arm_diff]}},
            [{"mediaType": LAYER_GZIP, "digest": _put_blob(layout, arm_blob), "size": len(arm_blob)}],
        )
        arm["platform"] = {"architecture": "arm64", "os": "linux"}
        multi = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [arm, amd]}).encode()
        multi_desc = {"mediaType": INDEX, "digest": _put_blob(layout, multi), "size": len(multi)}

        # The base image plus one layer of its own.
        extra_blob, extra_diff = _layer({"hello.txt": b"from the extra layer\n"})
        extra_config = json.loads(json.dumps(base_config))
        extra_config["rootfs"]["diff_ids"].append(extra_diff)
        extra_config.pop("history", None)
        extra_layer = {"mediaType": LAYER_GZIP, "digest": _put_blob(layout, extra_blob), "size": len(extra_blob)}
        extra = _image(layout, extra_config, [base_layer, extra_layer])

        ref = "org.opencontainers.image.ref.name"
        index["manifests"] += [{**multi_desc, "annotations": {ref: "multi"}}, {**extra, "annotations": {ref: "extra"}}]
        (layout / "index.json").write_text(json.dumps(index))

        dest = ["--dest-tls-verify=false"]
        # zstd first: pushed after the gzip one, skopeo would reuse the gzip blob it finds.
        _skopeo(*dest, "--dest-compress-format", "zstd", f"oci:{layout}:amd64", f"docker://{host}/base:zstd")
        _skopeo(*dest, f"oci:{layout}:amd64", f"docker://{host}/base:gzip")
        _skopeo(*dest, "--all", f"oci:{layout}:multi", f"docker://{host}/base:multi")
        _skopeo(*dest, f"oci:{layout}:extra", f"docker://{host}/base:extra")
        yield Images(registry, base_layer["digest"], extra_layer["digest"])
    finally:
        _stop_registry(registry)


@pytest.fixture(scope="module")
def auth_registry(work_dir, images):
    """A registry demanding basic auth (admin / s3cret), holding base:zstd."""
    htpasswd = work_dir / "htpasswd"
    htpasswd.write_text(
        subprocess.run(["htpasswd", "-Bbn", "admin", "s3cret"], check=True, capture_output=True, text=True).stdout
    )
    registry = _start_registry(work_dir / "auth", htpasswd)
    try:
        _skopeo(
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-creds",
            "admin:s3cret",
            f"docker://{images.registry.host}/base:zstd",
            f"docker://{registry.host}/base:zstd",
        )
        yield registry
    finally:
        _stop_registry(registry)


def _create(daytona, image: str):
    name = unique("reg")
    return daytona.snapshot.create(CreateSnapshotParams(name=name, image=image))


def _create_failing(daytona, image: str) -> str:
    """Creates a snapshot that must fail; returns its error reason (it ended in `error`)."""
    name = unique("bad")
    started = time.monotonic()
    with pytest.raises(DaytonaError) as err:
        daytona.snapshot.create(CreateSnapshotParams(name=name, image=image))
    snapshot = daytona.snapshot.get(name)
    print(f"{image}: error after {time.monotonic() - started:.2f}s: {snapshot.error_reason}")
    assert snapshot.state == SnapshotState.ERROR, snapshot
    assert snapshot.error_reason and snapshot.error_reason in str(err.value)
    daytona.snapshot.delete(snapshot)
    return snapshot.error_reason


def _layer_digest(host: str, tag: str) -> str:
    request = urllib.request.Request(f"http://{host}/v2/base/manifests/{tag}", headers={"Accept": MANIFEST})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["layers"][0]["digest"]


def test_gzip_zstd_and_index_images_become_snapshots_that_run(daytona, images, sandbox_factory):
    host = images.registry.host
    layer_blobs = f"/blobs/({images.base_layer}|{_layer_digest(host, 'zstd')})"
    assert _layer_digest(host, "zstd") != images.base_layer
    blobs_before = images.registry.requests(layer_blobs)
    snapshots = {tag: _create(daytona, f"{host}/base:{tag}") for tag in ("gzip", "zstd", "multi")}
    try:
        for tag, snapshot in snapshots.items():
            assert snapshot.state == SnapshotState.ACTIVE, (tag, snapshot)
            assert snapshot.size and snapshot.size > 0.05, (tag, snapshot)
        zstd = sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=snapshots["zstd"].name))
        assert zstd.process.exec("python3 -c 'print(6*7)'").result.strip() == "42"
        # The index resolved to amd64: the arm64 image's file is not there.
        multi = sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=snapshots["multi"].name))
        result = multi.process.exec("test -e /arch && echo arm || uname -m")
        assert result.result.strip() == "x86_64", result
        # The server already had the base layer (its default snapshot is the same image from an
        # archive): no variant downloaded it again.
        assert images.registry.requests(layer_blobs) == blobs_before
    finally:
        for snapshot in snapshots.values():
            daytona.snapshot.delete(snapshot)


def test_simultaneous_creates_download_once_and_delete_collects_the_layer(daytona, server, images, sandbox_factory):
    registry = images.registry
    reference = f"{registry.host}/base:extra"
    results, errors = [], []
    image_records = server.data_dir / "images" / "images"
    # Earlier tests leave other two-layer images (builds, snapshots of sandboxes): look at new ones only.
    earlier = set(image_records.iterdir()) if image_records.exists() else set()

    def create():
        try:
            results.append(_create(daytona, reference))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [s.state for s in results] == [SnapshotState.ACTIVE] * 2
    assert registry.requests(f"/blobs/{images.extra_layer}") == 1
    sandbox = sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=results[0].name))
    assert sandbox.process.exec("cat /hello.txt").result.strip() == "from the extra layer"

    layers = server.data_dir / "images" / "layers"
    extra_diff = json.loads(
        next(p for p in set(image_records.iterdir()) - earlier if len(json.loads(p.read_text())["layers"]) == 2)
        .read_text()
    )["layers"][1]
    assert (layers / extra_diff).is_dir()
    for snapshot in results:
        daytona.snapshot.delete(snapshot)
    # The running sandbox still mounts the layer: collection keeps it.
    time.sleep(1)
    assert (layers / extra_diff).is_dir()
    daytona.delete(sandbox, timeout=60)
    sandbox_factory.forget(sandbox)
    # The next collection (after any snapshot delete) removes it; the shared base layer stays.
    _create_failing(daytona, f"{registry.host}/base:trigger-collection")
    deadline = time.monotonic() + 30
    while (layers / extra_diff).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (layers / extra_diff).exists()
    assert len(list(layers.iterdir())) >= 1


def test_failures_end_in_error_with_the_cause(daytona, images, auth_registry):
    host = images.registry.host
    assert "not found" in _create_failing(daytona, f"{host}/base:nope")
    closed = _free_port()
    reason = _create_failing(daytona, f"127.0.0.1:{closed}/base:gzip")
    assert "cannot reach registry" in reason and f"127.0.0.1:{closed}" in reason
    reason = _create_failing(daytona, f"{auth_registry.host}/base:zstd")
    assert "refused access" in reason and auth_registry.host in reason
    reason = _create_failing(daytona, "Not A Reference!")
    assert "invalid image reference" in reason


def test_seed_registry_credentials_authenticate_pulls(request, auth_registry):
    """A server whose TRANSIENT_REGISTRY_* names the auth registry: its default snapshot comes
    from there (downloaded and unpacked from zstd, as nothing is cached in its fresh store)."""
    image = f"{auth_registry.host}/base:zstd"
    env = {
        "TRANSIENT_REGISTRY_URL": f"http://{auth_registry.host}",
        "TRANSIENT_REGISTRY_ADMIN": "admin",
        "TRANSIENT_REGISTRY_PASSWORD": "s3cret",
        "DEFAULT_SNAPSHOT": image,
    }
    with run_server(lambda: bool(request.session.testsfailed), env) as srv:
        client = make_client(srv)
        deadline = time.monotonic() + 90
        while (snapshot := client.snapshot.get(image)).state != SnapshotState.ACTIVE:
            assert snapshot.state in (SnapshotState.PENDING, SnapshotState.PULLING), snapshot
            assert time.monotonic() < deadline, snapshot
            time.sleep(0.5)
        sandbox = client.create(CreateSandboxFromSnapshotParams(snapshot=image), timeout=120)
        try:
            assert sandbox.process.exec("python3 -c 'print(6*7)'").result.strip() == "42"
        finally:
            client.delete(sandbox, timeout=60)
    assert auth_registry.requests(r"/v2/base/blobs/sha256:") >= 2  # config and the layer


def test_snapshot_of_a_sandbox_from_a_registry_image(daytona, server, images, sandbox_factory):
    """A registry image is kept only as unpacked layers: `create_snapshot` writes them back as
    blobs (once per layer), and the new snapshot reuses the unpacked layers rather than
    unpacking them again."""
    store = server.data_dir / "images"
    base = _create(daytona, f"{images.registry.host}/base:extra")
    snapshots = []
    try:
        source = sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=base.name))
        _sh(source, "echo captured > /home/daytona/captured.txt && sudo rm /hello.txt /etc/motd")
        layers_before = set((store / "layers").iterdir())
        snapshots.append(unique("regsnap"))
        started = time.monotonic()
        source.create_snapshot(snapshots[-1])
        print(f"[registry] snapshot of a sandbox from a registry image took {time.monotonic() - started:.2f}s")
        assert daytona.snapshot.get(snapshots[-1]).state == SnapshotState.ACTIVE

        copy = sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=snapshots[-1]))
        assert _sh(copy, "cat /home/daytona/captured.txt") == "captured"
        assert _sh(copy, "ls /hello.txt /etc/motd 2>/dev/null; echo done") == "done"
        assert _sh(copy, "python3 -c 'print(6*7)'") == "42"
        # Only the sandbox's changes were unpacked; both base layers were written back once.
        assert len(set((store / "layers").iterdir()) - layers_before) == 1
        converted = {p.name: p.stat().st_mtime_ns for p in (store / "committed" / "converted").iterdir()}
        assert len(converted) == 2, converted

        # A second snapshot of the same base converts nothing again.
        _sh(source, "echo again > /home/daytona/again.txt")
        snapshots.append(unique("regsnap"))
        started = time.monotonic()
        source.create_snapshot(snapshots[-1])
        print(f"[registry] second snapshot (base layers already written back) took {time.monotonic() - started:.2f}s")
        assert {p.name: p.stat().st_mtime_ns for p in (store / "committed" / "converted").iterdir()} == converted
        second = sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=snapshots[-1]))
        assert _sh(second, "cat /home/daytona/captured.txt /home/daytona/again.txt") == "captured\nagain"
    finally:
        for name in snapshots:
            daytona.snapshot.delete(daytona.snapshot.get(name))
        daytona.snapshot.delete(base)


def _sh(sandbox, command: str) -> str:
    response = sandbox.process.exec(command)
    assert response.exit_code == 0, f"{command!r} failed ({response.exit_code}): {response.result}"
    return response.result.strip()
