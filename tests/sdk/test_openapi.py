"""The API's own OpenAPI document (generated from its handlers) against the calls SDK 0.226.1 makes.

The SDK's calls are read from the installed SDK: every `*_api.<method>(` call in `daytona/_sync`, resolved
to its HTTP method and path through the generated `daytona_api_client` (toolbox calls go to the proxy and
are not part of this document)."""

from __future__ import annotations

import re
from pathlib import Path

import daytona
import daytona_api_client.api as api_client

from support import http

# SDK calls this server does not serve yet; each must really be missing (the list only shrinks).
NOT_YET_SERVED: set[tuple[str, str]] = set()

_SERIALIZE = re.compile(
    r"def _(\w+)_serialize\(.*?method='(\w+)',\s*resource_path='([^']+)'",
    re.S,
)


def _template(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def sdk_api_calls() -> set[tuple[str, str]]:
    """(METHOD, path template with `{}` parameters) of every control-plane call the SDK makes."""
    routes: dict[str, tuple[str, str]] = {}
    for module in Path(api_client.__file__).parent.glob("*_api.py"):
        for name, method, path in _SERIALIZE.findall(module.read_text()):
            routes[name] = (method, _template(path))
    calls = set()
    for source in (Path(daytona.__file__).parent / "_sync").glob("*.py"):
        for name in re.findall(r"_api\.(\w+)\(", source.read_text()):
            if name in routes:
                calls.add(routes[name])
    return calls


def served(api_url: str) -> tuple[dict, set[tuple[str, str]]]:
    doc = http("GET", f"{api_url}/openapi.json").json()
    return doc, {(m.upper(), _template(p)) for p, item in doc["paths"].items() for m in item}


def test_document_is_generated_and_served(server):
    doc, operations = served(server.api_url)
    assert doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": "/api"}]
    assert "bearer" in doc["components"]["securitySchemes"]
    assert ("POST", "/sandbox") in operations and ("GET", "/sandbox/{}") in operations
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), "operation ids are unique"
    # Path parameters are declared for every templated segment.
    for path, item in doc["paths"].items():
        names = set(re.findall(r"\{([^}]+)\}", path))
        for op in item.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, f"{path}: path parameters {declared} != {names}"


def test_swagger_ui_is_served(server):
    page = http("GET", f"{server.api_url}/docs/")
    assert page.status == 200 and b"swagger" in page.body.lower()


def test_every_sdk_call_is_in_the_document(server):
    calls = sdk_api_calls()
    assert len(calls) > 40, f"the SDK's calls were not found ({len(calls)})"
    _, operations = served(server.api_url)
    missing = calls - operations
    print(f"\n[openapi] SDK calls {len(calls)}, served {len(calls & operations)}, not yet: {sorted(missing)}")
    assert missing <= NOT_YET_SERVED, f"SDK calls missing from the API: {sorted(missing - NOT_YET_SERVED)}"
    now_served = NOT_YET_SERVED & operations
    assert not now_served, f"served now, remove from NOT_YET_SERVED: {sorted(now_served)}"
