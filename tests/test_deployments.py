"""Prefect deployments: scripts/serve.sh brings up a real local server (temp PREFECT_HOME, free port), the process
work pool, both deployments of prefect.yaml and a worker; scripts/stop.sh takes them down. The pipeline itself is
never run here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy
from helpers.prefect_runs import NIGHTLY_OVERRIDES
from helpers.processes import free_port
from helpers.sockets import listening_sockets, process_tree

ROOT = Path(__file__).resolve().parents[1]
POOL = "bearing-local"
TZ = "Europe/Paris"  # not the default: proves the schedule's time zone comes from BEARING_TZ

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Served:
    """What serve.sh started: its environment, the API URL and the pid files' content."""

    def __init__(self, env: dict[str, str], port: int, output: str) -> None:
        self.env = env
        self.port = port
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.output = output
        self.run_dir = Path(env["PREFECT_HOME"]) / "run"

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in sorted(self.run_dir.glob("*.pid"))}

    def query(self, fn: Any) -> Any:
        """Run ``await fn(client)`` with a Prefect client on this server."""
        from prefect.client.orchestration import PrefectClient

        async def main() -> Any:
            async with PrefectClient(api=self.api_url) as client:
                return await fn(client)

        return asyncio.run(main())


def _script(name: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / name)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path_factory.mktemp("prefect_home")),
        BEARING_PREFECT_PORT=str(port),
        BEARING_TZ=TZ,
        BEARING_STOP_TIMEOUT="10",
    )
    started = _script("serve.sh", env, timeout=240)
    served = Served(env, port, started.stdout + started.stderr)
    try:
        assert started.returncode == 0, served.output
        yield served
    finally:
        pids = served.pids()
        stopped = _script("stop.sh", env, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not served.pids(), "pid files left behind"
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [name for name, pid in pids.items() if _alive(pid)], stopped.stdout


def test_serve_starts_server_and_worker_and_reports_the_ui(served: Served) -> None:
    assert set(served.pids()) == {"server", "worker"}
    assert all(_alive(pid) for pid in served.pids().values())
    assert f"UI:  http://127.0.0.1:{served.api_url.split(':')[2].split('/')[0]}" in served.output
    assert "nightly-retrain next run: " in served.output
    # the server (and anything it started) listens on loopback only, on the port it was given
    listeners = listening_sockets(process_tree(served.pids()["server"]))
    assert served.port in {s.port for s in listeners}, sorted(map(str, listeners))
    assert all(s.loopback for s in listeners), sorted(map(str, listeners))
    logs = Path(served.env["PREFECT_HOME"]) / "logs"
    assert {"server.log", "worker.log", "deploy.log"} <= {p.name for p in logs.iterdir()}

    async def pool_and_workers(client: Any) -> tuple[Any, list[Any]]:
        pool = await client.read_work_pool(POOL)
        for _ in range(60):  # the worker registers with its first heartbeat
            workers = await client.read_workers_for_work_pool(POOL)
            if workers:
                return pool, workers
            await asyncio.sleep(0.5)
        return pool, []

    pool, workers = served.query(pool_and_workers)
    assert pool.type == "process"
    assert [w.name for w in workers] == [f"{POOL}-worker"]


def test_both_deployments_exist_with_their_schedules_and_the_pipeline_parameters(served: Served) -> None:
    async def deployments(client: Any) -> dict[str, Any]:
        return {
            name: await client.read_deployment_by_name(f"pipeline/{name}")
            for name in ("nightly-retrain", "manual-pipeline")
        }

    from bearing_core.params import PipelineParams

    # bearing_core/params.py is the one source of truth for the defaults; prefect.yaml lists only overrides
    flow_defaults = PipelineParams().model_dump(mode="json")
    found = served.query(deployments)
    nightly, manual = found["nightly-retrain"], found["manual-pipeline"]
    for deployment in (nightly, manual):
        assert deployment.entrypoint == "flows/pipeline.py:pipeline_flow"
        assert deployment.work_pool_name == POOL
        assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
        assert deployment.job_variables["working_dir"] == str(ROOT)
        assert deployment.job_variables["env"]["BEARING_PROJECT_DIR"] == str(ROOT)
        schema = deployment.parameter_openapi_schema
        props = schema["properties"]
        assert set(props) == set(flow_defaults)  # the UI form offers every section of the parameters
        groups = {
            name: schema["definitions"][props[name]["$ref"].rsplit("/", 1)[1]]["properties"]
            for name in ("data", "federated", "threshold", "alarms")
        }
        assert {"raw_dir", "train_until", "relative_inputs"} <= set(groups["data"])
        assert {"rounds", "strategy", "partition", "seed"} <= set(groups["federated"])
        assert groups["federated"]["rounds"]["type"] == "integer" and groups["federated"]["rounds"]["default"] == 20
        assert groups["data"]["raw_dir"]["default"] == "data/raw/demo"
        assert "fedprox" in json.dumps(groups["federated"]["strategy"]) and not schema.get("required")
        for name, default in flow_defaults.items():  # the form's defaults are the model's
            assert props[name]["default"] == default, name
        # prefect.yaml's parameters only name flow parameters and override defaults by the defaults' own values
        assert deployment.parameters and set(deployment.parameters) <= set(flow_defaults)
        overrides = NIGHTLY_OVERRIDES if deployment is nightly else {}
        expected = PipelineParams.model_validate(overrides) if overrides else PipelineParams()
        assert PipelineParams.model_validate(deployment.parameters) == expected
        assert deployment.parameters["data"]["raw_dir"] == "data/raw/demo"

    assert manual.schedules == []
    assert len(nightly.schedules) == 1
    schedule = nightly.schedules[0]
    assert schedule.active and schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == TZ

    from prefect.server.schemas.schedules import CronSchedule

    (due,) = asyncio.run(CronSchedule(cron=schedule.schedule.cron, timezone=TZ).get_dates(n=1))
    now = datetime.now(UTC)
    assert now < due <= now + timedelta(days=1)
    local = due.astimezone(ZoneInfo(TZ))
    assert (local.hour, local.minute) == (2, 0)
    assert f"nightly-retrain next run: {due.isoformat()}" in served.output


@pytest.mark.xfail(
    sqlalchemy.__version__ >= "2.1",
    reason="Prefect 3.7.7's scheduler cannot insert flow runs with SQLAlchemy 2.1 (bulk INSERT of the hybrid "
    "'state' attribute raises InvalidRequestError): pin SQLAlchemy<2.1",
    run=False,
)
def test_the_server_schedules_the_next_nightly_run(served: Served) -> None:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def scheduled(client: Any) -> list[Any]:
        nightly = await client.read_deployment_by_name("pipeline/nightly-retrain")
        manual = await client.read_deployment_by_name("pipeline/manual-pipeline")
        for _ in range(60):
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id, manual.id]))
            )
            if runs:
                return [(r.deployment_id == nightly.id, r.state_type.value, r.expected_start_time) for r in runs]
            await asyncio.sleep(0.5)
        return []

    runs = served.query(scheduled)
    assert runs and all(is_nightly and state == "SCHEDULED" for is_nightly, state, _ in runs)
    first = min(start for _, _, start in runs).astimezone(ZoneInfo(TZ))
    assert (first.hour, first.minute) == (2, 0)


def test_serve_is_idempotent_while_up(served: Served) -> None:
    before = served.pids()
    again = _script("serve.sh", served.env, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "server already running" in again.stdout and "worker already running" in again.stdout
    assert served.pids() == before
