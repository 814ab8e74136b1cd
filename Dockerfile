# The `daytona` server (every role: api, proxy, runner, ssh-gateway) and the static toolbox daemon
# it mounts into sandboxes, on Debian bookworm.
#
#   docker build -t daytona-rs:latest .                        (from the repository root)
#   docker compose -f docker/docker-compose.yaml up -d --build  (builds it as part of the stack)
#
# DAYTONA_ROLES (comma-separated api, proxy, runner, ssh-gateway; default all) picks what a container
# runs. A container with the runner role creates namespaces, cgroups, loop-mounted disks, a bridge
# and iptables rules, so it must run `--privileged` with the host's /sys/fs/cgroup and /dev mounted
# (see docker/docker-compose.yaml); the other roles need no privileges.

FROM rust:1.95-bookworm AS build
# cmake and clang for the C parts of aws-lc-sys and zstd-sys.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake clang \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
# The daemon's explicit --target keeps crt-static off build scripts and proc-macros (as in
# scripts/test.sh); the cache mounts keep crates and objects between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p daytona-cli \
    && RUSTFLAGS='-C target-feature=+crt-static' \
       cargo build --release --locked --target x86_64-unknown-linux-gnu -p daytona-daemon \
    && install -D -m 0755 target/release/daytona /out/daytona \
    && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/daytona-daemon /out/daytona-daemon

FROM debian:bookworm-slim
# What the runner calls on its host: ip (bridge, veth), iptables and ebtables (NAT, network policy;
# bookworm's iptables package provides both, nft-based), mkfs.ext4/resize2fs/e2fsck (per-sandbox
# disks), s3fs (volumes in S3, over /dev/fuse); CA certificates for registries, S3 and OIDC over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates iproute2 iptables e2fsprogs s3fs \
    && rm -rf /var/lib/apt/lists/*
# The server finds the daemon next to its own binary (or at DAYTONA_DAEMON_PATH).
COPY --from=build /out/daytona /out/daytona-daemon /usr/local/bin/
ENV DAYTONA_DATA_DIR=/var/lib/daytona \
    DAYTONA_ROLES=api,proxy,runner,ssh-gateway
VOLUME /var/lib/daytona
# API, proxy, SSH gateway, runner
EXPOSE 3000 4000 2222 3003
ENTRYPOINT ["/usr/local/bin/daytona"]
CMD ["server"]
