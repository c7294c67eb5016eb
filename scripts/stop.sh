#!/usr/bin/env bash
# Stop what scripts/serve.sh started, worker first (so no flow run is picked up by a worker whose server is
# gone), then the server. Uses the pid files under $PREFECT_HOME/run; already-stopped processes and stale pid
# files are fine. Each process runs in its own session, so its whole process group is signalled (TERM, then KILL
# after BEARING_STOP_TIMEOUT seconds, default 20), which also ends a flow run the worker had started. Last, the
# PostgreSQL cluster of `make serve DB=postgres` (scripts/postgres.sh), when there is one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
RUN_DIR="$PREFECT_HOME/run"
TIMEOUT="${BEARING_STOP_TIMEOUT:-20}"

say() { printf '[stop] %s\n' "$*"; }

# stop NAME: signal the process group recorded in $RUN_DIR/NAME.pid, wait for it to exit, remove the pid file.
stop() {
    local name="$1" pid_file="$RUN_DIR/$1.pid" pid deadline
    if [[ ! -f "$pid_file" ]]; then
        say "$name: not running (no pid file)"
        return 0
    fi
    pid="$(cat "$pid_file")"
    # only a live prefect process is ours: a stale pid may have been reused by something else
    if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null || ! grep -q prefect "/proc/$pid/cmdline" 2>/dev/null; then
        say "$name: not running (stale pid file)"
        rm -f "$pid_file"
        return 0
    fi
    # TERM is Prefect's graceful shutdown (the worker stops polling and interrupts its runs); KILL if it hangs
    for signal in TERM KILL; do
        kill "-$signal" -- "-$pid" 2>/dev/null || kill "-$signal" "$pid" 2>/dev/null || true
        deadline=$((SECONDS + TIMEOUT))
        # wait for the whole group: the worker's flow runs, the server's own children
        while pgrep -g "$pid" >/dev/null 2>&1 && ((SECONDS < deadline)); do
            sleep 0.5
        done
        pgrep -g "$pid" >/dev/null 2>&1 || break
        say "$name: still running ${TIMEOUT}s after SIG$signal"
    done
    rm -f "$pid_file"
    say "$name: stopped (pid $pid)"
}

stop worker
stop server
# the PostgreSQL cluster of `make serve DB=postgres`, after the server that used it
if [[ -f "$PREFECT_HOME/postgres/PG_VERSION" ]]; then
    PREFECT_HOME="$PREFECT_HOME" "$ROOT/scripts/postgres.sh" stop
fi
rm -f "$RUN_DIR/db"
