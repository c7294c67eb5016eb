"""Scoring: debounce logic on hand-made series, and end-to-end on small demo data (ingest → train → calibrate →
score), including incremental scoring of one new snapshot."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.models import N_SAMPLES, THREE_IN_A_ROW, DemoModel, build_demo_model

from bearing_core.config import IngestConfig
from bearing_core.ingest import ingest_directory
from bearing_core.scoring import (
    SCORE_COLUMNS,
    alarm_summary,
    channel_of_inputs,
    read_scores,
    score_dataset,
    score_rows,
    update_scores,
)

"""36 minutes over threshold: 4 snapshots in a row at the faulty site's 10-minute interval, 2 at the healthy site's
30-minute one (the tests' data are too short for the default rule)."""


def test_channel_of_inputs_maps_feature_columns_to_channels() -> None:
    channels = ["B1_a", "B1_b", "B3_a"]
    assert channel_of_inputs(["B1_a_mean_abs", "B1_b_env_bpfi", "B3_a", "other"], channels) == [
        "B1_a",
        "B1_b",
        "B3_a",
        "other",
    ]


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> DemoModel:
    return build_demo_model(tmp_path_factory.mktemp("demo"))


def test_score_dataset_alarms_after_onset_and_never_before(demo_model: DemoModel) -> None:
    scores = score_dataset(demo_model.dataset, demo_model.model, THREE_IN_A_ROW)
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert len(scores) == 47 and scores["path"].is_unique
    assert scores[["timestamp", "site"]].equals(scores.sort_values(["timestamp", "site"])[["timestamp", "site"]])
    assert (scores["is_anomaly"] == (scores["score"] > scores["threshold"])).all()
    faulty = demo_model.truth.sites["site_1"]
    site_1 = scores[scores["site"] == "site_1"]
    alarms = site_1[site_1["alarm"]]
    assert len(alarms) > 0
    assert alarms["timestamp"].min() >= pd.Timestamp(faulty.onset)
    assert (alarms["top_channel"].str[:2] == faulty.bearing).all()  # the alarm names the faulty bearing
    assert not scores.loc[scores["site"] == "site_2", "alarm"].any()

    since = score_dataset(demo_model.dataset, demo_model.model, THREE_IN_A_ROW, since=faulty.onset)
    assert since["timestamp"].min() >= pd.Timestamp(faulty.onset)
    full = scores.set_index("path").loc[since["path"]]
    assert np.array_equal(since["alarm"].to_numpy(), full["alarm"].to_numpy())  # debounce had its context rows


def test_update_scores_scores_only_new_snapshots(demo_model: DemoModel, tmp_path: Path) -> None:
    first = update_scores(demo_model.dataset, demo_model.model, tmp_path / "scores.parquet", THREE_IN_A_ROW)
    assert (first.n_scored, first.n_reused, len(first.scores)) == (47, 0, 47)
    again = update_scores(demo_model.dataset, demo_model.model, tmp_path / "scores.parquet", THREE_IN_A_ROW)
    assert (again.n_scored, again.n_reused) == (0, 47)
    pd.testing.assert_frame_equal(again.scores, first.scores)

    shutil.copy(demo_model.held_back, demo_model.raw / "site_1" / demo_model.held_back.name)
    ingest_directory(
        IngestConfig(raw_dir=demo_model.raw, out_dir=demo_model.dataset, workers=1, expected_samples=N_SAMPLES)
    )
    third = update_scores(demo_model.dataset, demo_model.model, tmp_path / "scores.parquet", THREE_IN_A_ROW)
    assert (third.n_scored, third.n_reused, len(third.scores)) == (1, 47, 48)
    new_row = third.scores[third.scores["file"] == demo_model.held_back.name].iloc[0]
    assert bool(new_row["alarm"])  # the failure snapshot, alarmed thanks to the two previous rows as context
    reference = score_dataset(demo_model.dataset, demo_model.model, THREE_IN_A_ROW)
    pd.testing.assert_frame_equal(third.scores, reference, check_exact=False, rtol=1e-6)  # float32 batches
    stored = read_scores(tmp_path / "scores.parquet")
    assert len(stored) == 48 and set(stored["model_version"]) == {"v1"}

    csv = update_scores(demo_model.dataset, demo_model.model, tmp_path / "scores.csv", THREE_IN_A_ROW)
    assert csv.n_scored == 48 and len(read_scores(tmp_path / "scores.csv")) == 48

    summary = alarm_summary(third.scores).set_index("site")
    assert summary.loc["site_2", "alarm_snapshots"] == 0 and summary.loc["site_2", "top_channel"] == ""
    assert summary.loc["site_1", "alarm_snapshots"] == int(third.scores.query("site == 'site_1'")["alarm"].sum())
    assert summary.loc["site_1", "first_alarm"] == third.scores.loc[third.scores["alarm"], "timestamp"].min()


def test_score_cli_prints_alarm_summary(
    demo_model: DemoModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.score_cmd import register, run

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["score", str(demo_model.dataset), "--model", str(demo_model.model), "--out", str(tmp_path / "s.parquet")]
    )
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "site_1" in out and "site_2" in out and str(tmp_path / "s.parquet") in out
    bad = parser.parse_args(["score", str(tmp_path / "nothing"), "--model", str(demo_model.model)])
    assert run(bad) == 2
    assert "bearing score: error:" in capsys.readouterr().err


def test_score_cli_waits_for_the_dataset_lock_and_gives_up_cleanly(
    demo_model: DemoModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers.processes import lock_held_by_another_process

    from bearing_core.locking import PIPELINE_LOCK_FILE
    from cli.score_cmd import register, run

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "s.parquet"
    argv = ["score", str(demo_model.dataset), "--model", str(demo_model.model), "--out", str(out)]
    lock = demo_model.dataset / PIPELINE_LOCK_FILE
    with lock_held_by_another_process(lock):
        assert run(parser.parse_args([*argv, "--lock-timeout", "0.2"])) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"bearing score: error: {lock} is still held by another run after 0.2 s")
    assert not out.exists()
    with lock_held_by_another_process(lock, hold_s=0.5) as released:
        assert run(parser.parse_args(argv)) == 0
    assert "waiting up to 3600 s" in capsys.readouterr().err
    assert out.stat().st_mtime_ns >= released.stat().st_mtime_ns and len(read_scores(out)) == 48


def test_a_model_of_other_inputs_is_refused_in_one_line_naming_both_sets(demo_model: DemoModel) -> None:
    """Issue 13: the error named the model's inputs twice and never the dataset's features."""
    from bearing_core.inputs import load_features
    from bearing_core.model_io import load_model
    from bearing_core.threshold import load_threshold

    loaded = load_model(demo_model.model)
    rows = load_features(demo_model.dataset).drop(columns=["B1_a_env_bpfo"])
    with pytest.raises(ValueError) as error:
        score_rows(rows, loaded, load_threshold(demo_model.model), ["B1_a"])
    message = str(error.value)
    assert "\n" not in message
    features = [c for c in rows.columns if c not in ("timestamp", "file", "site", "path")]
    assert f"the model's inputs {loaded.input_columns} are not all among the dataset's features {features}" in message
    assert "(missing: ['B1_a_env_bpfo'])" in message
