"""Scoring snapshots with a calibrated model, naming the channel at fault, and debounced alarms.

For every valid snapshot of a processed dataset (quarantined paths excluded): ``score`` = reconstruction MSE
over the model's inputs (scaled units), ``threshold`` = the model's calibrated threshold (its site's own one when
calibrated per site), ``is_anomaly = score > threshold``, ``top_channel`` = the channel of the input with the
largest squared error. ``alarm`` needs the score over the threshold for a *duration* and is held back in the warm-up
after a stop:
see :mod:`bearing_core.alarms` (:class:`~bearing_core.alarms.AlarmConfig`).

Incremental scoring (:func:`update_scores`): ``scores.parquet`` holds the scores of one model version, keyed by
``path``. A new call runs the model only on snapshots whose path is not scored yet with this model (a new model
re-scores everything; paths that left the dataset — deleted or quarantined since — are dropped). The debounced
``alarm`` column is then recomputed over the whole table from ``is_anomaly``: it is a cheap rolling count (no
model), and it stays correct even when a late file lands between already scored ones.

A dataset with no valid snapshot, or with fewer than :data:`MIN_VALID_FRACTION` of them valid, is not scored
(:class:`TooFewValidSnapshots`): an empty or mostly quarantined dataset means the data or its validation is
broken, and "0 in alarm" would hide it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bearing_core.alarms import AlarmConfig, debounce_alarms
from bearing_core.inputs import DATASET_FILE, FEATURES_FILE, META_COLUMNS, QUARANTINE_FILE, load_features
from bearing_core.io import atomic_path, write_parquet_atomic
from bearing_core.model_io import LoadedModel, load_model
from bearing_core.threshold import ThresholdRecord, load_threshold, snapshot_errors

SCORES_FILE = "scores.parquet"
SCORE_COLUMNS = (
    "timestamp",
    "file",
    "site",
    "path",
    "score",
    "threshold",
    "is_anomaly",
    "alarm",
    "top_channel",
    "top_input",
    "model_version",
)
"""Columns of a scores table: the contract columns, plus ``top_input`` (the input column with the largest error,
e.g. ``B3_a_env_bpfi``) and ``model_version``."""


MIN_VALID_FRACTION = 0.5
"""Scoring refuses a dataset where fewer than this fraction of the snapshots are valid (not quarantined): "scored 0,
0 in alarm" would read as "all healthy" while monitoring has in fact stopped (e.g. every snapshot quarantined by a
mistyped ``bearing validate --channels``)."""


class TooFewValidSnapshots(ValueError):
    """The dataset has no valid snapshot, or fewer than :data:`MIN_VALID_FRACTION` of its snapshots are valid."""


@dataclass
class ScoreUpdate:
    """Outcome of :func:`update_scores`."""

    scores: pd.DataFrame
    n_scored: int
    """Snapshots the model ran on in this call (0 when everything was already scored)."""
    n_reused: int
    """Rows carried over from the existing scores file."""
    path: Path


def channel_of_inputs(input_columns: list[str], channels: list[str]) -> list[str]:
    """The channel each input column belongs to: the longest channel name ``c`` with ``column == c`` or
    ``column.startswith(c + "_")`` (``B3_a_env_bpfi`` → ``B3_a``); the column itself when none matches."""
    by_length = sorted(channels, key=len, reverse=True)
    return [next((c for c in by_length if col == c or col.startswith(f"{c}_")), col) for col in input_columns]


def _dataset_channels(dataset_dir: Path) -> list[str]:
    path = dataset_dir / DATASET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {dataset_dir} a processed dataset?")
    return list(json.loads(path.read_text(encoding="utf-8"))["channels"])


def _valid_features(dataset_dir: Path) -> pd.DataFrame:
    """:func:`~bearing_core.inputs.load_features` of ``dataset_dir``, or :class:`TooFewValidSnapshots` when
    fewer than :data:`MIN_VALID_FRACTION` of its snapshots (features rows and quarantined files) are valid."""
    features = load_features(dataset_dir)
    snapshots = pq.read_table(dataset_dir / FEATURES_FILE, columns=["path"]).column("path").combine_chunks()
    quarantine_path = dataset_dir / QUARANTINE_FILE
    if quarantine_path.is_file():
        quarantined = pq.read_table(quarantine_path, columns=["file"]).column("file").combine_chunks()
        snapshots = pa.concat_arrays([snapshots.cast(pa.string()), quarantined.cast(pa.string())])
    total, valid = len(pc.unique(snapshots)), len(features)
    if total == 0:
        raise TooFewValidSnapshots(f"{dataset_dir} has no snapshots to score (features.parquet is empty)")
    if valid == 0 or valid < MIN_VALID_FRACTION * total:
        raise TooFewValidSnapshots(
            f"{dataset_dir}: {'no' if valid == 0 else f'only {valid} of {total}'} snapshots valid "
            f"({total - valid} of {total} quarantined, see {QUARANTINE_FILE}); scoring needs at least "
            f"{MIN_VALID_FRACTION:.0%} valid, or monitoring would silently stop: fix the cause of the quarantine "
            "(e.g. wrong `bearing validate` options) and validate again"
        )
    return features


def score_rows(rows: pd.DataFrame, loaded: LoadedModel, record: ThresholdRecord, channels: list[str]) -> pd.DataFrame:
    """Scores of ``rows`` (features rows: metadata + the model's input columns), without the ``alarm`` column."""
    missing = [c for c in loaded.input_columns if c not in rows.columns]
    if missing:
        features = [c for c in rows.columns if c not in META_COLUMNS]
        raise ValueError(
            f"the model's inputs {loaded.input_columns} are not all among the dataset's features {features} "
            f"(missing: {missing}): score with a model trained on this kind of dataset"
        )
    X = rows[loaded.input_columns].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        first = rows["path"].iloc[int(np.flatnonzero(bad)[0])]
        raise ValueError(f"{int(bad.sum())} rows have non-finite inputs (first: {first})")
    score, per_input = snapshot_errors(loaded, X)
    top = per_input.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
    inputs = np.asarray(loaded.input_columns, dtype=object)
    input_channel = np.asarray(channel_of_inputs(loaded.input_columns, channels), dtype=object)
    threshold = record.for_sites(rows["site"].astype(str).to_numpy())
    return pd.DataFrame(
        {
            "timestamp": rows["timestamp"].to_numpy(),
            "file": rows["file"].astype(str).to_numpy(),
            "site": rows["site"].astype(str).to_numpy(),
            "path": rows["path"].astype(str).to_numpy(),
            "score": score,
            "threshold": threshold,
            "is_anomaly": score > threshold,
            "top_channel": input_channel[top],
            "top_input": inputs[top],
            "model_version": record.model_version,
        }
    )


def _finish(scores: pd.DataFrame, alarms: AlarmConfig) -> pd.DataFrame:
    """Add the ``alarm`` column (:func:`~bearing_core.alarms.debounce_alarms`), order columns and rows (timestamp,
    site)."""
    scores = scores.assign(alarm=debounce_alarms(scores, alarms))
    return scores[list(SCORE_COLUMNS)].sort_values(["timestamp", "site"], kind="stable").reset_index(drop=True)


def score_dataset(
    dataset_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    alarms: AlarmConfig | None = None,
    since: datetime | None = None,
) -> pd.DataFrame:
    """Score every valid snapshot of ``dataset_dir`` with the calibrated model in ``model_dir`` (nothing written).

    With ``since``, only snapshots at or after that time are returned, but the snapshots of the persistence window and
    warm-up before it are scored too, so the alarm rule sees its full window. Columns: :data:`SCORE_COLUMNS`.
    """
    dataset_dir = Path(dataset_dir)
    alarms = alarms or AlarmConfig()
    loaded = load_model(model_dir)
    record = load_threshold(model_dir)
    features = _valid_features(dataset_dir)
    if since is not None:
        since = pd.Timestamp(since)
        since = since.tz_convert("UTC").tz_localize(None) if since.tzinfo is not None else since  # naive UTC
        later = features["timestamp"] >= since
        context = features[
            ~later & (features["timestamp"] >= since - pd.Timedelta(hours=alarms.persistence_h + alarms.warmup_h))
        ]
        features = pd.concat([context, features[later]]).sort_values(["timestamp", "site"], kind="stable")
    scores = _finish(score_rows(features, loaded, record, _dataset_channels(dataset_dir)), alarms)
    if since is not None:
        scores = scores[scores["timestamp"] >= since].reset_index(drop=True)
    return scores


def read_scores(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A scores table written by :func:`write_scores` (Parquet, or CSV when the name ends in ``.csv``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scores file not found: {path}")
    if path.suffix.lower() == ".csv":
        df = pd.read_csv(path, parse_dates=["timestamp"])
    else:
        df = pq.read_table(path).to_pandas()
    missing = [c for c in ("timestamp", "site", "path", "score", "threshold", "is_anomaly", "alarm") if c not in df]
    if missing:
        raise ValueError(f"{path}: not a scores table, missing columns {missing}")
    return df


def write_scores(scores: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a scores table atomically: CSV when ``path`` ends in ``.csv``, else Parquet."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with atomic_path(path, suffix=".csv.tmp") as tmp:
            scores.to_csv(tmp, index=False)
        return path
    table = pa.Table.from_pandas(scores, preserve_index=False)
    return write_parquet_atomic(path, table.cast(table.schema.set(0, pa.field("timestamp", pa.timestamp("us")))))


def update_scores(
    dataset_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    alarms: AlarmConfig | None = None,
) -> ScoreUpdate:
    """Incrementally bring ``out`` (default ``<dataset_dir>/scores.parquet``) up to date and return it.

    Rows already scored by this model version (same weights and threshold) are reused; only the other valid
    snapshots go through the model. Alarms are recomputed over the whole table (see the module docstring).
    """
    dataset_dir = Path(dataset_dir)
    out = Path(out) if out is not None else dataset_dir / SCORES_FILE
    loaded = load_model(model_dir)
    record = load_threshold(model_dir)
    features = _valid_features(dataset_dir)
    reusable = pd.DataFrame(columns=list(SCORE_COLUMNS))
    if out.is_file():
        previous = read_scores(out)
        same_model = (previous.get("model_version") == record.model_version) & np.isclose(
            previous["threshold"].to_numpy(dtype=np.float64), record.for_sites(previous["site"].astype(str).to_numpy())
        )
        reusable = previous[same_model & previous["path"].isin(features["path"])]
    todo = features[~features["path"].isin(reusable["path"])]
    fresh = score_rows(todo, loaded, record, _dataset_channels(dataset_dir))
    parts = [p for p in (reusable.drop(columns=["alarm"], errors="ignore"), fresh) if len(p)]
    combined = pd.concat(parts, ignore_index=True) if parts else fresh
    combined["timestamp"] = pd.to_datetime(combined["timestamp"]).astype("datetime64[us]")
    combined["is_anomaly"] = combined["is_anomaly"].astype(bool)
    scores = _finish(combined, alarms or AlarmConfig())
    write_scores(scores, out)
    return ScoreUpdate(scores=scores, n_scored=len(fresh), n_reused=len(reusable), path=out)


def alarm_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per site: snapshots, anomalies, alarm snapshots, first alarm time, and the most frequent top channel
    over the alarm snapshots (empty string when the site never alarmed)."""
    rows = []
    for site, part in scores.groupby("site", sort=True, observed=True):
        alarms = part[part["alarm"].astype(bool)].sort_values("timestamp")
        rows.append(
            {
                "site": str(site),
                "snapshots": len(part),
                "anomalies": int(part["is_anomaly"].astype(bool).sum()),
                "alarm_snapshots": len(alarms),
                "first_alarm": alarms["timestamp"].iloc[0] if len(alarms) else pd.NaT,
                "first_alarm_file": str(alarms["file"].iloc[0]) if len(alarms) else "",
                "top_channel": str(alarms["top_channel"].mode().iloc[0]) if len(alarms) else "",
            }
        )
    columns = ["site", "snapshots", "anomalies", "alarm_snapshots", "first_alarm", "first_alarm_file", "top_channel"]
    return pd.DataFrame(rows, columns=columns)
