"""API keys: create (value shown once), list masked, scoped permissions, expiry, revoke."""

import datetime
import json
import urllib.error
import urllib.request

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaAuthenticationError, DaytonaError

from support import make_client, unique


def call(server, method, path, key, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{server.api_url}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_create_list_use_and_revoke(server):
    name = unique("key")
    status, created = call(server, "POST", "/api-keys", server.api_key, {"name": name, "permissions": ["write:sandboxes", "delete:sandboxes"]})
    assert status == 201, created
    value = created["value"]
    assert value.startswith("dtn_") and len(value) > 40

    status, listed = call(server, "GET", "/api-keys", server.api_key)
    mine = [k for k in listed if k["name"] == name]
    assert len(mine) == 1 and mine[0]["value"] != value and "*" in mine[0]["value"], "listed values are masked"

    # The new key works through the SDK, for sandboxes it may write.
    client = make_client(server, api_key=value)
    sandbox = client.create(CreateSandboxFromSnapshotParams())
    assert sandbox.process.exec("echo scoped").result.strip() == "scoped"
    client.delete(sandbox)

    assert call(server, "GET", "/api-keys/current", value)[1]["name"] == name
    assert call(server, "DELETE", f"/api-keys/{name}", server.api_key)[0] == 204
    with pytest.raises(DaytonaAuthenticationError):
        list(make_client(server, api_key=value).list())


def test_missing_permission_is_403_naming_it(server):
    name = unique("readonly")
    status, created = call(server, "POST", "/api-keys", server.api_key, {"name": name, "permissions": ["read:volumes"]})
    assert status == 201
    client = make_client(server, api_key=created["value"])
    assert list(client.list()) is not None  # reading is allowed
    with pytest.raises(DaytonaError) as err:
        client.create(CreateSandboxFromSnapshotParams())
    assert getattr(err.value, "status_code", None) == 403 and "write:sandboxes" in str(err.value)
    call(server, "DELETE", f"/api-keys/{name}", server.api_key)


def test_bad_input_and_expiry(server):
    status, body = call(server, "POST", "/api-keys", server.api_key, {"name": unique("bad"), "permissions": ["fly:to-moon"]})
    assert status == 400 and "fly:to-moon" in body["message"]
    status, body = call(server, "POST", "/api-keys", server.api_key, {"name": unique("bad"), "permissions": [], "expiresAt": "yesterday"})
    assert status == 400 and "expiresAt" in body["message"]

    name = unique("short")
    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)).isoformat()
    status, created = call(server, "POST", "/api-keys", server.api_key, {"name": name, "permissions": [], "expiresAt": soon})
    assert status == 201
    assert call(server, "GET", "/sandbox", created["value"])[0] == 200
    import time

    time.sleep(2.5)
    status, body = call(server, "GET", "/sandbox", created["value"])
    assert status == 401 and "expired" in body["message"]
    assert call(server, "POST", "/api-keys", server.api_key, {"name": name, "permissions": []})[0] == 409
    call(server, "DELETE", f"/api-keys/{name}", server.api_key)
