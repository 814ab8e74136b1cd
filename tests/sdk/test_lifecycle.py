"""Sandbox lifecycle through the control plane: create, get, list, stop/start, delete."""

import time

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaNotFoundError, ListSandboxesQuery, SandboxState

from support import sandbox_processes_on_host, sleeper, unique


def test_create_with_env_vars_and_labels(sandbox_factory):
    labels = {"suite": "sdk", "case": unique("labels")}
    env = {"DTN_GREETING": "hello world", "DTN_EMPTY_ISH": "x=y;z"}
    sandbox = sandbox_factory(CreateSandboxFromSnapshotParams(env_vars=env, labels=labels))

    assert sandbox.state == SandboxState.STARTED
    for key, value in labels.items():
        assert sandbox.labels.get(key) == value
    assert sandbox.labels.get("code-toolbox-language") == "python"
    for key, value in env.items():
        assert sandbox.env.get(key) == value

    response = sandbox.process.exec('printf "%s|%s" "$DTN_GREETING" "$DTN_EMPTY_ISH"')
    assert response.exit_code == 0
    assert response.result == "hello world|x=y;z"


def test_get_by_id_and_by_name(daytona, sandbox_factory):
    name = unique("sdk-name")
    created = sandbox_factory(CreateSandboxFromSnapshotParams(name=name))
    assert created.name == name

    by_id = daytona.get(created.id)
    assert by_id.id == created.id
    assert by_id.name == name
    assert by_id.state == SandboxState.STARTED

    by_name = daytona.get(name)
    assert by_name.id == created.id
    # The object returned by get() drives the toolbox too.
    assert by_name.process.exec("echo via-name").result == "via-name\n"


def test_list_by_label(daytona, sandbox_factory):
    tag = unique("list")
    wanted = {sandbox_factory(CreateSandboxFromSnapshotParams(labels={"list-test": tag})).id for _ in range(2)}
    other = sandbox_factory(CreateSandboxFromSnapshotParams(labels={"list-test": tag + "-other"}))

    listed = list(daytona.list(ListSandboxesQuery(labels={"list-test": tag})))
    assert {s.id for s in listed} == wanted
    assert all(s.labels.get("list-test") == tag for s in listed)

    # Paging with a tiny page size still yields every match exactly once.
    paged = [s.id for s in daytona.list(ListSandboxesQuery(labels={"list-test": tag}, limit=1))]
    assert sorted(paged) == sorted(wanted)

    everything = {s.id for s in daytona.list()}
    assert wanted | {other.id} <= everything


def test_stop_then_start_keeps_files(sandbox_factory):
    sandbox = sandbox_factory(CreateSandboxFromSnapshotParams(env_vars={"DTN_PERSIST": "still-here"}))
    content = unique("persisted").encode()
    path = f"{sandbox.get_user_home_dir()}/persist/kept.txt"
    sandbox.fs.upload_file(content, path)

    sandbox.stop(timeout=60)
    assert sandbox.state == SandboxState.STOPPED
    sandbox.refresh_data()
    assert sandbox.state == SandboxState.STOPPED

    sandbox.start(timeout=60)
    assert sandbox.state == SandboxState.STARTED
    assert sandbox.fs.download_file(path) == content
    assert sandbox.process.exec("echo $DTN_PERSIST").result == "still-here\n"


def test_delete_then_get_raises_not_found(daytona, sandbox_factory):
    sandbox = sandbox_factory()
    name = sandbox.name
    daytona.delete(sandbox, timeout=60, wait=True)
    sandbox_factory.forget(sandbox)

    with pytest.raises(DaytonaNotFoundError):
        daytona.get(sandbox.id)
    with pytest.raises(DaytonaNotFoundError):
        daytona.get(name)
    assert sandbox.id not in {s.id for s in daytona.list()}


def test_delete_ends_every_process_of_the_sandbox(server, daytona, sandbox_factory):
    before = set(sandbox_processes_on_host(server.data_dir))
    sandbox = sandbox_factory()
    marker = unique("dtn-delete")
    assert sandbox.process.exec(f"{sleeper(marker)} >/dev/null 2>&1 &").exit_code == 0
    deadline = time.monotonic() + 5
    while True:  # positive control: the host-side scan finds the sandbox's processes
        ours = {pid: cmd for pid, cmd in sandbox_processes_on_host(server.data_dir).items() if pid not in before}
        if any(marker in cmd for cmd in ours.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any(marker in cmd for cmd in ours.values()), f"host does not see the sandbox's processes: {ours}"

    daytona.delete(sandbox, timeout=60, wait=True)
    sandbox_factory.forget(sandbox)
    deadline = time.monotonic() + 10
    while (left := set(ours) & set(sandbox_processes_on_host(server.data_dir))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes of the deleted sandbox still run: { {p: ours[p] for p in left} }"
