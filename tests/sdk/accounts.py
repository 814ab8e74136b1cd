"""Users, organizations and keys for tests that act as several users (admin routes create them)."""

from __future__ import annotations

from dataclasses import dataclass

from support import HttpResult, http, unique


@dataclass
class Caller:
    """Raw API calls with one API key."""

    api_url: str
    key: str

    def __call__(self, method: str, path: str, body: object | None = None, headers: dict | None = None) -> HttpResult:
        return http(method, f"{self.api_url}{path}", self.key, body, headers)

    def ok(self, method: str, path: str, body: object | None = None, status: int | None = None):
        """The call's JSON answer (None for an empty one), asserting it succeeded."""
        result = self(method, path, body)
        expected = {status} if status else {200, 201, 204}
        assert result.status in expected, f"{method} {path}: {result.status} {result.body[:500]!r}"
        return result.json() if result.body else None


@dataclass
class User:
    id: str
    email: str
    personal_org: str
    api: Caller  # a key with every permission in the personal organization

    def key_in(self, admin: Caller, organization_id: str, permissions: list[str] | None = None) -> Caller:
        """A new key of this user in another organization it belongs to."""
        body = {"name": unique("key"), "organizationId": organization_id}
        if permissions is not None:
            body["permissions"] = permissions
        created = admin.ok("POST", f"/admin/users/{self.id}/api-keys", body, status=201)
        return Caller(admin.api_url, created["value"])


def new_user(admin: Caller, prefix: str = "user") -> User:
    user_id = unique(prefix)
    email = f"{user_id}@example.com"
    admin.ok("POST", "/admin/users", {"id": user_id, "name": user_id, "email": email}, status=201)
    created = admin.ok("POST", f"/admin/users/{user_id}/api-keys", {"name": "main"}, status=201)
    api = Caller(admin.api_url, created["value"])
    orgs = api.ok("GET", "/organizations")
    assert len(orgs) == 1 and orgs[0]["personal"], orgs
    return User(user_id, email, orgs[0]["id"], api)
