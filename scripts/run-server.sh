#!/usr/bin/env bash
# Builds and runs `daytona server` on embedded defaults. Extra arguments go to `daytona server`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

cargo build --release -p daytona-cli
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu -p daytona-daemon

if [[ -z "${DEFAULT_SNAPSHOT:-}" ]]; then
    image=$(scripts/build-base-image.sh | tail -n 1)
    export DEFAULT_SNAPSHOT="oci-archive:$image"
fi
export DAYTONA_DAEMON_PATH="${DAYTONA_DAEMON_PATH:-$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/daytona-daemon}"
exec "$CARGO_TARGET_DIR/release/daytona" server "$@"
