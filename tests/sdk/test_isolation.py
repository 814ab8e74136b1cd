"""Sandboxes see neither each other nor the host: files, processes, environments."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from daytona import DaytonaNotFoundError

from support import (
    SandboxFactory,
    kill_processes_mentioning,
    processes,
    processes_mentioning,
    scan_proc,
    sleeper,
    unique,
    wait_for_processes_mentioning,
)


@pytest.fixture(scope="module")
def pair(daytona):
    factory = SandboxFactory(daytona)
    yield factory(), factory()
    factory.cleanup()


def test_files_written_in_one_sandbox_are_absent_in_another(pair):
    a, b = pair
    content = unique("only-in-a").encode()
    for path in (f"/tmp/{unique('iso')}.txt", f"{a.get_user_home_dir()}/{unique('iso')}.txt"):
        a.fs.upload_file(content, path)
        assert a.fs.download_file(path) == content  # positive control
        assert b.process.exec(f"test -e {path}").exit_code == 1
        with pytest.raises(DaytonaNotFoundError):
            b.fs.download_file(path)

    written_by_exec = f"/tmp/{unique('iso-exec')}"
    assert a.process.exec(f"echo x > {written_by_exec}").exit_code == 0
    assert a.process.exec(f"test -e {written_by_exec}").exit_code == 0
    assert b.process.exec(f"test -e {written_by_exec}").exit_code == 1


def test_processes_of_one_sandbox_are_invisible_in_another(pair):
    a, b = pair
    marker = unique("iso-proc")
    assert a.process.exec(f"{sleeper(marker)} >/dev/null 2>&1 &").exit_code == 0
    try:
        assert wait_for_processes_mentioning(a, marker, present=True), "positive control: A sees its own process"
        assert processes_mentioning(b, marker) == {}
    finally:
        kill_processes_mentioning(a, marker)


def test_sandbox_does_not_see_host_processes(server, pair):
    marker = unique("host-proc")
    host_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
    try:
        cmdline = Path(f"/proc/{host_process.pid}/cmdline")
        deadline = time.monotonic() + 10
        while marker.encode() not in cmdline.read_bytes():  # until the child has exec'd
            assert time.monotonic() < deadline, "host marker process did not start"
            time.sleep(0.05)
        for sandbox in pair:
            seen = processes(sandbox)
            assert seen, "positive control: the sandbox sees at least its own processes"
            assert not [argv for argv in seen.values() if any(marker in arg for arg in argv)]
            assert not [argv for argv in seen.values() if any(str(server.binary) in arg for arg in argv)], (
                "the daytona server process is visible inside the sandbox"
            )
            # Nothing in the sandbox carries the server's secrets in its environment.
            environments = scan_proc(sandbox, "environ")
            assert not [pid for pid, env in environments.items() if any(server.api_key in v for v in env)]
    finally:
        host_process.kill()
        host_process.wait()


def test_sandbox_does_not_see_host_files(server, pair):
    marker_name = unique("host-file")
    host_marker = Path("/tmp") / marker_name
    host_marker.write_text("host only\n")
    checkout_file = Path(__file__).resolve()
    try:
        for sandbox in pair:
            assert sandbox.process.exec("test -d /tmp").exit_code == 0  # positive control
            for path in (host_marker, server.data_dir, server.log_path, checkout_file):
                assert sandbox.process.exec(f"test -e '{path}'").exit_code == 1, f"{path} is visible inside"
            assert marker_name not in sandbox.process.exec("ls -a /tmp").result
            with pytest.raises(DaytonaNotFoundError):
                sandbox.fs.download_file(str(host_marker))
    finally:
        host_marker.unlink()
