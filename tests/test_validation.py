"""Data validation (Great Expectations 1.x): samples, features table, partitions, report, CLI.

Fixtures write small processed datasets in the shared contract format (samples/<rel>.parquet, features.parquet,
quarantine.parquet, dataset.json) with 2,048-sample snapshots and ``expected_samples`` set accordingly; one test
uses the real 20,480-sample IMS files. GX runs cost a few seconds each, so each module-scoped dataset is
validated once and several tests assert on its report. Breakages that must be told apart are applied to
different snapshots/rows of one dataset, and each test checks that its check fails on exactly its row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.processed_datasets import N_SAMPLES, T0, _write_samples, rewrite_features, write_dataset

from bearing_core.config import IMS_SAMPLES_PER_SNAPSHOT, RigConfig, channel_names
from bearing_core.features import FEATURES, compute_features_batch, feature_columns
from bearing_core.validation import (
    ValidationConfig,
    ValidationFailed,
    ValidationReport,
    summary_cache,
    validate_dataset,
    validate_partitions,
)
from bearing_core.validation.summaries import feature_timeline, summarize_snapshot

# --------------------------------------------------------------------------------------------------- fixtures


def rewrite_samples(ds: Path, rel: str, fn: Callable[[pa.Table], pa.Table]) -> None:
    path = ds / "samples" / f"{rel}.parquet"
    pq.write_table(fn(pq.read_table(path)), path)


def set_channel(table: pa.Table, channel: str, values: np.ndarray | pa.Array) -> pa.Table:
    arr = values if isinstance(values, pa.Array) else pa.array(np.asarray(values, dtype=np.float32))
    return table.set_column(table.column_names.index(channel), channel, arr)


def read_quarantine(ds: Path) -> pd.DataFrame:
    return pd.read_parquet(ds / "quarantine.parquet")


CH4 = channel_names(4)
INGEST_ROW = ("site_1/2004.02.12.09.00.00", "line 17: 3 columns, expected 4", "ingest")


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ValidationReport]:
    ds = tmp_path_factory.mktemp("valid")
    stale = ("site_2/2004.02.12.10.42.39", "samples.finite: from an earlier run", "validate")
    write_dataset(ds, {"site_1": 6, "site_2": 6}, quarantine_rows=[INGEST_ROW, stale])
    return ds, validate_dataset(ds)


# one breakage per snapshot of site_1: (snapshot index, how, check expected to fail, text of the quarantine reason)
SAMPLE_BREAKAGES: dict[str, tuple[int, Callable[[pa.Table], pa.Table], str, str]] = {
    "nan": (1, lambda t: set_channel(t, "B2", np.r_[t["B2"].to_numpy()[:5], np.nan, t["B2"].to_numpy()[6:]]),
            "samples.finite", "channel B2 n_nonfinite=1"),
    "inf": (2, lambda t: set_channel(t, "B3", np.where(np.arange(t.num_rows) == 9, np.inf, t["B3"].to_numpy())),
            "samples.finite", "channel B3 n_nonfinite=1"),
    "null": (3, lambda t: set_channel(t, "B1", pa.array([None] * 3 + t["B1"].to_pylist()[3:], pa.float32())),
             "samples.no_nulls", "channel B1 n_null=3"),
    "above_range": (4, lambda t: set_channel(t, "B4", np.r_[12.5, t["B4"].to_numpy()[1:]]),
                    "samples.max_in_range", "channel B4 max=12.5"),
    "below_range": (5, lambda t: set_channel(t, "B1", np.r_[t["B1"].to_numpy()[:-1], -11.0]),
                    "samples.min_in_range", "channel B1 min=-11"),
    "flat": (6, lambda t: set_channel(t, "B2", np.full(t.num_rows, 0.02)), "samples.not_flat", "channel B2 std=0"),
    "clipped": (7, lambda t: set_channel(t, "B3", np.where(np.arange(t.num_rows) % 32 == 0, 0.5,
                                                           np.clip(t["B3"].to_numpy(), -0.5, 0.5))),
                "samples.not_clipped", "channel B3 clip_fraction=0.03125"),
    "renamed_column": (8, lambda t: t.rename_columns([*t.column_names[:-1], "B5"]),
                       "snapshot.columns", "columns='timestamp,B1,B2,B3,B5'"),
    "short": (9, lambda t: t.slice(0, 2_000), "snapshot.sample_count", "n_rows=2000"),
    "float64": (10, lambda t: t.cast(pa.schema([t.schema.field(0), *(pa.field(c, pa.float64()) for c in CH4)])),
                "snapshot.types", "types='timestamp[us],double,double,double,double'"),
}  # fmt: skip
MISSING_SNAPSHOT = 11  # its samples file is deleted: snapshot.readable


@pytest.fixture(scope="module")
def broken_samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], ValidationReport]:
    ds = tmp_path_factory.mktemp("broken_samples")
    paths = write_dataset(ds, {"site_1": 16}, quarantine_rows=[INGEST_ROW])
    for index, fn, _, _ in SAMPLE_BREAKAGES.values():
        rewrite_samples(ds, paths[index], fn)
    (ds / "samples" / f"{paths[MISSING_SNAPSHOT]}.parquet").unlink()
    cfg = ValidationConfig(max_quarantine_fraction=0.75, build_docs=False)
    return ds, paths, validate_dataset(ds, cfg)


@pytest.fixture(scope="module")
def broken_features(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ValidationReport]:
    """Sites a/b/c; each feature-level breakage on its own row or column (see the tests)."""
    ds = tmp_path_factory.mktemp("broken_features")
    write_dataset(ds, {"a": 6, "b": 6, "c": 6})

    def breakages(df: pd.DataFrame) -> pd.DataFrame:
        a, b, c = (df.index[df["site"] == s] for s in "abc")
        df.loc[a[3], "timestamp"] = df.loc[a[2], "timestamp"]  # duplicate timestamp in site a
        df.loc[[b[2], b[3]], "timestamp"] = df.loc[[b[3], b[2]], "timestamp"].to_numpy()  # step back in site b
        df.loc[c[4:], "timestamp"] += pd.Timedelta(hours=2)  # a 130-minute gap in site c (median interval 10)
        df.loc[c[1], "B1_kurtosis"] = 0.5
        df.loc[c[2], "B2_rms"] = -0.1
        df.loc[c[3], "B3_env_bpfo"] = np.nan
        df.loc[c[5], "B4_crest"] = np.inf
        df["B1_mean_abs"] = df["B1_mean_abs"].astype(np.float32)
        return df.drop(columns=["B4_skewness"]).assign(B9_rms=1.0)

    rewrite_features(ds, breakages)
    return ds, validate_dataset(ds, ValidationConfig(build_docs=False))


# --------------------------------------------------------------------------------------------------- summaries


def test_summarize_snapshot_statistics(tmp_path: Path) -> None:
    x = np.zeros((100, 4), dtype=np.float32)
    x[:, 0] = np.linspace(-1, 1, 100)
    x[:, 1] = 0.25  # flat
    x[:10, 2] = 0.5  # 10 % of the samples at max |x|
    x[3, 3] = np.nan
    _write_samples(tmp_path, "s/f", T0, x, channel_names(4))
    s = summarize_snapshot(tmp_path, "s/f", "s", channel_names(4))
    assert s.snapshot == {"path": "s/f", "site": "s", "n_rows": 100, "columns": "timestamp,B1,B2,B3,B4",
                          "types": "timestamp[us],float,float,float,float", "read_error": ""}  # fmt: skip
    by_channel = {row["channel"]: row for row in s.channels}
    assert by_channel["B1"]["min"] == pytest.approx(-1) and by_channel["B1"]["max"] == pytest.approx(1)
    assert by_channel["B1"]["std"] == pytest.approx(np.linspace(-1, 1, 100).std(), rel=1e-6)
    assert by_channel["B1"]["clip_fraction"] == pytest.approx(0.02)  # -1 and +1
    assert by_channel["B2"]["std"] == 0 and by_channel["B2"]["clip_fraction"] == 1.0
    assert by_channel["B3"]["clip_fraction"] == pytest.approx(0.10)
    assert by_channel["B4"]["n_nonfinite"] == 1 and by_channel["B4"]["n_null"] == 0
    assert by_channel["B4"]["max"] == 0.0  # statistics over the finite samples


def test_summarize_missing_file_sets_only_read_error(tmp_path: Path) -> None:
    s = summarize_snapshot(tmp_path, "s/nope", "s", channel_names(4))
    assert s.snapshot["read_error"] == "missing samples file samples/s/nope.parquet"
    assert s.snapshot["columns"] is None and s.snapshot["n_rows"] is None and s.channels == []


def test_feature_timeline_intervals_and_ratios() -> None:
    df = pd.DataFrame({
        "path": list("pqrstu"), "site": ["x", "y", "x", "y", "x", "x"],
        "timestamp": (T0 + pd.to_timedelta([0, 0, 10, 10, 20, 60], unit="min")).astype("datetime64[us]"),
        "B1_rms": [1.0, 2.0, 1.0, 2.0, 1.0, 0.01],
    })  # fmt: skip
    tl = feature_timeline(df, ["B1"])
    assert tl["interval_s"].tolist()[2:] == [600.0, 600.0, 600.0, 2400.0]
    assert np.isnan(tl["interval_s"][0]) and np.isnan(tl["interval_s"][1])
    assert tl["gap_ratio"].iloc[5] == pytest.approx(4.0)  # site x median interval 600 s
    assert tl["rms_ratio"].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.01])


def test_config_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValueError, match="extra"):
        ValidationConfig(max_gap=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="greater than 1"):
        ValidationConfig(max_gap_factor=0.5)
    with pytest.raises(ValueError, match="distinct"):
        ValidationConfig(channels=("B1", "B1"))


# --------------------------------------------------------------------------------------------------- valid data


def test_valid_dataset_passes_every_check(valid: tuple[Path, ValidationReport]) -> None:
    ds, report = valid
    assert report.success and not report.errors and not report.warnings
    assert all(o.success for o in report.outcomes), [o.check for o in report.outcomes if not o.success]
    assert (report.n_rows, report.n_valid, report.quarantined) == (12, 12, [])
    # one type + not-null + range check per feature column, plus the sample-level and timeline checks
    assert sum(o.family.startswith("features.<channel>_") for o in report.outcomes) == 3 * 4 * len(FEATURES)
    assert {"samples.not_clipped", "snapshot.columns", "timeline.gaps", "timeline.shutdown"} <= {
        o.check for o in report.outcomes
    }
    report.raise_for_errors()  # does not raise


def test_valid_dataset_keeps_ingest_quarantine_and_drops_stale_validate_rows(
    valid: tuple[Path, ValidationReport],
) -> None:
    q = read_quarantine(valid[0])
    assert q.to_dict("records") == [dict(zip(("file", "reason", "stage"), INGEST_ROW))]


def test_data_docs_render_the_results(valid: tuple[Path, ValidationReport]) -> None:
    ds, report = valid
    index = ds / "validation" / "index.html"
    assert report.docs_index == index and index.is_file()
    html = index.read_text()
    for suite in ("samples_snapshot", "samples_channel", "features", "features_timeline"):
        assert f"validations/{suite}/" in html
    pages = {p.parent.parent.parent.name: p.read_text() for p in (ds / "validation" / "validations").rglob("*.html")}
    assert "samples.not_flat" in pages["samples_channel"] and "snapshot.columns" in pages["samples_snapshot"]
    assert "timeline.gaps" in pages["features_timeline"] and "features.B1_kurtosis.range" in pages["features"]
    saved = json.loads((ds / "validation" / "report.json").read_text())
    assert saved["n_valid"] == 12 and len(saved["outcomes"]) == len(report.outcomes)
    assert (ds / "validation" / "report.md").read_text().startswith("# Validation PASSED")
    assert not list(ds.glob(".validation*")), "build/old directories must not be left behind"


# --------------------------------------------------------------------------------------------------- samples


@pytest.mark.parametrize("breakage", sorted(SAMPLE_BREAKAGES))
def test_each_sample_breakage_quarantines_exactly_its_snapshot(
    broken_samples: tuple[Path, list[str], ValidationReport], breakage: str
) -> None:
    ds, paths, report = broken_samples
    index, _, check, reason = SAMPLE_BREAKAGES[breakage]
    outcome = report.outcome(check)
    assert not outcome.success and outcome.severity == "error" and outcome.quarantine and not outcome.blocking
    assert any(e.startswith(paths[index]) for e in outcome.examples), outcome.examples
    reasons = {q.file: q.reason for q in report.quarantined}
    assert reasons[paths[index]] == f"{check}: {reason}"  # this check only, with column and observed value


def test_missing_samples_file_fails_only_readable(broken_samples: tuple[Path, list[str], ValidationReport]) -> None:
    _, paths, report = broken_samples
    reasons = {q.file: q.reason for q in report.quarantined}
    rel = paths[MISSING_SNAPSHOT]
    assert reasons[rel] == f"snapshot.readable: read_error='missing samples file samples/{rel}.parquet'"


def test_sample_failures_confined_to_quarantine_do_not_block(
    broken_samples: tuple[Path, list[str], ValidationReport],
) -> None:
    ds, paths, report = broken_samples
    broken = {paths[i] for i, *_ in SAMPLE_BREAKAGES.values()} | {paths[MISSING_SNAPSHOT]}
    assert {q.file for q in report.quarantined} == broken
    assert report.success and report.n_valid == 16 - len(broken)
    # features checks ran on the surviving rows only: no error; the hole left by snapshots 1-11 is a gap warning
    assert all(o.success for o in report.outcomes if o.suite.startswith("features") and o.severity == "error")
    assert report.warnings == [report.outcome("timeline.gaps")]
    assert report.outcome("timeline.gaps").examples[0].startswith(f"{paths[12]} ")
    q = read_quarantine(ds)
    assert set(q.loc[q["stage"] == "validate", "file"]) == broken
    assert q.loc[q["stage"] == "ingest"].values.tolist() == [list(INGEST_ROW)]


def test_flat_channel_is_not_also_reported_as_clipped(
    broken_samples: tuple[Path, list[str], ValidationReport],
) -> None:
    _, paths, report = broken_samples
    flat = paths[SAMPLE_BREAKAGES["flat"][0]]
    assert not any(e.startswith(flat) for e in report.outcome("samples.not_clipped").examples)


# --------------------------------------------------------------------------------------------------- features


def _failing(report: ValidationReport, check: str) -> list[str]:
    outcome = report.outcome(check)
    assert not outcome.success, f"{check} should fail"
    return outcome.examples


def test_duplicate_timestamp_is_an_error(broken_features: tuple[Path, ValidationReport]) -> None:
    _, report = broken_features
    assert _failing(report, "timeline.increasing")[0].startswith("a/2004.02.12.11.02.39 a 2004-02-12 10:52:39")
    assert report.outcome("timeline.increasing").severity == "error"
    unique = _failing(report, "features.site_timestamp.unique")
    assert all(e.startswith("a/") and "timestamp=2004-02-12 10:52:39" in e for e in unique) and len(unique) == 2


def test_decreasing_timestamp_is_an_error(broken_features: tuple[Path, ValidationReport]) -> None:
    _, report = broken_features
    examples = _failing(report, "timeline.increasing")
    assert [e.split(":")[0].split(" ")[0] for e in examples] == ["a/2004.02.12.11.02.39", "b/2004.02.12.11.02.39"]
    assert examples[1].endswith("interval_s=-600")


def test_gap_is_a_warning(broken_features: tuple[Path, ValidationReport]) -> None:
    _, report = broken_features
    gap = report.outcome("timeline.gaps")
    assert gap.status == "WARN" and not gap.blocking
    assert gap.examples == ["c/2004.02.12.11.12.39 c 2004-02-12 13:12:39: gap_ratio=13"]
    assert gap.failing_keys == ["c/2004.02.12.11.12.39"]


@pytest.mark.parametrize(
    ("check", "example"),
    [
        ("features.B1_kurtosis.range", "c/2004.02.12.10.42.39: B1_kurtosis=0.5"),
        ("features.B2_rms.range", "c/2004.02.12.10.52.39: B2_rms=-0.1"),
        ("features.B3_env_bpfo.not_null", "c/2004.02.12.11.02.39: B3_env_bpfo=nan"),
        ("features.B4_crest.range", "c/2004.02.12.11.22.39: B4_crest=inf"),
    ],
)
def test_implausible_feature_value_is_an_error(
    broken_features: tuple[Path, ValidationReport], check: str, example: str
) -> None:
    _, report = broken_features
    assert _failing(report, check) == [example]
    assert report.outcome(check) in report.errors


def test_feature_schema_errors_name_the_columns(broken_features: tuple[Path, ValidationReport]) -> None:
    _, report = broken_features
    assert _failing(report, "features.columns") == ["missing columns: B4_skewness", "unexpected columns: B9_rms"]
    dtype = report.outcome("features.B1_mean_abs.type")
    assert not dtype.success and dtype.observed == "'float32'"
    assert report.outcome("features.B4_skewness.range").error == "column(s) B4_skewness missing"
    # untouched columns pass
    assert report.outcome("features.B2_mean_abs.type").success and report.outcome("features.B2_rms.not_null").success


def test_errors_raise_validation_failed_listing_each_check(broken_features: tuple[Path, ValidationReport]) -> None:
    _, report = broken_features
    assert not report.success
    with pytest.raises(ValidationFailed) as info:
        report.raise_for_errors()
    message = str(info.value)
    for check in ("features.columns", "timeline.increasing", "features.B2_rms.range"):
        assert f"- {check}" in message
    assert "B2_rms=-0.1" in message and "timeline.gaps" not in message  # warnings do not stop the run
    assert info.value.report is report


# --------------------------------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> int:
    from cli import validate_cmd

    parser = argparse.ArgumentParser(prog="bearing")
    validate_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["validate", *argv])
    return args.func(args)


def test_cli_warnings_only_exits_zero_and_lists_shutdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_dataset(tmp_path, {"site_2": 8}, scale=lambda site, i: 0.01 if i == 7 else 1.0)
    assert _cli([str(tmp_path), "--no-docs"]) == 0
    out = capsys.readouterr().out
    assert "Validation PASSED with warnings" in out
    assert "WARN  timeline.shutdown  [warning]" in out
    assert "site_2/2004.02.12.11.42.39 site_2 2004-02-12 11:42:39: rms_ratio=0.0099" in out
    assert "flagged: site_2/2004.02.12.11.42.39\n" in out


def test_cli_too_many_quarantined_exits_one(
    broken_samples: tuple[Path, list[str], ValidationReport], capsys: pytest.CaptureFixture[str]
) -> None:
    ds, _, _ = broken_samples
    assert _cli([str(ds), "--no-docs", "--max-quarantine-fraction", "0.2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  features.enough_snapshots  [error]" in out
    assert "observed 5" in out  # 16 snapshots, 11 quarantined, at least 13 required


def test_cli_missing_dir_and_bad_args_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli([str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    write_dataset(tmp_path, {"s": 2})
    assert _cli([str(tmp_path), "--range", "-1"]) == 2
    assert "sensor_range_g" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- real data


def test_real_ims_snapshots_pass(tmp_path: Path, shared_ims: Path) -> None:
    raw = shared_ims / "raw" / "1st_test"
    files = sorted(raw.iterdir())
    channels = channel_names(8)
    x = np.stack([pd.read_csv(f, sep="\t", header=None, dtype=np.float32).to_numpy() for f in files])
    assert x.shape == (len(files), IMS_SAMPLES_PER_SNAPSHOT, 8)
    feats = compute_features_batch(x, RigConfig()).reshape(len(files), -1)
    rows = []
    for f, xi, fi in zip(files, x, feats):
        ts = pd.to_datetime(f.name, format="%Y.%m.%d.%H.%M.%S")
        _write_samples(tmp_path, f"1st_test/{f.name}", ts, xi, channels)
        rows.append({"timestamp": ts, "file": f.name, "site": "1st_test", "path": f"1st_test/{f.name}",
                     **dict(zip(feature_columns(channels), fi))})  # fmt: skip
    df = pd.DataFrame(rows).astype({"timestamp": "datetime64[us]"})
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "features.parquet")
    (tmp_path / "dataset.json").write_text(json.dumps({"channels": list(channels), "expected_samples": 20_480}))
    report = validate_dataset(tmp_path, ValidationConfig(build_docs=False))
    assert report.success and not report.warnings, report.summary_text()
    assert report.n_valid == 4 and report.outcome("samples.not_clipped").element_count == 32
    assert read_quarantine(tmp_path).empty  # created with the contract's columns


# --------------------------------------------------------------------------------------------------- partitions


def _write_clients(d: Path, clients: dict[int, list[str]], split: bool = True) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for k, paths in clients.items():
        cols = {"path": pa.array(paths, pa.string()), "B1_rms": pa.array(np.ones(len(paths)))}
        if split:
            cols["split"] = pa.array(["train"] * len(paths), pa.string())
        pq.write_table(pa.table(cols), d / f"client_{k}.parquet")


TRAINING = [f"s/{i:02d}" for i in range(12)]


def test_valid_partitions_pass(tmp_path: Path) -> None:
    _write_clients(tmp_path / "iid", {0: TRAINING[:6], 1: TRAINING[6:]})
    report = validate_partitions(tmp_path / "iid", TRAINING, ValidationConfig(min_client_rows=5))
    assert report.success and all(o.success for o in report.outcomes)
    assert (report.n_rows, report.n_valid) == (12, 12)
    assert (tmp_path / "iid" / "validation" / "index.html").is_file()


def test_broken_partitions_report_each_problem(tmp_path: Path) -> None:
    _write_clients(tmp_path / "bad", {0: TRAINING[:6], 1: [], 2: TRAINING[5:11] + ["s/extra"]})
    _write_clients(tmp_path / "bad2", {3: TRAINING[:2]}, split=False)
    (tmp_path / "bad" / "client_3.parquet").write_bytes((tmp_path / "bad2" / "client_3.parquet").read_bytes())
    cfg = ValidationConfig(min_client_rows=3, build_docs=False)
    report = validate_partitions(tmp_path / "bad", TRAINING, cfg)
    assert _failing(report, "partitions.non_empty") == ["client_1: n_rows=0"]
    assert _failing(report, "partitions.min_rows") == ["client_1: n_rows=0", "client_3: n_rows=2"]
    assert _failing(report, "partitions.readable") == ["client_3: problem='client_3.parquet: missing column(s) split'"]
    assert _failing(report, "partitions.no_overlap") == ["s/05 client_0,client_2: n_clients=2"]
    assert _failing(report, "partitions.covers_training") == ["s/11 : n_clients=0"]
    assert _failing(report, "partitions.only_training") == ["s/extra client_2: in_training=False"]
    assert {o.check for o in report.errors} == {
        "partitions.non_empty", "partitions.min_rows", "partitions.readable",
        "partitions.no_overlap", "partitions.covers_training", "partitions.only_training",
    }  # fmt: skip
    with pytest.raises(ValidationFailed, match="partitions.no_overlap"):
        report.raise_for_errors()


def test_partition_dir_without_clients_fails(tmp_path: Path) -> None:
    report = validate_partitions(tmp_path, TRAINING, ValidationConfig(build_docs=False))
    assert report.outcome("partitions.exists") in report.errors
    assert report.outcome("partitions.covers_training").unexpected_count == 12


# ------------------------------------------------------------------------------------- per-snapshot summary cache


def _write_manifest(ds: Path, sha: dict[str, str]) -> None:
    """The ingest manifest's (path, sha256) columns; the sha256 stands for the raw file's."""
    pq.write_table(pa.table({"path": list(sha), "sha256": list(sha.values())}), ds / "manifest.parquet")


def _cache_parts(ds: Path) -> dict[str, tuple[int, list[str]]]:
    """``{part file: (mtime_ns, paths it holds)}`` of the dataset's summary cache."""
    return {
        p.name: (p.stat().st_mtime_ns, pq.read_table(p, columns=["path"])["path"].to_pylist())
        for p in sorted(summary_cache.cache_dir(ds).glob("part-*.parquet"))
    }


def _rewrite_keeping_stat(path: Path, table: pa.Table) -> None:
    """Rewrite a samples file with ``table`` at the same size and mtime (plain, uncompressed float32 pages), so
    only the manifest's sha256 can tell the change."""
    st = path.stat()
    pq.write_table(table, path, compression="none", use_dictionary=False)
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _plain(ds: Path, rel: str) -> None:
    path = ds / "samples" / f"{rel}.parquet"
    pq.write_table(pq.read_table(path), path, compression="none", use_dictionary=False)


def test_second_run_reads_only_the_new_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tmp_path / "ds"
    paths = write_dataset(ds, {"site_1": 6, "site_2": 6})
    new, old = paths[-1], paths[3]
    sha = {p: f"{i:064x}" for i, p in enumerate(paths)}
    full_features = pd.read_parquet(ds / "features.parquet")
    # night 1: the dataset without its last snapshot
    rewrite_features(ds, lambda df: df[df["path"] != new])
    _write_manifest(ds, {p: s for p, s in sha.items() if p != new})
    cfg = ValidationConfig(build_docs=False)
    first = validate_dataset(ds, cfg)
    assert first.n_rows == 11 and not first.quarantined
    night1 = _cache_parts(ds)
    assert [sorted(paths) for _, paths in night1.values()] == [sorted(p for p in paths if p != new)]

    # night 2: one new snapshot. An old snapshot's samples file now holds garbage with its size and mtime: were it
    # read, it would be quarantined as unreadable.
    old_file = ds / "samples" / f"{old}.parquet"
    original = old_file.read_bytes()
    st = old_file.stat()
    old_file.write_bytes(b"\0" * len(original))
    os.utime(old_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    rewrite_features(ds, lambda df: full_features)
    _write_manifest(ds, sha)
    read: list[str] = []
    summarize = summary_cache.summarize_snapshot
    monkeypatch.setattr(
        summary_cache, "summarize_snapshot", lambda d, rel, *a: read.append(rel) or summarize(d, rel, *a)
    )
    second = validate_dataset(ds, cfg)
    monkeypatch.undo()
    assert read == [new]
    assert second.n_rows == 12 and not second.quarantined
    night2 = _cache_parts(ds)
    first_part = next(iter(night1))
    assert night2[first_part] == night1[first_part]  # night 1's summaries are not rewritten
    assert [v[1] for k, v in night2.items() if k != first_part] == [[new]]

    # a cold run (no cache) on the same, intact data gives the same report
    old_file.write_bytes(original)
    os.utime(old_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.rmtree(summary_cache.cache_dir(ds))
    cold = validate_dataset(ds, cfg)
    assert cold.model_dump(mode="json") == second.model_dump(mode="json")
    assert [sorted(v[1]) for v in _cache_parts(ds).values()] == [sorted(paths)]


def test_changed_snapshot_is_summarised_again(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    paths = write_dataset(ds, {"site_1": 6, "site_2": 6})
    changed_sha, same_sha, rewritten = paths[2], paths[5], paths[8]
    for rel in (changed_sha, same_sha):
        _plain(ds, rel)
    sha = {p: f"{i:064x}" for i, p in enumerate(paths)}
    _write_manifest(ds, sha)
    cfg = ValidationConfig(build_docs=False)
    assert not validate_dataset(ds, cfg).quarantined

    def flat(table: pa.Table) -> pa.Table:
        return set_channel(table, CH4[1], np.zeros(table.num_rows))

    for rel in (changed_sha, same_sha):  # same size and mtime: only the sha256 can tell
        path = ds / "samples" / f"{rel}.parquet"
        _rewrite_keeping_stat(path, flat(pq.read_table(path)))
    _write_manifest(ds, sha | {changed_sha: "f" * 64})  # a new raw file behind changed_sha
    rewrite_samples(ds, rewritten, flat)  # samples rewritten (new mtime), raw sha256 unchanged
    report = validate_dataset(ds, cfg)
    # same_sha's samples are not read again: the cache trusts (sha256, samples size, mtime)
    assert [q.file for q in report.quarantined] == sorted([changed_sha, rewritten])
    assert all("samples.not_flat: channel B2 std=0" in q.reason for q in report.quarantined)
    latest = list(_cache_parts(ds).values())[-1][1]
    assert sorted(latest) == sorted([changed_sha, rewritten])


def test_dataset_without_manifest_is_summarised_every_run(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    paths = write_dataset(ds, {"site_1": 4})
    cfg = ValidationConfig(build_docs=False)
    validate_dataset(ds, cfg)
    path = ds / "samples" / f"{paths[1]}.parquet"
    _plain(ds, paths[1])
    validate_dataset(ds, cfg)
    _rewrite_keeping_stat(path, set_channel(pq.read_table(path), CH4[0], np.zeros(N_SAMPLES)))
    assert [q.file for q in validate_dataset(ds, cfg).quarantined] == [paths[1]]
    assert not summary_cache.cache_dir(ds).exists()


def test_summary_cache_compacts_into_one_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tmp_path / "ds"
    paths = write_dataset(ds, {"site_1": 5})
    _write_manifest(ds, {p: f"{i:064x}" for i, p in enumerate(paths)})
    sites = ["site_1"] * len(paths)
    cold = summary_cache.cached_summaries(ds, paths, sites, CH4)
    shutil.rmtree(summary_cache.cache_dir(ds))
    monkeypatch.setattr(summary_cache, "MAX_PARTS", 2)
    for n in range(1, len(paths) + 1):  # one new snapshot a night
        night = summary_cache.cached_summaries(ds, paths[:n], sites[:n], CH4)
        assert night.summarised == [paths[n - 1]]
        assert len(_cache_parts(ds)) <= 2
    assert night.snapshots.equals(cold.snapshots) and night.channels.equals(cold.channels)
    assert sorted(summary_cache.load_cache(ds)["path"].to_pylist()) == sorted(paths)
    again = summary_cache.cached_summaries(ds, paths, sites, CH4)
    assert again.summarised == [] and again.reused == len(paths)
