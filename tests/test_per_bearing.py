"""The per-bearing layout: rows per (snapshot, bearing), local standardisation on the training rows, folding back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bearing_core.config import IMS_CHANNELS_8
from bearing_core.features_import import QUARANTINE_SCHEMA, import_features
from bearing_core.inputs import InputConfig, input_columns, load_features
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import SPLIT_TRAIN, read_client, scheme_dir
from bearing_core.per_bearing import (
    PerBearingConfig,
    bearing_axes,
    source_site_scores,
    write_per_bearing_dataset,
)

HEALTHY = InputConfig(train_fraction=0.5)  # 10 files: 5 healthy, of which the last 1 is the calibration holdout


def _dataset(tmp_path: Path, channels: tuple[str, ...] = IMS_CHANNELS_8, n_files: int = 10, seed: int = 0) -> Path:
    """A features-only dataset of ``n_files`` snapshots, 10 min apart, random positive mean|x| per channel."""
    rng = np.random.default_rng(seed)
    values = 0.1 + 0.01 * rng.standard_normal((n_files, len(channels)))
    times = pd.date_range("2003-10-22 12:00:00", periods=n_files, freq="10min").strftime("%Y.%m.%d.%H.%M.%S")
    table = pd.DataFrame(values, columns=list(channels)).assign(file=times)[["file", *channels]]
    table.to_csv(tmp_path / "rig_mean_abs.csv", index=False)
    return import_features(tmp_path / "rig_mean_abs.csv", tmp_path / "source").out_dir


def test_rows_per_bearing_standardised_on_the_training_rows(tmp_path: Path) -> None:
    source = _dataset(tmp_path)
    result = write_per_bearing_dataset(source, tmp_path / "pb", HEALTHY)
    assert result.sites == ["rig/B1", "rig/B2", "rig/B3", "rig/B4"]
    assert (result.rows, result.axes, result.input_columns) == (40, ["a", "b"], ["a_mean_abs", "b_mean_abs"])
    df = load_features(tmp_path / "pb")
    assert df.columns.tolist() == ["timestamp", "file", "site", "path", "a_mean_abs", "b_mean_abs"]
    first = df.iloc[:4]
    assert first["site"].tolist() == result.sites and first["file"].nunique() == 1
    assert first["path"].iloc[2] == f"rig/{first['file'].iloc[0]}/B3"
    raw = load_features(source)
    b3 = df[df["site"] == "rig/B3"][["a_mean_abs", "b_mean_abs"]].to_numpy()
    x = raw[["B3_a_mean_abs", "B3_b_mean_abs"]].to_numpy()
    train = x[:4]  # 5 healthy files minus 1 holdout
    np.testing.assert_allclose(b3, (x - train.mean(axis=0)) / train.std(axis=0), rtol=1e-12)
    meta = json.loads((tmp_path / "pb" / "dataset.json").read_text())
    assert meta["layout"] == "per_bearing" and meta["channels"] == ["a", "b"] and meta["sites"] == result.sites
    assert meta["bearings"]["rig/B3"] == ["B3_a", "B3_b"]
    scaling = meta["transform"]["standardisation"]["rig/B3"]
    assert scaling["training_rows"] == 4
    np.testing.assert_allclose(scaling["mean"], train.mean(axis=0), rtol=1e-12)
    assert input_columns(tmp_path / "pb", InputConfig()) == ["a_mean_abs", "b_mean_abs"]

    # natural partition with the same healthy rule: one client per bearing, training rows = the standardisation rows
    manifest = partition_dataset(tmp_path / "pb", "natural", 4, 0, HEALTHY)
    assert [c.sites for c in manifest.clients] == [[s] for s in result.sites]
    for entry in manifest.clients:
        rows = read_client(scheme_dir(tmp_path / "pb", "natural"), entry.client_id, split=SPLIT_TRAIN)
        np.testing.assert_allclose(rows[["a_mean_abs", "b_mean_abs"]].mean().to_numpy(), 0.0, atol=1e-12)
        np.testing.assert_allclose(rows[["a_mean_abs", "b_mean_abs"]].std(ddof=0).to_numpy(), 1.0, rtol=1e-12)


def test_interleaved_holdout_standardises_on_the_rows_the_model_trains_on(tmp_path: Path) -> None:
    source = _dataset(tmp_path, n_files=20)
    spread = InputConfig(train_fraction=0.5, holdout_mode="interleaved")  # 10 healthy, rows 4 and 9 held out
    write_per_bearing_dataset(source, tmp_path / "pb", spread)
    x = load_features(source)[["B2_a_mean_abs", "B2_b_mean_abs"]].to_numpy()
    train = x[[0, 1, 2, 3, 5, 6, 7, 8]]
    scaling = json.loads((tmp_path / "pb" / "dataset.json").read_text())["transform"]["standardisation"]["rig/B2"]
    assert scaling["training_rows"] == 8
    np.testing.assert_allclose(scaling["mean"], train.mean(axis=0), rtol=1e-12)
    manifest = partition_dataset(tmp_path / "pb", "natural", 4, 0, spread)
    assert manifest.holdout_mode == "interleaved"
    rows = read_client(scheme_dir(tmp_path / "pb", "natural"), 1, split=SPLIT_TRAIN)  # client 1 = rig/B2
    np.testing.assert_allclose(rows[["a_mean_abs", "b_mean_abs"]].mean().to_numpy(), 0.0, atol=1e-12)


def test_log_and_several_features_and_one_axis_bearings(tmp_path: Path) -> None:
    source = _dataset(tmp_path, channels=("B1", "B2", "B3", "B4"))
    result = write_per_bearing_dataset(source, tmp_path / "pb", HEALTHY, PerBearingConfig(log=True))
    assert result.input_columns == ["x_mean_abs"] and result.axes == ["x"]
    raw = np.log(load_features(source)["B2_mean_abs"].to_numpy())
    df = load_features(tmp_path / "pb")
    np.testing.assert_allclose(
        df.loc[df["site"] == "rig/B2", "x_mean_abs"], (raw - raw[:4].mean()) / raw[:4].std(), rtol=1e-12
    )
    features = pd.read_parquet(source / "features.parquet")
    features = features.assign(**{f"{ch}_rms": 2 * features[f"{ch}_mean_abs"] for ch in ("B1", "B2", "B3", "B4")})
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False), source / "features.parquet")
    two = write_per_bearing_dataset(source, tmp_path / "pb2", HEALTHY, PerBearingConfig(features=("mean_abs", "rms")))
    assert two.input_columns == ["x_mean_abs", "x_rms"]
    both = load_features(tmp_path / "pb2")
    np.testing.assert_allclose(both["x_mean_abs"], both["x_rms"], rtol=1e-9)  # standardising removes the factor 2


def test_quarantined_snapshots_are_left_out(tmp_path: Path) -> None:
    source = _dataset(tmp_path)
    bad = load_features(source)["path"].iloc[7]
    pq.write_table(
        pa.Table.from_pylist(
            [{"file": bad, "reason": "line 3: 7 columns, expected 8", "stage": "ingest"}], schema=QUARANTINE_SCHEMA
        ),
        source / "quarantine.parquet",
    )
    result = write_per_bearing_dataset(source, tmp_path / "pb", HEALTHY)
    paths = load_features(tmp_path / "pb")["path"]
    assert result.rows == 36 and not paths.str.startswith(bad + "/").any()


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bearing B2 has axes \['a'\] but B1 has \['a', 'b'\]"):
        bearing_axes(["B1_a", "B1_b", "B2_a"])
    source = _dataset(tmp_path)
    with pytest.raises(ValueError, match=r"missing columns \['B1_a_kurtosis'"):
        write_per_bearing_dataset(source, tmp_path / "pb", HEALTHY, PerBearingConfig(features=("kurtosis",)))
    features = pd.read_parquet(source / "features.parquet")
    features.loc[3, "B2_b_mean_abs"] = 0.0
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False), source / "features.parquet")
    with pytest.raises(ValueError, match=rf"B2_b_mean_abs = 0.0 at {features['path'].iloc[3]}"):
        write_per_bearing_dataset(source, tmp_path / "pb", HEALTHY, PerBearingConfig(log=True))
    assert not (tmp_path / "pb" / "dataset.json").exists()
    with pytest.raises(ValueError, match="not a per-bearing dataset"):
        source_site_scores(pd.DataFrame(), source)


def test_source_site_scores_keep_the_bearing_that_matters(tmp_path: Path) -> None:
    source = _dataset(tmp_path, n_files=2)
    write_per_bearing_dataset(source, tmp_path / "pb", InputConfig(train_fraction=1.0))
    rows = load_features(tmp_path / "pb")
    scores = rows[["timestamp", "file", "site", "path"]].assign(
        score=[1.0, 3.0, 2.0, 0.5, 1.0, 3.0, 2.0, 0.5],
        threshold=[2.0, 10.0, 2.5, 0.4, 2.0, 10.0, 2.5, 0.4],  # ratios 0.5 0.3 0.8 1.25
        is_anomaly=[False, False, False, True, False, False, False, True],
        alarm=[False, False, False, False, False, False, False, True],
        top_channel=["a", "b", "b", "a", "a", "b", "b", "b"],
    )
    scores.loc[2, ["is_anomaly", "alarm"]] = True  # first snapshot: B3 alarms although B4's ratio is higher
    folded = source_site_scores(scores, tmp_path / "pb")
    assert folded["site"].tolist() == ["rig", "rig"]
    assert folded["path"].tolist() == load_features(source)["path"].tolist()
    assert folded["top_channel"].tolist() == ["B3_b", "B4_b"]
    assert folded["bearing"].tolist() == ["B3", "B4"] and folded["alarm"].tolist() == [True, True]


def test_real_ims_1st_test(tmp_path: Path, shared_ims: Path) -> None:
    import_features(shared_ims / "features" / "1st_test_mean_abs.csv", tmp_path / "ims", site="1st_test")
    result = write_per_bearing_dataset(tmp_path / "ims", tmp_path / "pb", InputConfig(train_fraction=0.2))
    assert result.rows == 4 * 2156 and result.sites == ["1st_test/B1", "1st_test/B2", "1st_test/B3", "1st_test/B4"]
    df = load_features(tmp_path / "pb")
    scaling = json.loads((tmp_path / "pb" / "dataset.json").read_text())["transform"]["standardisation"]
    assert {s["training_rows"] for s in scaling.values()} == {432 - 87}  # 20 % = 432 files, 87 held out
    last = df[df["file"] == "2003.11.25.23.39.56"].set_index("site")["a_mean_abs"]
    assert last["1st_test/B3"] > 5 and last["1st_test/B1"] < last["1st_test/B3"]  # failed bearing far off its healthy


def test_per_bearing_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    source = _dataset(tmp_path, n_files=20)
    assert (
        main(
            [
                "per-bearing",
                str(source),
                "--out",
                str(tmp_path / "pb"),
                "--log",
                "--train-fraction",
                "0.5",
                "--holdout",
                "interleaved",
            ]
        )
        == 0
    )
    assert (
        "sites rig/B1, rig/B2, rig/B3, rig/B4, inputs a_mean_abs, b_mean_abs (ln), 80 rows" in capsys.readouterr().out
    )
    meta = json.loads((tmp_path / "pb" / "dataset.json").read_text())
    x = np.log(load_features(source)[["B4_a_mean_abs", "B4_b_mean_abs"]].to_numpy())[[0, 1, 2, 3, 5, 6, 7, 8]]
    np.testing.assert_allclose(meta["transform"]["standardisation"]["rig/B4"]["mean"], x.mean(axis=0), rtol=1e-12)
    assert main(["per-bearing", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "missing/dataset.json not found" in capsys.readouterr().err
    assert main(["per-bearing", str(source), "--out", str(tmp_path / "y"), "--feature", "kurtosis"]) == 2
    assert "missing columns ['B1_a_kurtosis'" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_evaluate_folds_per_bearing_scores_back_to_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bearing_core.alarms import AlarmConfig, debounce_alarms
    from bearing_core.scoring import write_scores
    from cli.main import main

    source = _dataset(tmp_path, n_files=12)
    write_per_bearing_dataset(source, tmp_path / "pb", HEALTHY)
    rows = load_features(tmp_path / "pb")
    b3_late = (rows["site"] == "rig/B3").to_numpy() & (
        rows["timestamp"] >= rows["timestamp"].iloc[-1] - pd.Timedelta("30min")
    ).to_numpy()
    scores = rows[["timestamp", "file", "site", "path"]].assign(
        score=np.where(b3_late, 5.0, 0.1),
        threshold=1.0,
        is_anomaly=b3_late,
        top_channel="b",
        top_input="b_mean_abs",
        model_version="v",
    )
    write_scores(
        scores.assign(alarm=debounce_alarms(scores, AlarmConfig(persistence_h=0.5, fraction=1.0, warmup_h=0))),
        tmp_path / "scores.parquet",
    )
    failure = (rows["timestamp"].iloc[-1] + pd.Timedelta("1h")).isoformat()
    args = ["evaluate", str(tmp_path / "scores.parquet"), "--failure-time", failure]
    assert main([*args, "--per-bearing", str(tmp_path / "pb")]) == 0
    out = capsys.readouterr().out
    third = sorted(rows["file"].unique())[-2]  # B3 over threshold for the last 4 snapshots: 3 of 3 at the 3rd
    assert f"file {third} channel B3_b" in out and "lead time before failure: 1.17 h" in out
    assert main([*args, "--per-bearing", str(source)]) == 2
    assert "not a per-bearing dataset (write one with `bearing per-bearing`)" in capsys.readouterr().err
