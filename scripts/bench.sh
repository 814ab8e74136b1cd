#!/usr/bin/env bash
# Benchmarks a fresh `daytona server`: builds release binaries, starts the server on a temporary
# data dir with free ports and its own bridge and subnet (inside 100.64.0.0/10), runs
# daytona-bench against it, then stops the server by PID and removes what the run made.
#
#   scripts/bench.sh [daytona-bench args...]
#   scripts/bench.sh --only create,exec --runs 20
#   scripts/bench.sh --docker --json bench.json     also measures a Docker engine this script starts
#
# Environment:
#   CARGO_TARGET_DIR        build directory (default: ./target)
#   DAYTONA_CACHE_DIR       base image and Docker data (default: ~/.cache/daytona)
#   DAYTONA_BENCH_TMPDIR    where the run directory goes (default: system temp)
#   DAYTONA_BENCH_SUBNET    sandbox subnet (default: a free /16 in 100.64.0.0/10)
#   DAYTONA_BENCH_SKIP_BUILD=1  use the release binaries already in CARGO_TARGET_DIR
#   DAYTONA_DAEMON_PATH     the static daemon to use (default: the one built here)
#   DAYTONA_BENCH_LOG       copy the server's log there at the end (DAYTONA_LOG sets its filter)
# Meant for root on Debian 12; installs hey (and with --docker, docker.io and skopeo) when missing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
export DAYTONA_CACHE_DIR=${DAYTONA_CACHE_DIR:-$HOME/.cache/daytona}
mkdir -p "$DAYTONA_CACHE_DIR"

step() { printf '\n==> %s\n' "$*" >&2; }

with_docker=0
for arg in "$@"; do
    [[ $arg == --docker ]] && with_docker=1
done

apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing packages $* and not root; install them first" >&2
        exit 1
    fi
    step "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # A package's maintainer scripts must not start services (dockerd) on the host.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    apt-get install -y -q --no-install-recommends "$@" || { ((made_policy)) && rm -f "$policy"; exit 1; }
    if ((made_policy)); then rm -f "$policy"; fi
}

missing=()
command -v hey >/dev/null || missing+=(hey)
if ((with_docker)); then
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v skopeo >/dev/null || missing+=(skopeo)
fi
if ((${#missing[@]})); then apt_install "${missing[@]}"; fi

# --- build -----------------------------------------------------------------------------------------
if [[ ${DAYTONA_BENCH_SKIP_BUILD:-} != 1 ]]; then
    step "cargo build --release -p daytona-cli -p daytona-bench"
    cargo build --release -p daytona-cli -p daytona-bench
    step "cargo build --release (static) -p daytona-daemon"
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu -p daytona-daemon
fi
daytona_bin=$CARGO_TARGET_DIR/release/daytona
bench_bin=$CARGO_TARGET_DIR/release/daytona-bench
daemon_bin=${DAYTONA_DAEMON_PATH:-$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/daytona-daemon}

step "base image"
base_image=$(scripts/build-base-image.sh | tail -n 1)
[[ -f $base_image ]] || { echo "no base image archive at '$base_image'" >&2; exit 1; }

# --- a server of our own ---------------------------------------------------------------------------
run_dir=$(mktemp -d "${DAYTONA_BENCH_TMPDIR:-${TMPDIR:-/tmp}}/daytona-bench.XXXXXX")
[[ -n $run_dir && -d $run_dir ]] || { echo "mktemp failed" >&2; exit 1; }
data_dir=$run_dir/data
mkdir -p "$data_dir"

# Three distinct free ports, a bridge name and two /16s inside 100.64.0.0/10 that no route uses
# (the same rules as tests/sdk/conftest.py; 100.100/16 is the server's default): one for the
# sandboxes, one for the Docker comparison's networks.
read -r api_port proxy_port ssh_port subnet docker_net < <(python3 - "${DAYTONA_BENCH_SUBNET:-}" <<'PY'
import ipaddress, json, random, socket, subprocess, sys
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
ports = [s.getsockname()[1] for s in socks]
routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"],
                                   capture_output=True, text=True).stdout or "[]")
used = [ipaddress.ip_network(r["dst"], strict=False) for r in routes
        if r.get("dst") not in (None, "", "default")]
if sys.argv[1]:
    used.append(ipaddress.ip_network(sys.argv[1], strict=False))
free = [n for n in (ipaddress.ip_network(f"100.{o}.0.0/16") for o in range(64, 128) if o != 100)
        if not any(n.overlaps(u) for u in used)]
random.shuffle(free)
if len(free) < 2:
    sys.exit("no two free /16s in 100.64.0.0/10; remove stale bridges or set DAYTONA_BENCH_SUBNET")
print(*ports, sys.argv[1] or free.pop(), free.pop())
PY
)
bridge=dtnb$(head -c2 /dev/urandom | od -An -tx1 | tr -d ' \n')
api_key=dtn_bench_$(head -c24 /dev/urandom | od -An -tx1 | tr -d ' \n')
log=$run_dir/server.log

server_pid=""
dockerd_pid=""
cleanup() {
    local status=$?
    if [[ -n $dockerd_pid ]]; then stop_dockerd; fi
    if [[ -n $server_pid ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 300); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$server_pid" 2>/dev/null; then
            echo "server $server_pid did not stop within 30 s; killing it" >&2
            kill -KILL "$server_pid" 2>/dev/null || true
        fi
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ -n ${DAYTONA_BENCH_LOG:-} ]]; then cp -- "$log" "$DAYTONA_BENCH_LOG" || true; fi
    # Sandboxes outlive their server by design; a failed run may leave some behind. Then keep
    # their bridge and directory (never remove a directory something is still mounted under).
    local left
    left=$(ls -A "$data_dir/runtime/sandboxes" 2>/dev/null || true)
    if [[ -n $left ]] || grep -qF " $run_dir/" /proc/self/mountinfo; then
        echo "keeping $run_dir and bridge $bridge: sandboxes remain ($(echo $left))" >&2
    else
        ip link del "$bridge" 2>/dev/null || true
        if ((status == 0)); then rm -rf -- "$run_dir"; else echo "server log kept in $log" >&2; fi
    fi
    exit "$status"
}
trap cleanup EXIT INT TERM

step "daytona server (API :$api_port, proxy :$proxy_port, bridge $bridge, subnet $subnet)"
# Only the variables below reach the server (no DAYTONA_* from the caller's shell).
env -i PATH="$PATH" HOME="$HOME" \
    PORT="$api_port" PROXY_PORT="$proxy_port" SSH_GATEWAY_PORT="$ssh_port" \
    ADMIN_API_KEY="$api_key" \
    DAYTONA_DATA_DIR="$data_dir" \
    DEFAULT_SNAPSHOT="oci-archive:$base_image" \
    PROXY_TOOLBOX_BASE_URL="http://127.0.0.1:$proxy_port" \
    PROXY_DOMAIN="proxy.localhost:$proxy_port" \
    DAYTONA_DAEMON_PATH="$daemon_bin" \
    DAYTONA_BIND_ADDRESS=127.0.0.1 \
    DAYTONA_BRIDGE_NAME="$bridge" \
    DAYTONA_SANDBOX_SUBNET="$subnet" \
    DAYTONA_SANDBOX_DNS=none \
    DAYTONA_LOG="${DAYTONA_LOG:-warn}" \
    DEFAULT_ORG_QUOTA_TOTAL_CPU_QUOTA=100000 \
    DEFAULT_ORG_QUOTA_TOTAL_MEMORY_QUOTA=100000 \
    DEFAULT_ORG_QUOTA_TOTAL_DISK_QUOTA=1000000 \
    ADMIN_TOTAL_CPU_QUOTA=0 ADMIN_TOTAL_MEMORY_QUOTA=0 ADMIN_TOTAL_DISK_QUOTA=0 \
    "$daytona_bin" server </dev/null >"$log" 2>&1 &
server_pid=$!
for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$api_port/api/health" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { echo "server exited; log:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$api_port/api/health" >/dev/null || { echo "server not healthy; log:" >&2; tail -50 "$log" >&2; exit 1; }

# --- a Docker engine of our own (--docker) -----------------------------------------------------------
docker_dir=$DAYTONA_CACHE_DIR/docker-bench
had_docker0=0
start_dockerd() {
    mkdir -p "$docker_dir/data" "$run_dir/docker"
    # Off the host firewall, every address inside 100.64.0.0/10, cgroups where the bench reads them.
    cat >"$run_dir/docker/daemon.json" <<EOF
{
  "data-root": "$docker_dir/data",
  "exec-root": "$run_dir/docker/exec",
  "pidfile": "$run_dir/docker/dockerd.pid",
  "hosts": ["unix://$run_dir/docker/docker.sock"],
  "iptables": false,
  "ip6tables": false,
  "ip-forward": false,
  "ip-masq": false,
  "bip": "${docker_net%.0.0/16}.255.1/24",
  "default-address-pools": [{"base": "${docker_net%/16}/17", "size": 24}],
  "exec-opts": ["native.cgroupdriver=cgroupfs"],
  "log-driver": "none"
}
EOF
    ip link show docker0 >/dev/null 2>&1 && had_docker0=1
    step "dockerd (data root $docker_dir/data)"
    dockerd --config-file "$run_dir/docker/daemon.json" >"$run_dir/docker/dockerd.log" 2>&1 &
    dockerd_pid=$!
    export DOCKER_HOST=unix://$run_dir/docker/docker.sock
    for _ in $(seq 150); do
        docker version >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || { cat "$run_dir/docker/dockerd.log" >&2; exit 1; }
        sleep 0.2
    done
    docker version >/dev/null || { tail -30 "$run_dir/docker/dockerd.log" >&2; exit 1; }
    if ! docker image inspect daytona-base:bench >/dev/null 2>&1; then
        step "loading the base image into Docker"
        skopeo copy --dest-daemon-host "$DOCKER_HOST" "oci-archive:$base_image" docker-daemon:daytona-base:bench
    fi
}
stop_dockerd() {
    local ids
    ids=$(docker ps -aq --filter label=daytona-bench=1 2>/dev/null || true)
    [[ -n $ids ]] && docker rm -f $ids >/dev/null 2>&1
    kill -TERM "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
    wait "$dockerd_pid" 2>/dev/null || true
    dockerd_pid=""
    # dockerd leaves its default bridge and its (now empty) parent cgroups behind; remove them
    # unless the bridge was there before (rmdir removes a cgroup only when it is empty).
    if ((!had_docker0)); then
        ip link del docker0 2>/dev/null || true
        for cg in /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker; do
            if [[ -d $cg ]]; then rmdir "$cg" 2>/dev/null || true; fi
        done
    fi
}
if ((with_docker)); then start_dockerd; fi

# --- the benchmark ---------------------------------------------------------------------------------
step "daytona-bench $*"
"$bench_bin" --api-url "http://127.0.0.1:$api_port/api" --api-key "$api_key" --server-pid "$server_pid" "$@"
