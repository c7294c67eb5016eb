"""The Prefect train flow: partition -> federated (Flower simulation inside a task) -> centralized -> artifacts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers.feature_datasets import write_feature_dataset

pytestmark = pytest.mark.integration  # runs the train flow (a Flower simulation) on a Prefect test server


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    """A temporary Prefect server and a fresh result store (cache records must not leak between test sessions)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("prefect-results")}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


def test_train_flow_trains_caches_and_publishes_artifacts(harness, tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.train import train_flow

    dataset = write_feature_dataset(tmp_path / "dataset", rows_per_site=60)
    kwargs = dict(dataset_dir=str(dataset), partition="iid", clients=2, rounds=2, lr=0.01, batch_size=8,
                  train_fraction=1.0, model_dir=str(tmp_path / "model"))
    out = train_flow(**kwargs)
    assert out["model_dir"] == str(tmp_path / "model")
    metrics = pd.read_parquet(out["metrics_path"])
    assert set(metrics["client"]) == {"0", "1", "global", "centralized"}
    assert list(metrics.loc[metrics["client"] == "centralized", "round"]) == [1, 2]
    assert out["federated_eval_mse"] == pytest.approx(
        metrics.loc[(metrics["client"] == "global") & (metrics["round"] == 2), "eval_mse"].item()
    )
    table = Artifact.get(key=f"train-{dataset.name}-iid-fedavg-metrics")
    summary = Artifact.get(key=f"train-{dataset.name}-iid-fedavg-summary")
    assert table is not None and "centralized" in str(table.data)
    assert summary is not None and "final federated eval MSE" in str(summary.data)

    # same data + parameters: both training tasks are served from the cache (the model dir is untouched)
    weights_mtime = (tmp_path / "model" / "weights.pt").stat().st_mtime_ns
    again = train_flow(**{**kwargs, "model_dir": str(tmp_path / "other")})
    assert again["model_dir"] == out["model_dir"] and again["weights_sha256"] == out["weights_sha256"]
    assert not (tmp_path / "other").exists()
    assert (tmp_path / "model" / "weights.pt").stat().st_mtime_ns == weights_mtime

    # the cached model is deleted: the record cannot be served, the flow retrains into the new directory
    shutil.rmtree(tmp_path / "model")
    third = train_flow(**{**kwargs, "model_dir": str(tmp_path / "third")})
    assert third["model_dir"] == str(tmp_path / "third") and (tmp_path / "third" / "weights.pt").is_file()
    # same seed, same data: the same training, metric for metric (seeded clients, replies aggregated in order)
    retrained = pd.read_parquet(third["metrics_path"])
    pd.testing.assert_frame_equal(retrained.drop(columns="wall_s"), metrics.drop(columns="wall_s"))
