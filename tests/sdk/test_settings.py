"""Settings changed after create: labels, auto intervals, TTL, public flag, network policy, activity."""

import time

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaError, DaytonaNotFoundError

from support import unique


def test_set_labels_replaces_them_and_list_follows(daytona, sandbox_factory):
    tag = unique("relabel")
    sandbox = sandbox_factory(CreateSandboxFromSnapshotParams(labels={"old": "1"}))
    labels = sandbox.set_labels({"relabel": tag, "code-toolbox-language": "python"})
    assert labels["relabel"] == tag
    fresh = daytona.get(sandbox.id)
    assert fresh.labels.get("relabel") == tag
    assert "old" not in fresh.labels
    from daytona import ListSandboxesQuery

    assert [s.id for s in daytona.list(ListSandboxesQuery(labels={"relabel": tag}))] == [sandbox.id]


def test_auto_intervals_are_stored(daytona, sandbox):
    sandbox.set_autostop_interval(42)
    sandbox.set_auto_archive_interval(120)
    sandbox.set_auto_delete_interval(30)
    fresh = daytona.get(sandbox.id)
    assert (fresh.auto_stop_interval, fresh.auto_archive_interval, fresh.auto_delete_interval) == (42, 120, 30)
    sandbox.set_auto_delete_interval(-1)
    assert daytona.get(sandbox.id).auto_delete_interval == -1
    sandbox.set_auto_archive_interval(0)  # 0 means the maximum (MAX_AUTO_ARCHIVE_INTERVAL)
    assert daytona.get(sandbox.id).auto_archive_interval == 43200
    with pytest.raises(DaytonaError) as err:
        sandbox.set_auto_archive_interval(43201)
    assert "maximum" in str(err.value)


def test_ttl_sets_and_clears_the_destroy_time(daytona, sandbox):
    sandbox.set_ttl(60)
    assert daytona.get(sandbox.id).auto_destroy_at
    sandbox.set_ttl(0)
    assert not daytona.get(sandbox.id).auto_destroy_at


def test_public_flag(daytona, sandbox):
    sandbox.set_public(True)
    assert daytona.get(sandbox.id).public is True
    sandbox.set_public(False)
    assert daytona.get(sandbox.id).public is False


def test_network_settings_are_validated_and_stored(daytona, sandbox):
    sandbox.update_network_settings(network_allow_list="100.64.0.0/10,1.2.3.4/32")
    fresh = daytona.get(sandbox.id)
    assert fresh.network_allow_list == "100.64.0.0/10,1.2.3.4/32"
    assert fresh.network_block_all is False
    sandbox.update_network_settings(network_block_all=True)
    fresh = daytona.get(sandbox.id)
    assert fresh.network_block_all is True and not fresh.network_allow_list
    with pytest.raises(DaytonaError) as err:
        sandbox.update_network_settings(network_allow_list="not-a-cidr")
    assert "not-a-cidr" in str(err.value)
    sandbox.update_network_settings(network_block_all=False)
    assert daytona.get(sandbox.id).network_block_all is False


def test_refresh_activity_moves_last_activity(daytona, sandbox):
    before = daytona.get(sandbox.id).last_activity_at
    time.sleep(0.01)
    sandbox.refresh_activity()
    assert daytona.get(sandbox.id).last_activity_at > before


def test_ephemeral_sandbox_is_deleted_when_stopped(daytona):
    sandbox = daytona.create(CreateSandboxFromSnapshotParams(ephemeral=True))
    try:
        assert sandbox.auto_delete_interval == 0
        sandbox.stop()
        with pytest.raises(DaytonaNotFoundError):
            daytona.get(sandbox.id)
    finally:
        try:
            daytona.delete(daytona.get(sandbox.id))
        except DaytonaNotFoundError:
            pass
