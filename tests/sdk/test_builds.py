"""Declarative image builds through the SDK: `Image` definitions with local context (uploaded
through push access to the embedded S3 endpoint), built by the runner without Docker, with
layer caching; and the push credentials' scope and expiry."""

from __future__ import annotations

import os
import time
from pathlib import Path

import obstore
import pytest
from daytona import CreateSandboxFromImageParams, CreateSandboxFromSnapshotParams, CreateSnapshotParams, Image
from daytona.common.errors import DaytonaError
from obstore.store import S3Store

from conftest import run_server
from support import http, unique

BASE = f"oci-archive:{Path(os.environ['DAYTONA_BASE_IMAGE']).resolve()}"
BUILD_TIMEOUT = 600


@pytest.fixture(autouse=True)
def sdk_uploads_over_plain_http(monkeypatch):
    """The SDK builds its obstore client without `allow_http`, so it only uploads to HTTPS
    storage URLs (a deployment puts TLS in front of the API). The suite's server speaks plain
    HTTP on loopback: let the SDK's client allow that, and change nothing else."""
    import daytona._sync.object_storage as sdk_storage

    real = sdk_storage.S3Store

    def s3_store(*args, endpoint: str, client_options: dict | None = None, **kwargs):
        options = dict(client_options or {})
        if endpoint.startswith("http://"):
            options["allow_http"] = True
        return real(*args, endpoint=endpoint, client_options=options, **kwargs)

    monkeypatch.setattr(sdk_storage, "S3Store", s3_store)


def run(sandbox, command: str) -> str:
    response = sandbox.process.exec(command)
    assert response.exit_code == 0, f"{command}: {response.result}"
    return response.result.strip()


def push_access(server) -> dict:
    response = http("GET", f"{server.api_url}/object-storage/push-access", server.api_key)
    assert response.status == 200, response.body
    return response.json()


def s3_store(creds: dict) -> S3Store:
    return S3Store(
        creds["bucket"],
        endpoint=creds["storageUrl"],
        region=creds["region"],
        access_key_id=creds["accessKey"],
        secret_access_key=creds["secret"],
        session_token=creds["sessionToken"],
        client_options={"allow_http": True},
    )


def test_image_with_context_env_workdir_builds_and_rebuilds_from_cache(daytona, sandbox_factory, tmp_path):
    hello = tmp_path / "hello.txt"
    hello.write_text("hello from the context\n")
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "mod.py").write_text("X = 42\n")
    image = (
        Image.base(BASE)
        .env({"GREETING": "hi there", "BUILT_WITH": "daytona-rs"})
        .workdir("/app")
        .run_commands("echo built-by-run > run.txt", "id -u > uid.txt && echo $GREETING > greeting.txt")
        .add_local_file(str(hello), "/home/daytona/hello.txt")
        .add_local_dir(str(package), "/opt/pkg")
    )

    logs: list[str] = []
    started = time.monotonic()
    snapshot = daytona.snapshot.create(
        CreateSnapshotParams(name=unique("built"), image=image), on_logs=logs.append, timeout=BUILD_TIMEOUT
    )
    first = time.monotonic() - started
    assert snapshot.state == "active"
    first_log = "\n".join(logs)
    assert "RUN echo built-by-run > run.txt" in first_log, first_log
    assert "Running in" in first_log and "Successfully built" in first_log, first_log

    sandbox = sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=snapshot.name))
    assert run(sandbox, "cat /home/daytona/hello.txt") == "hello from the context"
    assert run(sandbox, "cat /opt/pkg/sub/mod.py") == "X = 42"
    assert run(sandbox, "echo $GREETING / $BUILT_WITH") == "hi there / daytona-rs"
    assert run(sandbox, "pwd") == "/app"
    assert run(sandbox, "cat /app/run.txt /app/greeting.txt") == "built-by-run\nhi there"
    # RUN runs as root (no USER); COPY keeps the image's own parent directories.
    assert run(sandbox, "cat /app/uid.txt") == "0"
    assert run(sandbox, "stat -c %U /home/daytona") == "daytona"

    # The same definition again: every step comes from the cache, nothing runs.
    logs.clear()
    started = time.monotonic()
    again = daytona.snapshot.create(
        CreateSnapshotParams(name=unique("rebuilt"), image=image), on_logs=logs.append, timeout=BUILD_TIMEOUT
    )
    second = time.monotonic() - started
    assert again.state == "active"
    second_log = "\n".join(logs)
    assert second_log.count("Using cache") >= 5, second_log
    assert "Running in" not in second_log, second_log
    print(f"\n[builds] first build {first:.2f}s, rebuild from cache {second:.2f}s")
    daytona.snapshot.delete(again)
    daytona.snapshot.delete(snapshot)


def test_failing_run_ends_in_error_naming_command_exit_code_and_output(daytona):
    image = Image.base(BASE).run_commands("echo about-to-fail && exit 7")
    name = unique("broken")
    with pytest.raises(DaytonaError) as raised:
        daytona.snapshot.create(CreateSnapshotParams(name=name, image=image), timeout=BUILD_TIMEOUT)
    message = str(raised.value)
    assert "echo about-to-fail && exit 7" in message, message
    assert "exit code 7" in message, message
    assert "about-to-fail" in message.split("exit code 7", 1)[1], message
    snapshot = daytona.snapshot.get(name)
    assert snapshot.state == "error"


def test_sandbox_from_image_builds_once_and_streams_logs(server, daytona, sandbox_factory):
    marker = unique("marker")
    image = Image.base(BASE).run_commands(f"echo {marker} > /marker.txt")
    logs: list[str] = []
    sandbox = daytona.create(
        CreateSandboxFromImageParams(image=image),
        timeout=BUILD_TIMEOUT,
        on_snapshot_create_logs=logs.append,
    )
    sandbox_factory.created.append(sandbox)
    assert run(sandbox, "cat /marker.txt") == marker
    # The create answered `pending_build` and the SDK streamed the build's log meanwhile.
    streamed = "\n".join(logs)
    assert f"RUN echo {marker} > /marker.txt" in streamed and "Successfully built" in streamed, streamed
    built_from = sandbox.snapshot
    assert built_from and built_from.startswith("build-"), built_from

    # A second sandbox of the same definition uses the same snapshot: no second build.
    other = daytona.create(CreateSandboxFromImageParams(image=image), timeout=BUILD_TIMEOUT)
    sandbox_factory.created.append(other)
    assert other.snapshot == built_from
    assert run(other, "cat /marker.txt") == marker
    log = http("GET", f"{server.api_url}/sandbox/{other.id}/build-logs", None)
    assert log.status == 401  # the log needs the caller's credentials


def test_push_access_is_scoped_to_the_organization(server, daytona):
    creds = push_access(server)
    assert creds["storageUrl"].startswith("http://127.0.0.1:")
    assert creds["accessKey"] and creds["secret"] and creds["sessionToken"]
    store = s3_store(creds)
    own = f"{creds['organizationId']}/{unique('ctx')}/context.tar"
    obstore.put(store, own, b"tar bytes")
    assert obstore.head(store, own)["size"] == 9
    assert bytes(obstore.get(store, own).bytes()) == b"tar bytes"
    listed = [m["path"] for batch in obstore.list(store, prefix=creds["organizationId"]) for m in batch]
    assert own in listed

    for key in ("another-org/abc/context.tar", "sandbox-archives/x.disk.zst"):
        with pytest.raises(Exception) as refused:
            obstore.put(store, key, b"x")
        assert "AccessDenied" in str(refused.value) or "403" in str(refused.value), refused.value
        with pytest.raises(Exception):
            obstore.get(store, key)

    # Forged credentials (a secret of our own choosing) are refused.
    forged = dict(creds, secret="0" * 64)
    with pytest.raises(Exception) as refused:
        obstore.put(s3_store(forged), own, b"x")
    assert "403" in str(refused.value) or "Signature" in str(refused.value), refused.value


@pytest.fixture(scope="module")
def short_lived(request):
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    with run_server(failed, {"DAYTONA_PUSH_ACCESS_TTL": "2"}) as srv:
        yield srv


def test_push_access_credentials_expire(short_lived):
    creds = push_access(short_lived)
    store = s3_store(creds)
    key = f"{creds['organizationId']}/{unique('ctx')}/context.tar"
    obstore.put(store, key, b"in time")
    time.sleep(3)
    with pytest.raises(Exception) as refused:
        obstore.put(store, key, b"too late")
    assert "ExpiredToken" in str(refused.value) or "403" in str(refused.value), refused.value
    fresh = s3_store(push_access(short_lived))
    assert bytes(obstore.get(fresh, key).bytes()) == b"in time"
