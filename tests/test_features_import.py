"""Features-only datasets from a per-file table: layout, errors naming line/column, the real IMS table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from bearing_core.features_import import default_site_name, import_features
from bearing_core.inputs import InputConfig, healthy_period, input_columns, load_features


def _write_table(path: Path, rows: list[str]) -> Path:
    path.write_text("file,B1,B2,B3,B4\n" + "\n".join(rows) + "\n")
    return path


def test_import_small_table(tmp_path: Path) -> None:
    table = _write_table(
        tmp_path / "2nd_test_mean_abs.csv",
        [
            "2004.02.12.10.42.39,0.2,0.3,0.4,0.5",
            "2004.02.12.10.32.39,0.1,0.2,0.3,0.4",  # out of order: sorted by time
            "2004.02.12.10.52.39,0.3,0.4,0.5,0.6",
        ],
    )
    result = import_features(table, tmp_path / "out")
    assert (result.rows, result.site, result.channels) == (3, "2nd_test", ["B1", "B2", "B3", "B4"])
    features = pq.read_table(tmp_path / "out" / "features.parquet")
    assert features.column_names == [
        "timestamp",
        "file",
        "site",
        "path",
        "B1_mean_abs",
        "B2_mean_abs",
        "B3_mean_abs",
        "B4_mean_abs",
    ]
    assert str(features.schema.field("timestamp").type) == "timestamp[us]"
    df = features.to_pandas()
    assert df["file"].tolist() == ["2004.02.12.10.32.39", "2004.02.12.10.42.39", "2004.02.12.10.52.39"]
    assert df["path"].iloc[0] == "2nd_test/2004.02.12.10.32.39"
    assert df["timestamp"].iloc[0] == pd.Timestamp("2004-02-12 10:32:39")
    assert df["B4_mean_abs"].tolist() == [0.4, 0.5, 0.6]
    assert pq.read_table(tmp_path / "out" / "quarantine.parquet").num_rows == 0
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert meta["features_only"] is True and meta["features"] == ["mean_abs"] and meta["sites"] == ["2nd_test"]
    assert meta["channels"] == ["B1", "B2", "B3", "B4"]
    # the dataset is usable by the model-input layer like an ingested one
    assert input_columns(tmp_path / "out", InputConfig()) == [
        "B1_mean_abs",
        "B2_mean_abs",
        "B3_mean_abs",
        "B4_mean_abs",
    ]
    assert len(healthy_period(load_features(tmp_path / "out"), InputConfig(train_fraction=0.5))) == 2
    assert import_features(table, tmp_path / "named", site="rig_7").site == "rig_7"
    assert default_site_name("x/1st_test_mean_abs.csv") == "1st_test"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["2004.02.12.10.32.39,0.1,0.2,0.3,0.4", "not-a-date,0.1,0.2,0.3,0.4"], r"line 3, column 'file': 'not-a-date'"),
        (
            ["2004.02.12.10.32.39,0.1,0.2,0.3,0.4", "2004.02.12.10.32.39,0.1,0.2,0.3,0.4"],
            r"line 3, column 'file': duplicate",
        ),
        (["2004.02.12.10.32.39,0.1,abc,0.3,0.4"], r"line 2, column 'B2': 'abc' is not a finite number"),
        (["2004.02.12.10.32.39,0.1,0.2,,0.4"], r"line 2, column 'B3': '' is not a finite number"),
    ],
)
def test_bad_tables_name_line_and_column(tmp_path: Path, rows: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        import_features(_write_table(tmp_path / "t.csv", rows), tmp_path / "out")
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_missing_file_column_and_missing_table(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("name,B1\n2004.02.12.10.32.39,0.1\n")
    with pytest.raises(ValueError, match="no 'file' column"):
        import_features(tmp_path / "t.csv", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        import_features(tmp_path / "absent.csv", tmp_path / "out")


def test_real_ims_1st_test_table(tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_ims: Path) -> None:
    table = shared_ims / "features" / "1st_test_mean_abs.csv"
    from cli.import_features_cmd import register, run

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert run(parser.parse_args(["import-features", str(table), "--out", str(tmp_path / "ims")])) == 0
    assert "imported 2156 snapshots of site 1st_test" in capsys.readouterr().out
    df = load_features(tmp_path / "ims")
    assert len(df) == 2156 and df["timestamp"].is_monotonic_increasing
    assert df["timestamp"].iloc[0] == pd.Timestamp("2003-10-22 12:06:24")
    assert df["timestamp"].iloc[-1] == pd.Timestamp("2003-11-25 23:39:56")
    assert np.diff(df["timestamp"].iloc[:42].to_numpy()).max() <= np.timedelta64(5, "m")  # the first files: 5 min apart
    assert input_columns(tmp_path / "ims", InputConfig()) == [
        f"{ch}_mean_abs" for ch in ("B1_a", "B1_b", "B2_a", "B2_b", "B3_a", "B3_b", "B4_a", "B4_b")
    ]
    assert run(parser.parse_args(["import-features", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")])) == 2


def test_per_bearing_import_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.import_features_cmd import register, run

    rng = np.random.default_rng(1)
    channels = ["B1_a", "B1_b", "B2_a", "B2_b"]
    times = pd.date_range("2003-10-22 12:00", periods=20, freq="10min").strftime("%Y.%m.%d.%H.%M.%S")
    table = pd.DataFrame(0.1 + 0.01 * rng.random((20, 4)), columns=channels).assign(file=times)[["file", *channels]]
    table.to_csv(tmp_path / "rig_mean_abs.csv", index=False)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = [
        "import-features",
        str(tmp_path / "rig_mean_abs.csv"),
        "--out",
        str(tmp_path / "pb"),
        "--per-bearing",
        "--log",
        "--train-fraction",
        "0.5",
        "--holdout",
        "interleaved",
    ]
    assert run(parser.parse_args(args)) == 0
    assert "sites rig/B1, rig/B2, inputs a_mean_abs, b_mean_abs (ln), 40 rows" in capsys.readouterr().out
    meta = json.loads((tmp_path / "pb" / "dataset.json").read_text())
    assert meta["layout"] == "per_bearing" and meta["transform"]["log"] is True
    assert meta["transform"]["healthy"]["holdout_mode"] == "interleaved"
    b1 = np.log(table[["B1_a", "B1_b"]].to_numpy())[[0, 1, 2, 3, 5, 6, 7, 8]]  # 10 healthy minus rows 4 and 9
    np.testing.assert_allclose(meta["transform"]["standardisation"]["rig/B1"]["mean"], b1.mean(axis=0), rtol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pb", "rig_mean_abs.csv"]  # the wide import is gone
    assert (
        run(
            parser.parse_args(
                ["import-features", str(tmp_path / "rig_mean_abs.csv"), "--out", str(tmp_path / "x"), "--log"]
            )
        )
        == 2
    )
    assert "--log needs --per-bearing" in capsys.readouterr().err
    bad = [
        "import-features",
        str(tmp_path / "rig_mean_abs.csv"),
        "--out",
        str(tmp_path / "y"),
        "--per-bearing",
        "--train-fraction",
        "1.5",
    ]
    assert run(parser.parse_args(bad)) == 2
    assert "train_fraction" in capsys.readouterr().err and not (tmp_path / "y").exists()
