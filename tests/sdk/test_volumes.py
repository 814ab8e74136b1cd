"""Volumes: directories an organization's sandboxes mount and share live (`daytona.volume`, `volumes=[VolumeMount]`).

Another organization's key being refused is covered by test_tenancy.py (every volume route, and mounting
another organization's volume by id or name) and crates/api/tests/volumes.rs."""

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError, DaytonaNotFoundError, SandboxState, VolumeMount
from support import http, unique


def sh(sandbox, command: str) -> str:
    response = sandbox.process.exec(command)
    assert response.exit_code == 0, f"{command!r} failed ({response.exit_code}): {response.result}"
    return response.result.strip()


def with_volumes(*mounts: VolumeMount) -> CreateSandboxFromSnapshotParams:
    return CreateSandboxFromSnapshotParams(volumes=list(mounts))


@pytest.fixture
def volume(daytona):
    vol = daytona.volume.get(unique("vol"), create=True)
    yield vol
    try:
        daytona.volume.delete(vol)
    except DaytonaError:
        pass  # the test deleted it


def volume_dir(server, volume_id: str):
    return server.data_dir / "volumes" / volume_id


def test_get_with_create_list_and_delete(server, daytona):
    name = unique("vol")
    with pytest.raises(DaytonaNotFoundError):
        daytona.volume.get(name)
    vol = daytona.volume.get(name, create=True)
    assert (vol.name, vol.state) == (name, "ready")
    assert vol.error_reason is None
    assert daytona.volume.get(name).id == vol.id
    assert daytona.volume.get(name, create=True).id == vol.id, "an existing volume is returned, not recreated"
    assert vol.id in [v.id for v in daytona.volume.list()]
    assert volume_dir(server, vol.id).is_dir()
    with pytest.raises(DaytonaError) as err:
        daytona.volume.create(name)
    assert "already exists" in str(err.value)

    daytona.volume.delete(vol)
    assert not volume_dir(server, vol.id).exists()
    assert vol.id not in [v.id for v in daytona.volume.list()]
    with pytest.raises(DaytonaNotFoundError):
        daytona.volume.get(name)
    listed = http("GET", f"{server.api_url}/volumes?includeDeleted=true", server.api_key).json()
    assert [v["state"] for v in listed if v["id"] == vol.id] == ["deleted"]
    bad = http("GET", f"{server.api_url}/volumes?includeDeleted=maybe", server.api_key)
    assert bad.status == 400 and "includeDeleted" in bad.json()["message"]
    # The name is free again.
    again = daytona.volume.create(name)
    assert again.id != vol.id
    daytona.volume.delete(again)


def test_two_sandboxes_share_a_volume_live_and_a_subpath(server, daytona, sandbox_factory, volume):
    a = sandbox_factory(with_volumes(VolumeMount(volume_id=volume.id, mount_path="/home/daytona/shared")))
    b = sandbox_factory(
        with_volumes(VolumeMount(volume_id=volume.id, mount_path="/mnt/project", subpath="projects/one"))
    )
    assert [(v.volume_id, v.mount_path, v.subpath) for v in b.volumes] == [(volume.id, "/mnt/project", "projects/one")]
    assert daytona.get(a.id).volumes[0].mount_path == "/home/daytona/shared"

    # The subpath was created for b; a sees it inside the volume's root, and each sees the other's writes at once.
    a.fs.upload_file(b"hello from a", "/home/daytona/shared/projects/one/greeting.txt")
    assert b.fs.download_file("/mnt/project/greeting.txt") == b"hello from a"
    sh(b, "echo from-b > /mnt/project/b.txt")
    assert sh(a, "cat /home/daytona/shared/projects/one/b.txt") == "from-b"
    assert sh(b, "ls /mnt/project") == "b.txt\ngreeting.txt"
    # Files belong to the sandbox user that wrote them, and are real files in the data directory.
    assert sh(a, "stat -c %U /home/daytona/shared/projects/one/b.txt") == "daytona"
    assert (volume_dir(server, volume.id) / "projects" / "one" / "b.txt").read_text() == "from-b\n"

    # A mounted volume cannot be deleted; the refusal names the sandboxes.
    with pytest.raises(DaytonaError) as err:
        daytona.volume.delete(volume)
    message = str(err.value)
    assert "in use" in message and a.id in message and b.id in message, message
    assert daytona.volume.get(volume.name).state == "ready"


def test_volume_outlives_stop_start_and_its_sandbox(daytona, sandbox_factory, volume):
    first = sandbox_factory(with_volumes(VolumeMount(volume_id=volume.id, mount_path="/data")))
    sh(first, "echo kept > /data/f.txt")
    first.stop()
    first.start()
    assert sh(first, "cat /data/f.txt") == "kept"
    daytona.delete(first, timeout=60)
    sandbox_factory.forget(first)

    # Mounted by name this time.
    second = sandbox_factory(with_volumes(VolumeMount(volume_id=volume.name, mount_path="/data")))
    assert second.volumes[0].volume_id == volume.id
    assert sh(second, "cat /data/f.txt") == "kept"


def test_archive_restore_keeps_the_mount_and_captures_leave_volume_data_out(daytona, sandbox_factory, volume):
    source = sandbox_factory(with_volumes(VolumeMount(volume_id=volume.id, mount_path="/data")))
    sh(source, "echo volume-data > /data/v.txt && echo disk-data > /home/daytona/d.txt")

    # Snapshot and fork carry the sandbox's disk, never the volume's files.
    name = unique("snap")
    source.create_snapshot(name)
    try:
        copy = sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=name))
        assert sh(copy, "cat /home/daytona/d.txt") == "disk-data"
        assert sh(copy, "ls -A /data 2>/dev/null | wc -l") == "0"
    finally:
        daytona.snapshot.delete(daytona.snapshot.get(name))
    fork = source.fork()
    sandbox_factory.created.append(fork)
    # A fork copies the disk and mounts the same volumes (shared, not copied).
    assert sh(fork, "cat /home/daytona/d.txt /data/v.txt") == "disk-data\nvolume-data"
    sh(fork, "echo from-fork > /data/fork.txt")
    assert sh(source, "cat /data/fork.txt") == "from-fork"

    source.stop()
    source.archive()
    assert source.state == SandboxState.ARCHIVED
    sh_other = sandbox_factory(with_volumes(VolumeMount(volume_id=volume.id, mount_path="/v")))
    sh(sh_other, "echo while-archived > /v/w.txt")
    source.start()
    assert source.state == SandboxState.STARTED
    assert sh(source, "cat /data/v.txt /data/w.txt") == "volume-data\nwhile-archived"


@pytest.mark.parametrize(
    ("mount_path", "subpath", "expected"),
    [
        ("relative/path", None, "is not an absolute path"),
        ("/", None, "root directory"),
        ("/proc/x", None, "inside /proc"),
        ("/dev", None, "inside /dev"),
        ("/etc", None, "system directory"),
        ("/data/../etc", None, "normalized"),
        ("/data", "../escape", "volumes[0].subpath"),
        ("/data", "/absolute", "relative"),
    ],
)
def test_bad_mounts_are_400_naming_the_problem(server, volume, mount_path, subpath, expected):
    mount = {"volumeId": volume.id, "mountPath": mount_path}
    if subpath is not None:
        mount["subpath"] = subpath
    resp = http("POST", f"{server.api_url}/sandbox", server.api_key, {"volumes": [mount]})
    assert resp.status == 400, resp.body
    assert expected in resp.json()["message"], resp.json()


def test_duplicate_and_unknown_volumes_are_refused(server, daytona, volume):
    twice = [{"volumeId": volume.id, "mountPath": "/a"}, {"volumeId": volume.id, "mountPath": "/a"}]
    resp = http("POST", f"{server.api_url}/sandbox", server.api_key, {"volumes": twice})
    assert resp.status == 400 and "mounted twice" in resp.json()["message"], resp.body
    with pytest.raises(DaytonaError) as err:
        daytona.create(with_volumes(VolumeMount(volume_id=unique("missing"), mount_path="/data")))
    assert "not found" in str(err.value)


def test_symlinks_in_a_volume_do_not_lead_a_mount_out_of_it(server, daytona, sandbox_factory, volume):
    writer = sandbox_factory(with_volumes(VolumeMount(volume_id=volume.id, mount_path="/data")))
    sh(writer, "ln -s /etc /data/escape")
    with pytest.raises(DaytonaError) as err:
        daytona.create(with_volumes(VolumeMount(volume_id=volume.id, mount_path="/data", subpath="escape")), timeout=60)
    assert "symlink" in str(err.value)
    # The failed sandbox is kept in state error (it still names the volume): delete it.
    for failed in daytona.list():
        if failed.id != writer.id and any(v.volume_id == volume.id for v in failed.volumes or []):
            assert failed.state == SandboxState.ERROR
            daytona.delete(failed, timeout=60)
    assert sh(writer, "readlink /data/escape") == "/etc"
