"""Per-snapshot summaries of the samples files: the tables the sample-level expectations run on.

Why summaries rather than running Great Expectations on the raw samples: a dataset of 1,000 IMS snapshots holds
1,000 x 20,480 x 8 = 164 M samples. Row-by-row expectations over that are slow and memory hungry, while every
sample-level rule (row count, nulls, non-finite values, range, flat line, clipping) is a statement about a
handful of per-channel aggregates. Each samples file is therefore read once with pyarrow and reduced with
numpy over the whole ``(n_samples, n_channels)`` block, giving two small tables:

* snapshot summary, one row per snapshot: ``path, site, n_rows, columns, types, read_error``
* channel summary, one row per snapshot x channel: ``path, site, channel, n_null, n_nonfinite, min, max,
  std, clip_fraction`` (statistics over the finite samples)

The expectations in :mod:`bearing_core.validation.suites` then run on these tables, and each failing row names
the snapshot (and channel) it came from. The same idea gives the other derived tables of this module: the
per-site timeline of the features table (interval to the previous snapshot, gap ratio, rms ratio) and the
per-client / per-path tables of a federated partitioning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SNAPSHOT_SUMMARY_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("site", pa.string()),
        ("n_rows", pa.int64()),
        ("columns", pa.string()),
        ("types", pa.string()),
        ("read_error", pa.string()),
    ]
)
CHANNEL_SUMMARY_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("site", pa.string()),
        ("channel", pa.string()),
        ("n_null", pa.int64()),
        ("n_nonfinite", pa.int64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("std", pa.float64()),
        ("clip_fraction", pa.float64()),
    ]
)


def samples_file(dataset_dir: Path, rel_path: str) -> Path:
    """Where ingest writes the samples of snapshot ``rel_path`` (the shared contract)."""
    return Path(dataset_dir) / "samples" / f"{rel_path}.parquet"


def expected_columns(channels: Sequence[str]) -> str:
    """The ``columns`` value of a well-formed samples file: timestamp then the channels, comma-separated."""
    return ",".join(["timestamp", *channels])


def expected_types(channels: Sequence[str]) -> str:
    """The ``types`` value of a well-formed samples file: timestamp[us] then one float32 per channel."""
    return ",".join(["timestamp[us]", *(["float"] * len(channels))])


@dataclass
class SnapshotSummary:
    """One snapshot's row of the snapshot summary and its rows of the channel summary."""

    snapshot: dict[str, object]
    channels: list[dict[str, object]] = field(default_factory=list)


def _channel_statistics(x: np.ndarray, n_null: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised statistics of a ``(n_samples, n_channels)`` float64 block whose nulls are NaN."""
    finite = np.isfinite(x)
    n_finite = finite.sum(axis=0)
    xf = np.where(finite, x, np.nan)
    with warnings.catch_warnings():
        # all-NaN channels give NaN statistics; their n_nonfinite already reports them
        warnings.simplefilter("ignore", RuntimeWarning)
        peak = np.nanmax(np.abs(xf), axis=0) if len(x) else np.full(x.shape[1], np.nan)
        stats = {
            "n_null": n_null.astype(np.int64),
            "n_nonfinite": (len(x) - n_finite - n_null).astype(np.int64),
            "min": np.nanmin(xf, axis=0) if len(x) else np.full(x.shape[1], np.nan),
            "max": np.nanmax(xf, axis=0) if len(x) else np.full(x.shape[1], np.nan),
            "std": np.nanstd(xf, axis=0) if len(x) else np.full(x.shape[1], np.nan),
        }
    at_peak = (np.abs(xf) == peak).sum(axis=0)
    stats["clip_fraction"] = np.where(n_finite > 0, at_peak / np.maximum(n_finite, 1), np.nan)
    return stats


def summarize_snapshot(dataset_dir: Path, rel_path: str, site: str, channels: Sequence[str]) -> SnapshotSummary:
    """Summarise one samples file: its schema (snapshot row) and per-channel statistics (channel rows).

    A missing or unreadable file gives a snapshot row with ``read_error`` set and no channel rows, so the
    problem surfaces as a failed expectation naming the file instead of an exception that stops the run.
    """
    path = samples_file(dataset_dir, rel_path)
    # schema fields stay null for a file that cannot be read: only snapshot.readable fails for it
    row: dict[str, object] = {"path": rel_path, "site": site, "read_error": ""}
    row |= {"n_rows": None, "columns": None, "types": None}
    if not path.is_file():
        row["read_error"] = f"missing samples file samples/{rel_path}.parquet"
        return SnapshotSummary(row)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        row["read_error"] = f"unreadable samples file samples/{rel_path}.parquet: {exc}"
        return SnapshotSummary(row)
    row["n_rows"] = table.num_rows
    row["columns"] = ",".join(table.column_names)
    row["types"] = ",".join(str(t) for t in table.schema.types)
    present = [c for c in channels if c in table.column_names]
    if not present:
        return SnapshotSummary(row)
    try:
        columns = [table.column(c) for c in present]
        x = np.column_stack([c.cast(pa.float64()).to_numpy() for c in columns]).reshape(table.num_rows, len(present))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        row["read_error"] = f"samples/{rel_path}.parquet: channel values are not numeric: {exc}"
        return SnapshotSummary(row)
    stats = _channel_statistics(x, np.array([c.null_count for c in columns]))
    channel_rows = [
        {"path": rel_path, "site": site, "channel": name, **{k: v[i].item() for k, v in stats.items()}}
        for i, name in enumerate(present)
    ]
    return SnapshotSummary(row, channel_rows)


def summarize_samples(
    dataset_dir: str | Path,
    rel_paths: Sequence[str],
    sites: Sequence[str],
    channels: Sequence[str],
    workers: int = 4,
) -> tuple[pa.Table, pa.Table]:
    """Snapshot and channel summary tables of the samples files of ``rel_paths`` (one thread pool pass)."""
    if len(rel_paths) != len(sites):
        raise ValueError(f"{len(rel_paths)} paths but {len(sites)} sites")
    dataset_dir = Path(dataset_dir)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        summaries = list(
            pool.map(lambda ps: summarize_snapshot(dataset_dir, ps[0], ps[1], channels), zip(rel_paths, sites))
        )
    snapshots = pa.Table.from_pylist([s.snapshot for s in summaries], schema=SNAPSHOT_SUMMARY_SCHEMA)
    channel_rows = [r for s in summaries for r in s.channels]
    return snapshots, pa.Table.from_pylist(channel_rows, schema=CHANNEL_SUMMARY_SCHEMA)


TIMELINE_COLUMNS: tuple[str, ...] = ("path", "site", "timestamp", "interval_s", "gap_ratio", "rms_level", "rms_ratio")


def feature_timeline(features: pd.DataFrame, channels: Sequence[str]) -> pd.DataFrame:
    """Per-site time order and vibration level of the features table, in the table's row order.

    ``interval_s``: seconds since the previous row of the same site (NaN on a site's first row; <= 0 means a
    duplicate or a step back). ``gap_ratio``: ``interval_s`` over the site's median positive interval.
    ``rms_level``: mean of the ``<channel>_rms`` columns; ``rms_ratio``: ``rms_level`` over the site's median
    (a shut-down snapshot has almost no vibration: a ratio far below 1). Columns a broken table lacks give NaN,
    leaving the schema expectations to report them.
    """
    out = pd.DataFrame(index=features.index)
    for col in ("path", "site", "timestamp"):
        out[col] = features[col] if col in features else None
    site = out["site"].fillna("")
    if "timestamp" in features and pd.api.types.is_datetime64_any_dtype(features["timestamp"]):
        out["interval_s"] = features["timestamp"].groupby(site).diff().dt.total_seconds()
        positive = out["interval_s"].where(out["interval_s"] > 0)
        out["gap_ratio"] = out["interval_s"] / positive.groupby(site).transform("median")
    else:
        out["interval_s"] = out["gap_ratio"] = np.nan
    rms_cols = [f"{ch}_rms" for ch in channels if f"{ch}_rms" in features]
    if rms_cols and all(pd.api.types.is_numeric_dtype(features[c]) for c in rms_cols):
        out["rms_level"] = features[rms_cols].to_numpy(dtype=np.float64).mean(axis=1)
        out["rms_ratio"] = out["rms_level"] / out["rms_level"].groupby(site).transform("median")
    else:
        out["rms_level"] = out["rms_ratio"] = np.nan
    if not pd.api.types.is_datetime64_any_dtype(out["timestamp"]):
        out["timestamp"] = out["timestamp"].astype(str)  # an unusable timestamp column is reported, not parsed
    return out.reset_index(drop=True)[list(TIMELINE_COLUMNS)]


PARTITION_REQUIRED_COLUMNS: tuple[str, ...] = ("path", "split")


def partition_tables(clients_dir: str | Path, training_paths: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-client and per-path tables of the partitioning in ``clients_dir`` (``client_<k>.parquet`` files).

    clients: ``client, n_rows, problem`` (problem is "" or says why the file cannot be used).
    coverage: one row per path in the partitions or the training set: ``path, n_clients, clients,
    in_training`` (``n_clients`` 0 = training row missing, 2+ = row in several clients).
    """
    files = sorted(Path(clients_dir).glob("client_*.parquet"))
    client_rows: list[dict[str, object]] = []
    assigned: list[pd.DataFrame] = []
    for f in files:
        row: dict[str, object] = {"client": f.stem, "n_rows": 0, "problem": ""}
        try:
            schema = pq.read_schema(f)
            missing = [c for c in PARTITION_REQUIRED_COLUMNS if c not in schema.names]
            row["n_rows"] = pq.ParquetFile(f).metadata.num_rows
            if missing:
                row["problem"] = f"{f.name}: missing column(s) {', '.join(missing)}"
            else:
                paths = pq.read_table(f, columns=["path"]).column("path").to_pandas()
                assigned.append(pd.DataFrame({"path": paths.astype(str), "client": f.stem}))
        except (OSError, pa.ArrowException) as exc:
            row["problem"] = f"{f.name}: unreadable: {exc}"
        client_rows.append(row)
    clients = pd.DataFrame(client_rows, columns=["client", "n_rows", "problem"]).astype({"n_rows": "int64"})
    pairs = pd.concat(assigned, ignore_index=True) if assigned else pd.DataFrame({"path": [], "client": []})
    per_path = pairs.groupby("path", sort=True)["client"].agg(n_clients="size", clients=lambda s: ",".join(s))
    training = pd.Index(pd.unique(pd.Series(list(training_paths), dtype=str)), name="path")
    coverage = per_path.reindex(per_path.index.union(training))
    coverage["n_clients"] = coverage["n_clients"].fillna(0).astype("int64")
    coverage["clients"] = coverage["clients"].astype(object).fillna("").astype(str)  # float64 when no client file
    coverage["in_training"] = coverage.index.isin(training)
    return clients, coverage.reset_index()[["path", "n_clients", "clients", "in_training"]]
