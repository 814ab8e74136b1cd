"""Outbound connections honour HTTP_PROXY / HTTPS_PROXY / NO_PROXY and NODE_EXTRA_CA_CERTS.

A small forward proxy on loopback (CONNECT tunnels and absolute-form HTTP requests) logs what passes
through it and maps the test's registry names (`registry.trusted.test`, `registry.untrusted.test`) to
loopback ports, so no name resolution or traffic ever leaves the machine. Three docker-registry
processes serve one storage: plain HTTP, TLS with a certificate from CA 1 and TLS with one from CA 2.
The server trusts CA 1 through NODE_EXTRA_CA_CERTS. Snapshot pulls must: reach the plain registry at
127.0.0.1 through the proxy; bypass it for `localhost` (NO_PROXY); tunnel to the CA-1 registry and
succeed; tunnel to the CA-2 registry and fail on its certificate.

S3 (`S3_*`) is moto over TLS, named `s3.trusted.test` (a name only the proxy maps) with a certificate of
a third CA: a sandbox archive (upload) and its restore (download) tunnel through the proxy and work when
the bundle holds that CA; a second server whose bundle lacks it fails the archive naming the certificate."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import subprocess
import tempfile
import threading
import time
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from daytona import CreateSnapshotParams, DaytonaError
from daytona_api_client import SandboxState, SnapshotState

import test_registry
import test_s3
from conftest import run_server
from support import make_client, unique

TRUSTED, UNTRUSTED = "registry.trusted.test", "registry.untrusted.test"
S3_HOST = "s3.trusted.test"

pytestmark = test_registry.pytestmark


@dataclass
class ForwardProxy:
    port: int
    routes: dict[str, tuple[str, int]]  # "host:port" as asked -> where it really is (loopback)
    seen: list[str] = field(default_factory=list)  # "CONNECT host:port" or "GET http://…"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, needle: str) -> bool:
        with self.lock:
            return any(needle in line for line in self.seen)


def _target(proxy: ForwardProxy, authority: str) -> tuple[str, int]:
    if authority in proxy.routes:
        return proxy.routes[authority]
    host, _, port = authority.rpartition(":")
    # Only loopback: nothing in a test leaves the machine.
    assert host in ("127.0.0.1", "localhost"), authority
    return "127.0.0.1", int(port)


@contextlib.contextmanager
def forward_proxy(routes: dict[str, tuple[str, int]]) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(port=0, routes=routes)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_CONNECT(self):  # noqa: N802
            with proxy.lock:
                proxy.seen.append(f"CONNECT {self.path}")
            upstream = socket.create_connection(_target(proxy, self.path), timeout=30)
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            sockets = [self.connection, upstream]
            try:
                while True:
                    readable, _, broken = select.select(sockets, [], sockets, 60)
                    if broken or not readable:
                        return
                    for sock in readable:
                        data = sock.recv(65536)
                        if not data:
                            return
                        (upstream if sock is self.connection else self.connection).sendall(data)
            finally:
                upstream.close()
                self.close_connection = True

        def _forward(self):
            with proxy.lock:
                proxy.seen.append(f"{self.command} {self.path}")
            url = urlsplit(self.path)
            host, port = _target(proxy, url.netloc)
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
            conn = http.client.HTTPConnection(host, port, timeout=60)
            target = url.path + (f"?{url.query}" if url.query else "")
            conn.request(self.command, target, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            conn.close()

        do_GET = do_HEAD = do_POST = do_PUT = _forward  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _certificate(dir: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `name` signed by it: (ca.pem, cert.pem, key.pem)."""
    ca_key, ca, key, csr, cert = (dir / f"{name}.{s}" for s in ("ca.key", "ca.pem", "key", "csr", "pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
             "-subj", f"/CN=Test CA for {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    ext = dir / f"{name}.ext"
    ext.write_text(f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


def _tls_registry(root: Path, storage: Path, cert: Path, key: Path) -> test_registry.Registry:
    """A docker-registry over TLS serving `storage` (shared with the plain one, read only here)."""
    root.mkdir(parents=True)
    port = test_registry._free_port()
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(storage)}},
        "http": {"addr": f"127.0.0.1:{port}", "tls": {"certificate": str(cert), "key": str(key)}},
    }
    (root / "config.yml").write_text(json.dumps(config))
    log = root / "registry.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [test_registry.REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=out, stderr=subprocess.STDOUT
        )
    _wait_port(port, process, log)
    return test_registry.Registry(f"127.0.0.1:{port}", log, process)


def _wait_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "docker-registry did not start: " + log.read_text()
        time.sleep(0.1)


def _tiny_image(layout: Path) -> None:
    """An OCI layout with one small image tagged `tiny` (nothing here runs it)."""
    (layout / "blobs/sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    blob, diff_id = test_registry._layer({"hello.txt": b"through the proxy\n"})
    layer = {"mediaType": test_registry.LAYER_GZIP, "digest": test_registry._put_blob(layout, blob), "size": len(blob)}
    config = {"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    manifest = test_registry._image(layout, config, [layer])
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "tiny"}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))


@dataclass
class Setup:
    proxy: ForwardProxy
    plain_port: int
    client: object
    # What a second server needs to use the same S3 endpoint through the same proxy.
    s3_env: dict[str, str]
    registry_ca: Path


@pytest.fixture(scope="module")
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    work = Path(tempfile.mkdtemp(prefix="daytona-outbound-"))
    registries: list[test_registry.Registry] = []
    try:
        plain = test_registry._start_registry(work / "plain")
        registries.append(plain)
        _tiny_image(work / "layout")
        test_registry._skopeo("--dest-tls-verify=false", f"oci:{work / 'layout'}:tiny", f"docker://{plain.host}/tiny:1")
        storage = work / "plain" / "storage"
        trusted_ca, trusted_cert, trusted_key = _certificate(work, TRUSTED)
        _, untrusted_cert, untrusted_key = _certificate(work, UNTRUSTED)
        trusted = _tls_registry(work / "trusted", storage, trusted_cert, trusted_key)
        registries.append(trusted)
        untrusted = _tls_registry(work / "untrusted", storage, untrusted_cert, untrusted_key)
        registries.append(untrusted)

        def loopback(registry):
            return ("127.0.0.1", int(registry.host.rsplit(":", 1)[1]))

        # S3 over TLS with a certificate of a CA of its own, known by a name only the proxy maps.
        s3_ca, s3_cert, s3_key = _certificate(work, S3_HOST)
        bundle = work / "bundle.pem"
        bundle.write_text(trusted_ca.read_text() + s3_ca.read_text())
        failed = lambda: bool(request.session.testsfailed)  # noqa: E731
        with test_s3.moto_s3(failed, tls=(s3_cert, s3_key)) as s3:
            s3_port = int(s3.endpoint.rsplit(":", 1)[1])
            routes = {
                f"{TRUSTED}:443": loopback(trusted),
                f"{UNTRUSTED}:443": loopback(untrusted),
                f"{S3_HOST}:443": ("127.0.0.1", s3_port),
            }
            with forward_proxy(routes) as proxy:
                url = f"http://127.0.0.1:{proxy.port}"
                api_s3, _ = test_s3.s3_env(s3)
                s3_env = {
                    **api_s3,
                    "S3_ENDPOINT": f"https://{S3_HOST}",
                    "HTTPS_PROXY": url,
                    "http_proxy": url,
                    "NO_PROXY": "localhost",
                }
                env = {**s3_env, "NODE_EXTRA_CA_CERTS": str(bundle)}
                with run_server(failed, env) as server:
                    yield Setup(proxy, loopback(plain)[1], make_client(server), s3_env, trusted_ca)
    finally:
        for registry in registries:
            test_registry._stop_registry(registry)
        shutil.rmtree(work, ignore_errors=True)


def _pull(client, image: str):
    return client.snapshot.create(CreateSnapshotParams(name=unique("out"), image=image))


def test_plain_http_pulls_go_through_the_proxy_unless_no_proxy_says_otherwise(setup: Setup):
    snapshot = _pull(setup.client, f"127.0.0.1:{setup.plain_port}/tiny:1")
    assert snapshot.state == SnapshotState.ACTIVE
    assert setup.proxy.saw(f" http://127.0.0.1:{setup.plain_port}/v2/tiny/manifests/"), setup.proxy.seen

    snapshot = _pull(setup.client, f"localhost:{setup.plain_port}/tiny:1")
    assert snapshot.state == SnapshotState.ACTIVE
    assert not setup.proxy.saw("localhost"), setup.proxy.seen


def test_https_registry_is_trusted_only_through_the_extra_ca_bundle(setup: Setup):
    snapshot = _pull(setup.client, f"{TRUSTED}/tiny:1")
    assert snapshot.state == SnapshotState.ACTIVE
    assert setup.proxy.saw(f"CONNECT {TRUSTED}:443"), setup.proxy.seen

    name = unique("untrusted")
    with pytest.raises(DaytonaError):
        setup.client.snapshot.create(CreateSnapshotParams(name=name, image=f"{UNTRUSTED}/tiny:1"))
    failed = setup.client.snapshot.get(name)
    assert failed.state == SnapshotState.ERROR
    # The tunnel was made: what failed is trust in the certificate, not the route.
    assert setup.proxy.saw(f"CONNECT {UNTRUSTED}:443"), setup.proxy.seen
    assert "certificate" in (failed.error_reason or "").lower(), failed.error_reason


def _archived(client) -> object:
    """A sandbox with a file, stopped and archived (its disk goes to object storage)."""
    sandbox = client.create(timeout=180)
    sandbox.process.exec("echo kept-in-s3 > /home/daytona/kept.txt")
    sandbox.stop()
    try:
        sandbox.archive()
    except DaytonaError:
        pass  # the state says why
    sandbox.refresh_data()
    return sandbox


def test_s3_goes_through_the_proxy_and_trusts_its_ca_through_the_bundle(setup: Setup):
    sandbox = _archived(setup.client)
    try:
        assert sandbox.state == SandboxState.ARCHIVED, sandbox.error_reason
        # The endpoint's name resolves nowhere: only the proxy's tunnel reaches it.
        assert setup.proxy.saw(f"CONNECT {S3_HOST}:443"), setup.proxy.seen
        # The restore reads the archive back the same way.
        sandbox.start()
        assert sandbox.process.exec("cat /home/daytona/kept.txt").result.strip() == "kept-in-s3"
    finally:
        setup.client.delete(sandbox, timeout=120)


def test_s3_with_a_ca_outside_the_bundle_is_refused_on_its_certificate(request: pytest.FixtureRequest, setup: Setup):
    # Trusts the registry's CA but not the S3 endpoint's.
    env = {**setup.s3_env, "NODE_EXTRA_CA_CERTS": str(setup.registry_ca)}
    with run_server(lambda: bool(request.session.testsfailed), env) as server:
        client = make_client(server)
        sandbox = _archived(client)
        try:
            assert sandbox.state != SandboxState.ARCHIVED
            assert "certificate" in (sandbox.error_reason or "").lower(), sandbox.error_reason
        finally:
            client.delete(sandbox, timeout=120)
