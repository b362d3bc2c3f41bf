#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests.
#
#   .ci/postgres.sh start DIR   # prints the DSN for WBACTOR_TEST_PG_DSN
#   .ci/postgres.sh stop DIR
#
# start makes a fresh cluster in DIR (an empty directory, e.g. from mktemp -d)
# and runs it on 127.0.0.1 only, on the first free port from 55432, with its
# unix socket in DIR. The server runs as a non-root user (postgres refuses
# root): `postgres` if it exists, else a system user `wbactor-ci`. When
# initdb/pg_ctl are neither on PATH nor in /usr/lib/postgresql/*/bin, Debian's
# `postgresql` package is installed first. stop stops it and removes DIR.
set -euo pipefail

log() {
    printf 'postgres.sh: %s\n' "$*" >&2
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

find_bindir() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        # Symlinks such as /usr/local/bin/pg_ctl: the real directory has
        # createdb beside it.
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
        printf '%s\n' "$dir"
        return 0
    fi
    return 1
}

install_postgres() {
    log "initdb/pg_ctl not found: installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q >&2
    as_root apt-get install -y -q postgresql >&2
}

# The user the server runs as; created when running as root without one.
server_user() {
    if [ "$(id -u)" -ne 0 ]; then
        id -un
    elif id postgres >/dev/null 2>&1; then
        echo postgres
    else
        id wbactor-ci >/dev/null 2>&1 ||
            useradd --system --no-create-home --shell /usr/sbin/nologin wbactor-ci
        echo wbactor-ci
    fi
}

as_user() {
    local user=$1
    shift
    if [ "$(id -un)" = "$user" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$user" -- "$@"
    else
        su -s /bin/sh "$user" -c "$(printf '%q ' "$@")"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    local dir=$1 bindir user port
    bindir="$(find_bindir)" || {
        install_postgres
        bindir="$(find_bindir)" || {
            log "no initdb/pg_ctl even after installing postgresql"
            exit 1
        }
    }
    user="$(server_user)"
    port=55432
    while port_in_use "$port"; do
        port=$((port + 1))
        if [ "$port" -gt 55532 ]; then
            log "no free port in 55432-55532"
            exit 1
        fi
    done
    mkdir -p "$dir"
    chown "$user" "$dir"
    chmod 700 "$dir"
    log "PostgreSQL from $bindir as $user on 127.0.0.1:$port, data in $dir/data"
    as_user "$user" "$bindir/initdb" -D "$dir/data" -U wbactor -A trust \
        -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    # fsync and friends off: a test server that is thrown away.
    as_user "$user" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >&2 || {
        cat "$dir/server.log" >&2
        exit 1
    }
    "$bindir/createdb" -h 127.0.0.1 -p "$port" -U wbactor wbactor_test
    printf 'postgresql://wbactor@127.0.0.1:%s/wbactor_test\n' "$port"
}

stop() {
    local dir=$1 bindir user
    if [ -f "$dir/data/postmaster.pid" ] && bindir="$(find_bindir)"; then
        user="$(stat -c %U "$dir/data")"
        as_user "$user" "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
start) start "${2:?usage: $0 start DIR}" ;;
stop) stop "${2:?usage: $0 stop DIR}" ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
