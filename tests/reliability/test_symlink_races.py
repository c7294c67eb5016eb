"""Links that change while an ingest runs, and ``follow_symlinks`` for DVC-style raw folders.

The rule of :mod:`bearing_core.ingest` (nothing outside RAW_DIR is read) must hold for the file actually opened,
not for what a path resolved to when it was scanned: a link dangling at scan time whose target appears outside
RAW_DIR mid-run, or a link retargeted after the scan, is quarantined. With ``follow_symlinks`` links may point
anywhere, but each is resolved once: what is read is the target resolved at scan time, recorded in the manifest.

"Mid-run" is made deterministic by changing the raw directory right after the real scan returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.ims_files import write_ims_file

import bearing_core.ingest as ingest
from bearing_core.config import IngestConfig, channel_names
from bearing_core.features import compute_features, feature_columns
from bearing_core.ims_reader import IMSFormatError, read_raw_bytes

N = 64
T0 = datetime(2004, 2, 12, 10, 32, 39)
OUTSIDE = "symlink points outside the raw directory: not followed"


def _name(k: int) -> str:
    return (T0 + timedelta(minutes=10 * k)).strftime("%Y.%m.%d.%H.%M.%S")


def _values(seed: int) -> np.ndarray:
    return np.round(np.random.default_rng(seed).normal(0.0, 0.2, (N, 4)), 3)


def _run(raw: Path, out: Path, follow: bool = False, workers: int = 1) -> ingest.IngestReport:
    cfg = IngestConfig(raw_dir=raw, out_dir=out, expected_samples=N, workers=workers, **(
        {"follow_symlinks": True} if follow else {}))  # fmt: skip
    return ingest.ingest_directory(cfg)


def _after_scan(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Run ``change`` once, right after the ingest's scan (before any file is opened)."""
    real_scan = ingest.scan_raw_directory

    def scan_then_change(*args: object, **kwargs: object) -> object:
        result = real_scan(*args, **kwargs)
        change()
        return result

    monkeypatch.setattr(ingest, "scan_raw_directory", scan_then_change)


def _quarantine(out: Path) -> dict[str, str]:
    return {row["file"]: row["reason"] for row in pq.read_table(out / "quarantine.parquet").to_pylist()}


def _features(out: Path) -> dict[str, dict]:
    return {row["path"]: row for row in pq.read_table(out / "features.parquet").to_pylist()}


def _manifest(out: Path) -> dict[str, dict]:
    return {row["path"]: row for row in pq.read_table(out / "manifest.parquet").to_pylist()}


# ------------------------------------------------------------------------------------------ default: no escape


def test_dangling_link_whose_target_appears_outside_mid_run_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, out, secret = tmp_path / "raw", tmp_path / "out", tmp_path / "outside" / _name(1)
    write_ims_file(raw / "site_1" / _name(0), _values(0))
    (raw / "site_1" / _name(1)).symlink_to(secret)  # dangling at scan time
    _after_scan(monkeypatch, lambda: write_ims_file(secret, _values(1)))
    report = _run(raw, out)
    assert set(_features(out)) == {f"site_1/{_name(0)}"}
    assert _quarantine(out) == {f"site_1/{_name(1)}": OUTSIDE}
    assert (report.ingested, report.quarantined) == (1, 1)
    assert _manifest(out)[f"site_1/{_name(1)}"]["target"] == str(secret.resolve())  # where it pointed
    assert not (out / "samples" / "site_1" / f"{_name(1)}.parquet").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_link_retargeted_outside_after_the_scan_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Inside RAW_DIR when scanned, outside when opened: the open descriptor is what is checked (workers too)."""
    raw, out, secret = tmp_path / "raw", tmp_path / "out", tmp_path / "outside" / _name(9)
    write_ims_file(secret, _values(9))
    write_ims_file(raw / ".cache" / "a", _values(1))
    for k in range(4):  # several batches, so that the pool really runs with 2 workers
        write_ims_file(raw / "site_1" / _name(10 + k), _values(10 + k))
    link = raw / "site_1" / _name(1)
    link.symlink_to(raw / ".cache" / "a")

    def retarget() -> None:
        link.unlink()
        link.symlink_to(secret)

    _after_scan(monkeypatch, retarget)
    cfg = IngestConfig(raw_dir=raw, out_dir=out, expected_samples=N, workers=workers, batch_size=1)
    ingest.ingest_directory(cfg)
    assert _quarantine(out) == {f"site_1/{_name(1)}": OUTSIDE}
    assert set(_features(out)) == {f"site_1/{_name(10 + k)}" for k in range(4)}


def test_link_inside_raw_dir_is_read_and_its_target_recorded(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_ims_file(raw / ".cache" / "a", _values(1))
    write_ims_file(raw / "site_1" / _name(0), _values(0))
    (raw / "site_1" / _name(1)).symlink_to(raw / ".cache" / "a")
    assert _run(raw, out).ingested == 2
    manifest = _manifest(out)
    assert manifest[f"site_1/{_name(1)}"]["target"] == str((raw / ".cache" / "a").resolve())
    assert manifest[f"site_1/{_name(0)}"]["target"] is None  # a plain file: read where it is
    assert _run(raw, out).unchanged == 2  # the recorded target matches: not read again


def test_fifo_swapped_in_after_the_scan_is_quarantined_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_ims_file(raw / "site_1" / _name(0), _values(0))
    victim = write_ims_file(raw / "site_1" / _name(1), _values(1))

    def fifo() -> None:
        victim.unlink()
        os.mkfifo(victim)

    _after_scan(monkeypatch, fifo)
    _run(raw, out)  # an open() without O_NONBLOCK would wait here for a writer forever
    assert _quarantine(out) == {f"site_1/{_name(1)}": "not a regular file"}


def test_reader_checks_the_file_it_opened(tmp_path: Path) -> None:
    real = write_ims_file(tmp_path / "data" / "real", _values(0))
    link = tmp_path / "link"
    link.symlink_to(real)
    seen: list[str] = []
    assert read_raw_bytes(link, check_opened=lambda p: seen.append(p)) == real.read_bytes()
    assert seen == [str(real.resolve())]
    with pytest.raises(IMSFormatError) as exc:
        read_raw_bytes(link, check_opened=lambda p: f"refused {p}")
    assert exc.value.reason == f"refused {real.resolve()}"
    with pytest.raises(IMSFormatError, match="is a directory"):
        read_raw_bytes(tmp_path / "data")


# --------------------------------------------------------------------------------------- follow_symlinks=True


def _features_of(values: np.ndarray) -> dict[str, float]:
    row = compute_features(values.astype(np.float32), IngestConfig(raw_dir=".").rig).ravel()
    return dict(zip(feature_columns(channel_names(values.shape[1])), row.tolist()))


def _dvc_like(tmp_path: Path, n: int = N) -> tuple[Path, Path]:
    """RAW_DIR whose snapshots are links into a content-addressed cache outside it (as ``dvc checkout`` makes)."""
    raw, cache = tmp_path / "raw", tmp_path / "dvc-cache"
    for k in range(3):
        values = np.round(np.random.default_rng(k).normal(0.0, 0.2, (n, 4)), 3)
        blob = write_ims_file(cache / f"{k:02x}" / f"b10b{k}", values)
        (raw / "site_1").mkdir(parents=True, exist_ok=True)
        (raw / "site_1" / _name(k)).symlink_to(blob)
    return raw, cache


def test_follow_symlinks_reads_links_into_a_cache_and_records_their_targets(tmp_path: Path) -> None:
    raw, cache = _dvc_like(tmp_path)
    assert _run(raw, tmp_path / "default").ingested == 0  # default: every link leaves RAW_DIR
    assert set(_quarantine(tmp_path / "default").values()) == {OUTSIDE}

    out = tmp_path / "out"
    report = _run(raw, out, follow=True)
    assert (report.ingested, report.quarantined) == (3, 0)
    manifest = _manifest(out)
    assert {rel: row["target"] for rel, row in manifest.items()} == {
        f"site_1/{_name(k)}": str((cache / f"{k:02x}" / f"b10b{k}").resolve()) for k in range(3)
    }
    row = _features(out)[f"site_1/{_name(2)}"]
    assert row["file"] == _name(2)  # named after the link, not the cache blob
    assert {c: row[c] for c in _features_of(_values(2))} == pytest.approx(_features_of(_values(2)), rel=1e-12)

    assert _run(raw, out, follow=True).unchanged == 3
    link = raw / "site_1" / _name(0)  # `dvc checkout` of another version: the link points to another blob
    link.unlink()
    link.symlink_to(write_ims_file(cache / "ff" / "new", _values(7)))
    again = _run(raw, out, follow=True)
    assert (again.ingested, again.unchanged) == (1, 2)
    assert _manifest(out)[f"site_1/{_name(0)}"]["target"] == str((cache / "ff" / "new").resolve())


def test_follow_symlinks_resolves_each_link_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A link retargeted after the scan is still read through the target resolved at scan time; a target that
    became a link itself is not followed further."""
    raw, cache = _dvc_like(tmp_path)
    elsewhere = write_ims_file(tmp_path / "elsewhere" / "x", _values(8))
    first, second = raw / "site_1" / _name(0), cache / "01" / "b10b1"

    def swap() -> None:
        first.unlink()
        first.symlink_to(elsewhere)
        second.unlink()
        second.symlink_to(elsewhere)

    _after_scan(monkeypatch, swap)
    out = tmp_path / "out"
    _run(raw, out, follow=True)
    features, manifest = _features(out), _manifest(out)
    assert set(features) == {f"site_1/{_name(0)}", f"site_1/{_name(2)}"}
    assert manifest[f"site_1/{_name(0)}"]["target"] == str((cache / "00" / "b10b0").resolve())
    row = features[f"site_1/{_name(0)}"]  # the blob's values, not those of `elsewhere`
    assert {c: row[c] for c in _features_of(_values(0))} == pytest.approx(_features_of(_values(0)), rel=1e-12)
    assert _quarantine(out) == {
        f"site_1/{_name(1)}": f"symlink target changed during the ingest (now {elsewhere.resolve()}): not read"
    }


def test_ingest_command_follow_symlinks_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    raw, _ = _dvc_like(tmp_path, n=20_480)  # the command's default samples per snapshot
    out = tmp_path / "out"
    args = ["ingest", str(raw), "--out", str(out), "--workers", "1", "--lock-timeout", "0"]
    assert main(args) == 0
    assert "ingested 0, unchanged 0, quarantined 3" in capsys.readouterr().out
    assert main([*args, "--follow-symlinks"]) == 0
    assert "ingested 3, unchanged 0, quarantined 0" in capsys.readouterr().out
