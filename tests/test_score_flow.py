"""The score flow over the cached score task: artifact of alarms, content cache, incremental re-run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from helpers.models import THREE_IN_A_ROW, DemoModel, build_demo_model

from bearing_core.alarms import AlarmConfig

pytestmark = pytest.mark.integration  # runs the score flow on a Prefect test server


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A throw-away Prefect API and result store (cached results must not leak between test sessions)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("results")}),
    ):
        yield


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> DemoModel:
    return build_demo_model(tmp_path_factory.mktemp("flow-demo"))


def test_score_flow_publishes_alarms_and_caches_on_content(demo_model: DemoModel, prefect_harness: None) -> None:
    from prefect.artifacts import Artifact

    from flows.score import score_flow

    first = score_flow(str(demo_model.dataset), model=str(demo_model.model), alarms=THREE_IN_A_ROW)
    assert first["n_scored"] == 47 and first["rows"] == 47
    scores = pd.read_parquet(first["path"])
    assert Path(first["path"]) == demo_model.dataset / "scores.parquet"
    assert first["alarm_snapshots"] == int(scores["alarm"].sum()) > 0
    by_site = {row["site"]: row for row in first["alarms"]}
    assert by_site["site_2"]["alarm_snapshots"] == 0 and by_site["site_1"]["alarm_snapshots"] > 0

    artifact = Artifact.get(key="alarms-dataset")
    assert artifact is not None and artifact.type == "table"
    assert "site_1" in str(artifact.data) and "alarm snapshots" in (artifact.description or "")

    cached = score_flow(str(demo_model.dataset), model=str(demo_model.model), alarms=THREE_IN_A_ROW)
    assert cached == first  # same content: served from the cache (the task did not run again)

    (demo_model.dataset / "scores.parquet").unlink()
    rebuilt = score_flow(str(demo_model.dataset), model=str(demo_model.model), alarms=THREE_IN_A_ROW)
    assert rebuilt["n_scored"] == 47 and (demo_model.dataset / "scores.parquet").is_file()

    other = score_flow(
        str(demo_model.dataset),
        model=str(demo_model.model),
        alarms=AlarmConfig(persistence_h=0.1, fraction=1.0, warmup_h=0),
    )
    assert other["n_scored"] == 0 and other["n_reused"] == 47  # new parameters: re-run, rows reused
    assert other["alarm_snapshots"] == int(pd.read_parquet(other["path"])["is_anomaly"].sum())
