"""The API (`S3_*`) and two runner processes (`AWS_*`) on a real S3-compatible server on loopback
(`moto_server`, path-style, as MinIO is used): declarative builds upload their local context there
and the runner building them reads it back; a sandbox archived on one runner is restored on the
other when the first is gone (stopped ones move through backups: test_backups.py); a volume is a
prefix of the bucket that sandboxes on both runners share (each runner mounts it with s3fs).
Every check on the bucket lists its objects with a client of our own."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import obstore
import pytest
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams, Image, VolumeMount
from obstore.store import S3Store

import conftest
from support import http, unique
from test_builds import BASE, BUILD_TIMEOUT, sdk_uploads_over_plain_http  # noqa: F401 - autouse fixture
from test_runners import HEALTH_TIMEOUT_S, POLL_TIMEOUT_S, Topology, _wait_for, _wait_runner, start_topology

BUCKET = "daytona-s3-test"
REGION = "us-east-1"
ACCESS_KEY = "s3-test-access"
SECRET_KEY = "s3-test-secret"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def store(self) -> S3Store:
        return S3Store(
            BUCKET,
            endpoint=self.endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            client_options={"allow_http": True},
        )

    def keys(self, prefix: str) -> list[str]:
        """Keys of the bucket's objects in the "directory" `prefix` (no trailing `/`), listed
        with signed ListObjectsV2 requests."""
        return sorted(meta["path"] for batch in obstore.list(self.store(), prefix=prefix) for meta in batch)


@contextlib.contextmanager
def moto_s3(failed: Callable[[], bool], tls: tuple[Path, Path] | None = None) -> Iterator[S3Server]:
    """`moto_server` on a free loopback port with the deployment's bucket; stopped by its PID.
    `tls`: (certificate, key) to serve HTTPS with."""
    port = conftest._free_port()
    moto = Path(sys.executable).parent / "moto_server"
    log_dir = Path(tempfile.mkdtemp(prefix="daytona-moto-", dir=os.environ.get("DAYTONA_TEST_TMPDIR")))
    log = (log_dir / "moto.log").open("wb")
    tls_args = ["-c", str(tls[0]), "-k", str(tls[1])] if tls else []
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port), *tls_args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        # Path-style only (as the deployment asks), whatever the host is called.
        env={**os.environ, "S3_IGNORE_SUBDOMAIN_BUCKETNAME": "true"},
    )
    endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    # The certificate names the test's host, not 127.0.0.1: this check only needs an answer.
    context = ssl._create_unverified_context() if tls else None  # noqa: S323
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                # moto keeps its buckets in memory: make the deployment's bucket.
                request = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
                with urllib.request.urlopen(request, timeout=2, context=context):
                    break
            except (urllib.error.URLError, OSError):
                assert process.poll() is None, (log_dir / "moto.log").read_text()
                assert time.monotonic() < deadline, "moto_server did not answer"
                time.sleep(0.2)
        yield S3Server(endpoint, process)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        if not failed():
            (log_dir / "moto.log").unlink()
            log_dir.rmdir()


def s3_env(s3: S3Server) -> tuple[dict[str, str], dict[str, str]]:
    """The API's `S3_*` and the runners' `AWS_*` for `s3`."""
    api_env = {
        "S3_ENDPOINT": s3.endpoint,
        "S3_REGION": REGION,
        "S3_ACCESS_KEY": ACCESS_KEY,
        "S3_SECRET_KEY": SECRET_KEY,
        "S3_DEFAULT_BUCKET": BUCKET,
    }
    runner_env = {
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_BUCKET": BUCKET,
    }
    return api_env, runner_env


@pytest.fixture(scope="module")
def s3(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    with moto_s3(lambda: bool(request.session.testsfailed)) as server:
        yield server


@pytest.fixture(scope="module")
def topology(request: pytest.FixtureRequest, s3: S3Server) -> Iterator[Topology]:
    api_env, runner_env = s3_env(s3)
    with start_topology(lambda: bool(request.session.testsfailed), api_env, runner_env) as started:
        yield started


def sh(sandbox, command: str) -> str:
    response = sandbox.process.exec(command)
    assert response.exit_code == 0, f"{command!r} failed ({response.exit_code}): {response.result}"
    return response.result.strip()


def test_push_access_and_a_build_context_use_the_s3_server(topology: Topology, s3: S3Server, tmp_path: Path):
    access = http("GET", f"{topology.api.api_url}/object-storage/push-access", topology.api.api_key)
    assert access.status == 200, access.body
    creds = access.json()
    assert (creds["storageUrl"], creds["bucket"]) == (s3.endpoint, BUCKET), creds

    marker = unique("context")
    (tmp_path / "hello.txt").write_text(f"{marker}\n")
    # The RUN step reads the copied file: the runner fetched the context from the bucket.
    image = (
        Image.base(BASE)
        .add_local_file(str(tmp_path / "hello.txt"), "/opt/hello.txt")
        .run_commands("cp /opt/hello.txt /opt/copied.txt && cat /opt/copied.txt")
    )
    logs: list[str] = []
    snapshot = topology.client.snapshot.create(
        CreateSnapshotParams(name=unique("s3-built"), image=image), on_logs=logs.append, timeout=BUILD_TIMEOUT
    )
    assert snapshot.state == "active", "\n".join(logs)
    assert marker in "\n".join(logs), "\n".join(logs)
    contexts = [k for k in s3.keys(creds["organizationId"]) if k.endswith("/context.tar")]
    assert contexts, s3.keys("")
    topology.client.snapshot.delete(snapshot)


def test_a_volume_is_shared_by_sandboxes_on_both_runners(topology: Topology, s3: S3Server):
    client = topology.client
    volume = client.volume.get(unique("s3-vol"), create=True)
    _wait_for(lambda: client.volume.get(volume.name).state == "ready", 60, "the volume to be ready")
    mount = VolumeMount(volume_id=volume.id, mount_path="/home/daytona/shared")
    params = CreateSandboxFromSnapshotParams(volumes=[mount])
    a = client.create(params, timeout=180)
    b = client.create(params, timeout=180)
    try:
        assert a.runner_id != b.runner_id, "placement spreads the two sandboxes over both runners"
        sh(a, "echo from-a > /home/daytona/shared/a.txt && mkdir -p /home/daytona/shared/dir")
        assert sh(b, "cat /home/daytona/shared/a.txt") == "from-a"
        sh(b, "echo from-b > /home/daytona/shared/dir/b.txt")
        _wait_for(lambda: sh(a, "cat /home/daytona/shared/dir/b.txt || true") == "from-b", 20, "b's file on a")
        began = time.monotonic()
        written = sh(a, "head -c 8M /dev/urandom > /home/daytona/shared/big && sha256sum < /home/daytona/shared/big")
        write_s = time.monotonic() - began
        began = time.monotonic()
        assert sh(b, "sha256sum < /home/daytona/shared/big") == written
        read_s = time.monotonic() - began
        print(f"\n[bench] volume over s3fs: 8 MB written on one runner {write_s:.2f}s, read on the other {read_s:.2f}s")
        keys = s3.keys(f"volumes/{volume.id}")
        assert f"volumes/{volume.id}/a.txt" in keys and f"volumes/{volume.id}/dir/b.txt" in keys, keys
        # Files belong to the sandbox user that wrote them.
        assert sh(b, "stat -c %U /home/daytona/shared/a.txt") == "daytona"

        # A runner that stops unmounts the volume; once back, it mounts it again for a start.
        a.stop()
        runner = topology.runners[a.runner_id]
        mount_point = Path(runner.env["DAYTONA_DATA_DIR"]) / "volumes" / volume.id
        assert conftest._mounts_under(mount_point) == [str(mount_point)]
        runner.kill(signal.SIGTERM)
        assert not conftest._mounts_under(mount_point), "the runner unmounted the volume at shutdown"
        runner.start()
        _wait_runner(runner)
        _wait_for(lambda: topology.runner_state(a.runner_id)["state"] == "ready", 30, "the runner to rejoin")
        a.start(timeout=120)
        assert sh(a, "cat /home/daytona/shared/dir/b.txt") == "from-b"
    finally:
        client.delete(a)
        client.delete(b)
    client.volume.delete(volume)
    _wait_for(lambda: not s3.keys(f"volumes/{volume.id}"), 60, "the volume's objects to be deleted")
    for runner in topology.runners.values():
        data_dir = runner.env["DAYTONA_DATA_DIR"]
        assert not conftest._mounts_under(Path(data_dir) / "volumes" / volume.id), "the volume is unmounted"


def test_an_archived_sandbox_restores_on_another_runner_when_its_runner_is_gone(topology: Topology, s3: S3Server):
    client = topology.client
    archived = topology.create()
    victim_id = archived.runner_id
    survivor_id = next(r for r in topology.runners if r != victim_id)
    other = topology.create()
    assert other.runner_id == survivor_id
    sh(archived, "echo kept-through-the-archive > /home/daytona/keep.txt")
    # Incompressible data, so the archive takes several multipart parts up and down.
    blob_sum = sh(archived, "head -c 24M /dev/urandom > /home/daytona/blob && sha256sum /home/daytona/blob")
    archived.stop()
    client.delete(other)

    began = time.monotonic()
    archived.archive()
    archive_s = time.monotonic() - began
    archived.refresh_data()
    assert archived.state == "archived", archived.error_reason
    key = f"sandbox-archives/{archived.id}.disk.zst"
    assert key in s3.keys("sandbox-archives")
    size = obstore.head(s3.store(), key)["size"]

    victim = topology.runners[victim_id]
    victim.kill()

    def reported():
        return topology.runner_state(victim_id)["state"] == "unresponsive"

    _wait_for(reported, POLL_TIMEOUT_S + HEALTH_TIMEOUT_S + 20, "the dead runner to be reported")
    archived.refresh_data()
    assert archived.state == "archived", "an archive does not depend on its runner"

    # The archived one comes back on the survivor, with its files, and its archive is removed.
    began = time.monotonic()
    archived.start(timeout=300)
    restore_s = time.monotonic() - began
    print(
        f"\n[bench] archive to S3 {archive_s:.2f}s ({size / 1e6:.1f} MB), restore on the other runner {restore_s:.2f}s"
    )
    # (The SDK's refresh_data does not update runner_id: read the sandbox anew.)
    restored = client.get(archived.id)
    assert restored.state == "started" and restored.runner_id == survivor_id, (restored.state, restored.runner_id)
    assert sh(archived, "cat /home/daytona/keep.txt") == "kept-through-the-archive"
    assert sh(archived, "sha256sum /home/daytona/blob") == blob_sum
    _wait_for(lambda: key not in s3.keys("sandbox-archives"), 30, "the restored sandbox's archive to be deleted")

    # The runner returns and takes work again.
    victim.start()
    _wait_runner(victim)
    _wait_for(lambda: topology.runner_state(victim_id)["state"] == "ready", 30, "the runner to rejoin")
    client.delete(archived)
