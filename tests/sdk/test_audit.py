"""Audit log: mutating calls are recorded with actor, action, target and outcome; reads are not."""

import datetime

from daytona import CreateSandboxFromSnapshotParams

from support import http, unique


def audit(server, org: str, key: str | None = None, **query):
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return http("GET", f"{server.api_url}/audit/organizations/{org}?{params}", api_key=key or server.api_key)


def test_mutations_are_recorded(server, daytona, sandbox_factory):
    started = datetime.datetime.now(datetime.UTC).isoformat()
    sandbox = sandbox_factory(CreateSandboxFromSnapshotParams(labels={"audit": "yes"}))
    org = sandbox.organization_id
    sandbox.set_labels({"audit": "changed"})
    daytona.get(sandbox.id)  # a read: not recorded
    missing = http("POST", f"{server.api_url}/sandbox/no-such-sandbox/start", api_key=server.api_key)
    assert missing.status == 404
    daytona.delete(sandbox, timeout=60)
    sandbox_factory.forget(sandbox)

    page = audit(server, org, **{"from": started.replace("+00:00", "Z"), "limit": 200})
    assert page.status == 200, page.body
    entries = page.json()["items"]
    mine = [e for e in entries if e.get("targetId") == sandbox.id]
    actions = [e["action"] for e in reversed(mine)]  # newest first on the wire
    assert actions == ["create", "labels", "delete"], mine
    create = mine[-1]
    assert create["targetType"] == "sandbox" and create["statusCode"] in (200, 201)
    assert create["actorId"] and create["actorEmail"] and create["organizationId"] == org
    assert create["actorApiKeyPrefix"] and server.api_key.startswith(create["actorApiKeyPrefix"])
    assert create["source"] == "sdk-python" and "python" in create["userAgent"].lower()
    assert create["metadata"] == {"method": "POST", "route": "/sandbox"}
    assert all(e["action"] != "read" for e in entries)

    failed = [e for e in entries if e.get("targetId") == "no-such-sandbox"]
    assert len(failed) == 1 and failed[0]["statusCode"] == 404 and "no-such-sandbox" in failed[0]["errorMessage"]


def test_pages_and_cursor(server, sandbox):
    org = sandbox.organization_id
    for i in range(5):
        sandbox.set_labels({"round": str(i)})
    first = audit(server, org, limit=2).json()
    assert len(first["items"]) == 2 and first["total"] >= 5 and first["totalPages"] >= 3
    second = audit(server, org, limit=2, nextToken=first["nextToken"]).json()
    by_page = audit(server, org, limit=2, page=2).json()
    ids = lambda p: [e["id"] for e in p["items"]]  # noqa: E731
    assert not set(ids(first)) & set(ids(second)), "a cursor continues where the page ended"
    assert ids(second) == ids(by_page)


def test_access_and_bad_input(server, sandbox):
    org = sandbox.organization_id
    name = unique("no-audit")
    created = http("POST", f"{server.api_url}/api-keys", api_key=server.api_key,
                   body={"name": name, "permissions": ["write:sandboxes"]})
    assert created.status in (200, 201), created.body
    try:
        refused = audit(server, org, key=created.json()["value"])
        assert refused.status == 403 and "read:audit_logs" in refused.json()["message"]
    finally:
        http("DELETE", f"{server.api_url}/api-keys/{name}", api_key=server.api_key)
    assert audit(server, "another-org").status == 404
    assert audit(server, org, limit=0).status == 400
    assert audit(server, org, **{"from": "yesterday"}).status == 400
    assert audit(server, org, nextToken="garbage!").status == 400
