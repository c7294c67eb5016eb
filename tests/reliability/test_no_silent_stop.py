"""A typo must not stop monitoring silently.

``bearing validate DIR --channels 3`` (a count where names are expected) used to fail every snapshot's schema check
and quarantine the whole dataset; ``bearing score`` then exited 0 with "scored 0 ... 0 in alarm", which reads as
"all healthy". Now ``--channels`` must be the dataset's own channels (one line, exit 2, nothing quarantined), and
scoring a dataset with no valid snapshot, or fewer than half of them valid, fails with the reason: exit 1 from the
CLI, :class:`~bearing_core.scoring.TooFewValidSnapshots` from the library, a failed score flow.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.ims_files import write_ims_file

from bearing_core.autoencoder import Autoencoder, ModelConfig
from bearing_core.config import IngestConfig
from bearing_core.ingest import ingest_directory
from bearing_core.inputs import load_features
from bearing_core.model_io import load_model, save_model
from bearing_core.scaling import Scaler
from bearing_core.threshold import ErrorSketch, ThresholdConfig, save_threshold, snapshot_errors
from cli.main import main

N_SAMPLES = 2048
N_FILES = 6
T0 = datetime(2004, 2, 12, 10, 32, 39)
INPUTS = ["B1_mean_abs", "B2_mean_abs", "B3_mean_abs", "B4_mean_abs"]


def _dataset(tmp_path: Path) -> Path:
    """An ingested 4-channel dataset of ``N_FILES`` healthy snapshots (one site)."""
    rng = np.random.default_rng(3)
    raw, out = tmp_path / "raw", tmp_path / "dataset"
    for k in range(N_FILES):
        name = (T0 + timedelta(minutes=10 * k)).strftime("%Y.%m.%d.%H.%M.%S")
        write_ims_file(raw / "site_1" / name, rng.normal(0.0, 0.08, (N_SAMPLES, 4)))
    ingest_directory(IngestConfig(raw_dir=raw, out_dir=out, expected_samples=N_SAMPLES, workers=1))
    return out


def _model(tmp_path: Path, dataset: Path) -> Path:
    """A calibrated model on the dataset's mean_abs inputs (threshold near the largest healthy error x 2)."""
    x = load_features(dataset)[INPUTS].to_numpy()
    cfg = ModelConfig(n_inputs=len(INPUTS), hidden=(2,))
    model_dir = save_model(
        tmp_path / "model", Autoencoder(cfg), cfg, Scaler(x.mean(axis=0), x.std(axis=0) + 1e-6), INPUTS
    )
    errors, _ = snapshot_errors(load_model(model_dir), x)
    save_threshold(model_dir, ErrorSketch.from_errors(2 * errors), ThresholdConfig(method="quantile", quantile=0.99))
    return model_dir


def _quarantine(dataset: Path, paths: list[str]) -> None:
    """What a validate run that failed these snapshots leaves (stage "validate")."""
    table = pa.table({"file": paths, "reason": ["snapshot.columns: columns=timestamp,B1,B2,B3,B4"] * len(paths),
                      "stage": ["validate"] * len(paths)})  # fmt: skip
    pq.write_table(table, dataset / "quarantine.parquet")


def _paths(dataset: Path) -> list[str]:
    return pq.read_table(dataset / "features.parquet").column("path").to_pylist()


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("monitored")
    dataset = _dataset(tmp)
    return dataset, _model(tmp, dataset)


@pytest.fixture
def dataset(monitored: tuple[Path, Path], tmp_path: Path) -> Path:
    """A fresh copy of the dataset (tests quarantine snapshots in it)."""
    import shutil

    return Path(shutil.copytree(monitored[0], tmp_path / "dataset"))


def test_validate_channels_not_the_datasets_own_exit_2_and_quarantine_nothing(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (dataset / "quarantine.parquet").read_bytes()
    assert main(["validate", str(dataset), "--channels", "3", "--no-docs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"bearing validate: error: --channels 3: {dataset} has 4 channels (B1, B2, B3, B4), 3 not among "
        "them; name exactly those, in file order, or omit --channels"
    ]
    assert main(["validate", str(dataset), "--channels", "B2,B1,B3,B4", "--no-docs"]) == 2
    assert "has 4 channels (B1, B2, B3, B4), not in that order or not all of them" in capsys.readouterr().err
    assert (dataset / "quarantine.parquet").read_bytes() == before
    assert not (dataset / "validation").exists()  # refused before validating anything


def test_validate_with_the_datasets_own_channels_still_runs(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(dataset), "--channels", "B1,B2,B3,B4", "--no-docs"]) == 0
    assert "Validation PASSED" in capsys.readouterr().out
    assert pq.read_table(dataset / "quarantine.parquet").num_rows == 0


def test_score_refuses_a_fully_quarantined_dataset(
    dataset: Path, monitored: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = monitored[1]
    assert main(["score", str(dataset), "--model", str(model)]) == 0  # monitoring works
    assert "scored 6 new snapshots" in capsys.readouterr().out
    scores_before = (dataset / "scores.parquet").read_bytes()
    _quarantine(dataset, _paths(dataset))  # what `validate --channels 3` did
    assert main(["score", str(dataset), "--model", str(model)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"bearing score: error: {dataset}: no snapshots valid (6 of 6 quarantined, see quarantine.parquet); scoring "
        "needs at least 50% valid, or monitoring would silently stop: fix the cause of the quarantine (e.g. wrong "
        "`bearing validate` options) and validate again"
    ]
    assert "scored" not in captured.out
    assert (dataset / "scores.parquet").read_bytes() == scores_before  # the last good scores are kept


def test_score_needs_at_least_half_of_the_snapshots_valid(
    dataset: Path, monitored: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from bearing_core.scoring import TooFewValidSnapshots, score_dataset, update_scores

    model, paths = monitored[1], _paths(dataset)
    _quarantine(dataset, paths[:4])
    assert main(["score", str(dataset), "--model", str(model)]) == 1
    assert f"{dataset}: only 2 of 6 snapshots valid (4 of 6 quarantined" in capsys.readouterr().err
    for score in (score_dataset, update_scores):
        with pytest.raises(TooFewValidSnapshots, match="only 2 of 6 snapshots valid"):
            score(dataset, model)
    assert not (dataset / "scores.parquet").exists()
    _quarantine(dataset, paths[:3])  # exactly half valid: scored
    assert main(["score", str(dataset), "--model", str(model)]) == 0
    assert len(pd.read_parquet(dataset / "scores.parquet")) == 3


@pytest.fixture
def prefect_harness(tmp_path: Path) -> Iterator[None]:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results"}),
    ):
        yield


@pytest.mark.integration
def test_score_flow_fails_with_the_reason(dataset: Path, monitored: tuple[Path, Path], prefect_harness: None) -> None:
    from flows.score import score_flow

    _quarantine(dataset, _paths(dataset))
    with pytest.raises(ValueError, match="no snapshots valid .6 of 6 quarantined"):
        score_flow(str(dataset), model=str(monitored[1]))
    assert not (dataset / "scores.parquet").exists()
