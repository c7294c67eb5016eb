"""What a user sees in the Prefect UI, in a real browser: ``scripts/serve.sh`` (make serve) on a throw-away copy of
the project and a free loopback port, a pipeline run on a tiny demo (2 sites x 30 files, 3 rounds) and a run that
fails on a held dataset lock, then headless Chromium (scripts/ui_check.py) renders the run report artifact, the
Custom run form, the deployment's description and the failed run.

Fails when an image of the report is broken, when a failed run's state message is a traceback, or when a lock
wait ends as TimedOut. Marker ``browser``; skipped when Chromium is absent (.ci/run installs it). Screenshots go to
$BEARING_UI_SCREENSHOTS, default the test's tmp directory (printed on failure, and with ``-s``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from ui_check import check_ui, find_chromium  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (apt-get install chromium)"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="scripts/serve.sh needs curl"),
]
POSTGRES = bool(shutil.which("pg_config") or list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")))
"""With PostgreSQL installed (as .ci/run does) the server runs on it (make serve DB=postgres), else on SQLite."""
PROJECT_FILES = ("bearing_core", "tasks", "flows", "cli", "scripts", "prefect.yaml", "pyproject.toml")


def _params(schema: dict[str, Any], **values: Any) -> dict[str, Any]:
    """Deployment parameters setting ``values`` wherever the pipeline's parameter model puts each one (top level or
    one group down)."""
    props = schema.get("properties", {})
    definitions = schema.get("definitions", schema.get("$defs", {}))
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in props:
            out[key] = value
            continue
        for name, prop in props.items():
            ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("allOf", []) if "$ref" in a), "")
            group = definitions.get(ref.rsplit("/", 1)[-1], prop) if ref else prop
            if key in group.get("properties", {}):
                out.setdefault(name, {})[key] = value
                break
        else:
            raise AssertionError(f"the pipeline has no parameter {key}")
    return out


def _wait(client: Any, flow_run_id: Any, timeout_s: float = 240.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.read_flow_run(flow_run_id)
        if run.state and run.state.is_final():
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout_s:g} s")


@pytest.fixture(scope="module")
def served():
    """A copy of the project served by scripts/serve.sh (its venv: this interpreter's), stopped afterwards.

    In a directory of its own that other users can enter (pytest's are private): PostgreSQL runs as the postgres
    user when the tests run as root."""
    base = Path(tempfile.mkdtemp(prefix="bearing-ui-"))
    base.chmod(0o755)
    project = base / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, project / name)
    (project / ".venv").symlink_to(Path(sys.prefix))
    for folder in ("data/raw", "data/processed", "data/models", "reports"):
        (project / folder).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    port = free_port()
    env.update(
        BEARING_PREFECT_PORT=str(port),
        PREFECT_HOME=str(project / ".prefect"),
        PYTHONPATH=str(project),
        BEARING_DB="postgres" if POSTGRES else "sqlite",
        BEARING_PG_PORT=str(free_port()),
    )
    subprocess.run(
        [sys.executable, "-m", "cli.main", "demo-data", "--out", "data/raw/demo", "--sites", "2", "--files", "30"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
    )
    started = subprocess.run(
        ["bash", "scripts/serve.sh"], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"database {env['BEARING_DB']}" in started.stdout
        yield project, f"http://127.0.0.1:{port}/api"
    finally:
        subprocess.run(["bash", "scripts/stop.sh"], cwd=project, env=env, capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_report_form_and_failed_runs_read_well_in_a_browser(served, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project, api = served
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("pipeline/manual-pipeline")
        schema = deployment.parameter_openapi_schema
        quick = _params(schema, rounds=3)
        ok = _wait(client, client.create_flow_run_from_deployment(deployment.id, parameters=quick).id)
        assert ok.state.name == "Completed", ok.state.message

        from bearing_core.locking import PIPELINE_LOCK_FILE, exclusive_lock

        with exclusive_lock(project / "data/processed/demo" / PIPELINE_LOCK_FILE):  # another run holds the dataset
            params = _params(schema, rounds=3, lock_timeout_s=1.0)
            locked = _wait(client, client.create_flow_run_from_deployment(deployment.id, parameters=params).id)
        assert locked.state.name == "Failed", f"{locked.state.name}: {locked.state.message}"
        assert "dataset data/processed/demo is locked by another run (pid " in locked.state.message
        assert f"pid {os.getpid()} " in locked.state.message and "since " in locked.state.message

    found = check_ui(api, Path(os.environ.get("BEARING_UI_SCREENSHOTS") or tmp_path / "screenshots"))
    shots = "\n".join(f"{name}: {path}" for name, path in found.screenshots.items())
    assert not found.problems, "\n".join(found.problems) + "\nscreenshots:\n" + shots
    from bearing_core.params import PipelineParams

    # the form's sections are headed by PipelineParams' titles ("Federated training"), not the flow's parameter names
    assert found.facts["custom run form: section titles"] == {
        name: field.title for name, field in PipelineParams.model_fields.items()
    }
    images = found.facts["report images"]
    assert len(images) == 2 and all(i["width"] > 0 for i in images)
    print(shots)
