#!/usr/bin/env bash
# Local orchestration for bearing-fl: a Prefect server on 127.0.0.1, the process work pool, the deployments of
# prefect.yaml and a worker, all in the background, all project-local and offline.
#
#   scripts/serve.sh            (make serve)   start / re-deploy; safe to re-run while everything is up
#   scripts/stop.sh             (make stop)    stop the worker, then the server
#
# Settings (environment):
#   BEARING_PREFECT_PORT   server port (default 4200); the API is http://127.0.0.1:<port>/api
#   PREFECT_HOME           Prefect's home: database, profiles (default <project>/.prefect)
#   BEARING_TZ             time zone of the nightly-retrain schedule (default UTC)
#   BEARING_PROJECT_DIR    project directory the flow runs work in (default: this repository)
#   BEARING_SERVE_TIMEOUT  seconds to wait for the server to answer (default 180)
#   BEARING_DB             the server's database: sqlite (default, $PREFECT_HOME/prefect.db) or postgres (make serve
#                          DB=postgres: a PostgreSQL cluster in $PREFECT_HOME/postgres on 127.0.0.1, started here and
#                          stopped by stop.sh; scripts/postgres.sh)
# Logs: $PREFECT_HOME/logs/{server,worker,deploy}.log; pid files: $PREFECT_HOME/run/{server,worker}.pid.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HOST=127.0.0.1
PORT="${BEARING_PREFECT_PORT:-4200}"
POOL=bearing-local # must match work_pool.name in prefect.yaml
PREFECT="$ROOT/.venv/bin/prefect"
PYTHON="$ROOT/.venv/bin/python"
TIMEOUT="${BEARING_SERVE_TIMEOUT:-180}"

export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
export BEARING_PROJECT_DIR="${BEARING_PROJECT_DIR:-$ROOT}"
export BEARING_TZ="${BEARING_TZ:-UTC}"
export PYTHONPATH="$BEARING_PROJECT_DIR${PYTHONPATH:+:$PYTHONPATH}"
# offline, project-local runtime (same defaults as bearing_core/env.py and the Makefile)
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export GX_ANALYTICS_ENABLED=false PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0
export FLWR_HOME="${FLWR_HOME:-$BEARING_PROJECT_DIR/.flwr}" RAY_TMPDIR="${RAY_TMPDIR:-$BEARING_PROJECT_DIR/.ray}"
# the server binds loopback only; every prefect command below talks to it, never prompts
export PREFECT_SERVER_API_HOST="$HOST" PREFECT_SERVER_API_PORT="$PORT"
export PREFECT_API_URL="http://$HOST:$PORT/api"
export PREFECT_UI_URL="http://$HOST:$PORT"
export PREFECT_CLI_PROMPT=false

RUN_DIR="$PREFECT_HOME/run"
LOG_DIR="$PREFECT_HOME/logs"
mkdir -p "$RUN_DIR" "$LOG_DIR" "$FLWR_HOME" "$RAY_TMPDIR"

say() { printf '[serve] %s\n' "$*"; }

# True when the pid file names a live process of ours (a prefect command), false for a stale file.
running() {
    local pid
    [[ -f "$1" ]] || return 1
    pid="$(cat "$1")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && grep -q prefect "/proc/$pid/cmdline" 2>/dev/null
}

healthy() { curl -fsS --max-time 5 "$PREFECT_API_URL/health" >/dev/null 2>&1; }

# Start "$@" in its own session (process group = its pid, so stop.sh can stop it and its children together).
# A background job of a script starts with SIGINT ignored; Prefect's graceful shutdown (the worker turns SIGTERM
# into SIGINT) needs it back at its default, hence env --default-signal=INT.
start_background() {
    local pid_file="$1" log_file="$2"
    shift 2
    env --default-signal=INT setsid "$@" >>"$log_file" 2>&1 </dev/null &
    echo $! >"$pid_file"
}

# ---------------------------------------------------------------------------------------------------- database
DB="${BEARING_DB:-sqlite}"
case "$DB" in
sqlite) ;;
postgres)
    # the URL holds the cluster's password: only the server process gets it (not written to any log)
    PREFECT_API_DATABASE_CONNECTION_URL="$("$ROOT/scripts/postgres.sh" start)"
    export PREFECT_API_DATABASE_CONNECTION_URL
    ;;
*)
    say "error: BEARING_DB (make serve DB=...) must be sqlite or postgres, got '$DB'" >&2
    exit 2
    ;;
esac

# ---------------------------------------------------------------------------------------------------- server
if running "$RUN_DIR/server.pid"; then
    if [[ -f "$RUN_DIR/db" && "$(cat "$RUN_DIR/db")" != "$DB" ]]; then
        say "warning: the running server uses $(cat "$RUN_DIR/db"), not $DB: make stop first to switch" >&2
    fi
    say "server already running (pid $(cat "$RUN_DIR/server.pid"))"
elif healthy; then
    say "error: something else already answers on $PREFECT_API_URL (not started by this script); stop it or set BEARING_PREFECT_PORT" >&2
    exit 1
else
    say "starting Prefect server on $HOST:$PORT, database $DB (log: $LOG_DIR/server.log)"
    echo "$DB" >"$RUN_DIR/db"
    start_background "$RUN_DIR/server.pid" "$LOG_DIR/server.log" \
        "$PREFECT" server start --host "$HOST" --port "$PORT" --analytics-off
fi

deadline=$((SECONDS + TIMEOUT))
until healthy; do
    if ! running "$RUN_DIR/server.pid"; then
        say "error: the server exited; last lines of $LOG_DIR/server.log:" >&2
        tail -n 20 "$LOG_DIR/server.log" >&2
        rm -f "$RUN_DIR/server.pid"
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        say "error: no answer from $PREFECT_API_URL/health after ${TIMEOUT}s (see $LOG_DIR/server.log)" >&2
        exit 1
    fi
    sleep 1
done
say "server healthy: $PREFECT_API_URL"

# ------------------------------------------------------------------------------------------ pool + deployments
if "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1; then
    say "work pool '$POOL' exists"
else
    "$PREFECT" work-pool create "$POOL" --type process >>"$LOG_DIR/deploy.log" 2>&1
    say "work pool '$POOL' created (type process)"
fi

say "deploying prefect.yaml (log: $LOG_DIR/deploy.log)"
# the pipeline's deployments only: the fleet's (fleet-coordinator, site-*) go to their own machines' pools
# (README "Running across sites"); deploying them here would fail on their missing work pools
if ! "$PREFECT" --no-prompt deploy -n nightly-retrain -n manual-pipeline --prefect-file "$ROOT/prefect.yaml" \
    >>"$LOG_DIR/deploy.log" 2>&1; then
    say "error: prefect deploy failed; last lines of $LOG_DIR/deploy.log:" >&2
    tail -n 30 "$LOG_DIR/deploy.log" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------------- worker
if running "$RUN_DIR/worker.pid"; then
    say "worker already running (pid $(cat "$RUN_DIR/worker.pid"))"
else
    start_background "$RUN_DIR/worker.pid" "$LOG_DIR/worker.log" \
        "$PREFECT" worker start --pool "$POOL" --type process --name "$POOL-worker"
    say "worker started for pool '$POOL' (pid $(cat "$RUN_DIR/worker.pid"), log: $LOG_DIR/worker.log)"
fi

# ---------------------------------------------------------------------------------------------------- summary
# The next nightly run: computed from the deployment's cron schedule by the server's own schedule code, and the
# scheduled flow run the server's scheduler materialises a few seconds after deployment (waited for briefly).
"$PYTHON" - <<'PY'
import asyncio

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.server.schemas.schedules import CronSchedule


async def main() -> None:
    async with get_client() as client:
        for name in ("pipeline/nightly-retrain", "pipeline/manual-pipeline"):
            deployment = await client.read_deployment_by_name(name)
            crons = [f"{s.schedule.cron} ({s.schedule.timezone})" for s in deployment.schedules]
            print(f"[serve] {name}: schedule {', '.join(crons) or 'none'}, pool {deployment.work_pool_name}")
        nightly = await client.read_deployment_by_name("pipeline/nightly-retrain")
        cron = nightly.schedules[0].schedule
        (due,) = await CronSchedule(cron=cron.cron, timezone=cron.timezone).get_dates(n=1)
        print(f"[serve] nightly-retrain next run: {due.isoformat()}")
        for _ in range(10):
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=1,
            )
            if runs:
                print(f"[serve] scheduled by the server as flow run '{runs[0].name}' ({runs[0].expected_start_time})")
                return
            await asyncio.sleep(1)
        print("[serve] warning: the server has not created the scheduled run yet; see the scheduler errors in server.log")


asyncio.run(main())
PY
say "UI:  $PREFECT_UI_URL"
say "API: $PREFECT_API_URL   (in your shell: export PREFECT_API_URL=$PREFECT_API_URL PREFECT_HOME=$PREFECT_HOME)"
