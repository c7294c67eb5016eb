"""Model inputs: default columns, healthy period per site, quarantine exclusion, samples-mode rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.input_datasets import write_dataset, write_samples
from pydantic import ValidationError

from bearing_core.config import IMS_CHANNELS_4, IMS_CHANNELS_8, IMS_SAMPLES_PER_SNAPSHOT
from bearing_core.inputs import InputConfig, healthy_period, input_columns, load_features, load_samples_rows


def test_default_columns_on_an_8_channel_dataset_are_the_8_mean_abs(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ds", {"site_1": 5})
    assert input_columns(ds, InputConfig()) == [f"{ch}_mean_abs" for ch in IMS_CHANNELS_8]
    assert input_columns(ds, InputConfig(feature="kurtosis"))[-1] == "B4_b_kurtosis"
    assert input_columns(IMS_CHANNELS_4, InputConfig()) == ["B1_mean_abs", "B2_mean_abs", "B3_mean_abs", "B4_mean_abs"]
    assert input_columns(ds, InputConfig(mode="samples")) == list(IMS_CHANNELS_8)
    assert input_columns(ds, InputConfig(columns=("B1_a_rms", "B3_b_rms"))) == ["B1_a_rms", "B3_b_rms"]


def test_missing_feature_or_column_names_what_is_available(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ds", {"site_1": 5}, channels=IMS_CHANNELS_4)
    with pytest.raises(ValueError, match=r"feature 'foo' not in features.parquet .*available: B1_mean_abs, B1_rms"):
        input_columns(ds, InputConfig(feature="foo"))
    with pytest.raises(ValueError, match=r"columns not in features.parquet \(missing \['B9_rms'\]\)"):
        input_columns(ds, InputConfig(columns=("B1_rms", "B9_rms")))


def test_input_config_needs_exactly_one_training_period() -> None:
    assert InputConfig().train_fraction == 0.2
    until = InputConfig(train_until=datetime(2004, 2, 13))
    assert until.train_fraction is None
    with pytest.raises(ValidationError, match="exactly one of train_until / train_fraction"):
        InputConfig(train_until=datetime(2004, 2, 13), train_fraction=0.5)
    with pytest.raises(ValidationError, match="exactly one"):
        InputConfig(train_fraction=None)
    with pytest.raises(ValidationError):
        InputConfig(holdout_fraction=1.0)
    with pytest.raises(ValidationError):
        InputConfig(extra_field=1)


def test_train_fraction_is_taken_per_site(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ds", {"site_1": 50, "site_2": 10, "site_3": 7})
    healthy = healthy_period(load_features(ds), InputConfig(train_fraction=0.2))
    counts = healthy["site"].value_counts().to_dict()
    assert counts == {"site_1": 10, "site_2": 2, "site_3": 2}  # ceil(0.2 × n) of EACH site
    full = load_features(ds)
    for site, group in healthy.groupby("site"):  # and they are each site's earliest rows
        assert group["timestamp"].max() < full.loc[full["site"] == site, "timestamp"].nsmallest(counts[site] + 1).max()
    assert healthy["timestamp"].is_monotonic_increasing


def test_train_until_is_a_time_cutoff_for_every_site_and_accepts_aware_datetimes(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ds", {"site_1": 20, "site_2": 20})
    cutoff = datetime(2004, 2, 12, 10, 41, tzinfo=UTC)  # site_1 at :00..:40, site_2 at :01..:41
    healthy = healthy_period(load_features(ds), InputConfig(train_until=cutoff))
    assert healthy["site"].value_counts().to_dict() == {"site_1": 5, "site_2": 5}
    with pytest.raises(ValueError, match="empty healthy period"):
        healthy_period(load_features(ds), InputConfig(train_until=datetime(2000, 1, 1)))


def test_quarantined_paths_never_reach_the_model(tmp_path: Path) -> None:
    ds = write_dataset(
        tmp_path / "ds",
        {"site_1": 6, "site_2": 6},
        quarantined=("site_1/2004.02.12.10.00.00", "site_2/2004.02.12.10.21.00"),
    )
    df = load_features(ds)
    assert len(df) == 10
    assert not df["path"].isin(["site_1/2004.02.12.10.00.00", "site_2/2004.02.12.10.21.00"]).any()
    assert list(df.columns[:4]) == ["timestamp", "file", "site", "path"]
    assert healthy_period(df, InputConfig(train_fraction=0.2))["path"].tolist() == [
        "site_2/2004.02.12.10.01.00",
        "site_1/2004.02.12.10.10.00",
    ]


def test_samples_mode_gives_20480_rows_per_snapshot(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "ds", {"site_1": 2, "site_2": 1}, channels=IMS_CHANNELS_4)
    rng = np.random.default_rng(0)
    snapshots = {
        "site_1/2004.02.12.10.00.00": "2004-02-12T10:00:00",
        "site_1/2004.02.12.10.10.00": "2004-02-12T10:10:00",
        "site_2/2004.02.12.10.01.00": "2004-02-12T10:01:00",
    }
    data = {rel: rng.normal(size=(IMS_SAMPLES_PER_SNAPSHOT, 4)) for rel in snapshots}
    for rel, ts in snapshots.items():
        write_samples(ds, rel, data[rel], IMS_CHANNELS_4, ts)
    order = ["site_2/2004.02.12.10.01.00", "site_1/2004.02.12.10.00.00"]
    rows = load_samples_rows(ds, order)
    assert len(rows) == 2 * IMS_SAMPLES_PER_SNAPSHOT
    assert list(rows.columns) == ["timestamp", "file", "site", "path", *IMS_CHANNELS_4]
    assert rows["path"].iloc[0] == order[0] and rows["path"].iloc[-1] == order[1]
    assert rows["site"].value_counts().to_dict() == {s: IMS_SAMPLES_PER_SNAPSHOT for s in ("site_1", "site_2")}
    np.testing.assert_array_equal(
        rows[list(IMS_CHANNELS_4)].to_numpy()[:IMS_SAMPLES_PER_SNAPSHOT], data[order[0]].astype(np.float32)
    )
    assert (rows["timestamp"].iloc[:IMS_SAMPLES_PER_SNAPSHOT] == pd.Timestamp("2004-02-12 10:01")).all()
    with pytest.raises(FileNotFoundError, match="samples file for 'site_3/x' not found"):
        load_samples_rows(ds, ["site_3/x"])


def test_real_ims_1st_test_inputs(tmp_path: Path, shared_ims: Path) -> None:
    """Real data: the published mean_abs features and the first raw snapshots of the IMS 1st test."""
    csv, raw = shared_ims / "features" / "1st_test_mean_abs.csv", shared_ims / "raw" / "1st_test"
    published = pd.read_csv(csv)
    ts = pd.to_datetime(published["file"], format="%Y.%m.%d.%H.%M.%S").astype("datetime64[us]")
    features = pd.DataFrame({"timestamp": ts, "file": published["file"], "site": "1st_test", "path": published["file"]})
    for ch in IMS_CHANNELS_8:
        features[f"{ch}_mean_abs"] = published[ch]
    ds = write_dataset(tmp_path / "1st_test", {"1st_test": len(features)}, features=features)
    cols = input_columns(ds, InputConfig())
    healthy = healthy_period(load_features(ds), InputConfig())
    assert cols == [f"{ch}_mean_abs" for ch in IMS_CHANNELS_8]
    assert len(healthy) == 432  # ceil(0.2 × 2,156)
    assert healthy["timestamp"].iloc[0] == pd.Timestamp("2003-10-22 12:06:24")

    files = sorted(p.name for p in raw.iterdir())
    for name in files:
        values = np.loadtxt(raw / name, delimiter="\t")
        ts_iso = pd.to_datetime(name, format="%Y.%m.%d.%H.%M.%S").isoformat()
        write_samples(ds, name, values, IMS_CHANNELS_8, ts_iso)
    rows = load_samples_rows(ds, files)
    assert len(rows) == len(files) * IMS_SAMPLES_PER_SNAPSHOT
    first = rows[rows["path"] == files[0]][list(IMS_CHANNELS_8)].to_numpy(np.float64)
    # mean |x| of the first real snapshot agrees with the published value (which skipped the first sample)
    np.testing.assert_allclose(
        np.abs(first[1:]).mean(axis=0), published.loc[0, list(IMS_CHANNELS_8)].to_numpy(float), rtol=1e-5
    )


def test_inputs_read_what_ingest_writes(tmp_path: Path, shared_ims: Path) -> None:
    """Contract check against the real ingest on the real IMS excerpt (4 snapshots of the 1st test)."""
    raw = shared_ims / "raw" / "1st_test"
    from bearing_core.config import IngestConfig
    from bearing_core.ingest import ingest_directory

    ds = tmp_path / "1st_test"
    ingest_directory(IngestConfig(raw_dir=raw, out_dir=ds, workers=1))
    assert input_columns(ds, InputConfig()) == [f"{ch}_mean_abs" for ch in IMS_CHANNELS_8]
    healthy = healthy_period(load_features(ds), InputConfig(train_fraction=0.5))
    assert healthy["file"].tolist() == ["2003.10.22.12.06.24", "2003.10.22.12.09.13"]
    rows = load_samples_rows(ds, healthy["path"].tolist())
    assert len(rows) == 2 * IMS_SAMPLES_PER_SNAPSHOT
    assert rows["site"].unique().tolist() == ["1st_test"]
    first = np.loadtxt(raw / "2003.10.22.12.06.24", delimiter="\t", max_rows=3)
    np.testing.assert_array_equal(rows[list(IMS_CHANNELS_8)].to_numpy()[:3], first.astype(np.float32))
