"""Users, personal and shared organizations, members, roles, invitations, regions and quotas."""

from __future__ import annotations

import datetime

import pytest

from accounts import Caller, User, new_user
from support import unique

DEVELOPER = "00000000-0000-0000-0000-000000000001"
SUPER_ADMIN = "00000000-0000-0000-0000-000000000005"


@pytest.fixture(scope="module")
def admin(server) -> Caller:
    return Caller(server.api_url, server.api_key)


@pytest.fixture
def owner(admin) -> User:
    return new_user(admin, "owner")


@pytest.fixture
def other(admin) -> User:
    return new_user(admin, "other")


def shared_org(user: User) -> str:
    org = user.api.ok("POST", "/organizations", {"name": unique("org"), "defaultRegionId": "us"}, status=201)
    assert org["personal"] is False and org["createdBy"] == user.id
    return org["id"]


def invite(owner: User, org: str, email: str, role: str = "member", roles: list[str] | None = None) -> dict:
    body = {"email": email, "role": role, "assignedRoleIds": roles if roles is not None else [DEVELOPER]}
    return owner.api.ok("POST", f"/organizations/{org}/invitations", body, status=201)


def join(admin: Caller, owner: User, user: User, org: str, role: str = "member", roles=None) -> Caller:
    """`user` joins `org` by invitation; returns a key of `user` there."""
    invitation = invite(owner, org, user.email, role, roles)
    accepted = user.api.ok("POST", f"/organizations/invitations/{invitation['id']}/accept")
    assert accepted["status"] == "accepted"
    return user.key_in(admin, org)


def test_user_gets_a_personal_organization(admin, owner):
    me = owner.api.ok("GET", "/users/me")
    assert me["id"] == owner.id and me["email"] == owner.email and me["publicKeys"] == []
    org = owner.api.ok("GET", f"/organizations/{owner.personal_org}")
    assert org["personal"] is True and org["createdBy"] == owner.id and org["defaultRegionId"] == "us"
    # New organizations get DEFAULT_ORG_QUOTA_* (the seed's defaults).
    assert org["maxCpuPerSandbox"] == 100 and org["maxDiskPerSandbox"] == 1000
    members = owner.api.ok("GET", f"/organizations/{owner.personal_org}/users")
    assert [(m["userId"], m["role"]) for m in members] == [(owner.id, "owner")]

    for method, path, body in [
        ("DELETE", f"/organizations/{owner.personal_org}", None),
        ("POST", f"/organizations/{owner.personal_org}/leave", None),
        ("POST", f"/organizations/{owner.personal_org}/invitations", {"email": "x@example.com", "role": "member"}),
    ]:
        result = owner.api(method, path, body)
        assert result.status == 403 and "personal" in result.json()["message"], (path, result)

    # Only system administrators manage users.
    assert owner.api("GET", "/admin/users").status == 403
    assert owner.api("POST", "/admin/users", {"id": unique("x"), "name": "x"}).status == 403
    listed = admin.ok("GET", "/admin/users")
    assert owner.id in {u["id"] for u in listed}
    assert admin("POST", "/admin/users", {"id": owner.id, "name": "again"}).status == 409
    assert admin("POST", "/admin/users", {"id": unique("dup"), "name": "d", "email": owner.email}).status == 409
    bad = admin("POST", "/admin/users", {"id": "has space", "name": "x"})
    assert bad.status == 400 and bad.json()["message"].startswith("id:")


def test_invitation_makes_a_member_with_the_invited_roles(admin, owner, other):
    org = shared_org(owner)
    invitation = invite(owner, org, other.email.upper())  # emails compare without case
    assert invitation["status"] == "pending" and invitation["organizationName"]
    assert [r["id"] for r in invitation["assignedRoles"]] == [DEVELOPER]

    mine = other.api.ok("GET", "/organizations/invitations")
    assert [i["id"] for i in mine] == [invitation["id"]]
    assert other.api.ok("GET", "/organizations/invitations/count") == 1
    assert owner.api.ok("GET", "/organizations/invitations") == []  # not addressed to the owner
    # Only the invitee can accept.
    assert owner.api("POST", f"/organizations/invitations/{invitation['id']}/accept").status == 404

    accepted = other.api.ok("POST", f"/organizations/invitations/{invitation['id']}/accept")
    assert accepted["status"] == "accepted"
    assert other.api("POST", f"/organizations/invitations/{invitation['id']}/accept").status == 409
    assert org in {o["id"] for o in other.api.ok("GET", "/organizations")}
    members = {m["userId"]: m for m in owner.api.ok("GET", f"/organizations/{org}/users")}
    assert members[other.id]["role"] == "member"
    assert [r["name"] for r in members[other.id]["assignedRoles"]] == ["Developer"]
    assert owner.api.ok("GET", f"/organizations/{org}/invitations") == []

    # A member's key holds what its roles grant (Developer: write:sandboxes), whatever the key says.
    member_key = other.key_in(admin, org)
    assert member_key("POST", "/api-keys", {"name": unique("k"), "permissions": ["write:sandboxes"]}).status == 201
    refused = member_key("POST", "/api-keys", {"name": unique("k"), "permissions": ["delete:sandboxes"]})
    assert refused.status == 403 and "delete:sandboxes" in refused.json()["message"]
    # Members do not manage the organization.
    for method, path, body in [
        ("POST", f"/organizations/{org}/invitations", {"email": "z@example.com", "role": "member"}),
        ("GET", f"/organizations/{org}/invitations", None),
        ("POST", f"/organizations/{org}/users/{owner.id}/access", {"role": "member", "assignedRoleIds": []}),
        ("DELETE", f"/organizations/{org}/users/{owner.id}", None),
        ("POST", f"/organizations/{org}/roles", {"name": "r", "description": "", "permissions": []}),
        ("PATCH", f"/organizations/{org}/default-region", {"defaultRegionId": "us"}),
        ("DELETE", f"/organizations/{org}", None),
    ]:
        result = member_key(method, path, body)
        assert result.status == 403 and "owner" in result.json()["message"].lower(), (method, path, result)
    # ...but see it.
    assert member_key("GET", f"/organizations/{org}").status == 200
    assert member_key("GET", f"/organizations/{org}/users").status == 200

    # Promotion to owner grants everything; demotion applies to keys that already exist.
    owner.api.ok("POST", f"/organizations/{org}/users/{other.id}/access", {"role": "owner", "assignedRoleIds": []})
    assert member_key("POST", "/api-keys", {"name": unique("k"), "permissions": ["delete:sandboxes"]}).status == 201
    updated = owner.api.ok(
        "POST", f"/organizations/{org}/users/{other.id}/access", {"role": "member", "assignedRoleIds": []}
    )
    assert updated["role"] == "member" and updated["assignedRoles"] == []
    assert member_key("POST", "/api-keys", {"name": unique("k"), "permissions": ["write:sandboxes"]}).status == 403


def test_custom_roles(admin, owner, other):
    org = shared_org(owner)
    roles = owner.api.ok("GET", f"/organizations/{org}/roles")
    assert {r["id"] for r in roles if r["isGlobal"]} >= {DEVELOPER, SUPER_ADMIN}
    bad = owner.api("POST", f"/organizations/{org}/roles", {"name": "x", "description": "", "permissions": ["fly"]})
    assert bad.status == 400 and "fly" in bad.json()["message"]
    role = owner.api.ok(
        "POST",
        f"/organizations/{org}/roles",
        {"name": "Snapshotter", "description": "makes snapshots", "permissions": ["write:snapshots"]},
        status=201,
    )
    assert role["isGlobal"] is False and role["permissions"] == ["write:snapshots"]
    key = join(admin, owner, other, org, roles=[role["id"]])
    assert key("POST", "/api-keys", {"name": unique("k"), "permissions": ["write:snapshots"]}).status == 201
    assert key("POST", "/api-keys", {"name": unique("k"), "permissions": ["write:sandboxes"]}).status == 403

    changed = owner.api.ok(
        "PUT",
        f"/organizations/{org}/roles/{role['id']}",
        {"name": "Sandboxer", "description": "", "permissions": ["write:sandboxes"]},
    )
    assert changed["name"] == "Sandboxer"
    assert key("POST", "/api-keys", {"name": unique("k"), "permissions": ["write:sandboxes"]}).status == 201
    assert key("POST", "/api-keys", {"name": unique("k"), "permissions": ["write:snapshots"]}).status == 403

    empty_role = {"name": "x", "description": "", "permissions": []}
    glob = owner.api("PUT", f"/organizations/{org}/roles/{DEVELOPER}", empty_role)
    assert glob.status == 403 and "global" in glob.json()["message"]
    assert owner.api("DELETE", f"/organizations/{org}/roles/{role['id']}").status == 204
    assert key("POST", "/api-keys", {"name": unique("k"), "permissions": ["write:sandboxes"]}).status == 403
    members = {m["userId"]: m for m in owner.api.ok("GET", f"/organizations/{org}/users")}
    assert members[other.id]["assignedRoles"] == []
    unknown = owner.api(
        "POST", f"/organizations/{org}/users/{other.id}/access", {"role": "member", "assignedRoleIds": [role["id"]]}
    )
    assert unknown.status == 400 and role["id"] in unknown.json()["message"]


def test_invitations_decline_cancel_update_and_refusals(owner, other):
    org = shared_org(owner)
    first = invite(owner, org, other.email)
    again = owner.api("POST", f"/organizations/{org}/invitations", {"email": other.email, "role": "member"})
    assert again.status == 409
    assert other.api("POST", f"/organizations/invitations/{first['id']}/decline").status == 200
    assert other.api.ok("GET", "/organizations/invitations") == []
    assert other.api("POST", f"/organizations/invitations/{first['id']}/accept").status == 409

    second = invite(owner, org, other.email)
    updated = owner.api.ok(
        "PUT", f"/organizations/{org}/invitations/{second['id']}", {"role": "owner", "assignedRoleIds": []}
    )
    assert updated["role"] == "owner" and updated["assignedRoles"] == []
    assert owner.api("POST", f"/organizations/{org}/invitations/{second['id']}/cancel").status == 204
    assert owner.api.ok("GET", f"/organizations/{org}/invitations") == []
    assert other.api("POST", f"/organizations/invitations/{second['id']}/accept").status == 409
    assert other.api.ok("GET", "/organizations/invitations/count") == 0

    past = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).isoformat()
    for body, field in [
        ({"email": "not-an-email", "role": "member"}, "email"),
        ({"email": "x@example.com", "role": "boss"}, "role"),
        ({"email": "x@example.com", "role": "member", "expiresAt": past}, "expiresAt"),
        ({"email": "x@example.com", "role": "member", "assignedRoleIds": ["nope"]}, "assignedRoleIds"),
    ]:
        result = owner.api("POST", f"/organizations/{org}/invitations", body)
        assert result.status == 400 and result.json()["message"].startswith(field), (body, result)
    # The owner is a member already.
    member = owner.api("POST", f"/organizations/{org}/invitations", {"email": owner.email, "role": "member"})
    assert member.status == 409


def test_remove_leave_and_delete(admin, owner, other):
    org = shared_org(owner)
    key = join(admin, owner, other, org)
    assert key("GET", f"/organizations/{org}").status == 200
    # The last owner cannot leave or step down.
    last = owner.api("POST", f"/organizations/{org}/leave")
    assert last.status == 403 and "last owner" in last.json()["message"]
    assert owner.api("POST", f"/organizations/{org}/users/{owner.id}/access", {"role": "member"}).status == 403

    assert owner.api("DELETE", f"/organizations/{org}/users/{other.id}").status == 204
    assert key("GET", f"/organizations/{org}").status == 401, "a removed member's keys stop working"
    assert org not in {o["id"] for o in other.api.ok("GET", "/organizations")}
    assert owner.api("DELETE", f"/organizations/{org}/users/{other.id}").status == 404

    key = join(admin, owner, other, org)
    assert key("POST", f"/organizations/{org}/leave").status == 204
    assert key("GET", "/users/me").status == 401

    # Managing organizations acts for the user: the owner's personal key deletes it.
    owner_key = owner.key_in(admin, org)
    assert owner.api("DELETE", f"/organizations/{org}").status == 204
    assert owner_key("GET", "/users/me").status == 401, "keys of a deleted organization stop working"
    assert owner.api("GET", f"/organizations/{org}").status == 404
    assert org not in {o["id"] for o in owner.api.ok("GET", "/organizations")}


def test_organization_header_cannot_move_a_key_to_another_organization(owner, other):
    assert owner.api("GET", "/users/me", headers={"X-Daytona-Organization-ID": owner.personal_org}).status == 200
    # As upstream, a key ignores the header (it selects the organization of JWT logins only).
    mine = owner.api.ok("GET", "/sandbox")
    moved = owner.api("GET", "/sandbox", headers={"X-Daytona-Organization-ID": other.personal_org})
    assert moved.status == 200 and moved.json() == mine


def test_regions_and_sandbox_target(owner):
    regions = owner.api.ok("GET", "/regions")
    assert [(r["id"], r["regionType"]) for r in regions] == [("us", "shared")]
    assert owner.api.ok("GET", "/regions/us")["name"] == "us"
    assert owner.api("GET", "/regions/mars").status == 404
    assert [r["id"] for r in Caller(owner.api.api_url, "").ok("GET", "/shared-regions")] == ["us"]
    refused = owner.api("POST", "/sandbox", {"target": "mars"})
    assert refused.status == 400 and "mars" in refused.json()["message"] and "us" in refused.json()["message"]
    bad = owner.api("POST", "/organizations", {"name": "x", "defaultRegionId": "mars"})
    assert bad.status == 400 and bad.json()["message"].startswith("defaultRegionId")


def test_usage_and_admin_quotas(admin, owner):
    org = owner.personal_org
    usage = owner.api.ok("GET", f"/organizations/{org}/usage")
    region = usage["regionUsage"][0]
    assert region["regionId"] == "us" and region["currentCpuUsage"] == 0 and usage["currentSnapshotUsage"] == 0

    # Members cannot raise their own limits.
    assert owner.api("PATCH", f"/organizations/{org}/quota", {"maxCpuPerSandbox": 64}).status == 403
    assert admin("PATCH", f"/organizations/{org}/quota", {"maxCpuPerSandbox": 3, "snapshotQuota": 7}).status == 204
    got = owner.api.ok("GET", f"/organizations/{org}")
    assert got["maxCpuPerSandbox"] == 3
    assert owner.api.ok("GET", f"/organizations/{org}/usage")["totalSnapshotQuota"] == 7
    assert admin("PATCH", f"/organizations/{org}/quota/us", {"totalCpuQuota": 5, "totalMemoryQuota": 6}).status == 204
    region = owner.api.ok("GET", f"/organizations/{org}/usage")["regionUsage"][0]
    assert (region["totalCpuQuota"], region["totalMemoryQuota"], region["maxCpuPerSandbox"]) == (5, 6, 3)
    refused = owner.api("POST", "/sandbox", {"cpu": 4})
    assert refused.status == 403 and "maximum 3" in refused.json()["message"], "the quota is enforced"

    for path, body, field in [
        (f"/organizations/{org}/quota", {"maxCpuPerSandbox": -1}, "maxCpuPerSandbox"),
        (f"/organizations/{org}/quota/us", {"maxDiskPerSandbox": -2}, "maxDiskPerSandbox"),
        (f"/organizations/{org}/quota", {"maxMemoryPerSandbox": "x"}, "maxMemoryPerSandbox"),
        (f"/organizations/{org}/quota", {"authenticatedRateLimit": 10}, "authenticatedRateLimit"),
        (f"/organizations/{org}/quota/mars", {"totalCpuQuota": 1}, "regionId"),
    ]:
        result = admin("PATCH", path, body)
        assert result.status == 400 and result.json()["message"].startswith(field), (body, result)
    assert admin("PATCH", f"/organizations/{unique('nope')}/quota", {"maxCpuPerSandbox": 1}).status == 404
