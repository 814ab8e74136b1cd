#!/usr/bin/env bash
# shellcheck disable=SC2016  # the awk programs are single-quoted on purpose
# Puts the compose deployment (docker/docker-compose.yaml) behind a public domain with HTTPS:
#   - generates every secret (openssl rand -hex 16) and keeps them across re-runs,
#   - points every URL at the domain (https), Dex's issuer and redirect URIs included, and sets
#     Dex's static user to your email and (bcrypt-hashed) password,
#   - binds every published port to 127.0.0.1 except the SSH gateway's 2222,
#   - writes a Caddyfile: DOMAIN -> API (Dex under /dex/*), proxy.DOMAIN and *.proxy.DOMAIN -> proxy,
#     PgAdmin (:5050) and the registry UI (:5100) behind HTTP basic auth, the MinIO console (:9001),
#     certificates by DNS-01 (wildcard) through your DNS provider,
#   - installs Caddy with that provider's module as a systemd service (Linux) or launchd agent
#     (macOS), opens ports 22, 80, 443 and 2222 (ufw or firewalld) and starts the stack.
# docs/deployment.md describes the result and how to troubleshoot it.
#
# Usage: scripts/setup-domain-oss-deployment.sh [options]
# Without options it asks for what it needs. Every option also has an environment variable;
# a flag wins over the variable.
#
#   --domain DOMAIN              SETUP_DOMAIN              e.g. daytona.example.com
#   --email EMAIL                SETUP_EMAIL               Let's Encrypt contact and Dex login
#   --password PASSWORD          SETUP_PASSWORD            Dex login password (8+ characters)
#   --dns-provider NAME          SETUP_DNS_PROVIDER        cloudflare, digitalocean, route53 or hetzner
#   --dns-api-token TOKEN        SETUP_DNS_API_TOKEN       cloudflare, digitalocean, hetzner
#   --aws-access-key-id ID       SETUP_AWS_ACCESS_KEY_ID   route53
#   --aws-secret-access-key KEY  SETUP_AWS_SECRET_ACCESS_KEY
#   --aws-region REGION          SETUP_AWS_REGION          route53 (default us-east-1)
#   --db-user NAME               SETUP_DB_USER             PostgreSQL user (default daytona)
#   --db-password PASSWORD       SETUP_DB_PASSWORD         (default: generated)
#   --minio-user NAME            SETUP_MINIO_USER          MinIO root user (default daytona)
#   --minio-password PASSWORD    SETUP_MINIO_PASSWORD      (default: generated)
#   --registry-user NAME         SETUP_REGISTRY_USER       registry admin / registry UI login (default daytona)
#   --registry-password PASSWORD SETUP_REGISTRY_PASSWORD   (default: generated)
#   --pgadmin-email EMAIL        SETUP_PGADMIN_EMAIL       PgAdmin login (default: --email)
#   --pgadmin-password PASSWORD  SETUP_PGADMIN_PASSWORD    (default: generated)
#   --output-dir DIR             SETUP_OUTPUT_DIR          where the configuration goes (default: docker/,
#                                                          in place); another directory gets its own copy
#   --skip-install               SETUP_SKIP_INSTALL=1      only write files: no Caddy install, service,
#                                                          firewall or `docker compose up`
#   --non-interactive            SETUP_NON_INTERACTIVE=1   never prompt; a missing value is an error
#
# Generated values are kept in OUTPUT_DIR/.setup-secrets.env (mode 600) and reused by later runs, so a
# re-run never changes a key that running services and stored data depend on; passwords given on
# the command line replace the stored ones. Generated passwords are printed at the end of each run.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
template_dir=$repo/docker
os=$(uname -s)

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
note() { printf '==> %s\n' "$*" >&2; }
usage() {
    sed -n '/^# Usage:/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# --- inputs ------------------------------------------------------------------------------------------

domain=${SETUP_DOMAIN:-}
email=${SETUP_EMAIL:-}
password=${SETUP_PASSWORD:-}
dns_provider=${SETUP_DNS_PROVIDER:-}
dns_api_token=${SETUP_DNS_API_TOKEN:-}
aws_access_key_id=${SETUP_AWS_ACCESS_KEY_ID:-}
aws_secret_access_key=${SETUP_AWS_SECRET_ACCESS_KEY:-}
aws_region=${SETUP_AWS_REGION:-}
db_user=${SETUP_DB_USER:-}
db_password=${SETUP_DB_PASSWORD:-}
minio_user=${SETUP_MINIO_USER:-}
minio_password=${SETUP_MINIO_PASSWORD:-}
registry_user=${SETUP_REGISTRY_USER:-}
registry_password=${SETUP_REGISTRY_PASSWORD:-}
pgadmin_email=${SETUP_PGADMIN_EMAIL:-}
pgadmin_password=${SETUP_PGADMIN_PASSWORD:-}
out_dir=${SETUP_OUTPUT_DIR:-$template_dir}
skip_install=${SETUP_SKIP_INSTALL:-0}
non_interactive=${SETUP_NON_INTERACTIVE:-0}

while (($#)); do
    opt=$1
    case $opt in
    -h | --help)
        usage
        exit 0
        ;;
    --skip-install) skip_install=1 ;;
    --non-interactive) non_interactive=1 ;;
    --*)
        (($# >= 2)) || die "$opt needs a value (see --help)"
        value=$2
        shift
        case $opt in
        --domain) domain=$value ;;
        --email) email=$value ;;
        --password) password=$value ;;
        --dns-provider) dns_provider=$value ;;
        --dns-api-token) dns_api_token=$value ;;
        --aws-access-key-id) aws_access_key_id=$value ;;
        --aws-secret-access-key) aws_secret_access_key=$value ;;
        --aws-region) aws_region=$value ;;
        --db-user) db_user=$value ;;
        --db-password) db_password=$value ;;
        --minio-user) minio_user=$value ;;
        --minio-password) minio_password=$value ;;
        --registry-user) registry_user=$value ;;
        --registry-password) registry_password=$value ;;
        --pgadmin-email) pgadmin_email=$value ;;
        --pgadmin-password) pgadmin_password=$value ;;
        --output-dir) out_dir=$value ;;
        *) die "unknown option $opt (see --help)" ;;
        esac
        ;;
    *) die "unexpected argument '$opt' (see --help)" ;;
    esac
    shift
done
[[ $skip_install == 1 || $skip_install == 0 ]] || die "SETUP_SKIP_INSTALL must be 0 or 1, not '$skip_install'"
[[ $non_interactive == 1 || $non_interactive == 0 ]] ||
    die "SETUP_NON_INTERACTIVE must be 0 or 1, not '$non_interactive'"
if [[ $non_interactive == 0 && ! -t 0 ]]; then
    non_interactive=1
fi

# ask VAR "question" [secret]: prompts for VAR when it is empty and prompting is allowed.
ask() {
    local var=$1 question=$2 secret=${3:-} answer
    [[ -z ${!var} ]] || return 0
    [[ $non_interactive == 0 ]] || return 0
    if [[ -n $secret ]]; then
        read -r -s -p "$question: " answer
        echo >&2
    else
        read -r -p "$question: " answer
    fi
    printf -v "$var" '%s' "$answer"
}

# require VAR "option": fails naming the option and variable when VAR is still empty.
require() {
    local var=$1 option=$2
    [[ -n ${!var} ]] || die "no value for $option (or SETUP_$(printf '%s' "${option#--}" | tr 'a-z-' 'A-Z_'))"
}

ask domain "Domain (e.g. daytona.example.com)"
require domain --domain
domain=$(printf '%s' "$domain" | tr '[:upper:]' '[:lower:]')
label='[a-z0-9]([a-z0-9-]*[a-z0-9])?'
[[ $domain =~ ^$label(\.$label)+$ ]] || die "--domain '$domain' is not a DNS name such as daytona.example.com"

ask email "Email (Let's Encrypt contact and dashboard login)"
require email --email
[[ $email =~ ^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]+$ ]] || die "--email '$email' is not an email address"
case $(printf '%s' "${email#*@}" | tr '[:upper:]' '[:lower:]') in
example.com | example.org | example.net)
    die "--email '$email': Let's Encrypt refuses contact addresses at ${email#*@}; use a real mailbox"
    ;;
esac

ask password "Dashboard password for $email (8+ characters)" secret
require password --password
((${#password} >= 8)) || die "--password must have at least 8 characters"

ask dns_provider "DNS provider (cloudflare, digitalocean, route53, hetzner)"
require dns_provider --dns-provider
dns_provider=$(printf '%s' "$dns_provider" | tr '[:upper:]' '[:lower:]')
case $dns_provider in
cloudflare | digitalocean | hetzner)
    ask dns_api_token "$dns_provider API token" secret
    require dns_api_token --dns-api-token
    ;;
route53)
    ask aws_access_key_id "AWS access key id (Route 53)"
    require aws_access_key_id --aws-access-key-id
    ask aws_secret_access_key "AWS secret access key (Route 53)" secret
    require aws_secret_access_key --aws-secret-access-key
    aws_region=${aws_region:-us-east-1}
    ;;
*) die "--dns-provider '$dns_provider': expected cloudflare, digitalocean, route53 or hetzner" ;;
esac

ask db_user "PostgreSQL user [daytona]"
ask db_password "PostgreSQL password [generated]" secret
ask minio_user "MinIO root user [daytona]"
ask minio_password "MinIO root password (8+ characters) [generated]" secret
ask registry_user "Registry user [daytona]"
ask registry_password "Registry password [generated]" secret
ask pgadmin_email "PgAdmin email [$email]"
ask pgadmin_password "PgAdmin password [generated]" secret
db_user=${db_user:-daytona}
minio_user=${minio_user:-daytona}
registry_user=${registry_user:-daytona}
pgadmin_email=${pgadmin_email:-$email}

# Names land in YAML, JSON and the Caddyfile unquoted: keep them plain.
[[ $db_user =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--db-user '$db_user': letters, digits and _ only"
[[ $minio_user =~ ^[A-Za-z0-9._-]{3,}$ ]] || die "--minio-user '$minio_user': 3+ letters, digits, '.', '_' or '-'"
[[ $registry_user =~ ^[A-Za-z0-9._-]+$ ]] || die "--registry-user '$registry_user': letters, digits, '.', '_' or '-'"
[[ $pgadmin_email =~ ^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]+$ ]] ||
    die "--pgadmin-email '$pgadmin_email' is not an email address"
for var in password db_password minio_password registry_password pgadmin_password dns_api_token \
    aws_secret_access_key aws_access_key_id aws_region; do
    [[ ${!var} != *$'\n'* && ${!var} != *$'\r'* ]] || die "the value for $var contains a line break"
done
[[ -z $minio_password || ${#minio_password} -ge 8 ]] || die "--minio-password must have at least 8 characters"

for tool in openssl htpasswd awk; do
    command -v "$tool" >/dev/null 2>&1 || case $tool in
    htpasswd) die "htpasswd not found: install apache2-utils (Debian/Ubuntu) or httpd-tools (Fedora)" ;;
    *) die "$tool not found: install it first" ;;
    esac
done

# --- secrets -------------------------------------------------------------------------------------

mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
state=$out_dir/.setup-secrets.env

# The stored value of KEY in the state file, if any.
stored() {
    [[ -f $state ]] || return 0
    awk -v key="$1" 'index($0, key "=") == 1 { print substr($0, length(key) + 2); exit }' "$state"
}

# keep VAR KEY: VAR as given, else the value stored under KEY, else a new random one.
keep() {
    local var=$1 key=$2 value
    if [[ -z ${!var} ]]; then
        value=$(stored "$key")
        [[ -n $value ]] || value=$(openssl rand -hex 16)
        printf -v "$var" '%s' "$value"
    fi
}

encryption_key='' encryption_salt='' proxy_api_key='' runner_api_key='' ssh_gateway_api_key=''
health_check_api_key='' otel_collector_api_key=''
keep encryption_key ENCRYPTION_KEY
keep encryption_salt ENCRYPTION_SALT
keep proxy_api_key PROXY_API_KEY
keep runner_api_key RUNNER_API_KEY
keep ssh_gateway_api_key SSH_GATEWAY_API_KEY
keep health_check_api_key HEALTH_CHECK_API_KEY
keep otel_collector_api_key OTEL_COLLECTOR_API_KEY
keep db_password DB_PASSWORD
keep minio_password MINIO_PASSWORD
keep registry_password REGISTRY_PASSWORD
keep pgadmin_password PGADMIN_PASSWORD

umask 077
{
    echo "# Generated by scripts/setup-domain-oss-deployment.sh; reused by its next run. Keep private."
    for pair in ENCRYPTION_KEY:encryption_key ENCRYPTION_SALT:encryption_salt PROXY_API_KEY:proxy_api_key \
        RUNNER_API_KEY:runner_api_key SSH_GATEWAY_API_KEY:ssh_gateway_api_key \
        HEALTH_CHECK_API_KEY:health_check_api_key OTEL_COLLECTOR_API_KEY:otel_collector_api_key \
        DB_PASSWORD:db_password MINIO_PASSWORD:minio_password REGISTRY_PASSWORD:registry_password \
        PGADMIN_PASSWORD:pgadmin_password; do
        var=${pair#*:}
        printf '%s=%s\n' "${pair%%:*}" "${!var}"
    done
} >"$state.tmp"
mv "$state.tmp" "$state"
umask 022

# bcrypt (cost 10), as Dex and Caddy read it.
bcrypt() {
    printf '%s\n' "$1" | htpasswd -BinC 10 user | cut -d: -f2
}

# --- configuration files -------------------------------------------------------------------------

# The templates are the repository's docker/ files; another output dir gets a copy of them first.
if [[ $out_dir != "$template_dir" ]]; then
    mkdir -p "$out_dir/dex" "$out_dir/otel" "$out_dir/pgadmin4"
    cp "$template_dir/docker-compose.yaml" "$out_dir/docker-compose.yaml"
    cp "$template_dir/dex/config.yaml" "$out_dir/dex/config.yaml"
    cp "$template_dir/otel/config.yaml" "$out_dir/otel/config.yaml"
    cp "$template_dir/pgadmin4/servers.json" "$out_dir/pgadmin4/servers.json"
fi
compose=$out_dir/docker-compose.yaml
dex=$out_dir/dex/config.yaml

# rewrite FILE AWK-PROGRAM [awk args...]: runs the program over FILE and replaces it.
rewrite() {
    local file=$1 program=$2
    shift 2
    awk "$@" "$program" "$file" >"$file.tmp" || {
        rm -f "$file.tmp"
        die "could not update $file"
    }
    mv "$file.tmp" "$file"
}

# compose_env NAME VALUE: queues NAME=VALUE for every service's environment list that has NAME
# (apply_compose_env writes them in one pass). Values that YAML or compose would read differently
# are double-quoted; `$` is doubled against compose's interpolation.
compose_items=''
compose_env() {
    local name=$1 value=$2
    local plain='^[A-Za-z0-9_./:@{}%+,=<>-]([A-Za-z0-9_./:@{}%+,=<> -]*[A-Za-z0-9_./:@{}%+,=<>-])?$'
    value=${value//\$/\$\$}
    if [[ $value =~ $plain && $value != *': '* ]]; then
        compose_items+="$name=$value"$'\n'
    else
        value=${value//\\/\\\\}
        value=${value//\"/\\\"}
        compose_items+="\"$name=$value\""$'\n'
    fi
}

apply_compose_env() {
    SETUP_ITEMS=$compose_items rewrite "$compose" '
        BEGIN {
            n = split(ENVIRON["SETUP_ITEMS"], items, "\n")
            for (i = 1; i <= n; i++) if (items[i] != "") {
                name = items[i]; sub(/^"/, "", name); sub(/=.*/, "", name)
                item[name] = items[i]
            }
        }
        match($0, /^ *- "?[A-Za-z0-9_]+=/) {
            name = $0; sub(/^ *- "?/, "", name); sub(/=.*/, "", name)
            if (name in item) { sub(/-.*/, ""); print $0 "- " item[name]; found[name] = 1; next }
        }
        { print }
        END {
            for (name in item) if (!(name in found)) missing = missing " " name
            if (missing == "") exit 0
            print "the compose file has no" missing " to set; is it the template from docker/?" > "/dev/stderr"
            exit 1
        }'
}

note "writing $compose"
https_base=https://$domain
compose_env PROXY_DOMAIN "proxy.$domain"
compose_env PROXY_PROTOCOL https
compose_env PROXY_TEMPLATE_URL "https://{{PORT}}-{{sandboxId}}.proxy.$domain"
compose_env COOKIE_DOMAIN "proxy.$domain"
compose_env DASHBOARD_URL "$https_base/dashboard"
compose_env DASHBOARD_BASE_API_URL "$https_base"
compose_env PUBLIC_OIDC_DOMAIN "$https_base/dex"
compose_env OIDC_PUBLIC_DOMAIN "$https_base/dex"
compose_env SSH_GATEWAY_URL "$domain:2222"
compose_env SSH_GATEWAY_COMMAND "ssh -p 2222 {{TOKEN}}@$domain"
compose_env ENCRYPTION_KEY "$encryption_key"
compose_env ENCRYPTION_SALT "$encryption_salt"
compose_env PROXY_API_KEY "$proxy_api_key"
compose_env DEFAULT_RUNNER_API_KEY "$runner_api_key"
compose_env DAYTONA_RUNNER_TOKEN "$runner_api_key"
compose_env SSH_GATEWAY_API_KEY "$ssh_gateway_api_key"
compose_env API_KEY "$ssh_gateway_api_key"
compose_env HEALTH_CHECK_API_KEY "$health_check_api_key"
compose_env OTEL_COLLECTOR_API_KEY "$otel_collector_api_key"
compose_env DB_USERNAME "$db_user"
compose_env DB_PASSWORD "$db_password"
compose_env POSTGRES_USER "$db_user"
compose_env POSTGRES_PASSWORD "$db_password"
compose_env MINIO_ROOT_USER "$minio_user"
compose_env MINIO_ROOT_PASSWORD "$minio_password"
compose_env S3_ACCESS_KEY "$minio_user"
compose_env S3_SECRET_KEY "$minio_password"
compose_env AWS_ACCESS_KEY_ID "$minio_user"
compose_env AWS_SECRET_ACCESS_KEY "$minio_password"
compose_env TRANSIENT_REGISTRY_ADMIN "$registry_user"
compose_env TRANSIENT_REGISTRY_PASSWORD "$registry_password"
compose_env INTERNAL_REGISTRY_ADMIN "$registry_user"
compose_env INTERNAL_REGISTRY_PASSWORD "$registry_password"
compose_env PGADMIN_DEFAULT_EMAIL "$pgadmin_email"
compose_env PGADMIN_DEFAULT_PASSWORD "$pgadmin_password"
# Behind a domain PgAdmin asks for its own login too.
compose_env PGADMIN_CONFIG_SERVER_MODE True
apply_compose_env

# Published ports: only the SSH gateway stays reachable directly; Caddy fronts the rest. The UIs
# Caddy serves on their usual ports move to loopback ports of their own, since Caddy binds those.
rewrite "$compose" '
    /^[a-z]/ { in_services = ($0 ~ /^services:/) }
    in_services && /^  [a-z0-9-]+:/ { service = $1; sub(/:.*/, "", service) }
    match($0, /^ *- *"?([0-9.]+:)?[0-9]+:[0-9]+"?( *#.*)?$/) {
        indent = $0; sub(/-.*/, "", indent)
        comment = ""; if (index($0, "#")) comment = " " substr($0, index($0, "#"))
        spec = $0; sub(/^ *- */, "", spec); sub(/ *#.*/, "", spec); gsub(/"/, "", spec)
        n = split(spec, part, ":"); host = part[n - 1]; target = part[n]
        if (service == "pgadmin" && target == "80") host = 15050
        if (service == "minio" && target == "9001") host = 19001
        if (service == "registry-ui" && target == "80") host = 15100
        print indent "- " (host == "2222" ? "" : "127.0.0.1:") host ":" target comment
        next
    }
    { print }'

# Another output dir builds the image from this repository.
if [[ $out_dir != "$template_dir" ]]; then
    SETUP_REPO=$repo rewrite "$compose" '
        /^ *context: *\.\.$/ { sub(/context:.*/, "context: " ENVIRON["SETUP_REPO"]) }
        { print }'
fi

note "writing $dex"
dex_hash=$(bcrypt "$password")
SETUP_URIS="$https_base
$https_base/dashboard
$https_base/api/oauth2-redirect.html
$https_base/api/docs/oauth2-redirect.html
https://proxy.$domain/callback" \
    SETUP_ISSUER="$https_base/dex" SETUP_EMAIL="$email" SETUP_HASH="$dex_hash" rewrite "$dex" '
    function indent_of(s) { match(s, /^ */); return RLENGTH }
    /^issuer:/ { print "issuer: " ENVIRON["SETUP_ISSUER"]; next }
    skipping && /^ *- / && indent_of($0) > key_indent { next }
    { skipping = 0 }
    /^ *redirectURIs: *$/ {
        print; key_indent = indent_of($0); skipping = 1
        n = split(ENVIRON["SETUP_URIS"], uri, "\n")
        pad = ""; for (i = 0; i < key_indent + 2; i++) pad = pad " "
        for (i = 1; i <= n; i++) print pad "- " uri[i]
        next
    }
    /^[a-zA-Z]/ { in_passwords = ($0 ~ /^staticPasswords:/) }
    in_passwords && /^ *(- )?email:/ && !done_email { sub(/email:.*/, "email: " ENVIRON["SETUP_EMAIL"]); done_email = 1 }
    in_passwords && /^ *(- )?hash:/ && !done_hash { sub(/hash:.*/, "hash: \"" ENVIRON["SETUP_HASH"] "\""); done_hash = 1 }
    in_passwords && /^ *(- )?username:/ && !done_user { sub(/username:.*/, "username: admin"); done_user = 1 }
    { print }'
grep -q "^issuer: $https_base/dex\$" "$dex" || die "$dex: the issuer line was not updated"

rewrite "$out_dir/pgadmin4/servers.json" '
    /"Username":/ { sub(/"Username": *"[^"]*"/, "\"Username\": \"" user "\"") }
    { print }' -v user="$db_user"

case $dns_provider in
cloudflare)
    dns_env="CLOUDFLARE_API_TOKEN=$dns_api_token"
    acme_dns="cloudflare {env.CLOUDFLARE_API_TOKEN}"
    ;;
digitalocean)
    dns_env="DO_AUTH_TOKEN=$dns_api_token"
    acme_dns="digitalocean {env.DO_AUTH_TOKEN}"
    ;;
hetzner)
    dns_env="HETZNER_API_TOKEN=$dns_api_token"
    acme_dns="hetzner {env.HETZNER_API_TOKEN}"
    ;;
route53)
    # The module reads the standard AWS variables.
    dns_env="AWS_ACCESS_KEY_ID=$aws_access_key_id
AWS_SECRET_ACCESS_KEY=$aws_secret_access_key
AWS_REGION=$aws_region"
    acme_dns="route53"
    ;;
esac
caddy_module=github.com/caddy-dns/$dns_provider

caddy_dir=$out_dir/caddy
mkdir -p "$caddy_dir"
note "writing $caddy_dir/Caddyfile"
umask 077
printf '%s\n' "$dns_env" >"$caddy_dir/caddy.env"
umask 022
cat >"$caddy_dir/Caddyfile" <<EOF
# Generated by scripts/setup-domain-oss-deployment.sh for $domain; re-run it to change.
# Certificates come from Let's Encrypt through a DNS-01 challenge ($caddy_module), which is what a
# wildcard certificate for *.proxy.$domain needs; Caddy renews them itself.
{
	email $email
	acme_dns $acme_dns
}

# Dashboard and API; Dex (the OIDC provider) under /dex.
$domain {
	handle /dex/* {
		reverse_proxy 127.0.0.1:5556
	}
	handle {
		reverse_proxy 127.0.0.1:3000
	}
}

# Sandbox previews ({port}-{sandboxId}.proxy.$domain) and the proxy's login callback.
proxy.$domain, *.proxy.$domain {
	reverse_proxy 127.0.0.1:4000
}

# PgAdmin: basic auth first, then PgAdmin's own login.
$domain:5050 {
	basic_auth {
		$pgadmin_email $(bcrypt "$pgadmin_password")
	}
	reverse_proxy 127.0.0.1:15050
}

# MinIO console: its own login page (its API calls and WebSockets do not carry basic auth).
$domain:9001 {
	reverse_proxy 127.0.0.1:19001
}

# Registry UI.
$domain:5100 {
	basic_auth {
		$registry_user $(bcrypt "$registry_password")
	}
	reverse_proxy 127.0.0.1:15100
}
EOF

# --- Caddy, service, firewall, stack -------------------------------------------------------------

sudo_if_needed() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

install_caddy() {
    local bin=/usr/local/bin/caddy arch
    if [[ -x $bin ]] && "$bin" list-modules 2>/dev/null | grep -qx "dns.providers.$dns_provider"; then
        note "Caddy with $caddy_module is already installed"
        return
    fi
    note "installing Caddy with $caddy_module"
    if command -v xcaddy >/dev/null 2>&1; then
        xcaddy build --with "$caddy_module" --output "$out_dir/caddy/caddy.bin"
    else
        case $(uname -m) in
        x86_64 | amd64) arch=amd64 ;;
        aarch64 | arm64) arch=arm64 ;;
        *) die "no Caddy download for $(uname -m); install xcaddy and re-run" ;;
        esac
        local os_name
        os_name=$(printf '%s' "$os" | tr '[:upper:]' '[:lower:]')
        curl -fsSL -o "$out_dir/caddy/caddy.bin" \
            "https://caddyserver.com/api/download?os=$os_name&arch=$arch&p=$caddy_module" ||
            die "downloading Caddy with $caddy_module failed"
    fi
    chmod 0755 "$out_dir/caddy/caddy.bin"
    sudo_if_needed mkdir -p /usr/local/bin
    sudo_if_needed mv "$out_dir/caddy/caddy.bin" "$bin"
}

install_service_linux() {
    note "installing the caddy systemd service"
    sudo_if_needed mkdir -p /etc/caddy
    sudo_if_needed install -m 0644 "$caddy_dir/Caddyfile" /etc/caddy/Caddyfile
    sudo_if_needed install -m 0600 "$caddy_dir/caddy.env" /etc/caddy/caddy.env
    id caddy >/dev/null 2>&1 ||
        sudo_if_needed useradd --system --home-dir /var/lib/caddy --create-home --shell /usr/sbin/nologin caddy
    sudo_if_needed tee /etc/systemd/system/caddy.service >/dev/null <<'EOF'
[Unit]
Description=Caddy (TLS and routing for Daytona)
After=network-online.target
Wants=network-online.target

[Service]
User=caddy
Group=caddy
EnvironmentFile=/etc/caddy/caddy.env
ExecStart=/usr/local/bin/caddy run --environ --config /etc/caddy/Caddyfile
ExecReload=/usr/local/bin/caddy reload --config /etc/caddy/Caddyfile --force
Restart=on-failure
AmbientCapabilities=CAP_NET_BIND_SERVICE
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
EOF
    sudo_if_needed systemctl daemon-reload
    sudo_if_needed systemctl enable caddy
    sudo_if_needed systemctl restart caddy
}

install_service_macos() {
    local agent=$HOME/Library/LaunchAgents/io.daytona.caddy.plist conf=/usr/local/etc/caddy
    local logs=/usr/local/var/log/caddy
    note "installing the caddy launchd agent"
    sudo_if_needed mkdir -p "$conf" "$logs"
    sudo_if_needed chown "$(id -u)" "$conf" "$logs"
    install -m 0644 "$caddy_dir/Caddyfile" "$conf/Caddyfile"
    mkdir -p "$(dirname "$agent")"
    {
        cat <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>Label</key><string>io.daytona.caddy</string>
	<key>ProgramArguments</key>
	<array>
		<string>/usr/local/bin/caddy</string><string>run</string>
		<string>--config</string><string>$conf/Caddyfile</string>
	</array>
	<key>EnvironmentVariables</key>
	<dict>
EOF
        while IFS='=' read -r key value; do
            value=${value//&/&amp;}
            value=${value//</&lt;}
            printf '\t\t<key>%s</key><string>%s</string>\n' "$key" "$value"
        done <"$caddy_dir/caddy.env"
        cat <<EOF
	</dict>
	<key>RunAtLoad</key><true/>
	<key>KeepAlive</key><true/>
	<key>StandardOutPath</key><string>$logs/access.log</string>
	<key>StandardErrorPath</key><string>$logs/error.log</string>
</dict>
</plist>
EOF
    } >"$agent"
    chmod 0600 "$agent"
    launchctl unload "$agent" 2>/dev/null || true
    launchctl load -w "$agent"
}

open_firewall() {
    local port
    if command -v ufw >/dev/null 2>&1; then
        note "opening ports 22, 80, 443 and 2222 (ufw)"
        for port in 22 80 443 2222; do sudo_if_needed ufw allow "$port/tcp" >/dev/null; done
    elif command -v firewall-cmd >/dev/null 2>&1; then
        note "opening ports 22, 80, 443 and 2222 (firewalld)"
        for port in 22 80 443 2222; do sudo_if_needed firewall-cmd --permanent --add-port="$port/tcp" >/dev/null; done
        sudo_if_needed firewall-cmd --reload >/dev/null
    else
        note "no ufw or firewalld: make sure ports 22, 80, 443 and 2222 are open"
    fi
}

start_stack() {
    local compose_cmd
    if docker compose version >/dev/null 2>&1; then
        compose_cmd=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        compose_cmd=(docker-compose)
    else
        die "Docker Compose not found: install Docker and Docker Compose, then run: docker compose -f $compose up -d --build"
    fi
    note "starting the stack (${compose_cmd[*]} -f $compose up -d --build)"
    "${compose_cmd[@]}" -f "$compose" up -d --build
}

if [[ $skip_install == 0 ]]; then
    command -v curl >/dev/null 2>&1 || command -v xcaddy >/dev/null 2>&1 || die "curl not found: install it first"
    install_caddy
    case $os in
    Linux)
        install_service_linux
        open_firewall
        ;;
    Darwin) install_service_macos ;;
    *) die "unsupported system $os: install $caddy_dir/Caddyfile with Caddy yourself" ;;
    esac
    start_stack
fi

cat <<EOF

Configuration for $domain written to $out_dir
  dashboard and API:  $https_base  (login $email)
  Dex (OIDC):         $https_base/dex
  sandbox previews:   https://{port}-{sandboxId}.proxy.$domain
  SSH:                ssh -p 2222 <token>@$domain
  PgAdmin:            $https_base:5050  (basic auth and login: $pgadmin_email / $pgadmin_password)
  MinIO console:      $https_base:9001  ($minio_user / $minio_password)
  registry UI:        $https_base:5100  ($registry_user / $registry_password)
Generated keys are in $state (keep it private; later runs reuse it).
DNS records needed (DNS only, not proxied): A $domain, A or CNAME proxy.$domain, A or CNAME *.proxy.$domain.
EOF
if [[ $skip_install == 1 ]]; then
    cat <<EOF
Not installed (--skip-install): install Caddy with $caddy_module, use $caddy_dir/Caddyfile with the
variables in $caddy_dir/caddy.env, open ports 22, 80, 443 and 2222, then run:
  docker compose -f $compose up -d --build
EOF
fi
