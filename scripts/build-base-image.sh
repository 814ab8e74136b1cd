#!/usr/bin/env bash
# Builds the default sandbox image: Debian bookworm (minbase) with python3, git, ca-certificates,
# sudo, procps, openssh-sftp-server (the SSH gateway's SFTP subsystem), nodejs and ts-node (code-run
# for javascript and typescript) and a passwordless-sudo user `daytona` (1000:1000), packed as an OCI archive
# (a tar of an OCI image layout) with one gzip layer. No registry and no OCI tooling needed.
#
# Usage: scripts/build-base-image.sh [OUT]
#   OUT defaults to ${DAYTONA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/daytona}/base-bookworm.oci.tar
#   DAYTONA_BASE_MIRROR overrides the Debian mirror (default: the one apt uses, else deb.debian.org).
#   DAYTONA_BASE_REBUILD=1 rebuilds even when OUT is valid.
# Progress goes to stderr; the last stdout line is the archive path.
set -euo pipefail

# Bump when the recipe changes so cached archives from an older recipe are rebuilt.
readonly RECIPE=3
readonly SUITE=bookworm
readonly PACKAGES=python3,git,ca-certificates,sudo,procps,openssh-sftp-server,nodejs,ts-node
readonly REF_NAME=latest

log() { printf '[base-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cache_dir=${DAYTONA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/daytona}
out=${1:-$cache_dir/base-bookworm.oci.tar}
case $out in /*) ;; *) out=$PWD/$out ;; esac

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Prints the digest hex that follows "key" in a one-line JSON document, in order of appearance.
json_digests() { grep -o '"digest":"sha256:[0-9a-f]\{64\}"' | cut -d: -f3 | tr -d '"'; }

# An archive is valid when its index names our recipe, and the manifest and config hash to their
# digests and every layer blob is present with the advertised size. Layers are not re-hashed here:
# the image store verifies every blob when it unpacks.
archive_valid() {
    local archive=$1 listing index manifest_hex manifest config_hex layer_hex size
    [[ -f $archive ]] || return 1
    listing=$(tar -tvf "$archive" 2>/dev/null) || return 1
    index=$(tar -xOf "$archive" index.json 2>/dev/null) || return 1
    grep -q "\"org.daytona.base.recipe\":\"$RECIPE\"" <<<"$index" || return 1
    manifest_hex=$(json_digests <<<"$index" | head -n1)
    [[ -n $manifest_hex ]] || return 1
    manifest=$(tar -xOf "$archive" "blobs/sha256/$manifest_hex" 2>/dev/null) || return 1
    [[ $(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1) == "$manifest_hex" ]] || return 1
    config_hex=$(json_digests <<<"$manifest" | head -n1)
    [[ $(tar -xOf "$archive" "blobs/sha256/$config_hex" 2>/dev/null | sha256sum | cut -d' ' -f1) == "$config_hex" ]] || return 1
    while read -r layer_hex size; do
        awk -v p="blobs/sha256/$layer_hex" -v s="$size" '$6 == p && $3 == s { found = 1 } END { exit !found }' \
            <<<"$listing" || return 1
    done < <(grep -o '"digest":"sha256:[0-9a-f]\{64\}","size":[0-9]*' <<<"$manifest" | tail -n +2 |
        sed 's/.*sha256:\([0-9a-f]*\)","size":\([0-9]*\)/\1 \2/')
}

# The Debian mirror apt already uses for $SUITE (deb822 or one-line sources), else deb.debian.org.
detect_mirror() {
    local file uri=
    for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file && -z $uri ]] || continue
        uri=$(awk -v suite="$SUITE" '
            function stanza_end() { if (!done && uris != "" && (" " suites " ") ~ (" " suite " ")) { print uris; done = 1; exit } uris = ""; suites = "" }
            /^[[:space:]]*$/ { stanza_end(); next }
            /^URIs:/ { uris = $2 }
            /^Suites:/ { $1 = ""; suites = $0 }
            /^deb[[:space:]]/ {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; done = 1; exit }
            }
            END { stanza_end() }
        ' "$file")
    done
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

if [[ ${DAYTONA_BASE_REBUILD:-0} != 1 ]] && archive_valid "$out"; then
    log "cached: $out"
    printf '%s\n' "$out"
    exit 0
fi

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot and ownership-preserving tar need it)"
if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap >&2; }
fi

mirror=${DAYTONA_BASE_MIRROR:-$(detect_mirror)}
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.base-image.XXXXXX")
rootfs=$work/rootfs
cleanup() {
    # A failed debootstrap or chroot step may leave proc mounted inside the rootfs.
    if mountpoint -q "$rootfs/proc" 2>/dev/null; then umount -l "$rootfs/proc" || true; fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
started=$SECONDS

log "debootstrap $SUITE (minbase + $PACKAGES) from $mirror"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
log "debootstrap done in $((SECONDS - started))s"

log "adding user daytona (1000:1000) with passwordless sudo"
chroot "$rootfs" /usr/sbin/groupadd --gid 1000 daytona
chroot "$rootfs" /usr/sbin/useradd --uid 1000 --gid 1000 --create-home --home-dir /home/daytona \
    --shell /bin/bash daytona
printf 'daytona ALL=(ALL) NOPASSWD:ALL\n' >"$rootfs/etc/sudoers.d/91-daytona"
chmod 0440 "$rootfs/etc/sudoers.d/91-daytona"
chroot "$rootfs" /usr/sbin/visudo -c -q -f /etc/sudoers.d/91-daytona

log "cleaning apt lists, caches, logs and host leftovers"
chroot "$rootfs" /usr/bin/apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/var/tmp/* "$rootfs"/debootstrap
# Slim like Debian's -slim images: no translations, manuals or docs (copyright files stay), now
# and for packages installed later inside a sandbox.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-daytona-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
find "$rootfs/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
# The sandbox runtime writes these per sandbox; keep the host's values out of the image.
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/machine-id"
printf 'daytona\n' >"$rootfs/etc/hostname"
# /dev is a tmpfs in every sandbox, so its device nodes need not be in the layer.
find "$rootfs/dev" -mindepth 1 -delete

log "packing layer (tar --numeric-owner --xattrs, gzip)"
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
layer_tar=$work/layer.tar
# Entries are named without a "./" prefix, sorted for stable output.
mapfile -t top_level < <(find "$rootfs" -mindepth 1 -maxdepth 1 -printf '%P\n' | sort)
(cd "$rootfs" && tar --numeric-owner --xattrs --xattrs-include='*' --sort=name \
    -cf "$layer_tar" -- "${top_level[@]}")
diff_id=$(sha256_of "$layer_tar")
gzip -n -6 "$layer_tar"
layer_hex=$(sha256_of "$layer_tar.gz")
layer_size=$(stat -c %s "$layer_tar.gz")
mv "$layer_tar.gz" "$layout/blobs/sha256/$layer_hex"
log "layer sha256:$layer_hex ($layer_size bytes, $(du -sm "$rootfs" | cut -f1) MB unpacked)"

created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# Config.User stays empty: the runtime starts its daemon as root, which drops to the user the
# sandbox asks for (daytona by default).
config='{"created":"'"$created"'","architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8"],"Cmd":["/bin/bash"],"WorkingDir":"/home/daytona","Labels":{"org.opencontainers.image.title":"daytona-base-'"$SUITE"'"}},"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]},"history":[{"created":"'"$created"'","created_by":"scripts/build-base-image.sh: debootstrap --variant=minbase --include='"$PACKAGES"' '"$SUITE"'"}]}'
printf '%s' "$config" >"$work/config.json"
config_hex=$(sha256_of "$work/config.json")
config_size=$(stat -c %s "$work/config.json")
mv "$work/config.json" "$layout/blobs/sha256/$config_hex"

manifest='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config_hex"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer_hex"'","size":'"$layer_size"'}]}'
printf '%s' "$manifest" >"$work/manifest.json"
manifest_hex=$(sha256_of "$work/manifest.json")
manifest_size=$(stat -c %s "$work/manifest.json")
mv "$work/manifest.json" "$layout/blobs/sha256/$manifest_hex"

printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest_hex"'","size":'"$manifest_size"',"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"'"$REF_NAME"'","org.daytona.base.recipe":"'"$RECIPE"'"}}]}' \
    >"$layout/index.json"

log "writing archive"
tar --numeric-owner --owner=0 --group=0 --sort=name -C "$layout" -cf "$work/image.tar" oci-layout index.json blobs
archive_valid "$work/image.tar" || die "built archive failed validation"
mv -f "$work/image.tar" "$out"
log "built $out ($(stat -c %s "$out") bytes, manifest sha256:$manifest_hex) in $((SECONDS - started))s"
printf '%s\n' "$out"
