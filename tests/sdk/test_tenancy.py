"""Tenant isolation: a key of organization B can see, change, use or delete nothing of organization A.

Every route of the API and of the proxy is tried; the API's routes are read from its OpenAPI document
(generated from the handlers), the proxy's from its sources, and the test fails when one has no probe here, so a new route cannot ship without its isolation check."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from daytona import CreateSandboxFromSnapshotParams

from accounts import Caller, User, new_user
from support import http, make_client, unique

REPO = Path(__file__).resolve().parents[2]
DENIED = (403, 404)
_METHOD = re.compile(r"(?:^|\.)\s*(get|post|put|patch|delete|any)\(")


def api_routes(server) -> set[tuple[str, str]]:
    """`(METHOD, /api/path)` of every operation in the API's OpenAPI document, which is generated
    from the handlers the router serves."""
    doc = http("GET", f"{server.api_url}/openapi.json").json()
    return {(method.upper(), "/api" + path) for path, item in doc["paths"].items() for method in item}


def proxy_routes() -> set[tuple[str, str]]:
    """`(METHOD, path)` of every `.route(...)` in the proxy's sources."""
    found = set()
    for path in sorted((REPO / "crates" / "proxy" / "src").rglob("*.rs")):
        text = path.read_text()
        for match in re.finditer(r"\.route\(", text):
            depth, end = 1, match.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            args = text[match.end() : end - 1]
            parsed = re.match(r'\s*"([^"]+)"\s*,(.*)$', args, re.S)
            assert parsed, f"{path}: cannot read the route in .route({args[:80]})"
            template, handler = parsed.group(1), parsed.group(2).strip()
            methods = [m.upper() for m in _METHOD.findall(handler)]
            assert methods, f"{path}: no HTTP method known for {template} ({handler[:60]})"
            found |= {(m, template) for m in methods}
    return found


@dataclass
class World:
    """Organization A's things, and callers of both organizations."""

    server: object
    admin: Caller
    a: User
    b: User
    a_shared_org: str
    sandbox_id: str
    sandbox_name: str
    snapshot: dict
    key_name: str
    role_id: str
    invitation_id: str
    ssh_token: str
    signed_token: str
    volume: dict
    warm_pool: dict
    secret: dict

    def denied(self, method: str, path: str, body: object | None = None, headers: dict | None = None) -> None:
        result = self.b.api(method, path, body, headers)
        assert result.status in DENIED, f"B's {method} {path} answered {result.status}: {result.body[:300]!r}"

    def proxy(self, method: str, path: str, key: str, headers: dict | None = None):
        all_headers = {"Authorization": f"Bearer {key}", **(headers or {})}
        return http(method, f"{self.server.proxy_url}{path}", headers=all_headers)


@pytest.fixture(scope="module")
def world(server) -> World:
    admin = Caller(server.api_url, server.api_key)
    a, b = new_user(admin, "tenant-a"), new_user(admin, "tenant-b")
    client = make_client(server, api_key=a.api.key)
    sandbox = client.create(CreateSandboxFromSnapshotParams(name=unique("a-box")))
    try:
        snapshot_name = unique("a-snap")
        a.api.ok("POST", f"/sandbox/{sandbox.id}/snapshot", {"name": snapshot_name})
        deadline = time.monotonic() + 120
        while (snap := a.api.ok("GET", f"/snapshots/{snapshot_name}"))["state"] != "active":
            assert snap["state"] not in ("error", "build_failed") and time.monotonic() < deadline, snap
            time.sleep(0.5)
        deadline = time.monotonic() + 60
        while a.api.ok("GET", f"/sandbox/{sandbox.id}")["state"] != "started":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        shared = a.api.ok("POST", "/organizations", {"name": unique("a-org")}, status=201)["id"]
        key_name = unique("a-key")
        a.api.ok("POST", "/api-keys", {"name": key_name, "permissions": ["write:sandboxes"]}, status=201)
        role = a.api.ok(
            "POST", f"/organizations/{shared}/roles", {"name": "r", "description": "", "permissions": []}, status=201
        )
        invitation = a.api.ok(
            "POST", f"/organizations/{shared}/invitations", {"email": f"{unique('c')}@example.com", "role": "member"}
        )
        ssh = a.api.ok("POST", f"/sandbox/{sandbox.id}/ssh-access")
        signed = a.api.ok("GET", f"/sandbox/{sandbox.id}/ports/8080/signed-preview-url")
        volume = a.api.ok("POST", "/volumes", {"name": unique("a-vol")})
        warm_pool = a.api.ok("POST", "/warm-pools", {"snapshot": snapshot_name, "pool": 1}, status=201)
        secret = a.api.ok("POST", "/secret", {"name": unique("a_sec").replace("-", "_"), "value": "a-value"}, status=201)
        yield World(
            server=server,
            admin=admin,
            a=a,
            b=b,
            a_shared_org=shared,
            sandbox_id=sandbox.id,
            sandbox_name=sandbox.name,
            snapshot=snap,
            key_name=key_name,
            role_id=role["id"],
            invitation_id=invitation["id"],
            ssh_token=ssh["token"],
            signed_token=signed["token"],
            volume=volume,
            warm_pool=warm_pool,
            secret=secret,
        )
    finally:
        client.delete(sandbox, timeout=60)
        if "volume" in locals():
            a.api("DELETE", f"/volumes/{volume['id']}")
        if "warm_pool" in locals():
            a.api("DELETE", f"/warm-pools/{warm_pool['id']}")
        if "secret" in locals():
            a.api("DELETE", f"/secret/{secret['id']}")
        a.api("DELETE", f"/snapshots/{snapshot_name}")


def ids_in(listing) -> set[str]:
    items = listing["items"] if isinstance(listing, dict) and "items" in listing else listing
    return {item.get("id") or item.get("name") for item in items}


def _own_org_create(w: World, path: str, body: dict) -> None:
    """Routes that create in the caller's organization: A's organization in the header (ignored for
    keys, as upstream) does not put B's creation into A's organization."""
    result = w.b.api("POST", path, body, headers={"X-Daytona-Organization-ID": w.a.personal_org})
    assert result.status in (200, 201), f"POST {path}: {result.status} {result.body[:200]!r}"
    created = result.json()
    assert created.get("organizationId") != w.a.personal_org and created.get("id") != w.a.personal_org
    if path in ("/sandbox", "/snapshots", "/volumes", "/secret"):
        assert w.a.api("GET", f"{path}/{created['id']}").status == 404, f"A sees B's {path} creation"
        w.b.api("DELETE", f"{path}/{created['id']}")
    elif path == "/api-keys":
        w.b.api("DELETE", f"/api-keys/{body['name']}")
    elif path == "/organizations":
        w.b.api("DELETE", f"/organizations/{created['id']}")


def _waiting_in(w: World, pool_id: str) -> set[str]:
    """A's sandboxes waiting in its pool (once the pool has made one)."""
    deadline = time.monotonic() + 60
    while True:
        items = w.a.api.ok("GET", "/sandbox?includeWarm=true")["items"]
        found = {s["id"] for s in items if s.get("warmPoolId") == pool_id}
        if found or time.monotonic() > deadline:
            assert found, "A's warm pool made no sandbox"
            return found
        time.sleep(0.5)


def _listing_hides_a(w: World, path: str, *secrets: str) -> None:
    found = ids_in(w.b.api.ok("GET", path))
    assert not found & set(secrets), f"B's GET {path} shows A's {found & set(secrets)}"


def _refused_unknown_secret(w: World, method: str, path: str, body: dict) -> None:
    result = w.b.api(method, path, body)
    assert result.status == 400 and "not found" in result.json()["message"], (
        f"B's {method} {path} with A's secret answered {result.status}: {result.body[:300]!r}"
    )


def _push_access_outside_a(w: World) -> None:
    """B's registry push access, even naming A's organization, never reaches A's repositories (the
    session's server has no token server: then it is refused outright)."""
    result = w.b.api(
        "GET", "/docker-registry/registry-push-access", headers={"X-Daytona-Organization-ID": w.a.personal_org}
    )
    assert result.status in (503, *DENIED) or w.a.personal_org not in result.json()["project"], result.body


S, O = "/api/sandbox/{id}", "/api/organizations/{organization_id}"
ROLE_BODY = {"name": "b", "description": "", "permissions": []}
PROMOTION = {"role": "owner", "assignedRoleIds": []}

# (method, route) -> what B tries against A. Each probe asserts B is refused or sees nothing of A.
PROBES: dict[tuple[str, str], Callable[[World], None]] = {
    # --- public or caller-only routes: nothing of A in them ---
    ("GET", "/api/health"): lambda w: w.b.api.ok("GET", "/health"),
    ("GET", "/health"): lambda w: None,  # the proxy's own health check; no tenant data
    # Readiness takes only HEALTH_CHECK_API_KEY, never a user's key.
    ("GET", "/api/health/ready"): lambda w: assert_equal(w.b.api("GET", "/health/ready").status, 401),
    ("GET", "/api/shared-regions"): lambda w: _listing_hides_a(w, "/shared-regions", w.a.personal_org),
    ("GET", "/api/regions"): lambda w: _listing_hides_a(w, "/regions", w.a.personal_org, w.a_shared_org),
    ("GET", "/api/regions/{region_id}"): lambda w: w.denied("GET", f"/regions/{w.a_shared_org}"),
    ("GET", "/api/users/me"): lambda w: assert_equal(w.b.api.ok("GET", "/users/me")["id"], w.b.id),
    # The caller's own identity at the issuer, and only with its login token (test_oidc_management).
    ("POST", "/api/users/linked-accounts"): lambda w: _identity_only(
        w, "POST", "/users/linked-accounts", {"provider": "github", "userId": w.a.id}),
    ("DELETE", "/api/users/linked-accounts/{provider}/{providerUserId}"): lambda w: _identity_only(
        w, "DELETE", f"/users/linked-accounts/github/{w.a.id}"),
    ("POST", "/api/users/mfa/sms/enroll"): lambda w: _identity_only(w, "POST", "/users/mfa/sms/enroll"),
    # --- sandboxes ---
    ("GET", "/api/sandbox"): lambda w: _listing_hides_a(w, "/sandbox", w.sandbox_id, w.sandbox_name),
    ("POST", "/api/sandbox"): lambda w: (
        w.denied("POST", "/sandbox", {"snapshot": w.snapshot["name"]}),
        w.denied("POST", "/sandbox", {"snapshot": w.snapshot["id"]}),
        # The image behind A's snapshot, named directly.
        w.denied("POST", "/sandbox", {"snapshot": w.snapshot["imageName"]}),
        _own_org_create(w, "/sandbox", {}),
    ),
    ("GET", S): lambda w: (w.denied("GET", f"/sandbox/{w.sandbox_id}"), w.denied("GET", f"/sandbox/{w.sandbox_name}")),
    ("DELETE", S): lambda w: w.denied("DELETE", f"/sandbox/{w.sandbox_id}"),
    **{
        ("POST", f"{S}/{action}"): (lambda action: lambda w: w.denied("POST", f"/sandbox/{w.sandbox_id}/{action}", {}))(
            action
        )
        for action in ("start", "stop", "recover", "pause", "archive", "backup", "last-activity", "signing-key/rotate")
    },
    ("POST", f"{S}/resize"): lambda w: w.denied("POST", f"/sandbox/{w.sandbox_id}/resize", {"cpu": 1}),
    ("POST", f"{S}/snapshot"): lambda w: w.denied("POST", f"/sandbox/{w.sandbox_id}/snapshot", {"name": unique("b")}),
    ("POST", f"{S}/fork"): lambda w: w.denied("POST", f"/sandbox/{w.sandbox_id}/fork", {"name": unique("b")}),
    ("GET", f"{S}/forks"): lambda w: w.denied("GET", f"/sandbox/{w.sandbox_id}/forks"),
    ("GET", f"{S}/parent"): lambda w: w.denied("GET", f"/sandbox/{w.sandbox_id}/parent"),
    ("GET", f"{S}/toolbox-proxy-url"): lambda w: w.denied("GET", f"/sandbox/{w.sandbox_id}/toolbox-proxy-url"),
    ("GET", f"{S}/telemetry/metrics"): lambda w: w.denied(
        "GET", f"/sandbox/{w.sandbox_id}/telemetry/metrics?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"
    ),
    ("PUT", f"{S}/labels"): lambda w: w.denied("PUT", f"/sandbox/{w.sandbox_id}/labels", {"labels": {"b": "1"}}),
    ("POST", f"{S}/public/{{value}}"): lambda w: w.denied("POST", f"/sandbox/{w.sandbox_id}/public/true"),
    **{
        ("POST", f"{S}/{kind}/{{minutes}}"): (
            lambda kind: lambda w: w.denied("POST", f"/sandbox/{w.sandbox_id}/{kind}/5")
        )(kind)
        for kind in ("autostop", "autoarchive", "autodelete", "autopause", "ttl")
    },
    ("POST", f"{S}/network-settings"): lambda w: w.denied(
        "POST", f"/sandbox/{w.sandbox_id}/network-settings", {"networkBlockAll": True}
    ),
    ("GET", f"{S}/ports/{{port}}/preview-url"): lambda w: w.denied(
        "GET", f"/sandbox/{w.sandbox_id}/ports/8080/preview-url"
    ),
    ("GET", f"{S}/ports/{{port}}/signed-preview-url"): lambda w: w.denied(
        "GET", f"/sandbox/{w.sandbox_id}/ports/8080/signed-preview-url"
    ),
    ("POST", f"{S}/ports/{{port}}/signed-preview-url/{{token}}/expire"): lambda w: w.denied(
        "POST", f"/sandbox/{w.sandbox_id}/ports/8080/signed-preview-url/{w.signed_token}/expire"
    ),
    ("POST", f"{S}/ssh-access"): lambda w: w.denied("POST", f"/sandbox/{w.sandbox_id}/ssh-access"),
    ("DELETE", f"{S}/ssh-access"): lambda w: w.denied("DELETE", f"/sandbox/{w.sandbox_id}/ssh-access"),
    ("GET", "/api/sandbox/ssh-access/validate"): lambda w: assert_equal(
        w.b.api.ok("GET", f"/sandbox/ssh-access/validate?token={w.ssh_token}")["valid"], False
    ),
    ("GET", f"{S}/signing-key"): lambda w: w.denied("GET", f"/sandbox/{w.sandbox_id}/signing-key"),
    # --- snapshots ---
    ("GET", "/api/snapshots"): lambda w: _listing_hides_a(w, "/snapshots", w.snapshot["id"], w.snapshot["name"]),
    ("POST", "/api/snapshots"): lambda w: (
        w.denied("POST", "/snapshots", {"name": unique("b"), "imageName": w.snapshot["imageName"]}),
        _own_org_create(w, "/snapshots", {"name": unique("b"), "imageName": w.snapshot["name"]}),
    ),
    ("GET", "/api/snapshots/{id}"): lambda w: (
        w.denied("GET", f"/snapshots/{w.snapshot['id']}"),
        w.denied("GET", f"/snapshots/{w.snapshot['name']}"),
    ),
    ("DELETE", "/api/snapshots/{id}"): lambda w: w.denied("DELETE", f"/snapshots/{w.snapshot['id']}"),
    ("POST", "/api/snapshots/{id}/activate"): lambda w: w.denied("POST", f"/snapshots/{w.snapshot['id']}/activate"),
    ("POST", "/api/snapshots/{id}/deactivate"): lambda w: w.denied("POST", f"/snapshots/{w.snapshot['id']}/deactivate"),
    ("GET", "/api/snapshots/{id}/build-logs"): lambda w: w.denied("GET", f"/snapshots/{w.snapshot['id']}/build-logs"),
    ("GET", "/api/snapshots/{id}/build-logs-url"): lambda w: w.denied(
        "GET", f"/snapshots/{w.snapshot['id']}/build-logs-url"
    ),
    ("GET", f"{S}/build-logs"): lambda w: w.denied("GET", f"/sandbox/{w.sandbox_id}/build-logs"),
    ("GET", f"{S}/build-logs-url"): lambda w: w.denied("GET", f"/sandbox/{w.sandbox_id}/build-logs-url"),
    # --- object storage: B's upload credentials are scoped to B's organization only ---
    ("GET", "/api/object-storage/push-access"): lambda w: (
        assert_equal(
            w.b.api.ok("GET", "/object-storage/push-access")["organizationId"] == w.a.personal_org, False
        ),
        assert_equal(
            w.b.api(
                "GET", "/object-storage/push-access", headers={"X-Daytona-Organization-ID": w.a.personal_org}
            ).json()["organizationId"]
            == w.a.personal_org,
            False,
        ),
    ),
    # --- transient registry: push access only in the caller's organization; a user's key gets no token ---
    ("GET", "/api/docker-registry/registry-push-access"): lambda w: _push_access_outside_a(w),
    ("GET", "/api/docker-registry/token"): lambda w: assert_equal(
        w.b.api("GET", f"/docker-registry/token?scope=repository:daytona/{w.a.personal_org}/x:pull").status in (401, 503),
        True,
    ),
    # --- secrets ---
    ("GET", "/api/secret"): lambda w: _listing_hides_a(w, "/secret", w.secret["id"], w.secret["name"]),
    ("GET", "/api/secret/paginated"): lambda w: (
        _listing_hides_a(w, "/secret/paginated", w.secret["id"], w.secret["name"]),
        _listing_hides_a(w, f"/secret/paginated?name={w.secret['name']}", w.secret["id"], w.secret["name"]),
    ),
    ("POST", "/api/secret"): lambda w: (
        # Names are per organization: B may use A's name, in B's own organization.
        _own_org_create(w, "/secret", {"name": w.secret["name"], "value": "b-value"}),
        # Mounting A's secret, by name, in a sandbox of B (a 400 naming the unknown secret).
        _refused_unknown_secret(w, "POST", "/sandbox", {"secrets": [{"T": w.secret["name"]}]}),
    ),
    ("GET", "/api/secret/{id}"): lambda w: w.denied("GET", f"/secret/{w.secret['id']}"),
    ("PATCH", "/api/secret/{id}"): lambda w: w.denied("PATCH", f"/secret/{w.secret['id']}", {"value": "b"}),
    ("DELETE", "/api/secret/{id}"): lambda w: w.denied("DELETE", f"/secret/{w.secret['id']}"),
    ("PUT", f"{S}/secrets"): lambda w: w.denied("PUT", f"/sandbox/{w.sandbox_id}/secrets", {"secrets": []}),
    # --- volumes ---
    ("GET", "/api/volumes"): lambda w: _listing_hides_a(w, "/volumes", w.volume["id"], w.volume["name"]),
    ("POST", "/api/volumes"): lambda w: (
        _own_org_create(w, "/volumes", {"name": unique("b")}),
        # Mounting A's volume, by id or by name, in a sandbox of B.
        w.denied("POST", "/sandbox", {"volumes": [{"volumeId": w.volume["id"], "mountPath": "/data"}]}),
        w.denied("POST", "/sandbox", {"volumes": [{"volumeId": w.volume["name"], "mountPath": "/data"}]}),
    ),
    ("GET", "/api/volumes/{id}"): lambda w: w.denied("GET", f"/volumes/{w.volume['id']}"),
    ("DELETE", "/api/volumes/{id}"): lambda w: w.denied("DELETE", f"/volumes/{w.volume['id']}"),
    ("GET", "/api/volumes/by-name/{name}"): lambda w: w.denied("GET", f"/volumes/by-name/{w.volume['name']}"),
    # --- warm pools ---
    ("GET", "/api/warm-pools"): lambda w: (
        _listing_hides_a(w, "/warm-pools", w.warm_pool["id"]),
        # Nor are A's waiting sandboxes among B's, when B lists its own waiting ones.
        _listing_hides_a(w, "/sandbox?includeWarm=true", *_waiting_in(w, w.warm_pool["id"])),
    ),
    ("POST", "/api/warm-pools"): lambda w: (
        w.denied("POST", "/warm-pools", {"snapshot": w.snapshot["name"], "pool": 1}),
        w.denied("POST", "/warm-pools", {"snapshot": w.snapshot["id"], "pool": 1}),
    ),
    ("PATCH", "/api/warm-pools/{id}"): lambda w: w.denied("PATCH", f"/warm-pools/{w.warm_pool['id']}", {"pool": 3}),
    ("DELETE", "/api/warm-pools/{id}"): lambda w: w.denied("DELETE", f"/warm-pools/{w.warm_pool['id']}"),
    # --- configuration: public, the same for everyone ---
    ("GET", "/api/config"): lambda w: assert_equal(w.b.api.ok("GET", "/config"), w.a.api.ok("GET", "/config")),
    # --- API keys (a user's own, in the key's organization) ---
    ("GET", "/api/api-keys"): lambda w: _listing_hides_a(w, "/api-keys", w.key_name),
    ("POST", "/api/api-keys"): lambda w: _own_org_create(w, "/api-keys", {"name": unique("b"), "permissions": []}),
    ("GET", "/api/api-keys/current"): lambda w: assert_equal(w.b.api.ok("GET", "/api-keys/current")["userId"], w.b.id),
    ("GET", "/api/api-keys/{name}"): lambda w: w.denied("GET", f"/api-keys/{w.key_name}"),
    ("DELETE", "/api/api-keys/{name}"): lambda w: w.denied("DELETE", f"/api-keys/{w.key_name}"),
    # --- audit ---
    ("GET", "/api/audit/organizations/{organization_id}"): lambda w: w.denied(
        "GET", f"/audit/organizations/{w.a.personal_org}"
    ),
    # --- organizations: A's ids, through A's organization and through B's own ---
    ("GET", "/api/organizations"): lambda w: _listing_hides_a(w, "/organizations", w.a.personal_org, w.a_shared_org),
    ("POST", "/api/organizations"): lambda w: _own_org_create(w, "/organizations", {"name": unique("b")}),
    ("GET", O): lambda w: w.denied("GET", f"/organizations/{w.a_shared_org}"),
    ("DELETE", O): lambda w: w.denied("DELETE", f"/organizations/{w.a_shared_org}"),
    ("POST", f"{O}/leave"): lambda w: w.denied("POST", f"/organizations/{w.a_shared_org}/leave"),
    ("PATCH", f"{O}/default-region"): lambda w: w.denied(
        "PATCH", f"/organizations/{w.a_shared_org}/default-region", {"defaultRegionId": "us"}
    ),
    ("GET", f"{O}/usage"): lambda w: w.denied("GET", f"/organizations/{w.a_shared_org}/usage"),
    ("PATCH", f"{O}/quota"): lambda w: w.denied(
        "PATCH", f"/organizations/{w.a_shared_org}/quota", {"maxCpuPerSandbox": 99}
    ),
    ("PATCH", f"{O}/quota/{{region_id}}"): lambda w: w.denied(
        "PATCH", f"/organizations/{w.a_shared_org}/quota/us", {"totalCpuQuota": 99}
    ),
    ("GET", f"{O}/users"): lambda w: w.denied("GET", f"/organizations/{w.a_shared_org}/users"),
    ("POST", f"{O}/users/{{user_id}}/access"): lambda w: (
        w.denied("POST", f"/organizations/{w.a_shared_org}/users/{w.a.id}/access", {"role": "member"}),
        w.denied("POST", f"/organizations/{w.b.personal_org}/users/{w.a.id}/access", {"role": "member"}),
    ),
    ("DELETE", f"{O}/users/{{user_id}}"): lambda w: (
        w.denied("DELETE", f"/organizations/{w.a_shared_org}/users/{w.a.id}"),
        w.denied("DELETE", f"/organizations/{w.b.personal_org}/users/{w.a.id}"),
    ),
    ("GET", f"{O}/roles"): lambda w: w.denied("GET", f"/organizations/{w.a_shared_org}/roles"),
    ("POST", f"{O}/roles"): lambda w: w.denied(
        "POST", f"/organizations/{w.a_shared_org}/roles", ROLE_BODY
    ),
    ("PUT", f"{O}/roles/{{role_id}}"): lambda w: (
        w.denied("PUT", f"/organizations/{w.a_shared_org}/roles/{w.role_id}", ROLE_BODY),
        w.denied("PUT", f"/organizations/{w.b.personal_org}/roles/{w.role_id}", ROLE_BODY),
    ),
    ("DELETE", f"{O}/roles/{{role_id}}"): lambda w: (
        w.denied("DELETE", f"/organizations/{w.a_shared_org}/roles/{w.role_id}"),
        w.denied("DELETE", f"/organizations/{w.b.personal_org}/roles/{w.role_id}"),
    ),
    ("GET", f"{O}/invitations"): lambda w: w.denied("GET", f"/organizations/{w.a_shared_org}/invitations"),
    ("POST", f"{O}/invitations"): lambda w: w.denied(
        "POST", f"/organizations/{w.a_shared_org}/invitations", {"email": w.b.email, "role": "owner"}
    ),
    ("PUT", f"{O}/invitations/{{invitation_id}}"): lambda w: (
        w.denied("PUT", f"/organizations/{w.a_shared_org}/invitations/{w.invitation_id}", PROMOTION),
        w.denied("PUT", f"/organizations/{w.b.personal_org}/invitations/{w.invitation_id}", PROMOTION),
    ),
    ("POST", f"{O}/invitations/{{invitation_id}}/cancel"): lambda w: (
        w.denied("POST", f"/organizations/{w.a_shared_org}/invitations/{w.invitation_id}/cancel"),
        w.denied("POST", f"/organizations/{w.b.personal_org}/invitations/{w.invitation_id}/cancel"),
    ),
    ("GET", "/api/organizations/invitations"): lambda w: _listing_hides_a(
        w, "/organizations/invitations", w.invitation_id
    ),
    ("GET", "/api/organizations/invitations/count"): lambda w: assert_equal(
        w.b.api.ok("GET", "/organizations/invitations/count"), 0
    ),
    ("POST", "/api/organizations/invitations/{invitation_id}/accept"): lambda w: w.denied(
        "POST", f"/organizations/invitations/{w.invitation_id}/accept"
    ),
    ("POST", "/api/organizations/invitations/{invitation_id}/decline"): lambda w: w.denied(
        "POST", f"/organizations/invitations/{w.invitation_id}/decline"
    ),
    # --- system administration: not for B at all ---
    ("GET", "/api/admin/users"): lambda w: w.denied("GET", "/admin/users"),
    ("POST", "/api/admin/users"): lambda w: w.denied("POST", "/admin/users", {"id": unique("b"), "name": "b"}),
    ("GET", "/api/admin/users/{user_id}"): lambda w: w.denied("GET", f"/admin/users/{w.a.id}"),
    ("POST", "/api/admin/users/{user_id}/api-keys"): lambda w: w.denied(
        "POST", f"/admin/users/{w.a.id}/api-keys", {"name": unique("b")}
    ),
    # --- service routes of a split proxy / SSH gateway: no user key at all, not even A's own ---
    **{
        ("GET", f"/api{route}"): (lambda path: lambda w: _service_only(w, path))(path)
        for route, path in [
            ("/internal/identity", "/internal/identity"),
            ("/internal/invalidations", "/internal/invalidations"),
            ("/internal/sandbox/{id}/location", "/internal/sandbox/{sandbox}/location"),
            ("/internal/sandbox/{id}/members/{user_id}", "/internal/sandbox/{sandbox}/members/x"),
            ("/preview/{id}/public", "/preview/{sandbox}/public"),
            ("/preview/{id}/validate/{token}", "/preview/{sandbox}/validate/x"),
            ("/preview/{id}/signing-key", "/preview/{sandbox}/signing-key"),
            ("/preview/{id}/{port}/sandbox-id", "/preview/{signed}/8080/sandbox-id"),
        ]
    },
    # Asked by the proxy with its caller's key: B has no access to A's sandbox.
    ("GET", "/api/preview/{id}/access"): lambda w: w.denied("GET", f"/preview/{w.sandbox_id}/access"),
    # --- runners: their own token only (a user's key is not one), administrators only ---
    ("POST", "/api/runners/healthcheck"): lambda w: assert_equal(
        w.b.api("POST", "/runners/healthcheck", {"appVersion": "x"}).status, 401
    ),
    ("GET", "/api/runners/me"): lambda w: assert_equal(w.b.api("GET", "/runners/me").status, 401),
    ("GET", "/api/runners/sandboxes/{sandboxId}/egress"): lambda w: assert_equal(
        w.b.api("GET", f"/runners/sandboxes/{w.sandbox_id}/egress").status, 401
    ),
    ("GET", "/api/jobs/poll"): lambda w: assert_equal(w.b.api("GET", "/jobs/poll?timeout=0").status, 401),
    ("GET", "/api/jobs"): lambda w: assert_equal(w.b.api("GET", "/jobs").status, 401),
    ("POST", "/api/jobs/{jobId}/status"): lambda w: assert_equal(
        w.b.api("POST", f"/jobs/{uuid.uuid4()}/status", {"status": "FAILED"}).status, 401
    ),
    ("POST", "/api/jobs/{jobId}/logs"): lambda w: assert_equal(
        w.b.api("POST", f"/jobs/{uuid.uuid4()}/logs", {"offset": 0, "lines": ["x"]}).status, 401
    ),
    ("GET", "/api/admin/runners"): lambda w: w.denied("GET", "/admin/runners"),
    ("POST", "/api/admin/runners"): lambda w: w.denied(
        "POST", "/admin/runners", {"regionId": "us", "name": unique("b"), "apiVersion": "2"}
    ),
    ("GET", "/api/admin/runners/{id}"): lambda w: w.denied("GET", f"/admin/runners/{uuid.uuid4()}"),
    ("DELETE", "/api/admin/runners/{id}"): lambda w: w.denied("DELETE", f"/admin/runners/{uuid.uuid4()}"),
    ("PATCH", "/api/admin/runners/{id}/scheduling"): lambda w: w.denied(
        "PATCH", f"/admin/runners/{uuid.uuid4()}/scheduling", {"unschedulable": True}
    ),
    ("PATCH", "/api/runners/{id}/scheduling"): lambda w: w.denied(
        "PATCH", f"/runners/{uuid.uuid4()}/scheduling", {"unschedulable": True}
    ),
    ("PATCH", "/api/runners/{id}/draining"): lambda w: w.denied(
        "PATCH", f"/runners/{uuid.uuid4()}/draining", {"draining": True}
    ),
    # --- the proxy: toolbox paths and preview hosts ---
    # The browser login's callback: without OIDC configured it is not served; with it, only a login
    # this browser started completes, and a non-member is refused (test_oidc.py).
    ("GET", "/callback"): lambda w: assert_equal(
        w.proxy("GET", "/callback?code=x&state=y", w.b.api.key).status, 404
    ),
    ("ANY", "/toolbox/{sandbox_id}"): lambda w: assert_in(
        w.proxy("GET", f"/toolbox/{w.sandbox_id}", w.b.api.key).status, DENIED
    ),
    ("ANY", "/toolbox/{sandbox_id}/{*path}"): lambda w: [
        assert_in(w.proxy(method, f"/toolbox/{w.sandbox_id}{path}", w.b.api.key).status, DENIED)
        for method, path in [
            ("POST", "/process/execute"),
            ("GET", "/files?path=/"),
            ("GET", "/files/download?path=/etc/hostname"),
            ("DELETE", "/files?path=/tmp"),
            ("GET", "/process/session"),
            ("GET", "/port"),
        ]
    ],
}


def _identity_only(w: World, method: str, path: str, body: dict | None = None) -> None:
    """Routes on the caller's identity at the issuer: never for an API key (501 where the
    management API is off, as on this server)."""
    result = w.b.api(method, path, body)
    assert result.status in (403, 501), f"B's key on {method} {path}: {result.status} {result.body[:200]!r}"


def _service_only(w: World, template: str) -> None:
    path = template.format(sandbox=w.sandbox_id, signed=w.signed_token)
    w.denied("GET", path)
    result = w.a.api("GET", path)
    assert result.status == 403, f"A's own key on service route {path}: {result.status} {result.body[:200]!r}"


def assert_equal(actual, expected) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"


def assert_in(actual, allowed) -> None:
    assert actual in allowed, f"{actual!r} not in {allowed!r}"


def test_every_route_has_an_isolation_probe(server):
    routes = api_routes(server) | proxy_routes()
    missing = sorted(routes - PROBES.keys())
    stale = sorted(PROBES.keys() - routes)
    assert not missing, f"routes without a tenant-isolation probe in {__file__}: {missing}"
    assert not stale, f"probes for routes that no longer exist: {stale}"


@pytest.mark.parametrize("route", sorted(PROBES), ids=lambda r: f"{r[0]} {r[1]}")
def test_other_organization_is_refused(world, route):
    PROBES[route](world)


def test_preview_host_of_another_organization(world):
    host = f"8080-{world.sandbox_id}.proxy.localhost:{world.server.proxy_port}"
    result = world.proxy("GET", "/", world.b.api.key, headers={"Host": host})
    assert result.status in DENIED, (result.status, result.body[:200])


def test_a_is_untouched_and_still_works(world):
    """After every probe: A's sandbox, snapshot, key, role and invitation are as A left them."""
    a = world.a.api
    box = a.ok("GET", f"/sandbox/{world.sandbox_id}")
    assert box["state"] == "started" and box["public"] is False and "b" not in box["labels"]
    assert box["target"] == "us"
    assert a.ok("GET", f"/snapshots/{world.snapshot['id']}")["state"] == "active"
    assert a.ok("GET", f"/api-keys/{world.key_name}")["name"] == world.key_name
    assert world.role_id in {r["id"] for r in a.ok("GET", f"/organizations/{world.a_shared_org}/roles")}
    pending = a.ok("GET", f"/organizations/{world.a_shared_org}/invitations")
    assert [(i["id"], i["role"]) for i in pending] == [(world.invitation_id, "member")]
    assert a.ok("GET", f"/sandbox/ssh-access/validate?token={world.ssh_token}")["valid"] is True
    assert [m["userId"] for m in a.ok("GET", f"/organizations/{world.a_shared_org}/users")] == [world.a.id]
    assert a.ok("GET", f"/organizations/{world.a_shared_org}")["maxCpuPerSandbox"] != 99
    result = world.proxy("POST", f"/toolbox/{world.sandbox_id}/process/execute", a.key)
    assert result.status != 404
    out = make_client(world.server, api_key=a.key).get(world.sandbox_id).process.exec("echo still-mine")
    assert out.result.strip() == "still-mine"
