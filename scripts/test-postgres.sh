#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests (scripts/test.sh uses it): no systemd, no cluster of the
# system's, only a data directory of our own on a free loopback port.
#
#   scripts/test-postgres.sh start DIR   initialise DIR, start the server, print its admin URL
#                                         (postgres://daytona:<password>@127.0.0.1:<port>/postgres)
#   scripts/test-postgres.sh stop DIR    stop the server started in DIR (by its PID) and delete DIR
#
# As root the server runs as the `postgres` user (PostgreSQL refuses root). Needs the Debian
# `postgresql` package (/usr/lib/postgresql/<version>/bin).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
(($# == 2)) || usage
action=$1
dir=$2
[[ -n $dir && $dir == /* && $dir != / ]] || { echo "DIR must be an absolute path other than /" >&2; exit 2; }
marker=$dir/.daytona-test-postgres

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[[ -n $bin && -x $bin/initdb ]] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }

as_owner() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case $action in
start)
    mkdir -p "$dir"
    touch "$marker"
    data=$dir/data
    password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
    printf '%s\n' "$password" >"$dir/password"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    [[ $(id -u) -ne 0 ]] || chown -R postgres: "$dir"
    chmod 700 "$dir"
    as_owner "$bin/initdb" -D "$data" -U daytona --pwfile="$dir/password" --auth=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    # Tests open many short-lived pools: allow plenty of connections; durability is not needed.
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start -o \
        "-h 127.0.0.1 -p $port -k $dir -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgres://daytona:$password@127.0.0.1:$port/postgres"
    ;;
stop)
    [[ -f $marker ]] || { echo "$dir was not made by $0; not touching it" >&2; exit 1; }
    pid_file=$dir/data/postmaster.pid
    if [[ -f $pid_file ]]; then
        pid=$(head -n 1 "$pid_file")
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            kill -INT "$pid" # fast shutdown: disconnect clients, then stop
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                kill -KILL "$pid"
            fi
        fi
    fi
    rm -rf -- "$dir"
    ;;
*) usage ;;
esac
