"""Bad input at scale for ``ingest_directory``: a 1 GiB garbage file, 10,000 empty files, odd names, symlinks.

The large cases run the ingest in a subprocess that reports its own peak RSS and its workers' (``VmHWM`` of
the process / ``ru_maxrss`` of RUSAGE_CHILDREN): memory must stay bounded whatever the input, and the run must finish
within a
generous timeout (no timing assertions). The 1 GiB file is sparse, so it costs neither disk nor RAM to create.

Rule under test (bearing-fl's reliability and security requirements): nothing outside the configured raw and
output directories is ever read or written; a symlink inside RAW_DIR that points outside it is not followed.
"""

from __future__ import annotations

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

from bearing_core.config import IngestConfig
from bearing_core.ingest import ingest_directory

N = 64  # samples per synthetic snapshot (expected_samples of these ingests)
PROJECT = Path(__file__).resolve().parents[2]
PEAK_RSS_LIMIT_MB = 800
SUBPROCESS_TIMEOUT_S = 300  # generous: a correct run takes seconds, a runaway one is stopped and reported
T0 = datetime(2004, 2, 12, 10, 32, 39)


def _name(k: int) -> str:
    return (T0 + timedelta(minutes=10 * k)).strftime("%Y.%m.%d.%H.%M.%S")


def _values(seed: int = 0) -> np.ndarray:
    return np.round(np.random.default_rng(seed).normal(0.0, 0.2, (N, 4)), 3)


def _quarantine(out: Path) -> dict[str, str]:
    return {row["file"]: row["reason"] for row in pq.read_table(out / "quarantine.parquet").to_pylist()}


def _feature_paths(out: Path) -> set[str]:
    return set(pq.read_table(out / "features.parquet").column("path").to_pylist())


def _ingest(raw: Path, out: Path) -> None:
    ingest_directory(IngestConfig(raw_dir=raw, out_dir=out, expected_samples=N, workers=1))


# --------------------------------------------------------------------------------------- memory and time bounds

_INGEST_AND_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from bearing_core.config import IngestConfig
    from bearing_core.ingest import ingest_directory

    def peak_rss_mb():
        # VmHWM belongs to this process image; ru_maxrss survives exec and would report pytest's own peak
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if __name__ == "__main__":
        report = ingest_directory(
            IngestConfig(raw_dir=sys.argv[1], out_dir=sys.argv[2], expected_samples=int(sys.argv[3]), workers=2)
        )
        print(json.dumps({
            "summary": report.summary_line(),
            "self_mb": peak_rss_mb(),
            "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        }))
    """
)


@pytest.mark.slow
def test_1gib_garbage_file_and_10000_empty_files_are_quarantined_in_bounded_memory(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    huge = raw / "site_1" / _name(0)
    huge.parent.mkdir(parents=True)
    with open(huge, "wb") as fh:
        fh.write(os.urandom(4096))
        fh.truncate(1 << 30)
    assert huge.stat().st_size == 1 << 30 and huge.stat().st_blocks * 512 < 1 << 20  # sparse: ~no disk used
    write_ims_file(raw / "site_1" / _name(1), _values())
    empty = raw / "site_2"
    empty.mkdir()
    names = [_name(k) for k in range(10_000)]
    for name in names:
        (empty / name).touch()

    script = tmp_path / "ingest_and_measure.py"
    script.write_text(_INGEST_AND_MEASURE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(script), str(raw), str(out), str(N)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["summary"] == "ingested 1, unchanged 0, quarantined 10001"
    assert measured["self_mb"] < PEAK_RSS_LIMIT_MB and measured["children_mb"] < PEAK_RSS_LIMIT_MB, measured

    quarantine = _quarantine(out)
    assert quarantine[f"site_1/{_name(0)}"] == f"file too large: {1 << 30} bytes, limit {64 * 1024 * 1024}"
    assert {quarantine[f"site_2/{name}"] for name in names} == {"empty file"}
    assert _feature_paths(out) == {f"site_1/{_name(1)}"}


# ---------------------------------------------------------------------------------------------- odd names


def test_spaces_unicode_and_non_timestamp_names(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    good = _values()
    write_ims_file(raw / "Prüfstand 1" / _name(0), good)  # site names may be any text
    write_ims_file(raw / "站点 2" / _name(1), good)
    odd = {
        "Prüfstand 1/2004.02.12 10.42.39": "name is not a timestamp YYYY.MM.DD.hh.mm.ss",
        "Prüfstand 1/snapshot ä.txt.bak": "name is not a timestamp YYYY.MM.DD.hh.mm.ss",
        "Prüfstand 1/ 2004.02.12.10.52.39": "name is not a timestamp YYYY.MM.DD.hh.mm.ss",
        "站点 2/2004.13.12.11.12.39": "name is not a valid timestamp YYYY.MM.DD.hh.mm.ss: month must be in 1..12",
    }
    for rel in odd:
        write_ims_file(raw / rel, good)
    _ingest(raw, out)
    assert _feature_paths(out) == {f"Prüfstand 1/{_name(0)}", f"站点 2/{_name(1)}"}
    assert _quarantine(out) == odd
    sites = set(pq.read_table(out / "features.parquet").column("site").to_pylist())
    assert sites == {"Prüfstand 1", "站点 2"}
    assert (out / "samples" / "站点 2" / f"{_name(1)}.parquet").is_file()


def test_names_with_non_ascii_digits_are_not_timestamps(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_ims_file(raw / "site_1" / _name(0), _values())
    write_ims_file(raw / "site_1" / "２００４.02.12.11.02.39", _values())  # full-width digits
    _ingest(raw, out)
    assert _quarantine(out) == {"site_1/２００４.02.12.11.02.39": "name is not a timestamp YYYY.MM.DD.hh.mm.ss"}


def test_non_utf8_names_are_quarantined_not_fatal(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_ims_file(raw / "site_1" / _name(0), _values())
    bad = os.fsencode(raw / "site_1") + b"/" + _name(1).encode() + b"\xff"
    with open(bad, "wb") as fh:
        fh.write(b"1.0\t2.0\t3.0\t4.0\n")
    _ingest(raw, out)
    assert _feature_paths(out) == {f"site_1/{_name(0)}"}
    assert len(_quarantine(out)) == 1


# ------------------------------------------------------------------------------------------------- symlinks


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside RAW_DIR and OUT holding a valid snapshot that must never be read."""
    folder = tmp_path / "outside"
    write_ims_file(folder / "secret" / _name(5), _values(seed=5))
    return folder


def test_symlinked_file_pointing_outside_raw_dir_is_not_read(tmp_path: Path, outside: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_ims_file(raw / "site_1" / _name(0), _values())
    (raw / "site_1" / _name(5)).symlink_to(outside / "secret" / _name(5))
    _ingest(raw, out)
    assert _feature_paths(out) == {f"site_1/{_name(0)}"}
    assert f"site_1/{_name(5)}" in _quarantine(out)
    assert not (out / "samples" / "site_1" / f"{_name(5)}.parquet").exists()


def test_symlinked_site_folder_pointing_outside_raw_dir_is_not_followed(tmp_path: Path, outside: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_ims_file(raw / "site_1" / _name(0), _values())
    (raw / "site_2").symlink_to(outside / "secret", target_is_directory=True)
    _ingest(raw, out)
    assert _feature_paths(out) == {f"site_1/{_name(0)}"}


def test_dangling_symlink_is_quarantined(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_ims_file(raw / "site_1" / _name(0), _values())
    (raw / "site_1" / _name(1)).symlink_to(tmp_path / "nowhere")
    _ingest(raw, out)
    assert _quarantine(out) == {f"site_1/{_name(1)}": "unreadable: No such file or directory"}


def test_symlinks_planted_in_the_output_are_replaced_never_written_through(tmp_path: Path) -> None:
    """Outputs are renamed into place and obsolete samples unlinked: a symlink in OUT never redirects a write."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_ims_file(raw / "site_1" / _name(0), _values())
    victims = tmp_path / "victims"
    victims.mkdir()
    for name in ("features", "samples", "obsolete"):
        (victims / name).write_text("precious")
    (out / "samples" / "site_1").mkdir(parents=True)
    (out / "features.parquet").symlink_to(victims / "features")
    (out / "samples" / "site_1" / f"{_name(0)}.parquet").symlink_to(victims / "samples")
    (out / "samples" / "site_1" / f"{_name(9)}.parquet").symlink_to(victims / "obsolete")
    _ingest(raw, out)
    assert {p.name: p.read_text() for p in victims.iterdir()} == dict.fromkeys(
        ("features", "samples", "obsolete"), "precious"
    )
    assert not (out / "features.parquet").is_symlink() and _feature_paths(out) == {f"site_1/{_name(0)}"}
    assert not (out / "samples" / "site_1" / f"{_name(9)}.parquet").exists()


def test_symlinked_folder_planted_in_the_output_is_not_written_through(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_ims_file(raw / "site_1" / _name(0), _values())
    victims = tmp_path / "victims"
    victims.mkdir()
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "site_1").symlink_to(victims, target_is_directory=True)
    _ingest(raw, out)
    assert list(victims.iterdir()) == []
