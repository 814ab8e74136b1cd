"""Organization secrets through the official SDK: CRUD, validation and listing on the control plane,
and their use from sandboxes: the sandbox only sees a placeholder, the runner's egress proxy puts the
real value into HTTP and HTTPS requests to the secret's allowed hosts (servers this test runs on the
bridge gateway, the host side of the sandbox network), and nowhere else."""

from __future__ import annotations

import ipaddress
import json
import shlex
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams
from daytona.common.secret import CreateSecretParams, UpdateSecretParams
from daytona_api_client.exceptions import ApiException

from conftest import run_server
from support import http, make_client, unique

PREFIX = "daytona-secret-"


# --- control plane -----------------------------------------------------------------------------


def test_crud_never_returns_the_value(daytona, server):
    name = unique("tok").replace("-", "_")
    created = daytona.secret.create(
        CreateSecretParams(name=name, value="sk-live-123", description="d", hosts=["API.example.com", "*.example.org"])
    )
    assert created.name == name and created.description == "d"
    assert created.placeholder.startswith(PREFIX) and "sk-live-123" not in created.placeholder
    assert created.hosts == ["api.example.com", "*.example.org"]
    raw = http("GET", f"{server.api_url}/secret/{created.id}", server.api_key)
    assert raw.status == 200 and "value" not in raw.json() and b"sk-live-123" not in raw.body
    listed = http("GET", f"{server.api_url}/secret/paginated?name={name}", server.api_key)
    assert b"sk-live-123" not in listed.body and listed.json()["total"] == 1

    got = daytona.secret.get(created.id)
    assert (got.placeholder, got.hosts) == (created.placeholder, created.hosts)
    updated = daytona.secret.update(created.id, UpdateSecretParams(value="sk-live-456", hosts=[]))
    assert updated.hosts == [] and updated.description == "d" and updated.placeholder == created.placeholder
    assert updated.updated_at >= created.updated_at
    assert b"sk-live-456" not in http("GET", f"{server.api_url}/secret/{created.id}", server.api_key).body
    assert any(s.id == created.id for s in http_list(server, name))

    daytona.secret.delete(created.id)
    with pytest.raises(Exception) as gone:
        daytona.secret.get(created.id)
    assert "not found" in str(gone.value).lower()
    assert http("DELETE", f"{server.api_url}/secret/{created.id}", server.api_key).status == 404


def http_list(server, name):
    from types import SimpleNamespace

    page = http("GET", f"{server.api_url}/secret/paginated?name={name}", server.api_key).json()
    return [SimpleNamespace(**item) for item in page["items"]]


def test_duplicate_names_conflict(daytona, server):
    name = unique("dup").replace("-", "_")
    first = daytona.secret.create(CreateSecretParams(name=name, value="a"))
    try:
        again = http("POST", f"{server.api_url}/secret", server.api_key, {"name": name, "value": "b"})
        assert again.status == 409 and name in again.json()["message"], again.json()
        with pytest.raises(ApiException) as conflict:
            daytona.secret.create(CreateSecretParams(name=name, value="c"))
        assert conflict.value.status == 409
    finally:
        daytona.secret.delete(first.id)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "1bad", "value": "v"}, "name"),
        ({"name": "has space", "value": "v"}, "name"),
        ({"name": "ok_name", "value": ""}, "value"),
        ({"name": "ok_name", "value": "v", "hosts": ["api.example.com:443"]}, "hosts[0]"),
        ({"name": "ok_name", "value": "v", "hosts": ["a.com", "https://b.com"]}, "hosts[1]"),
        ({"name": "ok_name", "value": "v", "hosts": ["a.*.com"]}, "hosts[0]"),
        ({"name": "ok_name", "value": 5}, "value"),
        ({"value": "v"}, "name"),
    ],
)
def test_bad_input_is_refused_naming_the_field(server, body, field):
    refused = http("POST", f"{server.api_url}/secret", server.api_key, body)
    assert refused.status == 400, refused.json()
    assert field in refused.json()["message"], refused.json()


def test_pagination_filter_and_sort(daytona, server):
    tag = unique("pg").replace("-", "_")
    names = [f"{tag}_{c}" for c in "cabde"]
    made = [daytona.secret.create(CreateSecretParams(name=n, value="v")) for n in names]
    try:
        seen, cursor = [], None
        while True:
            page = daytona.secret.list(cursor=cursor, limit=2, name=tag.upper(), sort="name", order="asc")
            assert page.total == 5 and len(page.items) <= 2
            seen += [s.name for s in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == sorted(names)
        newest = daytona.secret.list(name=tag, limit=1)
        assert newest.items[0].name == names[-1], "createdAt desc by default"
        assert newest.next_cursor is not None
        assert daytona.secret.list(name=tag + "_zz").total == 0
        for query, field in [("limit=0", "limit"), ("limit=201", "limit"), ("sort=value", "sort"), ("order=up", "order"), ("cursor=%25", "cursor")]:
            bad = http("GET", f"{server.api_url}/secret/paginated?{query}", server.api_key)
            assert bad.status == 400 and field in bad.json()["message"], (query, bad.json())
        assert {s["name"] for s in http("GET", f"{server.api_url}/secret", server.api_key).json()} >= set(names)
    finally:
        for secret in made:
            daytona.secret.delete(secret.id)


def test_unknown_secret_names_are_refused(server):
    refused = http("POST", f"{server.api_url}/sandbox", server.api_key, {"secrets": [{"TOKEN": "no_such_secret"}]})
    assert refused.status == 400 and "no_such_secret" in refused.json()["message"], refused.json()
    bad_env = http("POST", f"{server.api_url}/sandbox", server.api_key, {"secrets": [{"1X": "whatever"}]})
    assert bad_env.status == 400 and "1X" in bad_env.json()["message"], bad_env.json()


# --- egress --------------------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
    )
    return key, cert


def _make_leaf(directory: Path, ca: tuple[Path, Path], ip: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (directory / f"leaf-{ca[1].stem}.{s}" for s in ("key", "csr", "pem", "ext"))
    ext.write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ip}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
             "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return key, cert


class _Recorder(BaseHTTPRequestHandler):
    """Answers every request with what it received, as JSON."""

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        payload = json.dumps(
            {"path": self.path, "authorization": self.headers.get("Authorization"), "x": self.headers.get("X-Token"), "body": body}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def _serve(host: str, tls: tuple[Path, Path] | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, 0), _Recorder)
    server.daemon_threads = True
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[1]), str(tls[0]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# Runs inside the sandbox: urllib honours the proxy variables and SSL_CERT_FILE, as most clients do.
_CLIENT = r"""
import json, os, sys, urllib.request, urllib.error
url, var = sys.argv[1], sys.argv[2]
token = os.environ[var]
req = urllib.request.Request(f"{url}/echo?key={token}", data=f"token={token}".encode(), method="POST",
                             headers={"Authorization": f"Bearer {token}", "X-Token": token,
                                      "Content-Type": "application/x-www-form-urlencoded"})
try:
    with urllib.request.urlopen(req, timeout=20) as r:
        print(json.dumps({"status": r.status, "seen": json.loads(r.read())}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "error": e.read().decode()}))
except Exception as e:
    print(json.dumps({"status": 0, "error": repr(e)}))
"""


def _call(sandbox, url: str, var: str, bypass_no_proxy: bool = False) -> dict:
    prefix = "env NO_PROXY= no_proxy= " if bypass_no_proxy else ""
    cmd = f"{prefix}python3 -c {shlex.quote(_CLIENT)} {shlex.quote(url)} {var}"
    out = sandbox.process.exec(cmd, timeout=60)
    assert out.exit_code == 0, out.result
    return json.loads(out.result.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def egress(request, tmp_path_factory):
    """A server of our own whose egress proxy also trusts a test CA; the gateway address of its
    sandbox network; the CA (for the test's HTTPS server) and a CA the proxy does not trust."""
    directory = tmp_path_factory.mktemp("egress-ca")
    trusted, untrusted = _make_ca(directory, "trusted-ca"), _make_ca(directory, "untrusted-ca")
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    with run_server(failed, {"DAYTONA_EGRESS_EXTRA_CA_FILE": str(trusted[1])}) as srv:
        gateway = str(next(ipaddress.ip_network(srv.env["DAYTONA_SANDBOX_SUBNET"]).hosts()))
        client = make_client(srv)
        # The bridge (and with it the gateway address the test servers bind) comes with the first sandbox.
        keeper = client.create(CreateSandboxFromSnapshotParams(), timeout=120)
        servers = {
            "http": _serve(gateway),
            "https": _serve(gateway, _make_leaf(directory, trusted, gateway)),
            "untrusted": _serve(gateway, _make_leaf(directory, untrusted, gateway)),
        }
        urls = {
            "http": f"http://{gateway}:{servers['http'].server_port}",
            "https": f"https://{gateway}:{servers['https'].server_port}",
            "untrusted": f"https://{gateway}:{servers['untrusted'].server_port}",
        }
        try:
            yield srv, client, gateway, urls
        finally:
            client.delete(keeper, timeout=60)
            for s in servers.values():
                s.shutdown()
                s.server_close()


def test_values_reach_allowed_hosts_only(egress):
    srv, client, gateway, urls = egress
    allowed = client.secret.create(CreateSecretParams(name=unique("allowed").replace("-", "_"), value="real-value-1", hosts=[gateway]))
    elsewhere = client.secret.create(
        CreateSecretParams(name=unique("elsewhere").replace("-", "_"), value="never-here", hosts=["api.example.com"])
    )
    sandbox = client.create(CreateSandboxFromSnapshotParams(secrets={"TOKEN": allowed.name, "OTHER": elsewhere.name}), timeout=120)
    try:
        env = sandbox.process.exec("printf '%s %s' \"$TOKEN\" \"$OTHER\"").result
        assert env == f"{allowed.placeholder} {elsewhere.placeholder}"
        assert "real-value-1" not in sandbox.process.exec("env").result

        for scheme in ("http", "https"):
            seen = _call(sandbox, urls[scheme], "TOKEN")
            assert seen["status"] == 200, (scheme, seen)
            got = seen["seen"]
            assert got["authorization"] == "Bearer real-value-1", (scheme, got)
            assert got["x"] == "real-value-1" and got["path"] == "/echo?key=real-value-1", got
            assert got["body"] == "token=real-value-1", got
            # A secret whose hosts do not include this one goes out as its placeholder.
            other = _call(sandbox, urls[scheme], "OTHER")["seen"]
            assert other["authorization"] == f"Bearer {elsewhere.placeholder}", (scheme, other)

        # The proxy verifies the real host's certificate: an unknown CA is refused.
        refused = _call(sandbox, urls["untrusted"], "TOKEN")
        assert refused["status"] == 502 and "TLS" in refused["error"], refused

        # A new value applies to the next request; a deleted secret is no longer substituted.
        client.secret.update(allowed.id, UpdateSecretParams(value="real-value-2"))
        assert _call(sandbox, urls["https"], "TOKEN")["seen"]["authorization"] == "Bearer real-value-2"
        client.secret.update(allowed.id, UpdateSecretParams(hosts=["other.example.com"]))
        assert _call(sandbox, urls["http"], "TOKEN")["seen"]["authorization"] == f"Bearer {allowed.placeholder}"
        client.secret.delete(allowed.id)
        assert _call(sandbox, urls["http"], "TOKEN")["seen"]["authorization"] == f"Bearer {allowed.placeholder}"

        # The CA trust is mounted read-only.
        write = sandbox.process.exec("sudo touch /etc/daytona/egress/x 2>&1")
        assert write.exit_code != 0 and "Read-only" in write.result, write.result
    finally:
        client.delete(sandbox, timeout=60)
        for secret in (allowed, elsewhere):
            http("DELETE", f"{srv.api_url}/secret/{secret.id}", srv.api_key)


def test_secrets_replaced_on_a_running_sandbox(egress):
    srv, client, gateway, urls = egress
    first = client.secret.create(CreateSecretParams(name=unique("first").replace("-", "_"), value="v-first", hosts=[gateway]))
    second = client.secret.create(CreateSecretParams(name=unique("second").replace("-", "_"), value="v-second", hosts=[gateway]))
    # Created without secrets: they are attached while it runs, and then replaced.
    sandbox = client.create(CreateSandboxFromSnapshotParams(), timeout=120)
    try:
        sandbox.update_secrets({"FIRST": first.name})
        assert sandbox.process.exec("echo -n $FIRST").result == first.placeholder
        assert _call(sandbox, urls["https"], "FIRST")["seen"]["authorization"] == "Bearer v-first"
        sandbox.update_secrets({"SECOND": second.name})
        assert sandbox.process.exec("echo -n ${FIRST:-gone} $SECOND").result == f"gone {second.placeholder}"
        assert _call(sandbox, urls["http"], "SECOND")["seen"]["authorization"] == "Bearer v-second"
        # Detached: the placeholder is no longer substituted even when sent by hand.
        sandbox.update_secrets({})
        assert sandbox.process.exec("echo -n ${SECOND:-gone}").result == "gone"
        # Kept across a restart.
        sandbox.update_secrets({"FIRST": first.name})
        sandbox.stop(timeout=60)
        sandbox.start(timeout=60)
        assert sandbox.process.exec("echo -n $FIRST").result == first.placeholder
        assert _call(sandbox, urls["http"], "FIRST")["seen"]["authorization"] == "Bearer v-first"
        unknown = http("PUT", f"{srv.api_url}/sandbox/{sandbox.id}/secrets", srv.api_key, {"secrets": [{"X": "nope_nope"}]})
        assert unknown.status == 400 and "nope_nope" in unknown.json()["message"]
    finally:
        client.delete(sandbox, timeout=60)
        for secret in (first, second):
            http("DELETE", f"{srv.api_url}/secret/{secret.id}", srv.api_key)


def test_proxy_keeps_the_network_policy(egress):
    srv, client, gateway, urls = egress
    secret = client.secret.create(CreateSecretParams(name=unique("pol").replace("-", "_"), value="v", hosts=[gateway]))
    api_port = srv.env["PORT"]
    sandbox = client.create(
        CreateSandboxFromSnapshotParams(secrets={"T": secret.name}, network_allow_list=f"{gateway}/32"), timeout=120
    )
    try:
        # Allowed: the gateway is in the list.
        assert _call(sandbox, urls["http"], "T")["seen"]["authorization"] == "Bearer v"
        # The host's loopback (the API listens there) is no more reachable through the proxy than directly.
        loop = _call(sandbox, f"http://127.0.0.1:{api_port}/api", "T", bypass_no_proxy=True)
        assert loop["status"] == 403 and "not reachable" in loop["error"], loop
        # A destination outside the allow list is refused before any connection (TEST-NET-1).
        outside = _call(sandbox, "http://192.0.2.1", "T")
        assert outside["status"] == 403 and "allow list" in outside["error"], outside
        tunnel = _call(sandbox, "https://192.0.2.1", "T")
        assert tunnel["status"] == 0 and "403" in tunnel["error"], tunnel
        # Without credentials the proxy answers nothing.
        anonymous_client = (
            "import sys, urllib.error, urllib.request as u\n"
            "opener = u.build_opener(u.ProxyHandler({'http': sys.argv[1]}))\n"
            "try:\n    opener.open(sys.argv[2], timeout=10)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)\n"
        )
        anonymous = sandbox.process.exec(
            f"python3 -c {shlex.quote(anonymous_client)} http://{gateway}:3128 {urls['http']}/x"
        )
        assert anonymous.result.strip() == "407", anonymous.result
    finally:
        client.delete(sandbox, timeout=60)
        http("DELETE", f"{srv.api_url}/secret/{secret.id}", srv.api_key)
