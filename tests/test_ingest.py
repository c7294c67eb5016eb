"""Ingest: the output contract, quarantine corpus, incremental re-runs, crash recovery, pool = in-process, CLI."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.ims_files import write_ims_file

from bearing_core.config import IngestConfig, RigConfig
from bearing_core.features import FEATURES, compute_features, feature_columns
from bearing_core.ingest import IngestProgress, ingest_directory, read_samples, samples_path

N = 64  # samples per synthetic snapshot (expected_samples in these tests)
REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2004, 2, 12, 10, 32, 39)


def _name(i: int) -> str:
    return (T0 + timedelta(minutes=10 * i)).strftime("%Y.%m.%d.%H.%M.%S")


def _values(seed: int, channels: int = 8) -> np.ndarray:
    return np.round(np.random.default_rng(seed).normal(0.0, 0.2, (N, channels)), 3)


def _make_sites(raw: Path, sites: int = 2, per_site: int = 3, channels: int = 8) -> None:
    for s in range(sites):
        for i in range(per_site):
            write_ims_file(raw / f"site_{s + 1}" / _name(i), _values(100 * s + i, channels))


def _cfg(raw: Path, out: Path, **kwargs) -> IngestConfig:
    return IngestConfig(raw_dir=raw, out_dir=out, expected_samples=N, **{"workers": 1, **kwargs})


def _table(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def _quarantine(out: Path) -> dict[str, str]:
    return {row["file"]: row["reason"] for row in _table(out, "quarantine.parquet") if row["stage"] == "ingest"}


def _samples_files(out: Path) -> dict[str, int]:
    root = out / "samples"
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*.parquet")}


def test_outputs_follow_the_contract(tmp_path: Path) -> None:
    raw, out = tmp_path / "demo", tmp_path / "out"
    _make_sites(raw)
    write_ims_file(raw / _name(7), _values(7))  # top level: site = name of RAW_DIR
    (raw / "ground_truth.json").write_text("{}")
    (raw / "site_1" / "README").write_text("metadata")
    (raw / "site_1" / ".hidden").write_text("x")
    events: list[IngestProgress] = []

    report = ingest_directory(_cfg(raw, out, batch_size=2), progress=events.append)

    assert report.summary_line() == "ingested 7, unchanged 0, quarantined 0"
    assert (report.parsed, report.removed) == (7, 0)
    assert events[0] == IngestProgress(0, 7, 0)
    assert events[-1].files_done == events[-1].files_total == 7
    assert events[-1].bytes_done == sum(p.stat().st_size for p in raw.rglob("2004.*"))

    dataset = json.loads((out / "dataset.json").read_text())
    channels = ["B1_a", "B1_b", "B2_a", "B2_b", "B3_a", "B3_b", "B4_a", "B4_b"]
    assert dataset["name"] == "demo"
    assert dataset["channels"] == channels
    assert dataset["expected_samples"] == N
    assert dataset["features"] == list(FEATURES)
    assert dataset["sites"] == ["demo", "site_1", "site_2"]
    assert dataset["rig"] == json.loads(RigConfig().model_dump_json())

    features = pq.read_table(out / "features.parquet")
    assert features.column_names == ["timestamp", "file", "site", "path", *feature_columns(channels)]
    assert str(features.schema.field("timestamp").type) == "timestamp[us]"
    rows = features.to_pylist()
    assert [(r["timestamp"], r["site"]) for r in rows] == sorted((r["timestamp"], r["site"]) for r in rows)
    assert {r["path"] for r in rows} == {f"site_{s}/{_name(i)}" for s in (1, 2) for i in range(3)} | {_name(7)}
    top = next(r for r in rows if r["path"] == _name(7))
    assert (top["site"], top["file"], top["timestamp"]) == ("demo", _name(7), T0 + timedelta(minutes=70))
    expected = compute_features(_values(7).astype(np.float32), RigConfig()).ravel()
    np.testing.assert_allclose([top[c] for c in feature_columns(channels)], expected, rtol=1e-12)
    assert _table(out, "quarantine.parquet") == []
    manifest = _table(out, "manifest.parquet")
    assert [m["path"] for m in manifest] == sorted(r["path"] for r in rows)
    assert all(m["status"] == "ok" and len(m["sha256"]) == 64 for m in manifest)


def test_samples_file_round_trips_alone(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    values = _values(3, channels=4)
    write_ims_file(raw / "site_a" / _name(0), values)
    ingest_directory(_cfg(raw, out))

    path = samples_path(out, f"site_a/{_name(0)}")
    table = pq.read_table(path)
    assert table.column_names == ["timestamp", "B1", "B2", "B3", "B4"]
    assert str(table.schema.field("B1").type) == "float"
    assert set(table.column("timestamp").to_pylist()) == {T0}
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items() if not k.startswith(b"ARROW")}
    assert metadata == {"file": _name(0), "site": "site_a", "path": f"site_a/{_name(0)}", "timestamp": T0.isoformat()}

    data, timestamp, _ = read_samples(path)
    assert timestamp == T0
    np.testing.assert_array_equal(np.round(data.astype(np.float64), 3), values)


def test_bad_files_are_quarantined_with_exact_reasons_and_good_files_still_ingested(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    _make_sites(raw, sites=1, per_site=2)
    site = raw / "site_1"
    good = _values(0)
    lines = [ln for ln in (site / _name(0)).read_text().splitlines()]

    def put(i: int, content: str | bytes) -> str:
        (site / _name(i)).write_bytes(content.encode() if isinstance(content, str) else content)
        return f"site_1/{_name(i)}"

    expected = {
        put(10, ""): "empty file",
        put(11, "\n".join(lines[:-3]) + "\n"): f"{N - 3} samples, expected {N}",
        put(12, "\n".join(lines[:16] + ["\t".join(lines[16].split("\t")[:7])] + lines[17:])): (
            "line 17: 7 columns, expected 8"
        ),
        put(13, "\n".join(lines[:4] + ["0.1\t0.2\tabc\t0.1\t0.1\t0.1\t0.1\t0.1"] + lines[5:])): (
            "line 5 column 3: not a number: 'abc'"
        ),
        put(14, "\n".join(lines[:8] + ["0.1\tnan\t0.1\t0.1\t0.1\t0.1\t0.1\t0.1"] + lines[9:])): (
            "line 9 column 2: non-finite value 'nan'"
        ),
        put(15, "\n".join("\t".join(ln.split("\t")[:4]) for ln in lines)): "4 columns, expected 8",
        put(16, bytes(range(256)) * 4): "line 1: binary data (byte 0x00), not IMS text",
        put(17, "\n".join(lines[:-1] + ["\t".join(lines[-1].split("\t")[:6])])): (  # truncated mid-line
            f"line {N}: 6 columns, expected 8"
        ),
    }
    accepted = {
        put(20, "\r\n".join(lines) + "\r\n"): "crlf",
        put(21, "\n".join(ln + " \t" for ln in lines)): "trailing whitespace, no final newline",
    }
    (site / "notes_2004").write_text("\n".join(lines))
    expected["site_1/notes_2004"] = "name is not a timestamp YYYY.MM.DD.hh.mm.ss"
    (site / "2004.02.30.00.00.00").write_text("\n".join(lines))
    expected["site_1/2004.02.30.00.00.00"] = (
        "name is not a valid timestamp YYYY.MM.DD.hh.mm.ss: day is out of range for month"
    )
    (site / _name(30)).mkdir()
    write_ims_file(site / _name(30) / _name(31), good)
    expected[f"site_1/{_name(30)}/{_name(31)}"] = (
        "nested too deep: snapshots must be RAW_DIR/<file> or RAW_DIR/<site>/<file>"
    )
    (site / _name(35)).mkdir()
    expected[f"site_1/{_name(35)}"] = "is a directory, expected a snapshot file"
    (site / _name(40)).symlink_to(tmp_path / "nowhere")
    expected[f"site_1/{_name(40)}"] = "unreadable: No such file or directory"
    os.mkfifo(site / _name(41))
    expected[f"site_1/{_name(41)}"] = "not a regular file"
    # Files at the top of RAW_DIR belong to site "raw": a sub-folder of the same name duplicates its timestamps.
    write_ims_file(raw / _name(50), good)
    write_ims_file(raw / "raw" / _name(50), good)
    expected[f"raw/{_name(50)}"] = (
        f"duplicate timestamp {T0 + timedelta(minutes=500)} in site 'raw': same as {_name(50)}"
    )

    report = ingest_directory(_cfg(raw, out))

    assert _quarantine(out) == expected
    valid = {"site_1/" + _name(0), "site_1/" + _name(1), _name(50), *accepted}
    assert {r["path"] for r in _table(out, "features.parquet")} == valid
    assert set(_samples_files(out)) == {f"{p}.parquet" for p in valid}
    assert report.summary_line() == f"ingested {len(valid)}, unchanged 0, quarantined {len(expected)}"
    for rel in accepted:  # CRLF / trailing whitespace: same values as the clean file
        data, _, _ = read_samples(samples_path(out, rel))
        np.testing.assert_array_equal(np.round(data.astype(np.float64), 3), good)

    again = ingest_directory(_cfg(raw, out))
    assert again.summary_line() == f"ingested 0, unchanged {len(valid)}, quarantined {len(expected)}"
    assert again.parsed == 0
    assert _quarantine(out) == expected


def test_incremental_reruns(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    _make_sites(raw)
    (raw / "site_2" / _name(9)).write_text("garbage\n")
    first = ingest_directory(_cfg(raw, out))
    assert first.summary_line() == "ingested 6, unchanged 0, quarantined 1"
    samples_before = _samples_files(out)

    # Same directory: nothing is read again; samples files untouched.
    rerun = ingest_directory(_cfg(raw, out))
    assert rerun.summary_line() == "ingested 0, unchanged 6, quarantined 1"
    assert rerun.parsed == 0
    assert _samples_files(out) == samples_before
    assert _quarantine(out) == {f"site_2/{_name(9)}": "1 column, expected 8"}

    # touch (new mtime, same bytes): recognised by sha256, not parsed
    os.utime(raw / "site_1" / _name(0), ns=(1, 1))
    touched = ingest_directory(_cfg(raw, out))
    assert (touched.summary_line(), touched.parsed) == ("ingested 0, unchanged 6, quarantined 1", 0)
    assert _samples_files(out) == samples_before
    manifest = {m["path"]: m for m in _table(out, "manifest.parquet")}
    assert manifest[f"site_1/{_name(0)}"]["mtime_ns"] == 1

    # One added file: exactly one parse.
    write_ims_file(raw / "site_1" / _name(5), _values(55))
    added = ingest_directory(_cfg(raw, out))
    assert (added.summary_line(), added.parsed) == ("ingested 1, unchanged 6, quarantined 1", 1)
    after_add = _samples_files(out)
    assert {k: v for k, v in after_add.items() if k in samples_before} == samples_before

    # Modified file: re-parsed, its features follow the new content.
    write_ims_file(raw / "site_2" / _name(1), _values(999))
    modified = ingest_directory(_cfg(raw, out))
    assert (modified.summary_line(), modified.parsed) == ("ingested 1, unchanged 6, quarantined 1", 1)
    row = next(r for r in _table(out, "features.parquet") if r["path"] == f"site_2/{_name(1)}")
    assert row["B1_a_mean_abs"] == pytest.approx(np.abs(_values(999)[:, 0]).mean(), rel=1e-6)

    # A quarantined file fixed: leaves the quarantine.
    write_ims_file(raw / "site_2" / _name(9), _values(9))
    fixed = ingest_directory(_cfg(raw, out))
    assert (fixed.summary_line(), fixed.parsed) == ("ingested 1, unchanged 7, quarantined 0", 1)

    # Deleted files: gone from features, quarantine, manifest and samples.
    (raw / "site_1" / _name(2)).unlink()
    (raw / "site_2" / _name(9)).write_text("garbage\n")
    ingest_directory(_cfg(raw, out))
    (raw / "site_2" / _name(9)).unlink()
    deleted = ingest_directory(_cfg(raw, out))
    assert (deleted.summary_line(), deleted.removed) == ("ingested 0, unchanged 6, quarantined 0", 1)
    paths = {r["path"] for r in _table(out, "features.parquet")}
    assert f"site_1/{_name(2)}" not in paths and len(paths) == 6
    assert _quarantine(out) == {}
    assert {m["path"] for m in _table(out, "manifest.parquet")} == paths
    assert set(_samples_files(out)) == {f"{p}.parquet" for p in paths}


def test_other_stages_quarantine_rows_survive_ingest_until_the_raw_file_is_deleted(tmp_path: Path) -> None:
    import pyarrow as pa

    raw, out = tmp_path / "raw", tmp_path / "out"
    _make_sites(raw, sites=1, per_site=2)
    ingest_directory(_cfg(raw, out))
    validated = [
        {"file": f"site_1/{_name(0)}", "reason": "B1_a: std 0", "stage": "validate"},
        {"file": f"site_1/{_name(1)}", "reason": "B2_a: kurtosis 40", "stage": "validate"},
    ]
    pq.write_table(pa.Table.from_pylist(validated), out / "quarantine.parquet")
    ingest_directory(_cfg(raw, out))
    assert _table(out, "quarantine.parquet") == validated
    (raw / "site_1" / _name(1)).unlink()
    ingest_directory(_cfg(raw, out))
    assert _table(out, "quarantine.parquet") == validated[:1]


def test_channel_count_inferred_from_first_valid_file_or_forced(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_ims_file(raw / "site_1" / _name(0), _values(0, channels=4))
    write_ims_file(raw / "site_1" / _name(1), _values(1, channels=8))
    inferred = ingest_directory(_cfg(raw, tmp_path / "a"))
    assert inferred.channels == ("B1", "B2", "B3", "B4")
    assert _quarantine(tmp_path / "a") == {f"site_1/{_name(1)}": "8 columns, expected 4"}
    again = ingest_directory(_cfg(raw, tmp_path / "a"))  # dataset.json keeps 4 channels
    assert (again.summary_line(), again.channels) == ("ingested 0, unchanged 1, quarantined 1", inferred.channels)

    forced = ingest_directory(_cfg(raw, tmp_path / "a", channels=8))  # differs from dataset.json: rebuild
    assert forced.rebuilt_reason == "channels changed since the previous run (4 -> 8)"
    assert forced.summary_line() == "ingested 1, unchanged 0, quarantined 1"
    assert _quarantine(tmp_path / "a") == {f"site_1/{_name(0)}": "4 columns, expected 8"}
    assert set(_samples_files(tmp_path / "a")) == {f"site_1/{_name(1)}.parquet"}


def _snapshot_outputs(out: Path) -> dict:
    """Everything a clean run and a recovered run must agree on."""
    samples = {}
    for rel in _samples_files(out):
        data, ts, meta = read_samples(out / "samples" / rel)
        samples[rel] = (data.tobytes(), ts, meta)
    return {
        "features": pq.read_table(out / "features.parquet").to_pylist(),
        "quarantine": _table(out, "quarantine.parquet"),
        "manifest": _table(out, "manifest.parquet"),
        "dataset": json.loads((out / "dataset.json").read_text()),
        "samples": samples,
    }


_KILLING_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from bearing_core import ingest
    from bearing_core.config import IngestConfig

    raw, out, kill_at, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    real_write = ingest.write_parquet_atomic
    seen = []

    def write_then_maybe_die(target, table, **kwargs):
        if kill_at in Path(target).name:
            seen.append(target)
            if len(seen) > kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_write(target, table, **kwargs)

    ingest.write_parquet_atomic = write_then_maybe_die
    ingest.ingest_directory(IngestConfig(raw_dir=raw, out_dir=out, expected_samples={n}, workers=1))
    """
).format(n=N)


@pytest.mark.parametrize(
    ("kill_at", "kill_after"),
    [("2004.", 1), ("features.parquet", 0), ("quarantine.parquet", 0), ("manifest.parquet", 0)],
    ids=["mid-samples", "before-features", "before-quarantine", "before-manifest"],
)
@pytest.mark.integration
def test_killed_run_is_completed_by_the_next_run(tmp_path: Path, kill_at: str, kill_after: int) -> None:
    raw, out, clean = tmp_path / "raw", tmp_path / "out", tmp_path / "clean"
    _make_sites(raw, sites=2, per_site=3)
    (raw / "site_2" / _name(8)).write_text("bad\n")
    ingest_directory(_cfg(raw, out))  # an older complete state ...
    # ... then the directory changes: one file modified, one deleted, two added (one bad), one bad fixed
    write_ims_file(raw / "site_1" / _name(0), _values(500))
    (raw / "site_2" / _name(2)).unlink()
    write_ims_file(raw / "site_1" / _name(6), _values(600))
    (raw / "site_1" / _name(7)).write_text("1\t2\n")
    write_ims_file(raw / "site_2" / _name(8), _values(800))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLING_RUN, str(raw), str(out), kill_at, str(kill_after)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    # Previous outputs stay readable and consistent: every feature row has its samples file.
    for row in pq.read_table(out / "features.parquet").to_pylist():
        assert samples_path(out, row["path"]).is_file()
    (out / "samples" / "site_1" / ".stale.parquet.abc.parquet.tmp").write_bytes(b"half-written")

    ingest_directory(_cfg(raw, out))
    ingest_directory(_cfg(raw, clean))
    assert not list(out.rglob("*.tmp"))
    assert _snapshot_outputs(out) == _snapshot_outputs(clean)


@pytest.mark.integration
def test_process_pool_gives_the_same_outputs_as_in_process(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _make_sites(raw, sites=2, per_site=4)
    (raw / "site_1" / _name(9)).write_text("1\t2\n")
    pooled = ingest_directory(_cfg(raw, tmp_path / "pool", workers=2, batch_size=2))
    serial = ingest_directory(_cfg(raw, tmp_path / "serial", workers=1))
    assert pooled.summary_line() == serial.summary_line() == "ingested 8, unchanged 0, quarantined 1"
    a, b = _snapshot_outputs(tmp_path / "pool"), _snapshot_outputs(tmp_path / "serial")
    assert a == b


def test_real_ims_files_features_match_independent_numpy(shared_ims: Path, tmp_path: Path) -> None:
    src = shared_ims / "raw" / "1st_test"
    report = ingest_directory(IngestConfig(raw_dir=src, out_dir=tmp_path / "out", workers=1))
    assert report.summary_line() == "ingested 4, unchanged 0, quarantined 0"
    rows = {r["file"]: r for r in pq.read_table(tmp_path / "out" / "features.parquet").to_pylist()}
    assert set(rows) == {p.name for p in src.iterdir()}
    assert {r["site"] for r in rows.values()} == {"1st_test"}
    first = rows["2003.10.22.12.06.24"]
    assert round(first["B1_a_mean_abs"], 6) == 0.104144
    for name, row in rows.items():
        x = np.array([ln.split("\t") for ln in (src / name).read_text().splitlines()], dtype=np.float64)
        centred = x - x.mean(axis=0)
        m2 = (centred**2).mean(axis=0)
        rms = np.sqrt((x**2).mean(axis=0))
        independent = {
            "mean_abs": np.abs(x).mean(axis=0),
            "rms": rms,
            "std": np.sqrt(m2),
            "peak": np.abs(x).max(axis=0),
            "crest": np.abs(x).max(axis=0) / rms,
            "kurtosis": (centred**4).mean(axis=0) / m2**2,
            "skewness": (centred**3).mean(axis=0) / m2**1.5,
        }
        for feature, values in independent.items():
            got = [row[f"{ch}_{feature}"] for ch in ("B1_a", "B1_b", "B2_a", "B2_b", "B3_a", "B3_b", "B4_a", "B4_b")]
            np.testing.assert_allclose(got, values, rtol=1e-5, err_msg=f"{name} {feature}")


def _run_cli(argv: list[str]) -> int:
    from cli import ingest_cmd

    parser = argparse.ArgumentParser(prog="bearing")
    ingest_cmd.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prints_one_summary_line_and_exits_0_with_quarantined_files(tmp_path: Path, capsys) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_ims_file(raw / "site_1" / "2004.02.12.10.32.39", np.zeros((20_480, 4)) + 0.5)
    (raw / "site_1" / "2004.02.12.10.42.39").write_text("oops\n")
    assert _run_cli(["ingest", str(raw), "--out", str(out), "--workers", "1"]) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0] == "ingested 1, unchanged 0, quarantined 1"
    assert stdout[1] == f"outputs: {out}"
    assert f"features   {out / 'features.parquet'}" in [line.strip() for line in stdout]


def test_cli_config_error_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    assert _run_cli(["ingest", str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        f"bearing ingest: error: raw_dir does not exist or is not a directory: {tmp_path / 'missing'}"
    ]
