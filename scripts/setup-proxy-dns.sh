#!/usr/bin/env bash
# Resolves *.proxy.localhost (preview hosts such as 3000-<sandboxId>.proxy.localhost) to 127.0.0.1
# with dnsmasq: writes `address=/proxy.localhost/127.0.0.1` to /etc/dnsmasq.d/daytona-proxy.conf and
# restarts dnsmasq when that changed. With systemd-resolved, also routes the domain to dnsmasq.
# Idempotent: a second run changes nothing. Prints every action it takes.
#
# Usage: scripts/setup-proxy-dns.sh [--domain D] [--address A] [--root DIR] [--no-install] [--no-restart]
#   --domain      domain whose subdomains resolve (default proxy.localhost; any :port is dropped)
#   --address     the address they resolve to (default 127.0.0.1)
#   --root        prefix for every file written (for tests; implies --no-install --no-restart)
#   --no-install  fail instead of installing dnsmasq with apt-get
#   --no-restart  write the configuration only
set -euo pipefail

domain=proxy.localhost
address=127.0.0.1
root=
install=1
restart=1

say() { printf '[proxy-dns] %s\n' "$*"; }
die() { printf '[proxy-dns] error: %s\n' "$*" >&2; exit 1; }

while (($#)); do
    case $1 in
        --domain) domain=${2:?--domain needs a value}; shift 2 ;;
        --address) address=${2:?--address needs a value}; shift 2 ;;
        --root) root=${2:?--root needs a directory}; install=0; restart=0; shift 2 ;;
        --no-install) install=0; shift ;;
        --no-restart) restart=0; shift ;;
        -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
domain=${domain%%:*}
[[ $domain =~ ^[A-Za-z0-9.-]+$ ]] || die "--domain '$domain' is not a domain name"
[[ $address =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "--address '$address' is not an IPv4 address"
[[ -z $root || -d $root ]] || die "--root '$root' is not a directory"

if [[ -z $root && $(id -u) -ne 0 ]]; then
    die "must run as root (it writes /etc/dnsmasq.d); try: sudo $0"
fi

# Writes $2 to file $1 unless it already has exactly that content; returns 0 when it changed.
write_if_changed() {
    local file=$1 content=$2
    if [[ -f $file && $(cat "$file") == "$content" ]]; then
        say "unchanged: $file"
        return 1
    fi
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$content" >"$file.tmp"
    mv "$file.tmp" "$file"
    say "wrote $file"
}

if [[ -z $root ]] && ! command -v dnsmasq >/dev/null 2>&1 && [[ ! -x /usr/sbin/dnsmasq ]]; then
    ((install)) || die "dnsmasq is not installed (apt-get install dnsmasq)"
    say "installing dnsmasq"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dnsmasq
fi

conf="$root/etc/dnsmasq.d/daytona-proxy.conf"
changed=0
if write_if_changed "$conf" "# Written by scripts/setup-proxy-dns.sh: preview hosts of the Daytona proxy.
# Loopback only: no open resolver on the network, and no clash with systemd-resolved's 127.0.0.53.
listen-address=127.0.0.1
bind-interfaces
address=/$domain/$address"; then
    changed=1
fi

# systemd-resolved owns 127.0.0.53 and ignores dnsmasq unless told to route the domain there.
if [[ -n $root || -d /run/systemd/resolve ]]; then
    if write_if_changed "$root/etc/systemd/resolved.conf.d/daytona-proxy.conf" "[Resolve]
DNS=127.0.0.1
Domains=~$domain"; then
        if ((restart)) && command -v systemctl >/dev/null 2>&1; then
            say "restarting systemd-resolved"
            systemctl restart systemd-resolved
        fi
    fi
fi

if ((changed && restart)); then
    if command -v systemctl >/dev/null 2>&1 && systemctl list-unit-files dnsmasq.service >/dev/null 2>&1; then
        say "restarting dnsmasq"
        systemctl restart dnsmasq
    elif command -v service >/dev/null 2>&1; then
        say "restarting dnsmasq"
        service dnsmasq restart
    else
        say "restart dnsmasq yourself to apply the change"
    fi
fi
if [[ -z $root && ! -d /run/systemd/resolve ]] && ! grep -q '^nameserver 127\.0\.0\.1' /etc/resolv.conf 2>/dev/null; then
    say "note: /etc/resolv.conf does not list 'nameserver 127.0.0.1'; add it (first) so lookups reach dnsmasq"
fi
say "done: *.$domain resolves to $address through dnsmasq"
