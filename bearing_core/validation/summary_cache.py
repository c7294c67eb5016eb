"""Per-snapshot summaries computed once: a cache of the sample-level summaries, so a nightly validation reads only
the samples of snapshots it has not summarised yet.

A snapshot's summary (its row of the snapshot summary and its rows of the channel summary, see
:mod:`~bearing_core.validation.summaries`) depends only on its samples file and on the expected channel names. It
is stored under the dataset, in ``DATASET/validation_summaries/part-<n>.parquet``: one row per snapshot, its
channel statistics as list columns, plus the key it was computed under:

* ``sha256``: the raw file's sha256 from the ingest manifest (``manifest.parquet``): a changed raw file is
  re-ingested and gets a new one;
* ``samples_size``, ``samples_mtime_ns``: the samples file's stat, so a samples file rewritten by anything else
  than an ingest of a changed raw file (a re-ingest, a hand edit) is summarised again too;
* ``site`` and ``channels`` (the expected channel names, comma-separated).

A cached row is reused only when all of these match the dataset as it is now; a snapshot absent from the
manifest (a dataset not written by ``bearing ingest``) and a snapshot whose samples could not be read are
summarised every run. Each run that summarised something appends one part file (written atomically) holding
only those snapshots; when there are more than :data:`MAX_PARTS` parts, the current rows of every snapshot are
written as one new part and the older parts removed (the newest part wins for a path, so a run killed between
the two steps reads the same summaries). A part that cannot be read or has another schema is ignored (its
snapshots are summarised again) and removed at the next compaction.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bearing_core.io import write_parquet_atomic
from bearing_core.validation.summaries import (
    CHANNEL_SUMMARY_SCHEMA,
    SNAPSHOT_SUMMARY_SCHEMA,
    SnapshotSummary,
    samples_file,
    summarize_snapshot,
)

CACHE_DIR = "validation_summaries"
MANIFEST_FILE = "manifest.parquet"  # bearing_core.ingest.MANIFEST_FILE (not imported: ingest pulls in scipy)
MAX_PARTS = 16
_PART = re.compile(r"^part-(\d{8})\.parquet$")

KEY_FIELDS: tuple[str, ...] = ("sha256", "samples_size", "samples_mtime_ns", "site", "channels")
_CHANNEL_STATS = [f for f in CHANNEL_SUMMARY_SCHEMA if f.name not in ("path", "site", "channel")]
CACHE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("samples_size", pa.int64()),
        ("samples_mtime_ns", pa.int64()),
        ("channels", pa.string()),
        *[f for f in SNAPSHOT_SUMMARY_SCHEMA if f.name != "path"],
        ("channel", pa.list_(pa.string())),
        *[(f.name, pa.list_(f.type)) for f in _CHANNEL_STATS],
    ]
)


@dataclass(frozen=True)
class CachedSummaries:
    """The two summary tables of the requested snapshots (in the requested order) and what it took."""

    snapshots: pa.Table
    channels: pa.Table
    reused: int
    summarised: list[str]
    """Paths whose samples were read in this call."""


def cache_dir(dataset_dir: str | os.PathLike[str]) -> Path:
    return Path(dataset_dir) / CACHE_DIR


def _parts(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / name) for name in os.listdir(directory) if (m := _PART.match(name))]
    return sorted(found)


def load_cache(dataset_dir: str | os.PathLike[str]) -> pa.Table:
    """Every cached row, newest part winning for a path (empty table when there is no cache)."""
    tables = []
    for _, part in _parts(cache_dir(dataset_dir)):
        try:
            table = pq.read_table(part)
        except (OSError, pa.ArrowException):
            continue  # removed by a concurrent compaction, or damaged: its snapshots are summarised again
        if table.schema.remove_metadata() == CACHE_SCHEMA:
            tables.append(table)
    if not tables:
        return CACHE_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    order = pa.array(np.arange(table.num_rows, dtype=np.int64))
    latest = table.append_column("_row", order).group_by("path").aggregate([("_row", "max")])
    return table.take(np.sort(latest["_row_max"].to_numpy()))


def current_keys(
    dataset_dir: Path, rel_paths: Sequence[str], sites: Sequence[str], channels: Sequence[str]
) -> pa.Table:
    """The key columns of each requested snapshot as the dataset is now (manifest sha256, samples stat)."""
    sha: dict[str, str | None] = {}
    manifest = dataset_dir / MANIFEST_FILE
    if manifest.is_file():
        with contextlib.suppress(OSError, pa.ArrowException, KeyError):
            table = pq.read_table(manifest, columns=["path", "sha256"])
            sha = dict(zip(table["path"].to_pylist(), table["sha256"].to_pylist()))
    stats = _samples_stats(dataset_dir)
    missing = (-1, -1)
    sizes = np.fromiter((stats.get(p, missing)[0] for p in rel_paths), dtype=np.int64, count=len(rel_paths))
    mtimes = np.fromiter((stats.get(p, missing)[1] for p in rel_paths), dtype=np.int64, count=len(rel_paths))
    return pa.table(
        {
            "path": pa.array(list(rel_paths), pa.string()),
            "sha256": pa.array([sha.get(p) for p in rel_paths], pa.string()),
            "samples_size": sizes,
            "samples_mtime_ns": mtimes,
            "site": pa.array(list(sites), pa.string()),
            "channels": pa.array([",".join(channels)] * len(rel_paths), pa.string()),
        }
    )


def _samples_stats(dataset_dir: Path) -> dict[str, tuple[int, int]]:
    """``{rel: (size, mtime_ns)}`` of the samples files (``samples/<rel>.parquet``, ``rel`` being ``<file>`` or
    ``<site>/<file>``), listed with one ``scandir`` per folder rather than a path lookup per snapshot."""
    root = samples_file(dataset_dir, "x").parent
    found: dict[str, tuple[int, int]] = {}

    def scan(folder: Path, prefix: str) -> None:
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    if not prefix:
                        scan(Path(entry.path), f"{entry.name}/")
                elif entry.name.endswith(".parquet"):
                    with contextlib.suppress(OSError):
                        st = entry.stat()
                        found[prefix + entry.name[: -len(".parquet")]] = (st.st_size, st.st_mtime_ns)

    scan(root, "")
    return found


def _matching_rows(keys: pa.Table, cache: pa.Table) -> np.ndarray:
    """For each key row, the index of the cache row computed under exactly that key, or -1."""
    if cache.num_rows == 0 or keys.num_rows == 0:
        return np.full(keys.num_rows, -1, dtype=np.int64)
    index = pc.index_in(keys["path"], value_set=cache["path"])
    found = index.is_valid().to_numpy(zero_copy_only=False)
    rows = pc.fill_null(index, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    candidate = cache.take(pa.array(rows))
    same = found & pc.is_valid(keys["sha256"]).to_numpy(zero_copy_only=False)
    for name in KEY_FIELDS:
        same &= pc.fill_null(pc.equal(keys[name], candidate[name]), False).to_numpy(zero_copy_only=False)
    return np.where(same, rows, -1)


def _cache_rows(summaries: Sequence[SnapshotSummary], keys: pa.Table) -> pa.Table:
    """Cache rows (CACHE_SCHEMA) of freshly computed summaries, ``keys`` giving each one's key, in order."""
    rows = []
    for summary, key in zip(summaries, keys.to_pylist()):
        row: dict[str, object] = {**key, **summary.snapshot}
        row["channel"] = [c["channel"] for c in summary.channels]
        for f in _CHANNEL_STATS:
            row[f.name] = [c[f.name] for c in summary.channels]
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=CACHE_SCHEMA)


def _split(rows: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Cache rows -> (snapshot summary, channel summary), in the rows' order."""
    snapshots = rows.select(SNAPSHOT_SUMMARY_SCHEMA.names).cast(SNAPSHOT_SUMMARY_SCHEMA)
    parents = pc.list_parent_indices(rows["channel"])
    columns = {"path": rows["path"].take(parents), "site": rows["site"].take(parents)}
    columns["channel"] = pc.list_flatten(rows["channel"])
    columns |= {f.name: pc.list_flatten(rows[f.name]) for f in _CHANNEL_STATS}
    return snapshots, pa.table(columns).select(CHANNEL_SUMMARY_SCHEMA.names).cast(CHANNEL_SUMMARY_SCHEMA)


def _write_part(directory: Path, parts: list[tuple[int, Path]], rows: pa.Table) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    number = (parts[-1][0] + 1) if parts else 1
    return write_parquet_atomic(directory / f"part-{number:08d}.parquet", rows)


def cached_summaries(
    dataset_dir: str | os.PathLike[str],
    rel_paths: Sequence[str],
    sites: Sequence[str],
    channels: Sequence[str],
    workers: int = 4,
) -> CachedSummaries:
    """Snapshot and channel summaries of ``rel_paths`` (same tables as
    :func:`~bearing_core.validation.summaries.summarize_samples`), reading only the samples files of snapshots
    without a current cached summary, and recording the new summaries in the cache (module docstring).
    """
    if len(rel_paths) != len(sites):
        raise ValueError(f"{len(rel_paths)} paths but {len(sites)} sites")
    dataset_dir = Path(dataset_dir)
    directory = cache_dir(dataset_dir)
    keys = current_keys(dataset_dir, rel_paths, sites, channels)
    cache = load_cache(dataset_dir)
    hit = _matching_rows(keys, cache)
    missing = np.flatnonzero(hit < 0)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        fresh = list(pool.map(lambda i: summarize_snapshot(dataset_dir, rel_paths[i], sites[i], channels), missing))
    fresh_rows = _cache_rows(fresh, keys.take(pa.array(missing, pa.int64())))
    # all rows in the requested order: cached rows first, fresh ones after, then put back in place
    found = np.flatnonzero(hit >= 0)
    rows = pa.concat_tables([cache.take(pa.array(hit[found], pa.int64())), fresh_rows])
    rows = rows.take(pa.array(np.argsort(np.concatenate([found, missing]), kind="stable"), pa.int64()))

    parts = _parts(directory)
    storable = fresh_rows.filter(pc.equal(fresh_rows["read_error"], ""))  # unreadable files: retried every run
    storable = storable.filter(pc.and_(pc.is_valid(storable["sha256"]), pc.greater_equal(storable["samples_size"], 0)))
    if storable.num_rows:
        written = _write_part(directory, parts, storable)
        parts = [*parts, (int(_PART.match(written.name).group(1)), written)]
    if len(parts) > MAX_PARTS:
        _compact(directory, parts, rows)
    snapshots, channel_rows = _split(rows)
    return CachedSummaries(snapshots, channel_rows, reused=len(found), summarised=[rel_paths[i] for i in missing])


def _compact(directory: Path, parts: list[tuple[int, Path]], rows: pa.Table) -> None:
    """Replace every part by one holding the current, storable row of each snapshot (one per path)."""
    keep = rows.filter(
        pc.and_(
            pc.and_(pc.equal(rows["read_error"], ""), pc.is_valid(rows["sha256"])),
            pc.greater_equal(rows["samples_size"], 0),
        )
    )
    order = pa.array(np.arange(keep.num_rows, dtype=np.int64))
    last = keep.append_column("_row", order).group_by("path").aggregate([("_row", "max")])
    keep = keep.take(np.sort(last["_row_max"].to_numpy()))
    _write_part(directory, parts, keep)
    for _, part in parts:
        with contextlib.suppress(OSError):
            part.unlink()
