"""Backups: every stop copies the sandbox's disk to the runners' archive storage and keeps it on
the runner too (`backupState` None → Pending → InProgress → Completed). In one process the copy
goes to the local object store. With two runner processes on one S3 bucket (moto), a stopped
sandbox whose runner was killed starts on the other runner from its backup with its files, and
the killed runner, once back, destroys its stale copy instead of bringing a second one back; a
sandbox without a completed backup on a gone runner refuses to start, saying why."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from daytona.common.errors import DaytonaError

from support import http
from test_runners import HEALTH_TIMEOUT_S, POLL_TIMEOUT_S, Topology, _wait_for, _wait_runner
# `s3` and `topology` are test_s3's module fixtures: two runners on one moto bucket.
from test_s3 import S3Server, s3, sh, topology  # noqa: F401

BACKUP_TIMEOUT_S = 120


def _backup(client, sandbox_id: str) -> tuple[str, str | None]:
    fresh = client.get(sandbox_id)
    return fresh.backup_state, fresh.backup_created_at


def _wait_backup(client, sandbox_id: str, after: str | None = None) -> str:
    """Waits for a completed backup newer than `after`; returns its creation time."""

    def completed():
        state, created = _backup(client, sandbox_id)
        assert state != "Error", client.get(sandbox_id)
        return state == "Completed" and created is not None and created != after

    _wait_for(completed, BACKUP_TIMEOUT_S, "the sandbox's backup to complete")
    return _backup(client, sandbox_id)[1]


def test_every_stop_backs_up_to_the_local_store_and_a_start_clears_it(daytona, server):
    sandbox = daytona.create(timeout=180)
    try:
        assert sandbox.backup_state == "None"
        # Only a stopped sandbox has a disk to copy.
        refused = http("POST", f"{server.api_url}/sandbox/{sandbox.id}/backup", server.api_key)
        assert refused.status == 409 and "only stopped" in refused.json()["message"], refused.body

        sandbox.stop()
        first = _wait_backup(daytona, sandbox.id)
        backups = Path(server.data_dir) / "objects" / "backups" / sandbox.id
        assert len(list(backups.iterdir())) == 1, list(backups.iterdir())

        # Asked for again: the new copy replaces the old one.
        asked = http("POST", f"{server.api_url}/sandbox/{sandbox.id}/backup", server.api_key)
        assert asked.status == 200 and asked.json()["state"] == "stopped", asked.body
        second = _wait_backup(daytona, sandbox.id, after=first)
        assert second > first
        _wait_for(lambda: len(list(backups.iterdir())) == 1, 30, "the older backup to be deleted")

        sandbox.start()
        assert _backup(daytona, sandbox.id)[0] == "None", "a start clears the backup state"
    finally:
        daytona.delete(sandbox)
    _wait_for(lambda: not backups.exists() or not list(backups.iterdir()), 30, "destroy to delete the backup")


def _sandbox_dir(topology: Topology, runner_id: str, sandbox_id: str) -> Path:
    data_dir = Path(topology.runners[runner_id].env["DAYTONA_DATA_DIR"])
    return data_dir / "runtime" / "sandboxes" / sandbox_id


def _kill_and_wait_reported(topology: Topology, runner_id: str, sandbox) -> None:
    topology.runners[runner_id].kill()

    def reported():
        sandbox.refresh_data()
        return sandbox.state == "error" and runner_id in (sandbox.error_reason or "")

    _wait_for(reported, POLL_TIMEOUT_S + HEALTH_TIMEOUT_S + 20, "the killed runner's sandbox to report it")


def _revive(topology: Topology, runner_id: str) -> None:
    runner = topology.runners[runner_id]
    runner.start()
    _wait_runner(runner)
    _wait_for(lambda: topology.runner_state(runner_id)["state"] == "ready", 30, "the runner to rejoin")


def test_a_stopped_sandbox_starts_from_its_backup_on_another_runner(topology: Topology, s3: S3Server):
    client = topology.client
    sandbox = topology.create()
    victim_id = sandbox.runner_id
    survivor_id = next(r for r in topology.runners if r != victim_id)
    sh(sandbox, "echo kept-through-the-backup > /home/daytona/keep.txt")
    # Incompressible data, so the copy takes several multipart parts up and down.
    blob_sum = sh(sandbox, "head -c 24M /dev/urandom > /home/daytona/blob && sha256sum /home/daytona/blob")

    began = time.monotonic()
    sandbox.stop()
    stop_s = time.monotonic() - began
    _wait_backup(client, sandbox.id)
    backup_s = time.monotonic() - began
    keys = s3.keys(f"backups/{sandbox.id}")
    assert len(keys) == 1, keys
    local_copy = _sandbox_dir(topology, victim_id, sandbox.id)
    assert local_copy.exists(), "a backup keeps the runner's own copy"

    _kill_and_wait_reported(topology, victim_id, sandbox)
    began = time.monotonic()
    sandbox.start(timeout=300)
    restore_s = time.monotonic() - began
    print(
        f"\n[bench] stop {stop_s:.2f}s, stop to completed backup in S3 {backup_s:.2f}s, "
        f"start from the backup on the other runner {restore_s:.2f}s"
    )
    restored = client.get(sandbox.id)
    assert (restored.state, restored.runner_id) == ("started", survivor_id)
    assert restored.backup_state == "None"
    assert sh(sandbox, "cat /home/daytona/keep.txt") == "kept-through-the-backup"
    assert sh(sandbox, "sha256sum /home/daytona/blob") == blob_sum
    assert s3.keys(f"backups/{sandbox.id}") == keys, "the backup is kept until a newer one replaces it"

    # The killed runner comes back with its copy: it destroys it, and the sandbox stays where it runs.
    _revive(topology, victim_id)
    _wait_for(lambda: not local_copy.exists(), 60, "the returned runner to destroy its stale copy")
    again = client.get(sandbox.id)
    assert (again.state, again.runner_id) == ("started", survivor_id)
    assert sh(sandbox, "cat /home/daytona/keep.txt") == "kept-through-the-backup"

    client.delete(sandbox)
    _wait_for(lambda: not s3.keys(f"backups/{sandbox.id}"), 60, "destroy to delete the backup")


def test_a_start_without_a_completed_backup_on_a_gone_runner_is_refused(topology: Topology):
    client = topology.client
    # Started, so it has no backup (a start clears it): its files exist only on its runner.
    sandbox = topology.create()
    victim_id = sandbox.runner_id
    assert client.get(sandbox.id).backup_state == "None"
    _kill_and_wait_reported(topology, victim_id, sandbox)
    with pytest.raises(DaytonaError) as refused:
        sandbox.start(timeout=60)
    message = str(refused.value)
    assert "backup is not completed" in message and victim_id in message, message
    again = client.get(sandbox.id)
    assert again.runner_id == victim_id, "a refused start leaves the sandbox where its files are"

    # Its runner returns: the sandbox (which kept running) is back.
    _revive(topology, victim_id)

    def back():
        sandbox.refresh_data()
        return sandbox.state == "started"

    _wait_for(back, 30, "the sandbox to be reconciled")
    assert sh(sandbox, "echo back") == "back"
    client.delete(sandbox)
