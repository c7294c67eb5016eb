"""Which rows are healthy, i.e. what a (re)training may learn as normal: the healthy-period policy.

Three policies (parameter ``healthy`` of the pipeline):

``first-fraction``
    the earliest ``train_fraction`` of each site's snapshots (:class:`~bearing_core.inputs.InputConfig`). Simple, but
    on a history that keeps growing it slides forward: after months it covers whatever the bearings did, a fault
    included, and a retrain then learns the fault as normal (it is *absorbed*).
``until``
    everything up to ``train_until``: fixed, has to be moved by hand.
``rolling``
    each bearing (a site of the per-bearing layout) trains on its rows that the current champion scored normal
    (not part of an alarm), within the last ``window_days`` of data, and at least ``guard_h`` older than both the
    bearing's first alarm (not cleared) and the latest data. So a bearing in alarm contributes no new training rows
    until an operator clears its alarm (:func:`clear_alarm`), and a defect developing in the last ``guard_h`` hours
    before its alarm is never learned. "Normal" is "not in alarm", not "under the threshold": dropping every
    snapshot over the threshold would lower the next threshold ('max' of the healthy statistic) night after night.
    The rows of the latest ``guard_h`` hours wait one more guard band: an alarm on them may still come.
    Without a champion (or its scores) there is nothing to judge rows by: the caller falls back to first-fraction.

Times are data times (snapshot timestamps, naive UTC), not wall-clock: a replay of 2003 data behaves as live data.

Clearances (``<dataset>/alarm_clearances.json``, written atomically by ``bearing alarms clear SITE/BEARING``):
one entry per bearing, ``{"until": <data time>, "by": <who>, "at": <UTC wall time>, "note": ...}``; alarms of that
bearing at or before ``until`` are forgotten by the rolling policy.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.io import write_json_atomic, write_parquet_atomic

HealthyPolicyName = Literal["first-fraction", "until", "rolling"]
HEALTHY_POLICIES: tuple[str, ...] = ("first-fraction", "until", "rolling")
CLEARANCES_FILE = "alarm_clearances.json"
HEALTHY_DIR = "healthy"
ROLLING_FILE = "rolling.parquet"
"""``<dataset>/healthy/rolling.parquet``: the rows the rolling policy chose (columns ``timestamp, site, path``)."""


class HealthyPolicy(BaseModel):
    """The healthy-period policy and the rolling policy's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: HealthyPolicyName = Field("first-fraction", description="first-fraction | until | rolling")
    guard_h: float = Field(24.0, ge=0, description="rolling: rows must be this much older than an alarm / the data end")
    window_days: float = Field(30.0, gt=0, description="rolling: only rows of the last window_days of data")


def _naive(stamp: Any) -> pd.Timestamp:
    ts = pd.Timestamp(stamp)
    return ts.tz_convert(UTC).tz_localize(None) if ts.tzinfo is not None else ts


def rolling_selection(
    scores: pd.DataFrame,
    end: Any,
    clearances: Mapping[str, Any] | None = None,
    guard_h: float = 24.0,
    window_days: float = 30.0,
) -> pd.DataFrame:
    """The rows the rolling policy trains on, from the champion's ``scores`` (columns timestamp, site, path, alarm).

    ``end`` is the latest data time; ``clearances`` maps a site (bearing) to the data time up to which its alarms
    are cleared. Returns ``timestamp, site, path`` of the chosen rows, sorted by (timestamp, site). Vectorised.
    """
    missing = [c for c in ("timestamp", "site", "path", "alarm") if c not in scores.columns]
    if missing:
        raise ValueError(f"rolling healthy policy: scores lack columns {missing}")
    end = np.datetime64(_naive(end), "ns")
    site = scores["site"].astype(str)
    stamp = pd.to_datetime(scores["timestamp"]).to_numpy("datetime64[ns]")
    alarm = scores["alarm"].to_numpy(dtype=bool)
    codes, sites = pd.factorize(site)
    cleared_map = {str(k): np.datetime64(_naive(v), "ns") for k, v in (clearances or {}).items()}
    cleared = np.array([cleared_map.get(s, np.datetime64("NaT")) for s in sites], dtype="datetime64[ns]")[codes]
    live_alarm = alarm & ~(stamp <= cleared)  # NaT (no clearance) compares False: the alarm stays
    first_alarm = np.full(len(sites), end)  # per site: its first live alarm, at most the data end
    np.minimum.at(first_alarm, codes[live_alarm], stamp[live_alarm])
    cutoff = first_alarm[codes] - np.timedelta64(int(guard_h * 3600e9), "ns")
    since = end - np.timedelta64(int(window_days * 86400e9), "ns")
    keep = ~alarm & (stamp >= since) & (stamp < cutoff)
    chosen = pd.DataFrame(
        {"timestamp": stamp[keep], "site": site.to_numpy()[keep], "path": scores["path"].astype(str).to_numpy()[keep]}
    )
    return chosen.sort_values(["timestamp", "site"], kind="stable").reset_index(drop=True)


def write_selection(dataset_dir: str | os.PathLike[str], chosen: pd.DataFrame) -> Path:
    """Write the rolling selection to ``<dataset_dir>/healthy/rolling.parquet`` atomically; return its path."""
    path = Path(dataset_dir) / HEALTHY_DIR / ROLLING_FILE
    path.parent.mkdir(exist_ok=True)
    write_parquet_atomic(path, chosen[["timestamp", "site", "path"]].reset_index(drop=True))
    return path


def read_selection(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A selection written by :func:`write_selection` (clear error when it is not one)."""
    frame = pd.read_parquet(path)
    missing = [c for c in ("timestamp", "site", "path") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a healthy-rows selection, missing columns {missing}")
    return frame


def selection_mask(rows: pd.DataFrame, selection: pd.DataFrame) -> np.ndarray:
    """Which of ``rows`` (a ``path`` column) the selection names."""
    return rows["path"].astype(str).isin(selection["path"].astype(str)).to_numpy()


# ------------------------------------------------------------------------------------------------ clearances


def load_clearances(dataset_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The clearances of ``dataset_dir`` (``{}`` when there is no file), keyed by site (``SITE/BEARING``)."""
    path = Path(dataset_dir) / CLEARANCES_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "until" in v for v in data.values()):
        raise ValueError(f"{path}: expected {{SITE/BEARING: {{until, by, at}}}}")
    return data


def cleared_until(clearances: Mapping[str, Mapping[str, Any]]) -> dict[str, pd.Timestamp]:
    """Site -> data time up to which its alarms are cleared (the form :func:`rolling_selection` takes)."""
    return {site: _naive(entry["until"]) for site, entry in clearances.items()}


def clear_alarm(
    dataset_dir: str | os.PathLike[str],
    site: str,
    until: Any,
    by: str | None = None,
    note: str = "",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Record that ``site``'s alarms up to data time ``until`` are dealt with (atomic rewrite of the clearances
    file; the previous clearance of the site is replaced). Returns the entry written."""
    entry = {
        "until": _naive(until).isoformat(),
        "by": by or getpass.getuser(),
        "at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "note": note,
    }
    clearances = load_clearances(dataset_dir)
    clearances[site] = entry
    write_json_atomic(Path(dataset_dir) / CLEARANCES_FILE, dict(sorted(clearances.items())))
    return entry


def rolling_for_dataset(
    scores_path: str | os.PathLike[str],
    champion: str | None,
    end: Any,
    clearances_dir: str | os.PathLike[str],
    policy: HealthyPolicy,
) -> tuple[pd.DataFrame | None, str]:
    """The rolling selection from the champion's scores in ``scores_path`` (rows of other model versions ignored),
    or ``(None, why)`` when there is nothing to judge rows by (no champion, or it has scored nothing yet): the
    caller then falls back to first-fraction and logs ``why``. ``clearances_dir`` holds ``alarm_clearances.json``.
    """
    if champion is None:
        return None, "rolling healthy policy: no champion yet, falling back to first-fraction"
    scores = pd.read_parquet(scores_path) if Path(scores_path).is_file() else None
    if scores is not None and "model_version" in scores.columns:
        scores = scores[scores["model_version"].astype(str) == champion]
    if scores is None or scores.empty:
        return None, (
            f"rolling healthy policy: the champion {champion} has scored nothing in {scores_path} yet, "
            "falling back to first-fraction"
        )
    chosen = rolling_selection(
        scores, end, cleared_until(load_clearances(clearances_dir)), policy.guard_h, policy.window_days
    )
    if chosen.empty:
        raise ValueError(
            f"rolling healthy policy: no row of {scores_path} qualifies (every bearing in alarm or "
            f"older than {policy.window_days:g} days): clear alarms (bearing alarms clear) or widen "
            "the window"
        )
    sites = scores["site"].astype(str)
    in_alarm = sorted(set(sites[scores["alarm"].to_numpy(bool)]))
    silent = sorted(set(sites) - set(chosen["site"]))
    return chosen, (
        f"rolling healthy policy: {len(chosen)} rows of {chosen['site'].nunique()} sites, scored normal by champion "
        f"{champion}, last {policy.window_days:g} days, {policy.guard_h:g} h guard; alarmed: "
        f"{', '.join(in_alarm) or 'none'}; no new rows: {', '.join(silent) or 'none'}"
    )
