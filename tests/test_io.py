"""bearing_core.io: atomic writes replace the target only on success, fsync by default and only when asked."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bearing_core.io import (
    OUTPUT_MARKER,
    OutputDirRefused,
    atomic_path,
    claim_output_dir,
    replace_dir,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)


@pytest.fixture
def fsync_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Records every os.fsync call as ("dir" or "file", inode) (and still performs it)."""
    calls: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        calls.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls


def test_writes_are_fsynced_by_default(tmp_path: Path, fsync_calls: list[tuple[str, int]]) -> None:
    write_text_atomic(tmp_path / "a.txt", "x")
    write_json_atomic(tmp_path / "b.json", {"k": 1})
    write_parquet_atomic(tmp_path / "c.parquet", pa.table({"v": [1.5, 2.5]}))
    # each write: the data before the rename, then the directory after it (the rename survives a power loss)
    directory = ("dir", tmp_path.stat().st_ino)
    files = [("file", (tmp_path / name).stat().st_ino) for name in ("a.txt", "b.json", "c.parquet")]
    assert fsync_calls == [files[0], directory, files[1], directory, files[2], directory]
    assert (tmp_path / "a.txt").read_text() == "x"
    assert json.loads((tmp_path / "b.json").read_text()) == {"k": 1}
    assert pq.read_table(tmp_path / "c.parquet").column("v").to_pylist() == [1.5, 2.5]


def test_fsync_false_skips_only_the_fsync(tmp_path: Path, fsync_calls: list[tuple[str, int]]) -> None:
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


def _built(tmp_path: Path, content: str) -> Path:
    src = tmp_path / f".build-{content}"
    src.mkdir()
    (src / "data.txt").write_text(content)
    return src


def test_replace_dir_marks_its_output_and_replaces_only_the_same_kind(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    replace_dir(_built(tmp_path, "v1"), dst, kind="report")
    assert (dst / OUTPUT_MARKER).read_text() == "report\n" and (dst / "data.txt").read_text() == "v1"
    replace_dir(_built(tmp_path, "v2"), dst, kind="report")  # its own earlier output
    assert (dst / "data.txt").read_text() == "v2"
    with pytest.raises(OutputDirRefused, match=f"{dst} holds a report, not a model written by bearing"):
        replace_dir(_built(tmp_path, "m"), dst, kind="model")
    assert (dst / "data.txt").read_text() == "v2" and (dst / OUTPUT_MARKER).read_text() == "report\n"


def test_replace_dir_never_deletes_a_directory_it_did_not_write(tmp_path: Path) -> None:
    """The check sits in replace_dir itself, so every whole-directory writer gets it (models, registry versions)."""
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "thesis.tex").write_text("precious")
    src = _built(tmp_path, "new")
    with pytest.raises(OutputDirRefused, match=f"{mine} is not empty and has no {OUTPUT_MARKER} marker"):
        replace_dir(src, mine, kind="model")
    assert (mine / "sub" / "thesis.tex").read_text() == "precious" and sorted(p.name for p in mine.iterdir()) == ["sub"]
    assert (src / "data.txt").read_text() == "new"  # the caller still owns (and removes) its build
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputDirRefused, match="exists and is not a directory"):
        replace_dir(src, tmp_path / "a_file", kind="model")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (replace_dir(src, empty, kind="model") / "data.txt").read_text() == "new"


def test_claim_output_dir_creates_and_marks_first(tmp_path: Path) -> None:
    out = claim_output_dir(tmp_path / "a" / "b", "features-only dataset")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER]
    (out / "features.parquet").write_bytes(b"half")  # a run killed half-way: the next one may finish it
    assert claim_output_dir(out, "features-only dataset") == out
    with pytest.raises(OutputDirRefused, match="holds a features-only dataset, not a per-bearing dataset"):
        claim_output_dir(out, "per-bearing dataset")
