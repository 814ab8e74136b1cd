"""PTY sessions through the official SDK: create-connect with envs, multi-attach, resize, exit codes, kill."""

import time

import pytest
from daytona import DaytonaConflictError, DaytonaNotFoundError, PtySize

from support import unique


def collect(handle, timeout: float = 20) -> tuple[str, object]:
    chunks: list[bytes] = []
    result = handle.wait(on_data=chunks.append, timeout=timeout)
    return b"".join(chunks).decode(errors="replace"), result


def test_pty_round_trip_resize_and_exit_code(sandbox):
    session_id = unique("pty")
    handle = sandbox.process.create_pty_session(
        id=session_id, envs={"PTY_GREETING": "hi-from-sdk"}, pty_size=PtySize(cols=80, rows=24)
    )
    try:
        assert handle.is_connected()
        with pytest.raises(DaytonaConflictError):
            sandbox.process.create_pty_session(id=session_id)

        info = handle.resize(PtySize(cols=100, rows=30))
        assert (info.cols, info.rows) == (100, 30)
        listed = {s.id: s for s in sandbox.process.list_pty_sessions()}
        assert listed[session_id].active is True
        assert listed[session_id].envs == {"PTY_GREETING": "hi-from-sdk"}

        # A second client attached to the same terminal sees the same output.
        watcher = sandbox.process.connect_pty_session(session_id)
        handle.send_input('echo "g=$PTY_GREETING"; stty size; exit 3\n')
        output, result = collect(handle)
        watched, watched_result = collect(watcher)
        assert result.exit_code == 3, result
        assert watched_result.exit_code == 3
        for text in (output, watched):
            assert "g=hi-from-sdk" in text
            assert "30 100" in text
        assert sandbox.process.get_pty_session_info(session_id).active is False
    finally:
        handle.disconnect()


def test_pty_kill_reports_sigkill(sandbox):
    session_id = unique("pty-kill")
    handle = sandbox.process.create_pty_session(id=session_id)
    try:
        handle.send_input("sleep 600\n")
        time.sleep(0.3)
        handle.kill()
        _, result = collect(handle)
        assert result.exit_code == 137
        with pytest.raises(DaytonaNotFoundError):
            sandbox.process.get_pty_session_info(session_id)
    finally:
        handle.disconnect()
