#!/usr/bin/env bash
# The Prefect server's PostgreSQL database (make serve DB=postgres): Debian's postgresql, one cluster under the
# project, listening on 127.0.0.1 only (no unix socket), password auth, started and stopped by serve.sh / stop.sh.
#
#   scripts/postgres.sh start   initdb on first use, start the cluster, create the database; prints the
#                               PREFECT_API_DATABASE_CONNECTION_URL to use (stdout, one line)
#   scripts/postgres.sh stop    stop the cluster (fast shutdown); fine when it is not running
#
# Settings (environment):
#   PREFECT_HOME           the cluster lives in $PREFECT_HOME/postgres (default <project>/.prefect)
#   BEARING_PG_PORT        TCP port on 127.0.0.1 (default 54329)
# The password (random, made at initdb) is in $PREFECT_HOME/postgres.password (mode 600). PostgreSQL refuses to
# run as root: as root the cluster is owned and run by the `postgres` system user the Debian package creates.
# Install: apt-get install postgresql (any major version; its bin directory is found under /usr/lib/postgresql).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
PGDATA="$PREFECT_HOME/postgres"
PWFILE="$PREFECT_HOME/postgres.password"
PGLOG="$PREFECT_HOME/logs/postgres.log"
PGPORT="${BEARING_PG_PORT:-54329}"
HOST=127.0.0.1
DB=prefect
USER_NAME=prefect

say() { printf '[postgres] %s\n' "$*" >&2; }

bindir() {
    local dir
    if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/pg_ctl" ]]; then
        pg_config --bindir
        return
    fi
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -z "$dir" || ! -x "$dir/pg_ctl" ]]; then
        say "error: PostgreSQL server binaries not found (apt-get install postgresql)"
        exit 1
    fi
    echo "$dir"
}

# as_owner CMD...: run CMD as the cluster's owner (the postgres system user when we are root, else ourselves)
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

BIN="$(bindir)"

start() {
    mkdir -p "$PREFECT_HOME/logs"
    if [[ "$(id -u)" == 0 ]] && ! runuser -u postgres -- test -x "$PREFECT_HOME"; then
        say "error: the postgres user cannot enter $PREFECT_HOME (a parent directory is private): serve from a" \
            "directory other users can enter, or set PREFECT_HOME to one"
        exit 1
    fi
    if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
        say "initdb: new cluster in $PGDATA (owner $([[ "$(id -u)" == 0 ]] && echo postgres || id -un))"
        mkdir -p "$PGDATA"
        chmod 700 "$PGDATA"
        (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$PWFILE")
        local pwcopy
        pwcopy="$(mktemp)" # initdb reads the password from a file its user can read; removed right after
        cp "$PWFILE" "$pwcopy"
        if [[ "$(id -u)" == 0 ]]; then
            chown postgres: "$PGDATA" "$pwcopy"
            touch "$PGLOG" && chown postgres: "$PGLOG"
        fi
        as_owner "$BIN/initdb" -D "$PGDATA" -U "$USER_NAME" --pwfile="$pwcopy" --auth=scram-sha-256 \
            --encoding=UTF8 --no-locale >>"$PGLOG" 2>&1 || { say "error: initdb failed (see $PGLOG)"; exit 1; }
        rm -f "$pwcopy"
    fi
    [[ "$(id -u)" == 0 ]] && touch "$PGLOG" && chown postgres: "$PGLOG"
    if as_owner "$BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        say "cluster already running ($PGDATA)"
    else
        say "starting PostgreSQL on $HOST:$PGPORT (log: $PGLOG)"
        as_owner "$BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 \
            -o "-c listen_addresses=$HOST -p $PGPORT -c unix_socket_directories=''" start >/dev/null \
            || { say "error: PostgreSQL did not start; last lines of $PGLOG:"; tail -n 20 "$PGLOG" >&2; exit 1; }
    fi
    local password
    password="$(cat "$PWFILE")"
    if ! PGPASSWORD="$password" "$BIN/psql" -h "$HOST" -p "$PGPORT" -U "$USER_NAME" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
        PGPASSWORD="$password" "$BIN/createdb" -h "$HOST" -p "$PGPORT" -U "$USER_NAME" "$DB"
        say "database '$DB' created"
    fi
    echo "postgresql+asyncpg://$USER_NAME:$password@$HOST:$PGPORT/$DB"
}

stop() {
    if [[ ! -f "$PGDATA/PG_VERSION" ]] || ! as_owner "$BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        say "not running"
        return 0
    fi
    as_owner "$BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
    say "stopped ($PGDATA)"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
