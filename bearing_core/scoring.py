"""Scoring snapshots with a calibrated model, naming the channel at fault, and debounced alarms.

For every valid snapshot of a processed dataset (quarantined paths excluded): ``score`` = reconstruction MSE
over the model's inputs (scaled units), ``threshold`` = the model's calibrated threshold (its site's own one when
calibrated per site), ``is_anomaly = score > threshold``, ``top_channel`` = the channel of the input with the
largest squared error. ``alarm`` is *debounced per site*: it is raised at a snapshot when at least ``k`` of the
last ``n`` snapshots of that site (time order, the snapshot itself included) are anomalous — a single spike does
not page anyone (default 3 of 3).

Warm-up after a stop (optional, ``warmup_h`` > 0): when a site's acquisition resumes after a gap of at least
``warmup_h`` hours (the machine was stopped), its snapshots in the first ``warmup_h`` hours after the restart do not
count towards an alarm: a cold bearing's vibration level settles for a few hours after a long stop (the IMS 1st
test's Nov 3 restart raises bearing 1's level by ~4 % for ~5 h), which is not a defect. ``score`` and
``is_anomaly`` are unchanged; only ``alarm`` is inhibited. An alarm already raised before the stop is not
silenced: a site in alarm at its last snapshot before the gap keeps counting through the warm-up (a restart does
not clear a defect). Off by default.

Incremental scoring (:func:`update_scores`): ``scores.parquet`` holds the scores of one model version, keyed by
``path``. A new call runs the model only on snapshots whose path is not scored yet with this model (a new model
re-scores everything; paths that left the dataset — deleted or quarantined since — are dropped). The debounced
``alarm`` column is then recomputed over the whole table from ``is_anomaly``: it is a cheap rolling count (no
model), and it stays correct even when a late file lands between already scored ones.
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
import pyarrow.parquet as pq

from bearing_core.inputs import DATASET_FILE, META_COLUMNS, load_features
from bearing_core.io import atomic_path, write_parquet_atomic
from bearing_core.model_io import LoadedModel, load_model
from bearing_core.threshold import ThresholdRecord, load_threshold, snapshot_errors

SCORES_FILE = "scores.parquet"
SCORE_COLUMNS = (
    "timestamp", "file", "site", "path", "score", "threshold", "is_anomaly", "alarm", "top_channel", "top_input",
    "model_version",
)
"""Columns of a scores table: the contract columns, plus ``top_input`` (the input column with the largest error,
e.g. ``B3_a_env_bpfi``) and ``model_version``."""


@dataclass
class ScoreUpdate:
    """Outcome of :func:`update_scores`."""

    scores: pd.DataFrame
    n_scored: int
    """Snapshots the model ran on in this call (0 when everything was already scored)."""
    n_reused: int
    """Rows carried over from the existing scores file."""
    path: Path


def debounce_alarms(df: pd.DataFrame, k: int = 3, n: int = 3, warmup_h: float = 0.0) -> np.ndarray:
    """Alarm flags (aligned with ``df``'s rows): at least ``k`` of the last ``n`` rows of the same site anomalous.

    ``df`` needs ``site``, ``timestamp`` and boolean ``is_anomaly``; rows may be in any order (they are ranked by
    timestamp within each site). The first rows of a site count over the fewer rows available. Vectorised: one
    cumulative sum over rows sorted by (site, timestamp). ``warmup_h`` > 0: rows in the warm-up after a stop of at
    least ``warmup_h`` hours do not count, unless the site was in alarm before the stop (module docstring).
    """
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if not (warmup_h >= 0 and np.isfinite(warmup_h)):
        raise ValueError(f"warmup_h must be a finite number >= 0, got {warmup_h}")
    size = len(df)
    if size == 0:
        return np.zeros(0, dtype=bool)
    site_codes = pd.factorize(df["site"].astype(str))[0]
    order = np.lexsort((df["timestamp"].to_numpy(), site_codes))
    anomalous = df["is_anomaly"].to_numpy(dtype=bool)[order]
    sorted_codes = site_codes[order]
    if warmup_h > 0:
        timestamps = df["timestamp"].to_numpy()[order].astype("datetime64[us]")
        alarm_sorted = _inhibit_warmup(anomalous, sorted_codes, timestamps, k, n, warmup_h)
    else:
        alarm_sorted = _count_alarms(anomalous, sorted_codes, k, n)
    alarm = np.empty(size, dtype=bool)
    alarm[order] = alarm_sorted
    return alarm


def _count_alarms(anomalous: np.ndarray, sorted_codes: np.ndarray, k: int, n: int) -> np.ndarray:
    """k-of-n flags over rows already sorted by (site, timestamp); ``sorted_codes`` are the rows' site codes."""
    size = len(anomalous)
    cumulative = np.concatenate([[0], np.cumsum(anomalous.astype(np.int64))])
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, size]))
    position = np.arange(size)
    window_start = np.maximum(position - n + 1, group_start)
    return cumulative[position + 1] - cumulative[window_start] >= k


def _inhibit_warmup(
    anomalous: np.ndarray, sorted_codes: np.ndarray, timestamps: np.ndarray, k: int, n: int, warmup_h: float
) -> np.ndarray:
    """k-of-n flags with the warm-up rows after each stop (gap >= ``warmup_h``) not counting, except after a stop
    the site entered in alarm. Rows are sorted by (site, timestamp). A latched stop can only add alarms, so the
    fixed point is reached by re-counting at most once per stop."""
    warmup = np.timedelta64(int(round(warmup_h * 3600 * 1e6)), "us")
    same_site = np.r_[False, sorted_codes[1:] == sorted_codes[:-1]]
    gap = np.r_[np.timedelta64(0, "us"), np.diff(timestamps)]
    restart = same_site & (gap >= warmup)
    if not restart.any():
        return _count_alarms(anomalous, sorted_codes, k, n)
    segment = np.cumsum(~same_site | restart)  # one id per (site, run between stops)
    segment_start = timestamps[np.flatnonzero(~same_site | restart)][segment - 1]
    in_warmup = np.isin(segment, segment[restart]) & (timestamps - segment_start < warmup)
    latched = np.zeros(len(anomalous), dtype=bool)
    restarts = np.flatnonzero(restart)
    for _ in range(len(restarts) + 1):
        alarm = _count_alarms(anomalous & ~(in_warmup & ~latched), sorted_codes, k, n)
        entered_in_alarm = restarts[alarm[restarts - 1]]
        now_latched = np.isin(segment, segment[entered_in_alarm])
        if (now_latched == latched).all():
            return alarm
        latched = now_latched
    return alarm


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


def score_rows(
    rows: pd.DataFrame, loaded: LoadedModel, record: ThresholdRecord, channels: list[str]
) -> pd.DataFrame:
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


def _finish(scores: pd.DataFrame, k: int, n: int, warmup_h: float = 0.0) -> pd.DataFrame:
    """Add the debounced ``alarm`` column, order columns and rows (timestamp, site)."""
    scores = scores.assign(alarm=debounce_alarms(scores, k, n, warmup_h))
    return scores[list(SCORE_COLUMNS)].sort_values(["timestamp", "site"], kind="stable").reset_index(drop=True)


def score_dataset(
    dataset_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    alarm_k: int = 3,
    alarm_n: int = 3,
    since: datetime | None = None,
    warmup_h: float = 0.0,
) -> pd.DataFrame:
    """Score every valid snapshot of ``dataset_dir`` with the calibrated model in ``model_dir`` (nothing written).

    With ``since``, only snapshots at or after that time are returned, but the ``alarm_n − 1`` snapshots before it
    (per site) are scored too, so the debounce sees its full window (with ``warmup_h``, the warm-up of a stop just
    before ``since`` is not seen: score the whole dataset). Columns: :data:`SCORE_COLUMNS`.
    """
    dataset_dir = Path(dataset_dir)
    loaded = load_model(model_dir)
    record = load_threshold(model_dir)
    features = load_features(dataset_dir)
    if since is not None:
        since = pd.Timestamp(since)
        since = since.tz_convert("UTC").tz_localize(None) if since.tzinfo is not None else since  # naive UTC
        later = features["timestamp"] >= since
        context = features[~later].groupby("site", observed=True).tail(alarm_n - 1)
        features = pd.concat([context, features[later]]).sort_values(["timestamp", "site"], kind="stable")
    scores = _finish(score_rows(features, loaded, record, _dataset_channels(dataset_dir)), alarm_k, alarm_n, warmup_h)
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
    alarm_k: int = 3,
    alarm_n: int = 3,
    warmup_h: float = 0.0,
) -> ScoreUpdate:
    """Incrementally bring ``out`` (default ``<dataset_dir>/scores.parquet``) up to date and return it.

    Rows already scored by this model version (same weights and threshold) are reused; only the other valid
    snapshots go through the model. Alarms are recomputed over the whole table (see the module docstring).
    """
    dataset_dir = Path(dataset_dir)
    out = Path(out) if out is not None else dataset_dir / SCORES_FILE
    loaded = load_model(model_dir)
    record = load_threshold(model_dir)
    features = load_features(dataset_dir)
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
    scores = _finish(combined, alarm_k, alarm_n, warmup_h)
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
