"""A sandbox's files taken elsewhere: snapshot from a sandbox, fork, archive to object storage and restore."""

import time

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError, SandboxState
from support import http, sleeper, unique, wait_for_processes_mentioning


def sh(sandbox, command: str) -> str:
    response = sandbox.process.exec(command)
    assert response.exit_code == 0, f"{command!r} failed ({response.exit_code}): {response.result}"
    return response.result.strip()


def sandbox_dir(server, sandbox_id: str):
    return server.data_dir / "runtime" / "sandboxes" / sandbox_id


def archive_object(server, sandbox_id: str):
    return server.data_dir / "objects" / "sandbox-archives" / f"{sandbox_id}.disk.zst"


def test_snapshot_of_a_running_sandbox_carries_its_changes(daytona, sandbox_factory):
    source = sandbox_factory()
    marker = unique("snapshot-sleeper")
    source.process.exec(f"nohup {sleeper(marker)} >/dev/null 2>&1 &")
    wait_for_processes_mentioning(source, marker, present=True)
    assert sh(source, "test -f /etc/motd && echo present") == "present"
    sh(source, "echo captured > /home/daytona/captured.txt")
    # A deleted base file (whiteout), and a base directory replaced by a new one (opaque).
    sh(source, "sudo rm /etc/motd && sudo rm -rf /etc/skel && sudo mkdir /etc/skel && echo new | sudo tee /etc/skel/only")

    name = unique("snap")
    started = time.monotonic()
    source.create_snapshot(name)
    print(f"[capture] snapshot of a running sandbox took {time.monotonic() - started:.2f}s")
    try:
        # The source came back to its state, with its processes.
        assert source.state == SandboxState.STARTED
        wait_for_processes_mentioning(source, marker, present=True, timeout=2)
        snapshot = daytona.snapshot.get(name)
        assert snapshot.state == "active", snapshot.error_reason
        assert snapshot.source_sandbox_id == source.id
        assert (snapshot.cpu, snapshot.mem, snapshot.disk) == (source.cpu, source.memory, source.disk)
        listed = daytona.snapshot.list(source_sandbox_id=source.id)
        assert [s.name for s in listed.items] == [name]

        copy = sandbox_factory(CreateSandboxFromSnapshotParams(snapshot=name))
        assert sh(copy, "cat /home/daytona/captured.txt") == "captured"
        assert sh(copy, "test -e /etc/motd && echo present || echo absent") == "absent"
        assert sh(copy, "ls -A /etc/skel") == "only"
        # Base files the sandbox did not touch are there too.
        assert sh(copy, "python3 -c 'print(6*7)'") == "42"
        # Files owned by the user stay theirs.
        assert sh(copy, "stat -c %U /home/daytona/captured.txt") == "daytona"
        # The copy is independent of the source.
        sh(copy, "echo changed > /home/daytona/captured.txt")
        assert sh(source, "cat /home/daytona/captured.txt") == "captured"
    finally:
        daytona.snapshot.delete(daytona.snapshot.get(name))


def test_snapshot_refusals_are_clear(server, daytona, sandbox_factory):
    source = sandbox_factory()
    name = unique("snap")
    source.create_snapshot(name)
    try:
        with pytest.raises(DaytonaError) as err:
            source.create_snapshot(name)
        assert "already exists" in str(err.value)
        url = f"{server.api_url}/sandbox"
        missing = http("POST", f"{url}/{unique('nope')}/snapshot", server.api_key, {"name": unique("snap")})
        assert missing.status == 404, missing.body
        memory = http("POST", f"{url}/{source.id}/snapshot", server.api_key, {"name": unique("s"), "includeMemory": True})
        assert memory.status == 400 and b"includeMemory" in memory.body, memory.body
        bad_name = http("POST", f"{url}/{source.id}/snapshot", server.api_key, {"name": "two words"})
        assert bad_name.status == 400 and b"name" in bad_name.body, bad_name.body
        assert source.state == SandboxState.STARTED
    finally:
        daytona.snapshot.delete(daytona.snapshot.get(name))


def test_fork_copies_files_then_diverges(server, sandbox_factory):
    source = sandbox_factory()
    sh(source, "echo from-source > /home/daytona/shared.txt")
    name = unique("fork")
    started = time.monotonic()
    fork = source.fork(name)
    print(f"[capture] fork of a running sandbox took {time.monotonic() - started:.2f}s")
    sandbox_factory.created.append(fork)
    assert fork.name == name and fork.id != source.id
    assert fork.state == SandboxState.STARTED
    source.refresh_data()
    assert source.state == SandboxState.STARTED
    assert (fork.cpu, fork.memory, fork.disk) == (source.cpu, source.memory, source.disk)

    assert sh(fork, "cat /home/daytona/shared.txt") == "from-source"
    sh(fork, "echo from-fork > /home/daytona/shared.txt && echo only > /home/daytona/fork-only.txt")
    sh(source, "echo source-again > /home/daytona/source-only.txt")
    assert sh(source, "cat /home/daytona/shared.txt") == "from-source"
    assert sh(source, "test -e /home/daytona/fork-only.txt && echo yes || echo no") == "no"
    assert sh(fork, "test -e /home/daytona/source-only.txt && echo yes || echo no") == "no"

    parent = http("GET", f"{server.api_url}/sandbox/{fork.id}/parent", server.api_key)
    assert parent.status == 200 and parent.json()["id"] == source.id
    forks = http("GET", f"{server.api_url}/sandbox/{source.id}/forks", server.api_key)
    assert [f["id"] for f in forks.json()] == [fork.id]

    taken = http("POST", f"{server.api_url}/sandbox/{source.id}/fork", server.api_key, {"name": name})
    assert taken.status == 409 and b"already exists" in taken.body, taken.body


def test_fork_of_a_stopped_sandbox_starts_the_fork(sandbox_factory):
    source = sandbox_factory()
    sh(source, "echo kept > /home/daytona/kept.txt")
    source.stop()
    fork = source.fork()
    sandbox_factory.created.append(fork)
    assert fork.state == SandboxState.STARTED
    assert sh(fork, "cat /home/daytona/kept.txt") == "kept"
    source.refresh_data()
    assert source.state == SandboxState.STOPPED


def test_archive_moves_files_to_object_storage_and_start_restores_them(server, sandbox_factory):
    sandbox = sandbox_factory()
    sh(sandbox, "head -c 1000000 /dev/urandom > /home/daytona/blob && sha256sum /home/daytona/blob > /home/daytona/blob.sum")
    with pytest.raises(DaytonaError) as err:
        sandbox.archive()
    assert "not stopped" in str(err.value)

    sandbox.stop()
    started = time.monotonic()
    sandbox.archive()
    print(f"[capture] archive took {time.monotonic() - started:.2f}s")
    assert sandbox.state == SandboxState.ARCHIVED
    assert not sandbox_dir(server, sandbox.id).exists(), "the local disk image must be gone"
    archived = archive_object(server, sandbox.id)
    # A 3 GiB sparse disk with ~1 MB of data: the zeros compress away.
    assert 1_000_000 < archived.stat().st_size < 20_000_000, archived.stat().st_size
    print(f"[capture] archive of a {sandbox.disk} GiB disk with 1 MB written: {archived.stat().st_size} bytes")

    started = time.monotonic()
    sandbox.start()
    restore_s = time.monotonic() - started
    assert sandbox.state == SandboxState.STARTED
    print(f"[capture] restore of an archived sandbox took {restore_s:.2f}s")
    assert sh(sandbox, "cd /home/daytona && sha256sum -c blob.sum").endswith("OK")
    assert not archived.exists(), "a restored sandbox's archive is removed"

    # Archived again, then deleted: its object goes too.
    sandbox.stop()
    sandbox.archive()
    assert archived.exists()
    sandbox_factory.client.delete(sandbox, timeout=60, wait=True)
    sandbox_factory.forget(sandbox)
    assert not archived.exists()


def test_archived_sandboxes_refuse_other_operations(server, sandbox_factory):
    sandbox = sandbox_factory()
    sandbox.stop()
    sandbox.archive()
    url = f"{server.api_url}/sandbox/{sandbox.id}"
    for action, body in (("snapshot", {"name": unique("s")}), ("fork", {}), ("resize", {"cpu": 2})):
        result = http("POST", f"{url}/{action}", server.api_key, body)
        assert result.status in (400, 409) and b"archived" in result.body, (action, result.status, result.body)
    # Archiving twice is harmless.
    again = http("POST", f"{url}/archive", server.api_key)
    assert again.status == 200 and again.json()["state"] == "archived"
