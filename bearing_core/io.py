"""Atomic writes: every output is written to a temporary file in the same directory, then renamed.

A reader therefore sees either the previous complete file or the new complete file, never a half-written one,
whatever moment the writer is killed at. By default the data is also fsynced before the rename and the directory
after it (so the rename itself is on disk), so the new file survives a power loss; ``fsync=False`` skips that for
callers that make many files durable at once later (see
:func:`bearing_core.ingest.ingest_directory`): a killed *process* loses nothing either way, only an OS crash
can leave such a file empty until that later sync.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it (unless ``fsync=False``) and rename it onto
    ``target``.

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        if fsync:
            fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        _name_the_output(exc, target)
        raise


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync ``directory`` itself: makes the renames and creations of entries in it durable (POSIX)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(
    target: str | os.PathLike[str], data: bytes | memoryview, *, fsync: bool = True, suffix: str | None = None
) -> Path:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`); a large ``data`` goes out in one write."""
    with atomic_path(target, suffix, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def _name_the_output(exc: BaseException, target: Path) -> None:
    """Give an OSError raised without a file name the ``target``'s: a failed ``write``/``fsync`` (ENOSPC, EDQUOT,
    EIO) reports none, and "[Errno 28] No space left on device" alone does not say which output was lost."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(target)


def write_text_atomic(target: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"), fsync=fsync)


def write_json_atomic(target: str | os.PathLike[str], obj: Any, *, fsync: bool = True) -> Path:
    return write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", fsync=fsync)


def write_parquet_atomic(target: str | os.PathLike[str], table: Any, *, fsync: bool = True, **kwargs: Any) -> Path:
    """Write a pyarrow Table (or pandas DataFrame) to Parquet atomically; ``kwargs`` go to ``pq.write_table``.

    The file is serialised in memory first and written with one system call: pyarrow writing to a path issues
    a write per page and column chunk, which costs as much CPU as encoding a 0.7 MB samples file (BENCHMARKS.md).
    The tables written here (one snapshot, features, partitions, scores) are a few MB at most.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    kwargs.setdefault("compression", "zstd")
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **kwargs)
    return write_bytes_atomic(target, sink.getvalue(), fsync=fsync, suffix=".parquet.tmp")


OUTPUT_MARKER = ".bearing-output"
"""Marker file of a directory a bearing writer owns as a whole (a model, a features-only dataset); it holds the
writer's *kind* of output (``model``, ``per-bearing dataset``...). A writer replaces or rewrites a directory only
when it is absent, empty, or marked with its own kind: never a user's folder, the project, or another writer's
output (see :func:`check_output_dir`)."""


class OutputDirRefused(ValueError):
    """The output directory holds something this writer did not write: it is left untouched."""


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind recorded in ``path``'s :data:`OUTPUT_MARKER`, or ``None`` when it has none."""
    try:
        return (Path(path) / OUTPUT_MARKER).read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None


def check_output_dir(path: str | os.PathLike[str], kind: str) -> None:
    """Raise :class:`OutputDirRefused` unless ``path`` may be (re)written as a whole by a writer of ``kind``: it
    does not exist, is an empty directory, or is this kind's own earlier output (its marker says ``kind``)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise OutputDirRefused(f"{path} exists and is not a directory: choose another output directory")
    found = output_kind(path)
    if found == kind:
        return
    with os.scandir(path) as entries:
        if next(entries, None) is None:
            return
    holds = f"holds a {found}" if found else f"is not empty and has no {OUTPUT_MARKER} marker"
    raise OutputDirRefused(
        f"{path} {holds}, not a {kind} written by bearing: refusing to overwrite it (choose a new or empty "
        "directory, or remove it yourself)"
    )


def claim_output_dir(path: str | os.PathLike[str], kind: str) -> Path:
    """Check ``path`` (:func:`check_output_dir`), create it and mark it as ``kind``'s, for a writer that writes its
    files into it one by one. The marker goes in first, so a run killed half-way leaves a directory the next run of
    the same writer may finish."""
    path = Path(path)
    check_output_dir(path, kind)
    path.mkdir(parents=True, exist_ok=True)
    if output_kind(path) != kind:
        write_text_atomic(path / OUTPUT_MARKER, kind + "\n")
    return path


def replace_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, kind: str) -> Path:
    """Rename directory ``src`` onto ``dst`` (same filesystem), marking it as ``kind``'s output.

    ``dst`` must be absent, empty or ``kind``'s earlier output (:func:`check_output_dir`; else
    :class:`OutputDirRefused` and nothing changes). An existing ``dst`` is moved aside first, restored if the
    second rename fails, and deleted after the swap: ``dst`` is never lost and never half-written, and a failed
    swap leaves nothing behind."""
    import shutil

    src, dst = Path(src), Path(dst)
    check_output_dir(dst, kind)
    write_text_atomic(src / OUTPUT_MARKER, kind + "\n")
    if not dst.exists():
        os.replace(src, dst)
        return dst
    trash = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    try:
        os.replace(dst, trash / dst.name)
    except BaseException:
        trash.rmdir()
        raise
    try:
        os.replace(src, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.replace(trash / dst.name, dst)
            trash.rmdir()  # empty again; only a failed restore leaves it behind, holding the previous dst
        raise
    shutil.rmtree(trash, ignore_errors=True)
    return dst


STALE_DIR_PATTERNS = (".*.staging-*", ".*.old-*", ".*.build-*")
"""Hidden work directories of atomic directory writers (model staging, replaced directories, report builds)."""


def remove_stale_temp_files(directory: str | os.PathLike[str], min_age_s: float = 0.0) -> int:
    """Delete what killed writers left behind under ``directory``: hidden temp files (``.*.tmp``) and hidden work
    directories (:data:`STALE_DIR_PATTERNS`). None of them is ever read; a re-run writes afresh.

    Only call it while no writer can be active there (under the lock of the directory's writers), or with
    ``min_age_s`` larger than any write takes: entries modified more recently are kept.
    """
    import shutil
    import time

    directory = Path(directory)
    if not directory.exists():
        return 0
    cutoff = time.time() - min_age_s
    count = 0
    stale_dirs = [d for pattern in STALE_DIR_PATTERNS for d in directory.rglob(pattern) if d.is_dir()]
    for d in stale_dirs:
        with contextlib.suppress(OSError):
            if d.lstat().st_mtime <= cutoff:
                shutil.rmtree(d)
                count += 1
    for p in directory.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            if p.lstat().st_mtime <= cutoff:
                p.unlink()
                count += 1
    return count
