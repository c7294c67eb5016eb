"""``bearing validate``, ``bearing ingest`` (and ``bearing score``, in test_scoring) hold the dataset's pipeline lock:
while another
process holds ``<dataset>/.pipeline.lock`` they wait, and fail with one line and exit code 3 after
``--lock-timeout``; once it is released they run."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from helpers.processed_datasets import write_dataset
from helpers.processes import lock_held_by_another_process

from bearing_core.locking import PIPELINE_LOCK_FILE
from cli.dataset_lock import LOCK_TIMEOUT_S, LOCKED_EXIT_CODE, add_lock_timeout_argument


def _validate(argv: list[str]) -> int:
    from cli import validate_cmd

    parser = argparse.ArgumentParser(prog="bearing")
    validate_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["validate", *argv])
    return args.func(args)


def test_lock_timeout_option_defaults_and_rejects_negative_values(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="bearing validate")
    add_lock_timeout_argument(parser)
    assert parser.parse_args([]).lock_timeout_s == LOCK_TIMEOUT_S == 3600.0
    assert parser.parse_args(["--lock-timeout", "0"]).lock_timeout_s == 0.0
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--lock-timeout", "-1"])
    assert exit_info.value.code == 2 and "must be >= 0, got -1" in capsys.readouterr().err


@pytest.mark.integration
def test_validate_gives_up_cleanly_while_another_process_holds_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_dataset(tmp_path, {"site_1": 4})
    quarantine = (tmp_path / "quarantine.parquet").read_bytes()
    lock = tmp_path / PIPELINE_LOCK_FILE
    with lock_held_by_another_process(lock):
        assert _validate([str(tmp_path), "--no-docs", "--lock-timeout", "0.3"]) == LOCKED_EXIT_CODE == 3
    out, err = capsys.readouterr()
    waiting, error = err.strip().splitlines()
    assert waiting == f"bearing validate: another run holds {lock}: waiting up to 0.3 s"
    assert error.startswith(f"bearing validate: error: {lock} is still held by another run after 0.3 s")
    assert out == "" and not (tmp_path / "validation").exists()  # nothing ran, nothing written
    assert (tmp_path / "quarantine.parquet").read_bytes() == quarantine


@pytest.mark.integration
def test_validate_waits_for_the_holder_then_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_dataset(tmp_path, {"site_1": 4})
    with lock_held_by_another_process(tmp_path / PIPELINE_LOCK_FILE, hold_s=1.0) as released:
        assert _validate([str(tmp_path), "--no-docs", "--lock-timeout", "60"]) == 0
    out, err = capsys.readouterr()
    assert "waiting up to 60 s" in err and "Validation PASSED" in out
    # validation only wrote its report after the other process had let go of the lock
    assert (tmp_path / "validation" / "report.json").stat().st_mtime_ns >= released.stat().st_mtime_ns


@pytest.mark.integration
def test_ingest_waits_for_the_dataset_lock_and_gives_up_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    from helpers.ims_files import write_ims_file

    from cli import ingest_cmd

    raw, out = tmp_path / "raw", tmp_path / "out"
    rng = np.random.default_rng(0)
    write_ims_file(raw / "2004.02.12.10.32.39", rng.normal(0.0, 0.1, (20_480, 4)))
    parser = argparse.ArgumentParser(prog="bearing")
    ingest_cmd.register(parser.add_subparsers())
    argv = ["ingest", str(raw), "--out", str(out), "--workers", "1"]
    out.mkdir()
    lock = out / PIPELINE_LOCK_FILE
    with lock_held_by_another_process(lock):
        args = parser.parse_args([*argv, "--lock-timeout", "0.2"])
        assert args.func(args) == LOCKED_EXIT_CODE
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith(f"bearing ingest: error: {lock} is still held by another run after 0.2 s")
    )
    assert sorted(p.name for p in out.iterdir()) == [PIPELINE_LOCK_FILE]  # nothing ingested meanwhile
    with lock_held_by_another_process(lock, hold_s=0.5) as released:
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("ingested 1, unchanged 0, quarantined 0")
    assert (out / "features.parquet").stat().st_mtime_ns >= released.stat().st_mtime_ns
