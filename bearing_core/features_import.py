"""A features-only processed dataset from a per-file table (no raw snapshots needed).

Some IMS data circulates only as per-file feature tables, e.g. ``1st_test_mean_abs.csv``: a ``file`` column (the
snapshot's file name, ``YYYY.MM.DD.hh.mm.ss``) and one column per channel holding one feature (mean |x|). This
module turns such a table into the processed-dataset layout the rest of the pipeline reads:

``features.parquet``
    timestamp (parsed from the file name), file, site, path (``<site>/<file>``), ``<channel>_<feature>`` float64,
    sorted by (timestamp, site);
``quarantine.parquet``
    empty (file, reason, stage), so readers find the exclusion list they expect;
``dataset.json``
    name, channels, features ``[<feature>]``, sites, ``features_only: true`` (there are no ``samples/``),
    plus the source table's path and SHA-256.

Training (features mode, ``feature=<feature>``) and scoring then work on it like on an ingested dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from bearing_core.config import RigConfig
from bearing_core.fingerprint import sha256_file
from bearing_core.inputs import (
    DATASET_FILE,
    FEATURES_FILE,
    META_COLUMNS,
    QUARANTINE_FILE,
)
from bearing_core.io import claim_output_dir, write_json_atomic, write_parquet_atomic
from bearing_core.synthetic import TIMESTAMP_FORMAT

QUARANTINE_SCHEMA = pa.schema([("file", pa.string()), ("reason", pa.string()), ("stage", pa.string())])
OUTPUT_KIND = "features-only dataset"
"""Kind of output (:data:`bearing_core.io.OUTPUT_MARKER`) of :func:`import_features`."""


@dataclass
class ImportResult:
    """What :func:`import_features` wrote."""

    out_dir: Path
    rows: int
    site: str
    channels: list[str]
    feature: str
    first: pd.Timestamp
    last: pd.Timestamp


def default_site_name(table_path: str | os.PathLike[str], feature: str = "mean_abs") -> str:
    """The site name used when none is given: the table's stem without a ``_<feature>`` suffix
    (``1st_test_mean_abs.csv`` → ``1st_test``)."""
    stem = Path(table_path).stem
    return stem.removesuffix(f"_{feature}") or stem


def read_feature_table(table_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The table with its ``file`` column checked and parsed into ``timestamp``; channel columns as float64.

    Errors name the table, the line (1 = header) and the column: missing ``file`` column, no channel column, a
    column named like a dataset's own (``timestamp``, ``site``, ``path``), unparsable file names, duplicate files,
    non-numeric or missing values.
    """
    table_path = Path(table_path)
    if not table_path.is_file():
        raise FileNotFoundError(f"feature table not found: {table_path}")
    df = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    if "file" not in df.columns:
        raise ValueError(f"{table_path}: no 'file' column (columns: {', '.join(df.columns)})")
    channels = [c for c in df.columns if c != "file"]
    reserved = [c for c in channels if c in META_COLUMNS]
    if reserved:
        raise ValueError(
            f"{table_path}: column {reserved[0]!r} is reserved (timestamp comes from the file name, site and path "
            "from the import): remove or rename it"
        )
    if not channels:
        raise ValueError(f"{table_path}: no channel columns besides 'file'")
    if df.empty:
        raise ValueError(f"{table_path}: no rows")
    files = df["file"].str.strip().map(lambda f: Path(f).name)
    timestamps = pd.to_datetime(files, format=TIMESTAMP_FORMAT, errors="coerce")
    bad = timestamps.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{table_path}: line {i + 2}, column 'file': {df['file'].iloc[i]!r} is not a YYYY.MM.DD.hh.mm.ss file name"
        )
    duplicated = files.duplicated().to_numpy()
    if duplicated.any():
        i = int(np.flatnonzero(duplicated)[0])
        raise ValueError(f"{table_path}: line {i + 2}, column 'file': duplicate file {files.iloc[i]!r}")
    out = pd.DataFrame({"timestamp": timestamps.astype("datetime64[us]"), "file": files})
    for ch in channels:
        values = pd.to_numeric(df[ch], errors="coerce")
        bad = (values.isna() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{table_path}: line {i + 2}, column {ch!r}: {df[ch].iloc[i]!r} is not a finite number")
        out[ch] = values.to_numpy(dtype=np.float64)
    return out


def write_features_only_dataset(
    out_dir: Path, features: pd.DataFrame, value_columns: list[str], meta: dict[str, Any], kind: str = OUTPUT_KIND
) -> None:
    """Write a features-only processed dataset: ``features.parquet`` (timestamp[us], file, site, path, then
    ``value_columns`` as float64), an empty ``quarantine.parquet`` and ``dataset.json`` = ``meta`` plus ``name`` (the
    directory's) and ``features_only: true``. Atomic, ``dataset.json`` last (readers treat it as the completion mark).

    ``out_dir`` must be absent, empty or this ``kind``'s earlier output (:func:`bearing_core.io.claim_output_dir`;
    :class:`bearing_core.io.OutputDirRefused` otherwise): an ingested dataset or any other folder is never
    overwritten. Callers outside a pipeline run hold the dataset's lock (``cli.dataset_lock``).
    """
    claim_output_dir(out_dir, kind)
    schema = pa.schema(
        [("timestamp", pa.timestamp("us")), ("file", pa.string()), ("site", pa.string()), ("path", pa.string())]
        + [(c, pa.float64()) for c in value_columns]
    )
    table = pa.Table.from_pandas(features[[*META_COLUMNS, *value_columns]], schema=schema, preserve_index=False)
    write_parquet_atomic(out_dir / FEATURES_FILE, table)
    write_parquet_atomic(out_dir / QUARANTINE_FILE, QUARANTINE_SCHEMA.empty_table())
    write_json_atomic(out_dir / DATASET_FILE, {"name": out_dir.resolve().name, **meta, "features_only": True})


def import_features(
    table_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    site: str | None = None,
    feature: str = "mean_abs",
    rig: RigConfig | None = None,
) -> ImportResult:
    """Build the features-only dataset ``out_dir`` from ``table_path`` (see the module docstring).

    ``site`` defaults to :func:`default_site_name`. Outputs are written atomically, ``dataset.json`` last.
    """
    table_path, out_dir = Path(table_path), Path(out_dir)
    site = site or default_site_name(table_path, feature)
    if not site or "/" in site or site.startswith("."):
        raise ValueError(f"invalid site name {site!r}")
    if not feature.isidentifier():
        raise ValueError(f"invalid feature name {feature!r}")
    table = read_feature_table(table_path).sort_values("timestamp", kind="stable").reset_index(drop=True)
    channels = [c for c in table.columns if c not in ("timestamp", "file")]
    features = pd.DataFrame(
        {
            "timestamp": table["timestamp"],
            "file": table["file"],
            "site": site,
            "path": site + "/" + table["file"],
            **{f"{ch}_{feature}": table[ch] for ch in channels},
        }
    )
    rig = rig or RigConfig()
    write_features_only_dataset(
        out_dir,
        features,
        [f"{ch}_{feature}" for ch in channels],
        {
            "channels": channels,
            "expected_samples": None,
            "fs_hz": rig.fs_hz,
            "features": [feature],
            "sites": [site],
            "rig": rig.model_dump(mode="json"),
            "source": {"table": str(table_path.resolve()), "sha256": sha256_file(table_path)},
        },
    )
    return ImportResult(
        out_dir=out_dir,
        rows=len(features),
        site=site,
        channels=channels,
        feature=feature,
        first=table["timestamp"].iloc[0],
        last=table["timestamp"].iloc[-1],
    )
