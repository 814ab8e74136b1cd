"""Long-lived shell sessions: sync and async commands, state that persists, logs, heredocs."""

import time

import pytest
from daytona import DaytonaError, DaytonaNotFoundError, SessionExecuteRequest

from support import unique


@pytest.fixture
def session_id(sandbox):
    sid = unique("sess")
    sandbox.process.create_session(sid)
    yield sid
    try:
        sandbox.process.delete_session(sid)
    except DaytonaNotFoundError:
        pass  # the test deleted it


def run(sandbox, sid, command, **kwargs):
    return sandbox.process.execute_session_command(sid, SessionExecuteRequest(command=command, **kwargs))


def wait_for_exit_code(sandbox, sid, cmd_id, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        command = sandbox.process.get_session_command(sid, cmd_id)
        if command.exit_code is not None or time.monotonic() > deadline:
            return command
        time.sleep(0.2)


def test_sync_exec(sandbox, session_id):
    response = run(sandbox, session_id, "echo hi")
    assert response.exit_code == 0
    assert response.cmd_id
    assert response.stdout.strip() == "hi"

    failing = run(sandbox, session_id, "false")
    assert failing.exit_code == 1


def test_stdout_and_stderr_are_separated(sandbox, session_id):
    response = run(sandbox, session_id, "echo to-out; echo to-err >&2")
    assert response.exit_code == 0
    assert response.stdout.strip() == "to-out"
    assert response.stderr.strip() == "to-err"
    assert "to-out" in response.output and "to-err" in response.output


def test_cd_and_export_persist(sandbox, session_id):
    directory = f"/tmp/{unique('sessdir')}"
    assert run(sandbox, session_id, f"mkdir -p {directory} && cd {directory}").exit_code == 0
    assert run(sandbox, session_id, "export DTN_SESSION_VAR='kept value'").exit_code == 0

    assert run(sandbox, session_id, "pwd").stdout.strip() == directory
    assert run(sandbox, session_id, 'echo "$DTN_SESSION_VAR"').stdout.strip() == "kept value"
    # A shell function defined earlier is also still there.
    run(sandbox, session_id, "dtn_fn() { echo fn-$1; }")
    assert run(sandbox, session_id, "dtn_fn ok").stdout.strip() == "fn-ok"


def test_async_exec_command_status_and_logs(sandbox, session_id):
    response = run(
        sandbox, session_id, "echo started; sleep 1; echo err-line >&2; echo finished; exit 3", run_async=True
    )
    assert response.cmd_id
    assert response.exit_code is None  # returned before the command ended

    command = wait_for_exit_code(sandbox, session_id, response.cmd_id)
    assert command.id == response.cmd_id
    assert command.exit_code == 3

    logs = sandbox.process.get_session_command_logs(session_id, response.cmd_id)
    assert logs.stdout.split() == ["started", "finished"]
    assert logs.stderr.strip() == "err-line"
    assert "started" in logs.output and "err-line" in logs.output


def test_async_logs_can_be_read_while_running(sandbox, session_id):
    response = run(sandbox, session_id, "echo early; sleep 3; echo late", run_async=True)
    deadline = time.monotonic() + 2.5
    logs = sandbox.process.get_session_command_logs(session_id, response.cmd_id)
    while "early" not in (logs.stdout or "") and time.monotonic() < deadline:
        time.sleep(0.1)
        logs = sandbox.process.get_session_command_logs(session_id, response.cmd_id)
    assert "early" in logs.stdout
    assert "late" not in logs.stdout
    assert sandbox.process.get_session_command(session_id, response.cmd_id).exit_code is None
    assert wait_for_exit_code(sandbox, session_id, response.cmd_id).exit_code == 0
    assert sandbox.process.get_session_command_logs(session_id, response.cmd_id).stdout.split() == ["early", "late"]


def test_heredoc(sandbox, session_id):
    path = f"/tmp/{unique('heredoc')}.txt"
    command = f"cat > {path} <<'EOF'\nline one $HOME\n  indented line\nEOF\ncat {path}"
    response = run(sandbox, session_id, command)
    assert response.exit_code == 0
    assert response.stdout.splitlines() == ["line one $HOME", "  indented line"]


def test_list_get_and_delete_session(sandbox):
    sid = unique("sess-list")
    sandbox.process.create_session(sid)
    first = run(sandbox, sid, "echo one")
    second = run(sandbox, sid, "echo two")

    assert sid in {s.session_id for s in sandbox.process.list_sessions()}
    session = sandbox.process.get_session(sid)
    assert session.session_id == sid
    commands = {c.id: c for c in session.commands}
    assert {first.cmd_id, second.cmd_id} <= set(commands)
    assert commands[first.cmd_id].command == "echo one"
    assert commands[first.cmd_id].exit_code == 0

    sandbox.process.delete_session(sid)
    assert sid not in {s.session_id for s in sandbox.process.list_sessions()}
    with pytest.raises(DaytonaNotFoundError):
        sandbox.process.get_session(sid)
    with pytest.raises(DaytonaError):
        run(sandbox, sid, "echo after delete")


def test_sessions_are_independent(sandbox):
    a, b = unique("sess-a"), unique("sess-b")
    sandbox.process.create_session(a)
    sandbox.process.create_session(b)
    try:
        directory = f"/tmp/{unique('only-a')}"
        assert run(sandbox, a, f"export DTN_ONLY_A=1; mkdir -p {directory}; cd {directory}").exit_code == 0
        assert run(sandbox, a, "pwd").stdout.strip() == directory
        assert run(sandbox, b, 'echo "${DTN_ONLY_A-unset}"').stdout.strip() == "unset"
        assert run(sandbox, b, "pwd").stdout.strip() != directory
    finally:
        sandbox.process.delete_session(a)
        sandbox.process.delete_session(b)
