"""The transient registry with the API as its token server (`DAYTONA_REGISTRY_TOKEN_*`): Debian's
`docker-registry` configured for token auth with the section `daytona registry-token-config`
prints, and a `daytona server` whose transient and internal registry are that registry.

Checks: a user's push access (`GET /docker-registry/registry-push-access`) lets skopeo push into
its organization's path, and a snapshot made from the pushed reference becomes active (the runner
pulls it, and pushes it to the internal registry, with the runners' credentials through the same
token server); the credential cannot push into or pull from another organization's path; garbage,
expired and administrator-impostor credentials are refused; the session's server (no token server)
answers 503. Prints the push time."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import sqlite3
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from daytona import CreateSandboxFromSnapshotParams, CreateSnapshotParams

import conftest
from accounts import Caller, User, new_user
from support import http, make_client, unique
from test_registry import REGISTRY_BIN, Registry, _free_port, _start_registry, _stop_registry

PROJECT = "daytona"
SERVICE = "daytona-test-registry"
ADMIN, ADMIN_PASSWORD = "transient-admin", "t-" + secrets.token_hex(8)
RUNNER_USER, RUNNER_PASSWORD = "runner-pusher", "r-" + secrets.token_hex(8)
BASE_ARCHIVE = Path(os.environ["DAYTONA_BASE_IMAGE"]).resolve()
SNAPSHOT_TIMEOUT = 300

pytestmark = pytest.mark.skipif(
    not (Path(REGISTRY_BIN).exists() and shutil.which("skopeo")),
    reason="needs docker-registry and skopeo (scripts/test.sh installs them)",
)


class Setup:
    def __init__(self, server, registry: Registry, admin: Caller):
        self.server, self.registry, self.admin = server, registry, admin
        self.realm = f"{server.api_url}/docker-registry/token"


@pytest.fixture(scope="module")
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("transient-registry")
    api_port, registry_port = _free_port(), _free_port()
    while registry_port == api_port:
        registry_port = _free_port()
    token_env = {
        "DAYTONA_REGISTRY_TOKEN_REALM": f"http://127.0.0.1:{api_port}/api/docker-registry/token",
        "DAYTONA_REGISTRY_TOKEN_SERVICE": SERVICE,
    }
    # The operator's step: the key, its certificate and the registry's `auth:` section.
    keys = root / "keys"
    printed = subprocess.run(
        [os.environ["DAYTONA_BIN"], "registry-token-config"],
        env={**os.environ, **token_env, "DAYTONA_DATA_DIR": str(keys)},
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    auth = yaml.safe_load(printed)["auth"]
    assert auth["token"]["service"] == SERVICE and auth["token"]["realm"] == token_env["DAYTONA_REGISTRY_TOKEN_REALM"]
    cert = Path(auth["token"]["rootcertbundle"])
    assert cert.parent == keys / "registry-token" and (cert.parent / "key.pem").stat().st_mode & 0o777 == 0o600

    registry = _start_registry(root / "registry", auth=auth, port=registry_port)
    url = f"http://127.0.0.1:{registry_port}"
    env = {
        **token_env,
        "PORT": str(api_port),
        "DAYTONA_REGISTRY_TOKEN_KEY": str(cert.parent / "key.pem"),
        "DAYTONA_REGISTRY_TOKEN_CERT": str(cert),
        "TRANSIENT_REGISTRY_URL": url,
        "TRANSIENT_REGISTRY_ADMIN": ADMIN,
        "TRANSIENT_REGISTRY_PASSWORD": ADMIN_PASSWORD,
        "TRANSIENT_REGISTRY_PROJECT_ID": PROJECT,
        "INTERNAL_REGISTRY_URL": url,
        "INTERNAL_REGISTRY_ADMIN": RUNNER_USER,
        "INTERNAL_REGISTRY_PASSWORD": RUNNER_PASSWORD,
        "INTERNAL_REGISTRY_PROJECT_ID": PROJECT,
    }
    try:
        with conftest.run_server(lambda: bool(request.session.testsfailed), env) as server:
            yield Setup(server, registry, Caller(server.api_url, server.api_key))
    finally:
        _stop_registry(registry)


def _push(destination: str, creds: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", creds,
         f"oci-archive:{BASE_ARCHIVE}", f"docker://{destination}"],
        capture_output=True, text=True, timeout=300,
    )


def _pull(source: str, creds: str, target: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", "--src-creds", creds,
         f"docker://{source}", f"oci:{target}"],
        capture_output=True, text=True, timeout=300,
    )


def _push_access(user: User) -> dict:
    access = user.api.ok("GET", "/docker-registry/registry-push-access")
    assert set(access) >= {"username", "secret", "registryUrl", "registryId", "project", "expiresAt"}, access
    return access


def _creds(access: dict) -> str:
    return f"{access['username']}:{access['secret']}"


def _token(setup: Setup, user: str, password: str, scope: str, service: str = SERVICE):
    query = urllib.parse.urlencode({"service": service, "scope": scope})
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return http("GET", f"{setup.realm}?{query}", headers={"Authorization": f"Basic {basic}"})


def _granted(setup: Setup, user: str, password: str, scope: str) -> list:
    result = _token(setup, user, password, scope)
    assert result.status == 200, result.body
    payload = result.json()["token"].split(".")[1]
    claims = yaml.safe_load(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aud"] == SERVICE and claims["iss"] == "daytona"
    return claims["access"]


def _wait_snapshot(client, name: str):
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT
    while True:
        snapshot = client.snapshot.get(name)
        if snapshot.state in ("active", "error", "build_failed") or time.monotonic() > deadline:
            return snapshot
        time.sleep(1)


def _internal(setup: Setup, reference: str | None) -> bool:
    return bool(reference) and reference.startswith(f"{setup.registry.host}/{PROJECT}/daytona-")


def test_a_user_pushes_into_its_organization_and_the_image_becomes_a_snapshot(setup: Setup):
    user = new_user(setup.admin, "pusher")
    access = _push_access(user)
    assert access["registryUrl"] == setup.registry.host
    assert access["project"] == f"{PROJECT}/{user.personal_org}"
    reference = f"{access['registryUrl']}/{access['project']}/app:v1"

    started = time.monotonic()
    pushed = _push(reference, _creds(access))
    assert pushed.returncode == 0, pushed.stderr
    print(f"[bench] skopeo push of the base image with temporary credentials: {time.monotonic() - started:.2f}s")

    client = make_client(setup.server, user.api.key)
    name = unique("pushed")
    client.snapshot.create(CreateSnapshotParams(name=name, image=reference))
    snapshot = _wait_snapshot(client, name)
    assert snapshot.state == "active", snapshot.error_reason
    assert snapshot.image_name == reference
    # The runner pulled the user's image and pushed it to the internal registry, both with the
    # runners' credentials through the same token server.
    assert _internal(setup, snapshot.ref), snapshot.ref
    sandbox = client.create(CreateSandboxFromSnapshotParams(snapshot=name), timeout=180)
    try:
        assert sandbox.process.exec("cat /etc/debian_version").exit_code == 0
    finally:
        client.delete(sandbox)


def test_push_access_stays_in_its_organization(setup: Setup, tmp_path: Path):
    a, b = new_user(setup.admin, "tenant-a"), new_user(setup.admin, "tenant-b")
    access_a, access_b = _push_access(a), _push_access(b)
    assert access_a["username"] != access_b["username"]
    own = f"{setup.registry.host}/{access_a['project']}/own:v1"
    assert _push(own, _creds(access_a)).returncode == 0

    # Into B's path, or the project's root (where the internal images live): denied.
    for target in (f"{access_b['project']}/stolen:v1", f"{PROJECT}/daytona-stolen:daytona"):
        refused = _push(f"{setup.registry.host}/{target}", _creds(access_a))
        assert refused.returncode != 0 and "denied" in refused.stderr, refused.stderr
    # B cannot read A's image either.
    refused = _pull(own, _creds(access_b), tmp_path / "copy")
    assert refused.returncode != 0, "B pulled A's image"
    assert "denied" in refused.stderr or "unauthorized" in refused.stderr, refused.stderr

    # Nor make a snapshot of it (the runners could pull it for B).
    stolen = b.api("POST", "/snapshots", {"name": unique("stolen"), "imageName": own})
    assert stolen.status == 403 and "another organization" in stolen.json()["message"], stolen.body
    allowed = a.api("POST", "/snapshots", {"name": unique("own"), "imageName": own})
    assert allowed.status in (200, 201), allowed.body

    # What the token server grants, claim by claim.
    scope = f"repository:{access_b['project']}/x:pull,push"
    assert _granted(setup, access_a["username"], access_a["secret"], scope) == []
    mine = f"repository:{access_a['project']}/x:pull,push,delete"
    assert _granted(setup, access_a["username"], access_a["secret"], mine) == [
        {"type": "repository", "name": f"{access_a['project']}/x", "actions": ["pull", "push"]}
    ]
    assert _granted(setup, access_a["username"], access_a["secret"], "registry:catalog:*") == []
    assert _granted(setup, ADMIN, ADMIN_PASSWORD, scope)[0]["actions"] == ["pull", "push"]
    # A key without `write:registries` gets no push access.
    reader = a.key_in(setup.admin, a.personal_org, ["write:snapshots"])
    assert reader("GET", "/docker-registry/registry-push-access").status == 403


def test_garbage_and_expired_credentials_are_refused(setup: Setup):
    user = new_user(setup.admin, "expiring")
    access = _push_access(user)
    destination = f"{setup.registry.host}/{access['project']}/late:v1"
    for creds in (f"{access['username']}:wrong", "daytona-push-0000000000000000:" + access["secret"],
                  f"{ADMIN}:{RUNNER_PASSWORD}", "nobody:nothing"):
        refused = _push(destination, creds)
        assert refused.returncode != 0 and "unauthorized" in refused.stderr.lower(), (creds, refused.stderr)
        user_name, password = creds.split(":", 1)
        assert _token(setup, user_name, password, "repository:x:pull").status == 401
    anonymous = http("GET", f"{setup.realm}?service={SERVICE}&scope=repository:x:pull")
    assert anonymous.status == 401
    assert _token(setup, ADMIN, ADMIN_PASSWORD, "repository:x:pull", service="elsewhere").status == 400
    assert _token(setup, ADMIN, ADMIN_PASSWORD, "repository-x").status == 400

    # The credential after its hour (its row's expiry moved into the past).
    if setup.server.database_url is None:
        with sqlite3.connect(setup.server.data_dir / "daytona.db") as db:
            db.execute(
                "UPDATE registry_credentials SET expires_at = '2000-01-01T00:00:00.000Z' WHERE username = ?",
                (access["username"],),
            )
        refused = _push(destination, _creds(access))
        assert refused.returncode != 0 and "unauthorized" in refused.stderr.lower(), refused.stderr


def test_without_a_token_server_push_access_is_unavailable(server):
    result = http("GET", f"{server.api_url}/docker-registry/registry-push-access", server.api_key)
    assert result.status == 503 and "DAYTONA_REGISTRY_TOKEN_REALM" in result.json()["message"], result.body
