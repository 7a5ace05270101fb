# shellcheck shell=bash
# Throwaway PostgreSQL + Redis for chathub's tests, on loopback, on free ports.
#
#   source .ci/services.sh install   # apt-get the Debian packages if missing (needs root)
#   source .ci/services.sh start     # start both; exports CHATHUB_TEST_POSTGRES_DSN,
#                                    #   CHATHUB_TEST_REDIS_URL and CHATHUB_SERVICES_DIR
#   source .ci/services.sh status    # show what runs
#   source .ci/services.sh stop      # stop both, delete their data, unset the variables
#
# Sourcing is what lets `start` export the variables into your shell. Executed as a plain
# command (`bash .ci/services.sh start`) it prints `export ...` lines instead, so
# `eval "$(bash .ci/services.sh start)"` works too. .ci/run uses this same file.
#
# Both services live in a fresh temp folder ($CHATHUB_SERVICES_DIR): nothing persists and
# no system-wide PostgreSQL or Redis is touched. PostgreSQL trusts every connection from
# 127.0.0.1 (user postgres, no password) and runs with fsync off: for tests only. As root,
# PostgreSQL runs as the `postgres` user (initdb refuses root).
#
# Knobs: CHATHUB_PG_BIN (folder with initdb/pg_ctl; default /usr/lib/postgresql/15/bin, else
# the newest /usr/lib/postgresql/*/bin), CHATHUB_SERVICES_TIMEOUT (seconds to wait for each
# service to answer, default 60).
#
# Sourcing it does not change your shell's options: the work runs in a child bash.

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # ---- sourced: a thin wrapper that runs this file as a child process ---------------
    _CHS_SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
    chathub_services() {
        case ${1:-} in
            start)
                local _chs_out
                _chs_out=$(bash "$_CHS_SELF" start) || return 1
                eval "$_chs_out"
                ;;
            stop)
                bash "$_CHS_SELF" stop || return 1
                unset CHATHUB_SERVICES_DIR CHATHUB_TEST_POSTGRES_DSN CHATHUB_TEST_REDIS_URL
                ;;
            install | status) bash "$_CHS_SELF" "$1" ;;
            *) echo "usage: source .ci/services.sh {install|start|status|stop}" >&2; return 2 ;;
        esac
    }
    if [ $# -gt 0 ]; then chathub_services "$@"; fi
    return $?
fi

# ---- executed ----------------------------------------------------------------------------
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Where `stop`/`status` find the last started set when CHATHUB_SERVICES_DIR is not set.
pointer="${TMPDIR:-/tmp}/chathub-services-$(id -u).last"

pg_bin() {
    if [ -n "${CHATHUB_PG_BIN:-}" ]; then echo "$CHATHUB_PG_BIN"; return 0; fi
    if [ -x /usr/lib/postgresql/15/bin/initdb ]; then echo /usr/lib/postgresql/15/bin; return 0; fi
    local d best=
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ]; then best=$d; fi
    done
    [ -n "$best" ] || return 1
    echo "$best"
}

# Run a PostgreSQL program as the postgres user when we are root.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    "$(command -v python3 || command -v python)" -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

cmd_install() {
    local missing=()
    if ! pg_bin >/dev/null || [ ! -x "$(pg_bin)/pg_isready" ]; then missing+=(postgresql); fi
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    if [ ${#missing[@]} -eq 0 ]; then
        log "postgresql, redis-server and chromium are installed"
        return 0
    fi
    log "missing: ${missing[*]} — installing postgresql redis-server chromium"
    [ "$(id -u)" -eq 0 ] || die "not root: run  sudo apt-get install postgresql redis-server chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends postgresql redis-server chromium
}

cmd_start() {
    local timeout=${CHATHUB_SERVICES_TIMEOUT:-60}
    local pgbin dir pg_port redis_port deadline
    pgbin=$(pg_bin) || die "PostgreSQL binaries not found (run: source .ci/services.sh install)"
    command -v redis-server >/dev/null || die "redis-server not found (run: source .ci/services.sh install)"

    dir=$(mktemp -d "${TMPDIR:-/tmp}/chathub-services.XXXXXX")
    chmod 755 "$dir"
    # On any failure from here on, stop whatever did start.
    trap 'rc=$?; if [ $rc -ne 0 ]; then CHATHUB_SERVICES_DIR='"$dir"' cmd_stop >/dev/null 2>&1 || true; fi' EXIT

    # PostgreSQL: own cluster in $dir/pg, TCP on loopback only, its socket in our folder.
    mkdir -p "$dir/pg"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir/pg"; fi
    as_pg "$pgbin/initdb" -D "$dir/pg/data" -U postgres --auth=trust -E UTF8 --locale=C \
        --no-sync >"$dir/pg/initdb.log" 2>&1 \
        || { cat "$dir/pg/initdb.log" >&2; die "initdb failed"; }
    echo "$pgbin" >"$dir/pg/bin"
    pg_port=$(free_port)
    as_pg "$pgbin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w -t "$timeout" \
        -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $dir/pg -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null \
        || { tail -n 30 "$dir/pg/server.log" >&2 || true; die "PostgreSQL did not start"; }

    # Redis: no persistence, loopback only.
    mkdir -p "$dir/redis"
    redis_port=$(free_port)
    echo "$redis_port" >"$dir/redis/port"
    redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
        --dir "$dir/redis" --daemonize yes --pidfile "$dir/redis/redis.pid" \
        --logfile "$dir/redis/redis.log" \
        || { tail -n 30 "$dir/redis/redis.log" >&2 || true; die "redis-server did not start"; }

    # Wait until both answer.
    deadline=$((SECONDS + timeout))
    until "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U postgres -t 2; do
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$dir/pg/server.log" >&2; die "PostgreSQL not ready after ${timeout}s"; }
        sleep 0.2
    done
    until [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = PONG ]; do
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$dir/redis/redis.log" >&2; die "Redis not ready after ${timeout}s"; }
        sleep 0.2
    done

    cat >"$dir/env" <<ENV
export CHATHUB_SERVICES_DIR=$dir
export CHATHUB_TEST_POSTGRES_DSN=postgresql://postgres@127.0.0.1:$pg_port/postgres
export CHATHUB_TEST_REDIS_URL=redis://127.0.0.1:$redis_port/0
ENV
    echo "$dir" >"$pointer" 2>/dev/null || true
    log "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port, Redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$redis_port (state in $dir)"
    cat "$dir/env"
}

state_dir() {
    local dir=${CHATHUB_SERVICES_DIR:-}
    if [ -z "$dir" ] && [ -f "$pointer" ]; then dir=$(cat "$pointer"); fi
    echo "$dir"
}

cmd_stop() {
    local dir rc=0 pgbin pid port
    dir=$(state_dir)
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then log "nothing to stop"; return 0; fi
    case $dir in */chathub-services.*) ;; *) die "refusing to remove unexpected folder $dir" ;; esac
    if [ -f "$dir/pg/data/postmaster.pid" ]; then
        pgbin=$(cat "$dir/pg/bin" 2>/dev/null || pg_bin)
        if ! as_pg "$pgbin/pg_ctl" -D "$dir/pg/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
            pid=$(head -n 1 "$dir/pg/data/postmaster.pid" 2>/dev/null || true)
            if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
            log "PostgreSQL did not stop cleanly (killed)"
            rc=1
        fi
    fi
    if [ -f "$dir/redis/redis.pid" ]; then
        pid=$(cat "$dir/redis/redis.pid")
        port=$(cat "$dir/redis/port" 2>/dev/null || true)
        if [ -n "$port" ]; then redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true; fi
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -rf "$dir"
    if [ -f "$pointer" ] && [ "$(cat "$pointer")" = "$dir" ]; then rm -f "$pointer"; fi
    log "stopped PostgreSQL and Redis, removed $dir"
    return "$rc"
}

cmd_status() {
    local dir pg rp
    dir=$(state_dir)
    if [ -z "$dir" ] || [ ! -f "$dir/env" ]; then echo "not running"; return 1; fi
    cat "$dir/env"
    # shellcheck disable=SC1091
    . "$dir/env"
    pg=${CHATHUB_TEST_POSTGRES_DSN##*:}; pg=${pg%%/*}
    rp=${CHATHUB_TEST_REDIS_URL##*:}; rp=${rp%%/*}
    "$(cat "$dir/pg/bin")/pg_isready" -h 127.0.0.1 -p "$pg" || true
    echo "redis 127.0.0.1:$rp: $(redis-cli -h 127.0.0.1 -p "$rp" ping 2>&1)"
}

case ${1:-} in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: source .ci/services.sh {install|start|status|stop}   (or: bash .ci/services.sh ...)" >&2; exit 2 ;;
esac
