"""The Prefect train flow: partition -> federated (Flower simulation inside a task) -> centralized -> artifacts."""

from __future__ import annotations

import json
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

    from bearing_core.federated.config import FederatedConfig
    from bearing_core.inputs import InputConfig
    from flows.train import train_flow

    dataset = write_feature_dataset(tmp_path / "dataset", rows_per_site=60)
    kwargs = dict(
        dataset_dir=str(dataset),
        config=FederatedConfig(num_clients=2, rounds=2, lr=0.01, batch_size=8),
        inputs=InputConfig(train_fraction=1.0),
        partition="iid",
        model_dir=str(tmp_path / "model"),
    )
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


def _two_site_per_bearing(root: Path) -> Path:
    """A per-bearing dataset of two sites (two bearings, two accelerometers each, 48 hourly snapshots a site)."""
    import numpy as np

    from bearing_core.features_import import write_features_only_dataset
    from bearing_core.inputs import PER_BEARING_DIR, InputConfig
    from bearing_core.per_bearing import PerBearingConfig, write_per_bearing_dataset

    channels = ["B1_a", "B1_b", "B2_a", "B2_b"]
    stamps = pd.date_range("2004-01-01", periods=48, freq="1h").astype("datetime64[us]")
    rng = np.random.default_rng(0)
    frames = []
    for site in ("site_1", "site_2"):
        frame = pd.DataFrame({"timestamp": stamps, "file": stamps.strftime("%Y.%m.%d.%H.%M.%S"), "site": site})
        frame["path"] = site + "/" + frame["file"]
        for j, channel in enumerate(channels):
            frame[f"{channel}_mean_abs"] = 0.1 * (1 + 0.1 * j) * np.exp(0.03 * rng.normal(size=len(stamps)))
        frames.append(frame)
    features = pd.concat(frames).sort_values(["timestamp", "site"], kind="stable").reset_index(drop=True)
    write_features_only_dataset(
        root,
        features,
        [f"{c}_mean_abs" for c in channels],
        {"channels": channels, "features": ["mean_abs"], "sites": ["site_1", "site_2"], "rig": {}},
    )
    write_per_bearing_dataset(root, root / PER_BEARING_DIR, InputConfig(train_fraction=0.5), PerBearingConfig(log=True))
    return root / PER_BEARING_DIR


@pytest.mark.integration
def test_a_site_without_healthy_rows_is_left_out_and_the_others_train(harness, tmp_path: Path) -> None:
    """Rolling policy: every bearing of site_2 in alarm -> no healthy row there; the natural partition used to count
    the dataset's two sites and fail with a num_clients mismatch. Now site_2 is left out, site_1 trains alone."""
    from bearing_core.federated.config import FederatedConfig
    from bearing_core.healthy import write_selection
    from flows.train import train_flow

    derived = _two_site_per_bearing(tmp_path / "demo")
    per_bearing_cfg = FederatedConfig(rounds=2, local_epochs=1, batch_size=8, hidden=(4, 1, 4), activation="tanh")
    rows = pd.read_parquet(derived / "features.parquet")
    site_1 = rows[rows["site"].str.startswith("site_1/")]
    selection = write_selection(derived, site_1[["timestamp", "site", "path"]])
    out = train_flow(
        dataset_dir=str(derived),
        partition="natural",
        config=per_bearing_cfg,
        healthy_file=str(selection),
        centralized_baseline=False,
        model_dir=str(tmp_path / "model"),
    )
    assert out["clients"] == 1
    assert out["sites_left_out"] == ["site_2"]
    assert out["centralized_eval_mse"] is None
    metrics = pd.read_parquet(out["metrics_path"])
    assert set(metrics["client"]) == {"0", "global"}
    assert sorted(json.loads((tmp_path / "model" / "config.json").read_text())["extra"]["train_rows_per_client"]) == [
        "0"
    ]

    # no site has a healthy row: one clear error before any training
    empty = write_selection(derived, site_1[["timestamp", "site", "path"]].iloc[:0])
    with pytest.raises(ValueError, match="no site has a healthy row"):
        train_flow(
            dataset_dir=str(derived),
            partition="natural",
            config=per_bearing_cfg,
            healthy_file=str(empty),
            centralized_baseline=False,
            model_dir=str(tmp_path / "model2"),
        )
