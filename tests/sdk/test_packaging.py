"""The deployment files: Dockerfile, docker/docker-compose.yaml (+ Dex, pgAdmin, OTel configs) and
scripts/setup-domain-oss-deployment.sh. No server needed.

- The compose file passes `docker-compose config` (Debian's docker-compose 1.29 needs no Docker engine;
  scripts/test.sh installs it), every variable our services set is one crates/config reads (names
  parsed from its sources, so a typo fails), and each role has what it needs.
- The setup script, run non-interactively into a temporary directory, leaves no placeholder secret,
  gives services that must agree the same keys, points every public URL at the domain over https,
  makes Dex's issuer the API's and proxy's public OIDC domain, writes a bcrypt hash that verifies the
  password and a Caddyfile that routes as documented, and keeps its secrets on a second run.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "docker-compose.yaml"
DEX = REPO / "docker" / "dex" / "config.yaml"
SCRIPT = REPO / "scripts" / "setup-domain-oss-deployment.sh"
CONFIG_SOURCES = REPO / "crates" / "config" / "src"
OUR_IMAGE = "daytona-rs:latest"
ROLES = {"api", "proxy", "runner", "ssh-gateway"}

# What each role cannot work without in the compose deployment (names from crates/config).
REQUIRED = {
    "api": {
        "DAYTONA_DATA_DIR", "PORT", "DB_HOST", "DB_USERNAME", "DB_PASSWORD", "REDIS_HOST",
        "ENCRYPTION_KEY", "ENCRYPTION_SALT", "HEALTH_CHECK_API_KEY", "PROXY_API_KEY", "PROXY_DOMAIN",
        "PROXY_PROTOCOL", "PROXY_TEMPLATE_URL", "DEFAULT_RUNNER_API_KEY", "SSH_GATEWAY_API_KEY",
        "SSH_GATEWAY_COMMAND", "SSH_GATEWAY_URL", "OIDC_ISSUER_BASE_URL", "PUBLIC_OIDC_DOMAIN",
        "OIDC_CLIENT_ID", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "SMTP_HOST",
        "INTERNAL_REGISTRY_URL", "DASHBOARD_URL", "DASHBOARD_BASE_API_URL", "OTEL_COLLECTOR_URL",
    },
    "proxy": {
        "DAYTONA_API_URL", "PROXY_PORT", "PROXY_API_KEY", "PROXY_PROTOCOL", "PROXY_DOMAIN", "COOKIE_DOMAIN",
        "OIDC_DOMAIN", "OIDC_PUBLIC_DOMAIN", "OIDC_CLIENT_ID", "REDIS_HOST",
    },
    "runner": {
        "DAYTONA_DATA_DIR", "DAYTONA_API_URL", "DAYTONA_RUNNER_TOKEN", "API_PORT", "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DAYTONA_BRIDGE_NAME", "DAYTONA_SANDBOX_SUBNET",
    },
    "ssh-gateway": {"DAYTONA_DATA_DIR", "API_URL", "API_KEY", "SSH_GATEWAY_PORT"},
}
# Variables that hold credentials (the rest of a secret-looking name is a URL or a public key).
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|SALT)(_ID)?$")
NOT_SECRET = {"SSH_GATEWAY_PUBLIC_KEY", "POSTHOG_API_KEY"}
# Public URLs the setup script must move to https on the domain.
PUBLIC_URLS = {
    "PROXY_TEMPLATE_URL", "DASHBOARD_URL", "DASHBOARD_BASE_API_URL", "PUBLIC_OIDC_DOMAIN", "OIDC_PUBLIC_DOMAIN",
}
# Where a published UI lives inside its container, by service.
UI_PORTS = {"pgadmin": 80, "minio": 9001, "registry-ui": 80}


# --- reading the files -----------------------------------------------------------------------------


def config_variables() -> tuple[set[str], list[re.Pattern[str]]]:
    """Names crates/config reads: every upper-case string literal, plus the names built with
    `format!` from a template such as "RATE_LIMIT_{kind}_TTL" or "{prefix}{suffix}", whose
    placeholders stand for literals of the same sources."""
    source = "\n".join(p.read_text() for p in sorted(CONFIG_SOURCES.glob("*.rs")))
    literals = set(re.findall(r'"([A-Z][A-Z0-9_]*)"', source))
    fragment = "(?:" + "|".join(sorted(map(re.escape, literals), key=len, reverse=True)) + ")"
    templates = [
        re.compile(re.sub(r"\\\{[a-z_]+\\\}", fragment, re.escape(t)))
        for t in set(re.findall(r'"((?:[A-Z0-9_]|\{[a-z_]+\})+)"', source))
        if "{" in t
    ]
    return literals, templates


def config_reads(name: str, known: tuple[set[str], list[re.Pattern[str]]]) -> bool:
    literals, templates = known
    return name in literals or any(t.fullmatch(name) for t in templates)


def placeholder_secrets() -> set[str]:
    """The published placeholder values crates/config warns about."""
    source = (CONFIG_SOURCES / "secret.rs").read_text()
    block = re.search(r"PLACEHOLDER_SECRETS: &\[&str\] = &\[(.*?)\];", source, re.S)
    assert block, "PLACEHOLDER_SECRETS not found in crates/config/src/secret.rs"
    values = set(re.findall(r'"([^"]*)"', block[1]))
    assert {"supersecretkey", "secret_api_token", "minioadmin"} <= values
    return values


def load_compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def env_of(service: dict) -> dict[str, str]:
    """A service's environment as a dict (compose's `$$` is a literal `$`)."""
    env = service.get("environment") or []
    if isinstance(env, dict):
        items = {k: "" if v is None else str(v) for k, v in env.items()}
    else:
        items = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: v.replace("$$", "$") for k, v in items.items()}


def our_services(compose: dict) -> dict[str, dict[str, str]]:
    """Environment of each service that runs our image, by service name."""
    found = {
        name: env_of(svc)
        for name, svc in compose["services"].items()
        if svc.get("image") == OUR_IMAGE or "build" in svc
    }
    assert found, f"no service uses {OUR_IMAGE}"
    return found


def by_role(compose: dict) -> dict[str, dict[str, str]]:
    roles: dict[str, dict[str, str]] = {}
    for name, env in our_services(compose).items():
        assert "DAYTONA_ROLES" in env, f"service {name} runs our image without DAYTONA_ROLES"
        chosen = {r.strip() for r in env["DAYTONA_ROLES"].split(",")}
        assert chosen <= ROLES, f"service {name}: unknown roles {chosen - ROLES}"
        for role in chosen:
            assert role not in roles, f"role {role} is run by two services"
            roles[role] = env
    assert set(roles) == ROLES, f"roles without a service: {ROLES - set(roles)}"
    return roles


def service_of_role(compose: dict, role: str) -> str:
    [name] = [n for n, e in our_services(compose).items() if role in e.get("DAYTONA_ROLES", "").split(",")]
    return name


def published(compose: dict) -> dict[str, list[tuple[str | None, int, int]]]:
    """(host ip, host port, container port) of every published port, by service."""
    out: dict[str, list[tuple[str | None, int, int]]] = {}
    for name, svc in compose["services"].items():
        for spec in svc.get("ports") or []:
            parts = str(spec).split(":")
            ip = parts[0] if len(parts) == 3 else None
            out.setdefault(name, []).append((ip, int(parts[-2]), int(parts[-1])))
    return out


def htpasswd_verifies(hash_: str, password: str, tmp: Path) -> bool:
    file = tmp / "verify.htpasswd"
    file.write_text(f"user:{hash_}\n")
    try:
        return subprocess.run(["htpasswd", "-vb", str(file), "user", password], capture_output=True).returncode == 0
    finally:
        file.unlink()


def caddy_sites(text: str) -> dict[str, str]:
    """Top-level blocks of a Caddyfile, body text by header (the global options block is "")."""
    sites: dict[str, str] = {}
    depth, header, body = 0, "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if depth == 0:
            assert line.endswith("{"), f"Caddyfile: expected a block, got {line!r}"
            header, body, depth = line[:-1].strip(), [], 1
            continue
        depth += line.count("{") - line.count("}")
        if depth == 0:
            sites[header] = "\n".join(body)
        else:
            body.append(line)
    assert depth == 0, "Caddyfile: unbalanced braces"
    return sites


def docker_compose_config(path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose; scripts/test.sh installs it)")
    run = subprocess.run([binary, "-f", str(path), "config", "-q"], capture_output=True, text=True, cwd=path.parent)
    assert run.returncode == 0, f"docker-compose config {path}:\n{run.stderr}"
    assert "WARNING" not in run.stderr, run.stderr


def check_consistent(compose: dict, dex: dict) -> dict[str, dict[str, str]]:
    """Values two services must agree on, and internal URLs that name existing services."""
    roles = by_role(compose)
    api, proxy, runner, gateway = roles["api"], roles["proxy"], roles["runner"], roles["ssh-gateway"]
    services = compose["services"]
    env = {name: env_of(svc) for name, svc in services.items()}

    assert api["PROXY_API_KEY"] == proxy["PROXY_API_KEY"], "API and proxy must share PROXY_API_KEY"
    assert api["DEFAULT_RUNNER_API_KEY"] == runner["DAYTONA_RUNNER_TOKEN"], (
        "the runner's DAYTONA_RUNNER_TOKEN must be the API's DEFAULT_RUNNER_API_KEY"
    )
    assert api["SSH_GATEWAY_API_KEY"] == gateway["API_KEY"], "the gateway's API_KEY must be SSH_GATEWAY_API_KEY"
    for name in ("PROXY_PROTOCOL", "PROXY_DOMAIN", "OIDC_CLIENT_ID", "OIDC_AUDIENCE", "REDIS_HOST", "REDIS_PORT"):
        assert api[name] == proxy[name], f"API and proxy disagree on {name}"
    assert api["PUBLIC_OIDC_DOMAIN"] == proxy["OIDC_PUBLIC_DOMAIN"] == dex["issuer"], (
        "Dex's issuer must be the API's PUBLIC_OIDC_DOMAIN and the proxy's OIDC_PUBLIC_DOMAIN"
    )
    assert api["OIDC_ISSUER_BASE_URL"] == proxy["OIDC_DOMAIN"]
    assert urlsplit(api["OIDC_ISSUER_BASE_URL"]).path == urlsplit(dex["issuer"]).path, (
        "the internal issuer URL must reach Dex under its issuer path"
    )
    assert api["DB_USERNAME"] == env["db"]["POSTGRES_USER"] and api["DB_PASSWORD"] == env["db"]["POSTGRES_PASSWORD"]
    assert api["DB_DATABASE"] == env["db"]["POSTGRES_DB"]
    minio = env["minio"]
    assert (api["S3_ACCESS_KEY"], api["S3_SECRET_KEY"]) == (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    assert (runner["AWS_ACCESS_KEY_ID"], runner["AWS_SECRET_ACCESS_KEY"]) == (
        api["S3_ACCESS_KEY"],
        api["S3_SECRET_KEY"],
    ), "runners and the API must use the same object store credentials"
    assert env["minio-init"]["MINIO_ROOT_PASSWORD"] == minio["MINIO_ROOT_PASSWORD"]
    assert runner["AWS_DEFAULT_BUCKET"] == api["S3_DEFAULT_BUCKET"]
    assert api["INTERNAL_REGISTRY_ADMIN"] == api["TRANSIENT_REGISTRY_ADMIN"]

    # Internal URLs name a service of this file on the port it listens on.
    api_port = int(api["PORT"])
    for who, url in (("proxy", proxy["DAYTONA_API_URL"]), ("runner", runner["DAYTONA_API_URL"]),
                     ("ssh-gateway", gateway["API_URL"])):
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.path) == ("api", api_port, "/api"), f"{who} reaches the API at {url}"
    for name in ("OIDC_ISSUER_BASE_URL", "S3_ENDPOINT", "INTERNAL_REGISTRY_URL", "TRANSIENT_REGISTRY_URL",
                 "OTEL_COLLECTOR_URL"):
        assert urlsplit(api[name]).hostname in services, f"{name}={api[name]} names no service"
    assert api["SMTP_HOST"] in services and api["DB_HOST"] in services and api["REDIS_HOST"] in services
    assert urlsplit(runner["AWS_ENDPOINT_URL"]).hostname in services

    # Proxy and gateway live in the runner's network namespace; their ports are published there.
    runner_service = service_of_role(compose, "runner")
    runner_ports = {container for _, _, container in published(compose).get(runner_service, [])}
    assert int(proxy["PROXY_PORT"]) in runner_ports and int(gateway["SSH_GATEWAY_PORT"]) in runner_ports
    for name, svc in services.items():
        if env_of(svc).get("DAYTONA_ROLES") in ("proxy", "ssh-gateway"):
            assert svc.get("network_mode") == f"service:{runner_service}", f"{name} must share the runner's network"
    runner_svc = services[runner_service]
    assert runner_svc.get("privileged") is True, "the runner creates namespaces, cgroups and bridges"
    mounts = [str(v).split(":")[:2] for v in runner_svc.get("volumes", [])]
    assert ["/sys/fs/cgroup", "/sys/fs/cgroup"] in mounts, "the runner needs the host's cgroup tree"
    assert any(target == runner["DAYTONA_DATA_DIR"] for _, target in mounts), "the runner's data dir is no volume"
    return roles


# --- the compose file as shipped -------------------------------------------------------------------


def test_compose_file_is_valid_for_docker_compose():
    docker_compose_config(COMPOSE)


def test_compose_variables_are_ones_our_config_reads():
    known = config_variables()
    # The parser itself: names built by format! are found, a near miss is not.
    for name in ("ADMIN_TOTAL_CPU_QUOTA", "DEFAULT_ORG_QUOTA_VOLUME_QUOTA", "RATE_LIMIT_ANONYMOUS_TTL",
                 "INTERNAL_REGISTRY_PROJECT_ID", "DAYTONA_ROLES", "PROXY_API_KEY"):
        assert config_reads(name, known), name
    for typo in ("PROXY_API_KEYS", "DAYTONA_ROLE", "RATE_LIMIT_ANONYMOUS_TTLS", "INTERNAL_REGISTRY_URI"):
        assert not config_reads(typo, known), typo

    unknown = {
        f"{service}: {name}"
        for service, env in our_services(load_compose(COMPOSE)).items()
        for name in env
        if not config_reads(name, known)
    }
    assert not unknown, f"variables crates/config does not read: {sorted(unknown)}"


def test_each_role_has_its_required_variables():
    roles = by_role(load_compose(COMPOSE))
    missing = {role: sorted(REQUIRED[role] - set(env)) for role, env in roles.items() if REQUIRED[role] - set(env)}
    assert not missing, f"missing per role: {missing}"
    blank = {role: sorted(n for n in REQUIRED[role] if not env[n].strip()) for role, env in roles.items()}
    assert not any(blank.values()), f"required but blank: {blank}"


def test_compose_services_agree_with_each_other_and_with_dex():
    compose = load_compose(COMPOSE)
    dex = yaml.safe_load(DEX.read_text())
    check_consistent(compose, dex)
    assert dex["issuer"] == "http://localhost:5556/dex"
    [client] = [c for c in dex["staticClients"] if c["id"] == "daytona"]
    assert client.get("public") is True, "the dashboard and the proxy log in with PKCE, without a secret"
    api = by_role(compose)["api"]
    assert f"{api['DASHBOARD_BASE_API_URL']}/api/oauth2-redirect.html" in client["redirectURIs"]
    assert "http://proxy.localhost:4000/callback" in client["redirectURIs"]
    [user] = dex["staticPasswords"]
    assert user["email"] == "dev@daytona.io"


def test_the_seed_services_are_all_there():
    services = set(load_compose(COMPOSE)["services"])
    seed = {"api", "proxy", "runner", "ssh-gateway", "db", "redis", "dex", "registry", "registry-ui", "minio",
            "maildev", "jaeger", "pgadmin"}
    assert seed <= services, f"missing: {seed - services}"
    compose = load_compose(COMPOSE)
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts {source}, which does not exist"


def test_dockerfile_ships_what_the_runner_calls():
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)
    runtime = stages[-1]
    assert stages[1].startswith("rust:1.95-bookworm") and runtime.startswith("debian:bookworm")
    assert "+crt-static" in stages[1] and "--target x86_64-unknown-linux-gnu -p daytona-daemon" in stages[1]
    assert "-p daytona-cli" in stages[1]
    assert re.search(r"COPY --from=build .*daytona .*daytona-daemon /usr/local/bin/", runtime), (
        "the daemon must sit next to the server binary, where the server looks for it"
    )
    packages = {
        "ip": "iproute2", "iptables": "iptables", "iptables-save": "iptables", "iptables-restore": "iptables",
        # bookworm's iptables package provides the nft-based ebtables (the `ebtables` package is legacy).
        "ebtables": "iptables", "ebtables-save": "iptables", "ebtables-restore": "iptables",
        "mkfs.ext4": "e2fsprogs", "resize2fs": "e2fsprogs", "e2fsck": "e2fsprogs",
    }
    called = set()
    for path in (REPO / "crates" / "runtime" / "src").rglob("*.rs"):
        if path.name == "tests.rs":
            continue
        text = path.read_text().split("#[cfg(test)]")[0]
        called |= set(re.findall(r'(?:Command::new|pipe_to|run_output|tool|run)\(\s*"([a-z0-9.-]+)"', text))
    assert called, "found no external command in crates/runtime"
    assert called <= set(packages), f"the runtime calls {called - set(packages)}: add its package to the Dockerfile"
    install = re.search(r"apt-get install[^\n]*(?:\\\n[^\n]*)*", runtime)
    assert install, "the runtime stage installs no packages"
    missing = {packages[c] for c in called} - set(install[0].split())
    assert not missing, f"the runtime stage lacks {missing}"


# --- the setup script ------------------------------------------------------------------------------

DOMAIN = "daytona.test-corp.dev"
EMAIL = "ops@test-corp.dev"
PASSWORD = "correct horse $battery"
DNS_TOKEN = "cf-token-1234"


def run_setup(out: Path, *args: str, env: dict[str, str] | None = None, check: bool = True):
    base = {k: v for k, v in os.environ.items() if not k.startswith("SETUP_")}
    run = subprocess.run(
        ["bash", str(SCRIPT), "--non-interactive", "--skip-install", "--output-dir", str(out), *args],
        capture_output=True, text=True, env={**base, **(env or {})}, stdin=subprocess.DEVNULL, timeout=120,
    )
    if check:
        assert run.returncode == 0, f"setup script failed ({run.returncode}):\n{run.stderr}\n{run.stdout}"
    return run


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deployment")
    # Flags and environment variables mixed, as documented.
    run_setup(
        out, "--domain", DOMAIN.upper(), "--password", PASSWORD, "--dns-provider", "cloudflare",
        "--db-password", "db pass: #1 $x",
        env={"SETUP_EMAIL": EMAIL, "SETUP_DNS_API_TOKEN": DNS_TOKEN},
    )
    return out


def secret_values(compose: dict) -> dict[str, str]:
    return {
        f"{service}.{name}": value
        for service, svc in compose["services"].items()
        for name, value in env_of(svc).items()
        if SECRET_NAME.search(name) and name not in NOT_SECRET
    }


def test_setup_output_is_valid_for_docker_compose(deployment):
    docker_compose_config(deployment / "docker-compose.yaml")


def test_setup_leaves_no_placeholder_secret(deployment, tmp_path):
    compose = load_compose(deployment / "docker-compose.yaml")
    placeholders = placeholder_secrets()
    left = {k: v for k, v in secret_values(compose).items() if v.lower() in placeholders}
    assert not left, f"placeholder secrets left: {left}"
    # Anywhere as a value (the upper-case variable OTEL_COLLECTOR_API_KEY is not its placeholder).
    distinctive = [p for p in placeholders if len(p) > 8]
    for path in deployment.rglob("*"):
        if path.is_file():
            text = path.read_text()
            found = [p for p in distinctive if re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", text)]
            assert not found, f"{path} still contains {found}"
    required_secrets = ["ENCRYPTION_KEY", "ENCRYPTION_SALT", "PROXY_API_KEY", "DEFAULT_RUNNER_API_KEY",
                        "SSH_GATEWAY_API_KEY", "HEALTH_CHECK_API_KEY", "OTEL_COLLECTOR_API_KEY"]
    api = by_role(compose)["api"]
    generated = [api[n] for n in required_secrets]
    for name, value in zip(required_secrets, generated, strict=True):
        assert re.fullmatch(r"[0-9a-f]{32}", value), f"{name}={value!r} is not `openssl rand -hex 16`"
    assert len(set(generated)) == len(generated), "two generated secrets are equal"
    env = {n: env_of(s) for n, s in compose["services"].items()}
    assert env["db"]["POSTGRES_PASSWORD"] == "db pass: #1 $x", "the given DB password, unchanged by quoting"
    for password in (env["minio"]["MINIO_ROOT_PASSWORD"], env["pgadmin"]["PGADMIN_DEFAULT_PASSWORD"],
                     api["INTERNAL_REGISTRY_PASSWORD"]):
        assert re.fullmatch(r"[0-9a-f]{32}", password), "passwords not given are generated"
    dex = yaml.safe_load((deployment / "dex" / "config.yaml").read_text())
    [user] = dex["staticPasswords"]
    assert not htpasswd_verifies(user["hash"], "password", tmp_path), "Dex still accepts the default password"
    for name in (".setup-secrets.env", "caddy/caddy.env"):
        mode = stat.S_IMODE((deployment / name).stat().st_mode)
        assert mode == 0o600, f"{name} is readable by others ({oct(mode)})"


def test_setup_gives_agreeing_services_the_same_keys(deployment):
    compose = load_compose(deployment / "docker-compose.yaml")
    dex = yaml.safe_load((deployment / "dex" / "config.yaml").read_text())
    check_consistent(compose, dex)


def test_setup_moves_every_url_to_the_domain(deployment, tmp_path):
    compose = load_compose(deployment / "docker-compose.yaml")
    roles = by_role(compose)
    api, proxy = roles["api"], roles["proxy"]
    dex = yaml.safe_load((deployment / "dex" / "config.yaml").read_text())

    assert dex["issuer"] == f"https://{DOMAIN}/dex" == api["PUBLIC_OIDC_DOMAIN"] == proxy["OIDC_PUBLIC_DOMAIN"]
    for role, env in roles.items():
        for name, value in env.items():
            assert "localhost" not in value, f"{role}: {name}={value} still names localhost"
            if name in PUBLIC_URLS:
                parts = urlsplit(value)
                assert parts.scheme == "https", f"{role}: {name}={value} is not https"
                assert parts.hostname == DOMAIN or parts.hostname.endswith(f".{DOMAIN}"), f"{name}={value}"
    assert api["PROXY_PROTOCOL"] == proxy["PROXY_PROTOCOL"] == "https"
    assert api["PROXY_DOMAIN"] == proxy["COOKIE_DOMAIN"] == f"proxy.{DOMAIN}"
    assert api["PROXY_TEMPLATE_URL"] == f"https://{{{{PORT}}}}-{{{{sandboxId}}}}.proxy.{DOMAIN}"
    assert api["SSH_GATEWAY_URL"] == f"{DOMAIN}:2222"
    assert api["SSH_GATEWAY_COMMAND"] == f"ssh -p 2222 {{{{TOKEN}}}}@{DOMAIN}"

    [client] = [c for c in dex["staticClients"] if c["id"] == "daytona"]
    for uri in client["redirectURIs"]:
        parts = urlsplit(uri)
        assert parts.scheme == "https" and parts.hostname in (DOMAIN, f"proxy.{DOMAIN}"), uri
    assert f"https://proxy.{DOMAIN}/callback" in client["redirectURIs"]
    assert f"https://{DOMAIN}/api/oauth2-redirect.html" in client["redirectURIs"]
    [user] = dex["staticPasswords"]
    assert user["email"] == EMAIL
    assert htpasswd_verifies(user["hash"], PASSWORD, tmp_path), "Dex's hash does not verify the password"
    assert user["hash"].startswith("$2") and "$10$" in user["hash"], "expected bcrypt with cost 10"
    assert "localhost" not in (deployment / "dex" / "config.yaml").read_text()


def test_setup_binds_everything_but_ssh_to_loopback(deployment):
    ports = published(load_compose(deployment / "docker-compose.yaml"))
    exposed = [(svc, p) for svc, specs in ports.items() for p in specs if p[0] != "127.0.0.1"]
    assert [(p[1], p[2]) for _, p in exposed] == [(2222, 2222)], f"published beyond loopback: {exposed}"


def test_setup_writes_a_caddyfile_that_routes_to_the_services(deployment, tmp_path):
    compose = load_compose(deployment / "docker-compose.yaml")
    ports = published(compose)
    roles = by_role(compose)
    env = {n: env_of(s) for n, s in compose["services"].items()}

    def loopback(service: str, container_port: int) -> str:
        [host] = [h for ip, h, c in ports[service] if c == container_port and ip == "127.0.0.1"]
        return f"127.0.0.1:{host}"

    runner_service = service_of_role(compose, "runner")
    sites = caddy_sites((deployment / "caddy" / "Caddyfile").read_text())
    assert set(sites) == {"", DOMAIN, f"proxy.{DOMAIN}, *.proxy.{DOMAIN}", f"{DOMAIN}:5050", f"{DOMAIN}:9001",
                          f"{DOMAIN}:5100"}, sorted(sites)
    assert f"email {EMAIL}" in sites[""]
    assert "acme_dns cloudflare {env.CLOUDFLARE_API_TOKEN}" in sites[""]
    assert (deployment / "caddy" / "caddy.env").read_text() == f"CLOUDFLARE_API_TOKEN={DNS_TOKEN}\n"

    main = sites[DOMAIN]
    dex_route = re.search(r"handle /dex/\* \{\s*reverse_proxy (\S+)\s*\}", main)
    assert dex_route and dex_route[1] == loopback("dex", 5556)
    api_route = re.search(r"handle \{\s*reverse_proxy (\S+)\s*\}", main)
    assert api_route and api_route[1] == loopback("api", int(roles["api"]["PORT"]))
    proxy_port = int(roles["proxy"]["PROXY_PORT"])
    assert sites[f"proxy.{DOMAIN}, *.proxy.{DOMAIN}"].strip() == f"reverse_proxy {loopback(runner_service, proxy_port)}"

    def basic_auth(site: str) -> tuple[str, str]:
        found = re.search(r"basic_auth \{\s*(\S+) (\S+)\s*\}", sites[site])
        assert found, f"{site} has no basic_auth"
        return found[1], found[2]

    user, hash_ = basic_auth(f"{DOMAIN}:5050")
    assert user == env["pgadmin"]["PGADMIN_DEFAULT_EMAIL"] == EMAIL
    assert htpasswd_verifies(hash_, env["pgadmin"]["PGADMIN_DEFAULT_PASSWORD"], tmp_path)
    assert f"reverse_proxy {loopback('pgadmin', UI_PORTS['pgadmin'])}" in sites[f"{DOMAIN}:5050"]
    user, hash_ = basic_auth(f"{DOMAIN}:5100")
    assert user == roles["api"]["INTERNAL_REGISTRY_ADMIN"]
    assert htpasswd_verifies(hash_, roles["api"]["INTERNAL_REGISTRY_PASSWORD"], tmp_path)
    assert f"reverse_proxy {loopback('registry-ui', UI_PORTS['registry-ui'])}" in sites[f"{DOMAIN}:5100"]
    assert "basic_auth" not in sites[f"{DOMAIN}:9001"], "MinIO's console cannot work behind basic auth"
    assert f"reverse_proxy {loopback('minio', UI_PORTS['minio'])}" in sites[f"{DOMAIN}:9001"]
    # Caddy listens on the UIs' usual ports, so the containers must not be published there.
    for service, port in UI_PORTS.items():
        assert loopback(service, port).split(":")[1] not in {"5050", "9001", "5100"}


def test_setup_second_run_keeps_the_secrets(deployment, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(deployment, out)
    before = secret_values(load_compose(out / "docker-compose.yaml"))
    state_before = (out / ".setup-secrets.env").read_text()
    run_setup(out, "--domain", DOMAIN, "--email", EMAIL, "--password", PASSWORD, "--dns-provider", "cloudflare",
              "--dns-api-token", DNS_TOKEN)
    compose = load_compose(out / "docker-compose.yaml")
    assert secret_values(compose) == before
    assert (out / ".setup-secrets.env").read_text() == state_before
    check_consistent(compose, yaml.safe_load((out / "dex" / "config.yaml").read_text()))
    # A password given on the command line replaces the stored one everywhere it is used.
    run_setup(out, "--domain", DOMAIN, "--email", EMAIL, "--password", PASSWORD, "--dns-provider", "cloudflare",
              "--dns-api-token", DNS_TOKEN, "--minio-password", "new-minio-secret")
    compose = load_compose(out / "docker-compose.yaml")
    after = secret_values(compose)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"api.S3_SECRET_KEY", "runner.AWS_SECRET_ACCESS_KEY", "minio.MINIO_ROOT_PASSWORD",
                       "minio-init.MINIO_ROOT_PASSWORD"}, changed
    assert after["minio.MINIO_ROOT_PASSWORD"] == "new-minio-secret"


@pytest.mark.parametrize(
    ("provider", "args", "directive", "env_lines"),
    [
        ("digitalocean", ["--dns-api-token", "do-tok"], "acme_dns digitalocean {env.DO_AUTH_TOKEN}",
         ["DO_AUTH_TOKEN=do-tok"]),
        ("hetzner", ["--dns-api-token", "hz-tok"], "acme_dns hetzner {env.HETZNER_API_TOKEN}",
         ["HETZNER_API_TOKEN=hz-tok"]),
        ("route53", ["--aws-access-key-id", "AKIA1", "--aws-secret-access-key", "s3cr3t"], "acme_dns route53",
         ["AWS_ACCESS_KEY_ID=AKIA1", "AWS_SECRET_ACCESS_KEY=s3cr3t", "AWS_REGION=us-east-1"]),
    ],
)
def test_setup_configures_each_dns_provider(tmp_path, provider, args, directive, env_lines):
    run_setup(tmp_path, "--domain", DOMAIN, "--email", EMAIL, "--password", PASSWORD, "--dns-provider", provider,
              *args)
    assert directive in caddy_sites((tmp_path / "caddy" / "Caddyfile").read_text())[""]
    assert (tmp_path / "caddy" / "caddy.env").read_text().splitlines() == env_lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--email", EMAIL, "--password", PASSWORD, "--dns-provider", "cloudflare", "--dns-api-token", "t"],
         "--domain (or SETUP_DOMAIN)"),
        (["--domain", DOMAIN, "--email", "me@example.com", "--password", PASSWORD, "--dns-provider", "hetzner",
          "--dns-api-token", "t"], "Let's Encrypt"),
        (["--domain", DOMAIN, "--email", EMAIL, "--password", "short", "--dns-provider", "hetzner",
          "--dns-api-token", "t"], "--password must have at least 8"),
        (["--domain", DOMAIN, "--email", EMAIL, "--password", PASSWORD, "--dns-provider", "godaddy"],
         "--dns-provider 'godaddy'"),
        (["--domain", DOMAIN, "--email", EMAIL, "--password", PASSWORD, "--dns-provider", "cloudflare"],
         "--dns-api-token"),
        (["--domain", "not a domain", "--email", EMAIL, "--password", PASSWORD, "--dns-provider", "cloudflare",
          "--dns-api-token", "t"], "is not a DNS name"),
    ],
)
def test_setup_refuses_bad_input_naming_it(tmp_path, args, message):
    run = run_setup(tmp_path / "out", *args, check=False)
    assert run.returncode != 0
    assert message in run.stderr, run.stderr
    assert not (tmp_path / "out" / "docker-compose.yaml").exists(), "nothing is written before the input is valid"


def test_setup_script_passes_bash_n_and_shellcheck():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck)")
    run = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
