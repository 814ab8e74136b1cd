"""Snapshots through the SDK: the default snapshot, creating one from an image archive, using it,
activation, deletion, and the errors a user sees."""

import os
import time

import pytest
from daytona import (
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    DaytonaError,
    DaytonaNotFoundError,

)
from daytona_api_client import SnapshotState

from support import unique

BASE_IMAGE = os.environ.get("DAYTONA_BASE_IMAGE", "")


def test_default_snapshot_is_listed_general_and_active(daytona):
    default = f"oci-archive:{BASE_IMAGE}"
    # The server prepares it in the background at startup.
    deadline = time.monotonic() + 120
    while (snapshot := daytona.snapshot.get(default)).state != SnapshotState.ACTIVE and time.monotonic() < deadline:
        assert snapshot.state in (SnapshotState.PENDING, SnapshotState.PULLING), snapshot
        time.sleep(0.5)
    assert snapshot.general is True
    assert snapshot.state == SnapshotState.ACTIVE
    assert snapshot.size and snapshot.size > 0.05  # GB; the base image unpacks to ~200 MB
    names = [s.name for s in daytona.snapshot.list(limit=200).items]
    assert default in names


def test_create_use_deactivate_activate_delete(daytona, sandbox_factory):
    name = unique("snap")
    snapshot = daytona.snapshot.create(CreateSnapshotParams(name=name, image=f"oci-archive:{BASE_IMAGE}"))
    assert snapshot.state == SnapshotState.ACTIVE
    assert daytona.snapshot.get(name).id == snapshot.id

    sandbox = sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=name))
    assert sandbox.snapshot == name
    assert sandbox.process.exec("python3 -c 'print(6*7)'").result.strip() == "42"
    assert daytona.snapshot.get(name).last_used_at

    daytona.snapshot._SnapshotService__snapshots_api.deactivate_snapshot(snapshot.id)  # not wrapped by the SDK
    assert daytona.snapshot.get(name).state == SnapshotState.INACTIVE
    with pytest.raises(DaytonaError) as err:
        sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=name))
    assert "not active" in str(err.value)
    assert daytona.snapshot.activate(name).state == SnapshotState.ACTIVE

    daytona.snapshot.delete(daytona.snapshot.get(name))
    with pytest.raises(DaytonaNotFoundError):
        daytona.snapshot.get(name)


def test_bad_image_ends_in_error_with_the_reason(daytona):
    name = unique("broken")
    with pytest.raises(DaytonaError) as err:
        daytona.snapshot.create(CreateSnapshotParams(name=name, image="oci-archive:/nonexistent/image.tar"))
    assert "/nonexistent/image.tar" in str(err.value)
    broken = daytona.snapshot.get(name)
    assert broken.state == SnapshotState.ERROR and broken.error_reason
    daytona.snapshot.delete(broken)


def test_duplicate_name_conflicts(daytona):
    name = unique("dup")
    daytona.snapshot.create(CreateSnapshotParams(name=name, image=f"oci-archive:{BASE_IMAGE}"))
    try:
        with pytest.raises(DaytonaError) as err:
            daytona.snapshot.create(CreateSnapshotParams(name=name, image=f"oci-archive:{BASE_IMAGE}"))
        assert "already exists" in str(err.value)
    finally:
        daytona.snapshot.delete(daytona.snapshot.get(name))


def test_sandbox_from_unknown_snapshot_is_not_found(daytona):
    with pytest.raises(DaytonaNotFoundError):
        daytona.create(CreateSandboxFromSnapshotParams(snapshot=unique("no-such-snapshot")))
