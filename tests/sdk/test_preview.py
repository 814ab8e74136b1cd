"""Preview proxy: `{port}-{sandboxId}.{PROXY_DOMAIN}` reaches a port inside the sandbox, with each auth mode."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from daytona import CreateSandboxFromSnapshotParams, SessionExecuteRequest

from support import SandboxFactory, settles

HTTP_PORT = 8000
WS_PORT = 8765

# A stdlib-only WebSocket echo server (the image has no websockets library).
WS_ECHO = r'''
import base64, hashlib, socket, struct, threading
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def recv_exact(c, n):
    b = b""
    while len(b) < n:
        part = c.recv(n - len(b))
        if not part:
            raise EOFError
        b += part
    return b
def serve(c):
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    try:
        while True:
            b0, b1 = recv_exact(c, 2)
            n = b1 & 0x7F
            if n == 126: n = struct.unpack(">H", recv_exact(c, 2))[0]
            elif n == 127: n = struct.unpack(">Q", recv_exact(c, 8))[0]
            mask = recv_exact(c, 4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(x ^ mask[i % 4] for i, x in enumerate(recv_exact(c, n)))
            if b0 & 0x0F == 8:
                return
            reply = b"echo:" + data
            c.sendall(bytes([0x81, len(reply)]) + reply)
    except EOFError:
        pass
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8765)); s.listen()
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
'''


def start_servers(sandbox) -> None:
    sandbox.fs.create_folder("/tmp/www", "755")
    sandbox.fs.upload_file(b"hello from the sandbox\n", "/tmp/www/index.txt")
    sandbox.fs.upload_file(WS_ECHO.encode(), "/tmp/ws_echo.py")
    # One session per server: a session runs its commands one after another.
    for name, cmd in (
        ("http", f"cd /tmp/www && python3 -m http.server {HTTP_PORT} --bind 0.0.0.0 > /tmp/http.log 2>&1"),
        ("ws", "python3 /tmp/ws_echo.py > /tmp/ws.log 2>&1"),
    ):
        sandbox.process.create_session(name)
        sandbox.process.execute_session_command(name, SessionExecuteRequest(command=cmd, run_async=True))
    deadline = time.monotonic() + 20
    probe = f"python3 -c 'import socket; [socket.create_connection((\"127.0.0.1\", p), 1) for p in ({HTTP_PORT}, {WS_PORT})]'"
    while (result := sandbox.process.exec(probe)).exit_code != 0:
        if time.monotonic() > deadline:
            logs = sandbox.process.exec("cat /tmp/http.log /tmp/ws.log").result
            pytest.fail(f"servers inside the sandbox did not start: {result.result}\n{logs}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def web(sandbox):
    start_servers(sandbox)
    return sandbox


def request(server, host: str, path: str = "/index.txt", headers: dict | None = None, method: str = "GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.proxy_port, timeout=30)
    try:
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def host_of(url: str) -> str:
    return urlsplit(url).netloc


def test_preview_link_shape(server, web):
    link = web.get_preview_link(HTTP_PORT)
    assert link.url == f"http://{HTTP_PORT}-{web.id}.proxy.localhost:{server.proxy_port}"
    assert link.token and link.token == web.get_preview_link(3000).token, "one token per sandbox"


def test_private_preview_auth_modes(server, web):
    link = web.get_preview_link(HTTP_PORT)
    host = host_of(link.url)
    body = b"hello from the sandbox\n"

    status, _, _ = request(server, host)
    assert status == 401, "a private sandbox refuses requests without credentials"
    assert request(server, host, headers={"X-Daytona-Preview-Token": "wrong"})[0] == 401
    assert request(server, host, headers={"Authorization": "Bearer dtn_wrong"})[0] == 401

    assert request(server, host, headers={"Authorization": f"Bearer {server.api_key}"})[::2] == (200, body)
    assert request(server, host, headers={"X-Daytona-Preview-Token": link.token})[::2] == (200, body)
    # The Host may omit the proxy's port.
    bare = host.rsplit(":", 1)[0]
    assert request(server, bare, headers={"X-Daytona-Preview-Token": link.token})[::2] == (200, body)

    status, headers, got = request(server, host, f"/index.txt?a=1&DAYTONA_SANDBOX_AUTH_KEY={link.token}")
    assert (status, got) == (200, body)
    cookie = headers.get("set-cookie", "")
    assert cookie.startswith(f"daytona-sandbox-auth-{web.id}="), cookie
    assert request(server, host, headers={"Cookie": cookie.split(";")[0]})[::2] == (200, body)
    # The query credential never reaches the app.
    log = web.fs.download_file("/tmp/http.log").decode()
    assert "GET /index.txt?a=1 " in log and link.token not in log, log


def test_websocket_through_preview(server, web):
    link = web.get_preview_link(WS_PORT)
    sock = socket.create_connection(("127.0.0.1", server.proxy_port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /echo HTTP/1.1\r\nHost: {host_of(link.url)}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nX-Daytona-Preview-Token: {link.token}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    assert expected in head
    for message in (b"ping", b"second message"):
        mask = os.urandom(4)
        sock.sendall(bytes([0x81, 0x80 | len(message)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(message)))
        b0, n = struct.unpack("BB", sock.recv(2))
        data = b""
        while len(data) < n:
            data += sock.recv(n - len(data))
        assert data == b"echo:" + message
    sock.close()


def test_signed_preview_url(server, web):
    signed = web.create_signed_preview_url(HTTP_PORT, expires_in_seconds=120)
    assert signed.port == HTTP_PORT and signed.sandbox_id == web.id
    assert signed.url == f"http://{HTTP_PORT}-{signed.token}.proxy.localhost:{server.proxy_port}"
    host = host_of(signed.url)
    assert request(server, host)[::2] == (200, b"hello from the sandbox\n"), "no other credential needed"
    other_port = host.replace(f"{HTTP_PORT}-", f"{WS_PORT}-", 1)
    assert request(server, other_port)[0] == 404, "a signed token is bound to its port"
    web.expire_signed_preview_url(HTTP_PORT, signed.token)
    assert settles(lambda: request(server, host)[0], 404) == 404, "an expired signed URL opens nothing"

    short = web.create_signed_preview_url(HTTP_PORT, expires_in_seconds=1)
    assert request(server, host_of(short.url))[0] == 200
    time.sleep(1.5)
    # At once: a split proxy keeps a signed URL no longer than it is valid.
    assert request(server, host_of(short.url))[0] == 404


def test_errors_are_clear(server, web):
    token = web.get_preview_link(HTTP_PORT).token
    nothing = f"9-{web.id}.proxy.localhost"
    status, _, body = request(server, nothing, headers={"X-Daytona-Preview-Token": token})
    assert status == 502 and b"Nothing is listening on port 9" in body, body
    status, headers, body = request(server, nothing, headers={"X-Daytona-Preview-Token": token, "Accept": "text/html"})
    assert status == 502 and headers["content-type"].startswith("text/html") and b"<html" in body
    status, _, _ = request(server, f"2280-{web.id}.proxy.localhost", headers={"Authorization": f"Bearer {server.api_key}"})
    assert status == 404, "the toolbox is only served under /toolbox"
    assert request(server, "1234-nosuchsandbox.proxy.localhost")[0] == 404


def test_public_toggle(server, web):
    host = f"{HTTP_PORT}-{web.id}.proxy.localhost"
    assert request(server, host)[0] == 401
    web.set_public(True)
    try:
        served = settles(lambda: request(server, host)[::2], (200, b"hello from the sandbox\n"))
        assert served == (200, b"hello from the sandbox\n"), "public: no credentials needed"
        assert request(server, f"2280-{web.id}.proxy.localhost")[0] == 404, "never the toolbox port"
    finally:
        web.set_public(False)
    assert settles(lambda: request(server, host)[0], 401) == 401


def test_public_sandbox_and_stopped(server, daytona):
    factory = SandboxFactory(daytona)
    try:
        public = factory(CreateSandboxFromSnapshotParams(public=True))
        created = public.created_at
        start_servers(public)
        host = f"{HTTP_PORT}-{public.id}.proxy.localhost"
        assert request(server, host)[::2] == (200, b"hello from the sandbox\n"), "public: no credentials needed"
        assert daytona.get(public.id).last_activity_at > created, "proxied traffic counts as activity"
        public.stop()

        def refusal():
            status, _, body = request(server, host)
            return status, b"not started" in body, body[:200]

        settles(lambda: refusal()[:2], (502, True))
        status, named, body = refusal()
        assert status == 502 and named, body
    finally:
        factory.cleanup()


def test_dns_setup_script_is_idempotent(tmp_path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "setup-proxy-dns.sh"
    first = subprocess.run([script, "--root", tmp_path, "--domain", "proxy.localhost:4000"], capture_output=True, text=True)
    assert first.returncode == 0 and "wrote" in first.stdout, first
    conf = (tmp_path / "etc/dnsmasq.d/daytona-proxy.conf").read_text()
    assert "address=/proxy.localhost/127.0.0.1" in conf.splitlines(), conf
    second = subprocess.run([script, "--root", tmp_path], capture_output=True, text=True)
    assert second.returncode == 0 and "wrote" not in second.stdout and "unchanged" in second.stdout, second
    bad = subprocess.run([script, "--root", tmp_path, "--domain", "a b"], capture_output=True, text=True)
    assert bad.returncode != 0 and "not a domain name" in bad.stderr


def test_start_renews_the_preview_token_but_not_the_signing_key(server, sandbox_factory):
    sandbox = sandbox_factory()
    sandbox.fs.upload_file(b"kept", "/tmp/kept.txt")
    old_token = sandbox.get_preview_link(HTTP_PORT).token
    signed_download = sandbox.download_url("/tmp/kept.txt")
    sandbox.stop()
    sandbox.start()
    start_servers(sandbox)
    new_token = sandbox.get_preview_link(HTTP_PORT).token
    assert new_token != old_token, "a start hands out a new preview token"
    host = f"{HTTP_PORT}-{sandbox.id}.proxy.localhost"
    assert settles(lambda: request(server, host, headers={"X-Daytona-Preview-Token": old_token})[0], 401) == 401
    assert request(server, host, headers={"X-Daytona-Preview-Token": new_token})[0] == 200
    with urllib.request.urlopen(signed_download, timeout=30) as resp:
        assert resp.read() == b"kept", "signed file URLs survive restarts"


def test_http2_clients(server, web):
    """HTTP/2 with prior knowledge (h2c) on the proxy port, for previews and the toolbox alike."""
    link = web.get_preview_link(HTTP_PORT)
    result = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_version} %{http_code}",
         "-H", f"X-Daytona-Preview-Token: {link.token}",
         "--connect-to", f"::127.0.0.1:{server.proxy_port}", f"http://{HTTP_PORT}-{web.id}.proxy.localhost/index.txt"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.stdout == "hello from the sandbox\n\n2 200", result
    toolbox = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
         "-H", f"Authorization: Bearer {server.api_key}", f"http://127.0.0.1:{server.proxy_port}/toolbox/{web.id}/version"],
        capture_output=True, text=True, timeout=30,
    )
    assert toolbox.stdout.endswith("\n2 200") and '"version"' in toolbox.stdout, toolbox
