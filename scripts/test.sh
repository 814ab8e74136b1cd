#!/usr/bin/env bash
# The project's test command: builds everything, runs the Rust tests, then drives a real `daytona server`
# with the official Python SDK (tests/sdk). Meant for root on Debian 12; installs what it needs.
#
#   scripts/test.sh [pytest args...]     e.g. scripts/test.sh -k files -x (benchmarks: scripts/bench.sh)
#
# Environment:
#   CARGO_TARGET_DIR          build directory (default: ./target)
#   DAYTONA_CACHE_DIR         venv, base image and other caches (default: ~/.cache/daytona)
#   DAYTONA_TEST_SKIP_CARGO=1 skip `cargo test` (SDK suite only)
#   DAYTONA_TEST_SKIP_POSTGRES=1 skip the PostgreSQL runs (the store's cargo tests on PostgreSQL and
#                             the SDK suite's control-plane tests against a server on PostgreSQL)
# Exits non-zero if any stage fails; later test stages still run so one report shows everything.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
export DAYTONA_CACHE_DIR=${DAYTONA_CACHE_DIR:-$HOME/.cache/daytona}
mkdir -p "$DAYTONA_CACHE_DIR"

step() { printf '\n==> %s\n' "$*" >&2; }
failures=()

# --- system packages -------------------------------------------------------------------------------
# package:command pairs; a package is installed only when its command is missing.
needed=(debootstrap:debootstrap redis-server:redis-server iproute2:ip iptables:iptables procps:ps e2fsprogs:mkfs.ext4 e2fsprogs:resize2fs openssh-client:ssh docker-registry:docker-registry skopeo:skopeo apache2-utils:htpasswd docker-compose:docker-compose shellcheck:shellcheck s3fs:s3fs)
missing=()
for pair in "${needed[@]}"; do
    command -v "${pair#*:}" >/dev/null 2>&1 || [[ -x /usr/sbin/${pair#*:} || -x /sbin/${pair#*:} ]] \
        || missing+=("${pair%%:*}")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [[ ${DAYTONA_TEST_SKIP_POSTGRES:-} != 1 ]]; then
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
fi
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing packages ${missing[*]} and not root; install them first" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- build -----------------------------------------------------------------------------------------
step "cargo build -p daytona-cli -p daytona-bench"
cargo build -p daytona-cli -p daytona-bench
step "cargo build (static) -p daytona-daemon"
# The explicit --target keeps crt-static off build scripts and proc-macros.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --target x86_64-unknown-linux-gnu -p daytona-daemon
daytona_bin=$CARGO_TARGET_DIR/debug/daytona
bench_bin=$CARGO_TARGET_DIR/debug/daytona-bench
daemon_bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/debug/daytona-daemon

step "base image"
base_image=$(scripts/build-base-image.sh | tail -n 1)
if [[ ! -f $base_image ]]; then
    echo "scripts/build-base-image.sh did not print an existing archive path (got '$base_image')" >&2
    exit 1
fi
echo "base image: $base_image" >&2

# The runtime's tests start real sandboxes: give them the base image's root filesystem, unpacked once
# per image (single gzip layer; numeric owners and setuid bits kept).
test_rootfs=$DAYTONA_CACHE_DIR/test-rootfs/$(stat -c '%s-%Y' "$base_image")
if [[ ! -d $test_rootfs ]]; then
    step "unpacking the base image for the runtime tests"
    rm -rf "$DAYTONA_CACHE_DIR/test-rootfs"
    mkdir -p "$test_rootfs.tmp"
    python3 - "$base_image" "$test_rootfs.tmp" <<'PY'
import json, sys, tarfile
archive, dest = sys.argv[1], sys.argv[2]
with tarfile.open(archive) as oci:
    blob = lambda d: oci.extractfile("blobs/" + d.replace(":", "/"))
    index = json.load(oci.extractfile("index.json"))
    manifest = json.load(blob(index["manifests"][0]["digest"]))
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=blob(layer["digest"]), mode="r|*") as t:
            t.extractall(dest, numeric_owner=True, filter="fully_trusted")
PY
    mv "$test_rootfs.tmp" "$test_rootfs"
fi
export DAYTONA_TEST_ROOTFS=$test_rootfs

# --- PostgreSQL ----------------------------------------------------------------------------------
# A throwaway server of our own (data dir under /tmp, loopback port), stopped by its PID on exit.
# The store's cargo tests and the SDK suite's PostgreSQL run create a fresh database in it each.
use_postgres=$([[ ${DAYTONA_TEST_SKIP_POSTGRES:-} == 1 ]] && echo 0 || echo 1)
if ((use_postgres)); then
    step "starting a throwaway PostgreSQL"
    pg_dir=$(mktemp -d /tmp/daytona-test-pg.XXXXXX)
    trap 'scripts/test-postgres.sh stop "$pg_dir"' EXIT
    DAYTONA_TEST_POSTGRES_URL=$(scripts/test-postgres.sh start "$pg_dir")
    export DAYTONA_TEST_POSTGRES_URL
else
    unset DAYTONA_TEST_POSTGRES_URL
fi

# --- Rust tests ------------------------------------------------------------------------------------
# Plain `cargo test` rather than nextest: it also runs doctests and custom-harness tests as they are.
if [[ ${DAYTONA_TEST_SKIP_CARGO:-} != 1 ]]; then
    step "cargo test --workspace"
    DAYTONA_DAEMON_PATH=$daemon_bin cargo test --workspace --no-fail-fast || failures+=("cargo test")
fi

# --- SDK suite -------------------------------------------------------------------------------------
venv=$DAYTONA_CACHE_DIR/venv-sdk
requirements=tests/sdk/requirements.txt
stamp="$(sha256sum "$requirements" | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version)' | head -n 1)"
if [[ ! -x $venv/bin/python || $(cat "$venv/.requirements-stamp" 2>/dev/null) != "$stamp" ]]; then
    step "creating $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --disable-pip-version-check -q -r "$requirements"
    echo "$stamp" >"$venv/.requirements-stamp"
fi

export DAYTONA_BIN=$daytona_bin DAYTONA_DAEMON_PATH=$daemon_bin DAYTONA_BASE_IMAGE=$base_image DAYTONA_BENCH_BIN=$bench_bin
# Each run gets its own temporary root: pytest's shared /tmp/pytest-of-<user> keeps only the last three
# sessions, so a concurrent run on the same machine would delete this one's files mid-test.
basetemp=$(mktemp -d /tmp/daytona-tests.XXXXXX)
step "pytest tests/sdk (SQLite)"
DAYTONA_TEST_DB=sqlite "$venv/bin/python" -m pytest tests/sdk -v --basetemp "$basetemp/sqlite" "$@" || failures+=("SDK suite (SQLite)")
if ((use_postgres)); then
    # conftest keeps only the control-plane modules here; exit code 5 means the caller's own
    # selection left none of them, which is not a failure.
    step "pytest tests/sdk (PostgreSQL: control-plane tests)"
    rc=0
    DAYTONA_TEST_DB=postgres "$venv/bin/python" -m pytest tests/sdk -v --basetemp "$basetemp/postgres" "$@" || rc=$?
    ((rc == 0 || rc == 5)) || failures+=("SDK suite (PostgreSQL)")
fi

if ((${#failures[@]})); then
    step "FAILED: ${failures[*]} (test files kept in $basetemp)"
    exit 1
fi
rm -rf "$basetemp"
step "all tests passed"
