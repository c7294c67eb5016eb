"""What the model sees: which columns, which rows are the healthy training period, and how to read them.

Two input modes:

``features`` (default)
    one row per snapshot from ``features.parquet``; by default the ``<channel>_mean_abs`` columns (8 inputs on the
    IMS 1st test). Any other feature, or an explicit column list, can be chosen.
``samples``
    one row per raw time sample (all channels at one instant) read from ``samples/*.parquet`` — what the
    reference notebook did. 20,480 rows per snapshot.

The healthy period is taken *per site*: either everything up to ``train_until`` or the earliest
``train_fraction`` of each site's snapshots (bearings start healthy). Quarantined snapshots never reach the model:
:func:`load_features` drops every row whose path is listed in ``quarantine.parquet``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

FEATURES_FILE = "features.parquet"
QUARANTINE_FILE = "quarantine.parquet"
DATASET_FILE = "dataset.json"
SAMPLES_DIR = "samples"
PER_BEARING_DIR = "per_bearing"
"""Where the pipeline writes a dataset's per-bearing layout: ``<dataset>/per_bearing/`` (under the dataset's lock)."""
META_COLUMNS = ("timestamp", "file", "site", "path")
"""Identifying columns every row carries next to its inputs."""


class InputConfig(BaseModel):
    """Choice of model inputs and of the healthy (training) period."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["features", "samples"] = Field(
        "features", description="'features': one row per snapshot; 'samples': one row per raw time sample"
    )
    feature: str = Field("mean_abs", min_length=1, description="Feature used for every channel in 'features' mode")
    columns: tuple[str, ...] | None = Field(
        None, min_length=1, description="Explicit input columns (overrides 'feature'; channel names in 'samples' mode)"
    )
    train_until: datetime | None = Field(
        None, description="Healthy period = snapshots at or before this time (UTC), for every site"
    )
    train_fraction: float | None = Field(
        0.2, gt=0, le=1, description="Healthy period = the earliest fraction of EACH site's snapshots"
    )
    holdout_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Part of each client's healthy rows kept for evaluation and threshold calibration",
    )
    holdout_mode: Literal["last", "interleaved"] = Field(
        "last",
        description="Which healthy rows are held back: 'last' = the latest in time; 'interleaved' = spread evenly "
        "over the healthy period (every 5th row at 0.2), so run-in, restarts and sensor glitches are represented",
    )
    scale: bool = Field(True, description="Standardise inputs with federated mean/std (else identity scaling)")

    @model_validator(mode="before")
    @classmethod
    def _train_until_replaces_default_fraction(cls, data: Any) -> Any:
        """Giving only ``train_until`` switches the default ``train_fraction`` off."""
        if isinstance(data, dict) and data.get("train_until") is not None and "train_fraction" not in data:
            return {**data, "train_fraction": None}
        return data

    @model_validator(mode="after")
    def _exactly_one_period(self) -> InputConfig:
        if (self.train_until is None) == (self.train_fraction is None):
            raise ValueError("set exactly one of train_until / train_fraction")
        return self


def _read_dataset_json(dataset_dir: Path) -> dict[str, Any]:
    path = dataset_dir / DATASET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {dataset_dir} a processed dataset (bearing ingest)?")
    return json.loads(path.read_text(encoding="utf-8"))


def input_columns(source: str | os.PathLike[str] | Sequence[str], cfg: InputConfig) -> list[str]:
    """The model's input columns, in channel order.

    ``source`` is a processed dataset directory (columns are then checked against what the dataset actually has)
    or a sequence of channel names (no check possible). Defaults: ``<channel>_<cfg.feature>`` for every channel in
    'features' mode, the channel names themselves in 'samples' mode; ``cfg.columns`` overrides both.
    """
    available: list[str] | None = None
    if isinstance(source, (str, os.PathLike)):
        dataset_dir = Path(source)
        channels = list(_read_dataset_json(dataset_dir)["channels"])
        if cfg.mode == "features":
            features_path = dataset_dir / FEATURES_FILE
            if not features_path.is_file():
                raise FileNotFoundError(f"{features_path} not found")
            available = [c for c in pq.read_schema(features_path).names if c not in META_COLUMNS]
        else:
            available = channels
    else:
        channels = list(source)
    if cfg.columns is not None:
        wanted = list(cfg.columns)
    elif cfg.mode == "features":
        wanted = [f"{ch}_{cfg.feature}" for ch in channels]
    else:
        wanted = channels
    if available is not None:
        missing = [c for c in wanted if c not in available]
        if missing:
            where = FEATURES_FILE if cfg.mode == "features" else "the dataset's channels"
            what = f"feature '{cfg.feature}'" if cfg.columns is None and cfg.mode == "features" else "columns"
            raise ValueError(f"{what} not in {where} (missing {missing}); available: {', '.join(available)}")
    return wanted


def load_features(dataset_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """``features.parquet`` minus the rows whose path is quarantined (any stage), sorted by (timestamp, site)."""
    dataset_dir = Path(dataset_dir)
    features_path = dataset_dir / FEATURES_FILE
    if not features_path.is_file():
        raise FileNotFoundError(f"{features_path} not found: run `bearing ingest` first")
    df = pq.read_table(features_path).to_pandas()
    missing = [c for c in META_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{features_path}: missing columns {missing}")
    quarantine_path = dataset_dir / QUARANTINE_FILE
    if quarantine_path.is_file():
        quarantined = pq.read_table(quarantine_path, columns=["file"]).column("file").to_numpy(zero_copy_only=False)
        df = df[~df["path"].isin(quarantined)]
    return df.sort_values(["timestamp", "site"], kind="stable").reset_index(drop=True)


def _naive_utc(ts: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(ts)
    return stamp.tz_convert(UTC).tz_localize(None) if stamp.tzinfo is not None else stamp


def healthy_period(df: pd.DataFrame, cfg: InputConfig) -> pd.DataFrame:
    """The training-period rows of ``df`` (per site), sorted by (timestamp, site), index reset.

    With ``train_fraction`` each site keeps its earliest ``ceil(fraction × n_site)`` rows, so every site contributes
    at least one row and sites with different lengths contribute proportionally.
    """
    for col in ("timestamp", "site"):
        if col not in df.columns:
            raise ValueError(f"healthy_period needs a '{col}' column; got {list(df.columns)}")
    ordered = df.sort_values(["timestamp", "site"], kind="stable")
    if cfg.train_until is not None:
        cutoff = _naive_utc(cfg.train_until)
        healthy = ordered[ordered["timestamp"] <= cutoff]
        rule = f"train_until={cutoff}"
    else:
        rank = ordered.groupby("site", sort=False, observed=True).cumcount().to_numpy()
        size = ordered.groupby("site", sort=False, observed=True)["site"].transform("size").to_numpy()
        keep = rank < np.ceil(np.asarray(cfg.train_fraction) * size)
        healthy = ordered[keep]
        rule = f"train_fraction={cfg.train_fraction}"
    if healthy.empty:
        first = ordered["timestamp"].min() if len(ordered) else None
        raise ValueError(f"empty healthy period: no row selected by {rule} among {len(ordered)} rows (first: {first})")
    return healthy.reset_index(drop=True)


def load_samples_rows(dataset_dir: str | os.PathLike[str], paths: Sequence[str]) -> pd.DataFrame:
    """Raw samples of the given snapshots, one row per time sample: timestamp, file, site, path, channels.

    Snapshots are concatenated in the order of ``paths`` (samples in time order within each); ``file``, ``site``
    and ``path`` come from each samples file's Parquet metadata and are categorical (one dictionary for all).
    """
    dataset_dir = Path(dataset_dir)
    channels = list(_read_dataset_json(dataset_dir)["channels"])
    if len(paths) == 0:
        raise ValueError("load_samples_rows needs at least one snapshot path")
    tables: list[pa.Table] = []
    meta: dict[str, list[str]] = {"file": [], "site": [], "path": []}
    for rel in paths:
        sample_path = dataset_dir / SAMPLES_DIR / f"{rel}.parquet"
        if not sample_path.is_file():
            raise FileNotFoundError(f"samples file for '{rel}' not found: {sample_path}")
        table = pq.read_table(sample_path)
        missing = [c for c in ("timestamp", *channels) if c not in table.column_names]
        if missing:
            raise ValueError(f"{sample_path}: missing columns {missing}")
        kv = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        meta["file"].append(kv.get("file", Path(rel).name))
        meta["site"].append(kv.get("site", Path(rel).parts[0] if len(Path(rel).parts) > 1 else ""))
        meta["path"].append(kv.get("path", rel))
        tables.append(table.select(["timestamp", *channels]).replace_schema_metadata(None))
    data = pa.concat_tables(tables)
    codes = np.repeat(np.arange(len(tables), dtype=np.int32), [t.num_rows for t in tables])
    out = pd.DataFrame({"timestamp": data.column("timestamp").to_pandas()})
    for name, values in meta.items():
        categories, per_snapshot = np.unique(np.asarray(values, dtype=object), return_inverse=True)
        out[name] = pd.Categorical.from_codes(per_snapshot[codes], categories=categories)
    for ch in channels:
        out[ch] = data.column(ch).to_numpy()
    return out
