"""bearing_core.io: atomic writes replace the target only on success, fsync by default and only when asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bearing_core.io import atomic_path, write_json_atomic, write_parquet_atomic, write_text_atomic


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every os.fsync call (and still performs it)."""
    calls: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls


def test_writes_are_fsynced_by_default(tmp_path: Path, fsync_calls: list[int]) -> None:
    write_text_atomic(tmp_path / "a.txt", "x")
    write_json_atomic(tmp_path / "b.json", {"k": 1})
    write_parquet_atomic(tmp_path / "c.parquet", pa.table({"v": [1.5, 2.5]}))
    assert len(fsync_calls) == 3
    assert (tmp_path / "a.txt").read_text() == "x"
    assert json.loads((tmp_path / "b.json").read_text()) == {"k": 1}
    assert pq.read_table(tmp_path / "c.parquet").column("v").to_pylist() == [1.5, 2.5]


def test_fsync_false_skips_only_the_fsync(tmp_path: Path, fsync_calls: list[int]) -> None:
    write_text_atomic(tmp_path / "a.txt", "old")
    fsync_calls.clear()
    write_text_atomic(tmp_path / "a.txt", "new", fsync=False)
    write_parquet_atomic(tmp_path / "c.parquet", pa.table({"v": [3.0]}), fsync=False, compression="none")
    assert fsync_calls == []
    assert (tmp_path / "a.txt").read_text() == "new"
    assert pq.read_table(tmp_path / "c.parquet").column("v").to_pylist() == [3.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.parquet"]  # no temp files left


@pytest.mark.parametrize("fsync", [True, False])
def test_failed_write_leaves_the_previous_file_and_no_temp_file(tmp_path: Path, fsync: bool) -> None:
    target = tmp_path / "out.txt"
    target.write_text("previous")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target, fsync=fsync) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
