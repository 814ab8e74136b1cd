"""SSH gateway with the real OpenSSH client: shell, exec, scp, sftp, local forwards; revoked/expired tokens."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest
from daytona import SessionExecuteRequest

OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


def ssh(server, token, *args, input: bytes | None = None, timeout=60):
    return subprocess.run(["ssh", *OPTS, "-p", str(server.ssh_port), f"{token}@127.0.0.1", *args],
                          input=input, capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def access(sandbox):
    return sandbox.create_ssh_access(expires_in_minutes=30)


def test_access_shape(server, sandbox, access):
    assert len(access.token) == 32 and access.sandbox_id == sandbox.id
    assert access.ssh_command == f"ssh -p {server.ssh_port} {access.token}@127.0.0.1"
    v = sandbox.validate_ssh_access(access.token)
    assert v.valid and v.sandbox_id == sandbox.id


def test_exec_status_and_stdin(server, access):
    r = ssh(server, access.token, "echo out; echo err >&2; whoami; exit 7")
    assert r.returncode == 7, r
    assert r.stdout.decode().split() == ["out", "daytona"] and r.stderr.decode().strip() == "err"
    r = ssh(server, access.token, "wc -c", input=b"x" * 100_000)
    assert (r.returncode, r.stdout.strip()) == (0, b"100000"), r


def test_interactive_shell_with_pty(server, access):
    r = ssh(server, access.token, "-tt", input=b"echo marker-$((40+2)); tty; exit 5\n")
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 5, (r, out)
    assert "marker-42" in out and "/dev/pts/" in out, out


def test_scp_and_sftp(server, access, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    port = ["-P", str(server.ssh_port)]
    r = subprocess.run(["scp", *OPTS, *port, str(src), f"{access.token}@127.0.0.1:/tmp/up.bin"], capture_output=True, timeout=60)
    assert r.returncode == 0, r
    back = tmp_path / "back.bin"
    r = subprocess.run(["scp", *OPTS, *port, f"{access.token}@127.0.0.1:/tmp/up.bin", str(back)], capture_output=True, timeout=60)
    assert r.returncode == 0 and back.read_bytes() == src.read_bytes(), r
    batch = tmp_path / "batch"
    got = tmp_path / "sftp.bin"
    batch.write_text(f"put {src} /tmp/sftp.bin\nls -l /tmp/sftp.bin\nget /tmp/sftp.bin {got}\n")
    r = subprocess.run(["sftp", *OPTS, *port, "-b", str(batch), f"{access.token}@127.0.0.1"], capture_output=True, timeout=60)
    assert r.returncode == 0, r
    assert got.read_bytes() == src.read_bytes()


def test_local_port_forward(server, sandbox, access):
    sandbox.process.exec("mkdir -p /tmp/fwd && echo forwarded > /tmp/fwd/index.txt")
    sandbox.process.create_session("fwd")
    sandbox.process.execute_session_command(
        "fwd", SessionExecuteRequest(command="cd /tmp/fwd && python3 -m http.server 8001 --bind 0.0.0.0", run_async=True))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    proc = subprocess.Popen(["ssh", *OPTS, "-N", "-L", f"127.0.0.1:{local}:localhost:8001", "-p", str(server.ssh_port),
                             f"{access.token}@127.0.0.1"])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/index.txt", timeout=5) as resp:
                    assert resp.read() == b"forwarded\n"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the forward never answered"
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(10)


def test_revoked_and_expired_tokens(server, sandbox):
    revoked = sandbox.create_ssh_access(expires_in_minutes=5)
    assert ssh(server, revoked.token, "true").returncode == 0
    sandbox.revoke_ssh_access(revoked.token)
    r = ssh(server, revoked.token, "true")
    assert r.returncode == 255 and b"Permission denied" in r.stderr, r
    assert not sandbox.validate_ssh_access(revoked.token).valid

    expired = sandbox.create_ssh_access(expires_in_minutes=5)
    assert ssh(server, expired.token, "true").returncode == 0
    # Let the token's lifetime pass: move its expiry into the past.
    server.execute_sql(
        "UPDATE ssh_access SET expires_at = '2000-01-01T00:00:00.000Z' WHERE sandbox_id = :sandbox", sandbox=sandbox.id
    )
    r = ssh(server, expired.token, "true")
    assert r.returncode == 255 and b"Permission denied" in r.stderr, r
    assert not sandbox.validate_ssh_access(expired.token).valid
