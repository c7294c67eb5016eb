"""Detection quality of a scores table against known failures: when did the alarm fire, how early, how often wrongly.

Vocabulary (all times naive UTC, like the IMS file names):

* **healthy period** — snapshots at or before ``healthy_until`` when given, else strictly before ``onset``, else
  (no failure either: a healthy site) every snapshot. Any alarm there is a false alarm.
* **detection window** — after the healthy period (at or after ``onset`` / after ``healthy_until``) and at or
  before ``failure_time``. The first alarm in it is *the* detection; ``lead_time_hours = failure − first alarm``.
* **alarm events** — runs of consecutive alarm snapshots of one site; a run counts once. The false-alarm rate is
  false alarm events per day of healthy period (its time span, first to last healthy snapshot).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.synthetic import GroundTruth


class DetectionReport(BaseModel):
    """Detection numbers of one scores series (one site, or several evaluated together)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    snapshots: int = Field(..., description="Scored snapshots evaluated")
    failure_time: datetime | None = Field(None, description="Known failure time (None: healthy series)")
    healthy_until: datetime | None = Field(None, description="End of the known healthy period, if given")
    onset: datetime | None = Field(None, description="Known defect onset, if given")
    healthy_snapshots: int = Field(..., description="Snapshots in the healthy period")
    healthy_days: float = Field(..., description="Time span of the healthy period, days")
    false_alarm_snapshots: int = Field(..., description="Alarm snapshots in the healthy period")
    false_alarm_events: int = Field(
        ..., description="Alarm events (runs of alarm snapshots) starting in the healthy period"
    )
    false_alarm_rate_per_day: float | None = Field(
        None, description="False alarm events per healthy day (None when the healthy period spans no time)"
    )
    false_anomaly_snapshots: int = Field(
        ..., description="Snapshots over threshold in the healthy period (before debounce)"
    )
    first_anomaly_time: datetime | None = Field(
        None, description="First snapshot over threshold in the detection window"
    )
    first_alarm_time: datetime | None = Field(None, description="First alarm in the detection window")
    first_alarm_file: str | None = Field(None, description="File of the first alarm in the detection window")
    first_alarm_channel: str | None = Field(None, description="top_channel at the first alarm in the detection window")
    detected: bool = Field(..., description="An alarm fired in the detection window")
    lead_time_hours: float | None = Field(None, description="failure_time − first_alarm_time, hours")
    delay_after_onset_hours: float | None = Field(None, description="first_alarm_time − onset, hours")

    def lines(self) -> list[str]:
        """Human-readable summary lines."""

        def fmt(value: object) -> str:
            return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

        return [
            f"snapshots: {self.snapshots} (healthy period: {self.healthy_snapshots}, {self.healthy_days:.2f} days)",
            f"false alarms in healthy period: {self.false_alarm_snapshots} snapshots, "
            f"{self.false_alarm_events} events, "
            f"{fmt(self.false_alarm_rate_per_day)} per day (anomalies before debounce: {self.false_anomaly_snapshots})",
            f"first anomaly: {fmt(self.first_anomaly_time)}",
            f"first alarm:   {fmt(self.first_alarm_time)} file {fmt(self.first_alarm_file)} "
            f"channel {fmt(self.first_alarm_channel)}",
            f"detected: {self.detected}; lead time before failure: {fmt(self.lead_time_hours)} h; "
            f"delay after onset: {fmt(self.delay_after_onset_hours)} h",
        ]


def _ts(value: datetime | str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def _py(value: pd.Timestamp | None) -> datetime | None:
    return None if value is None or pd.isna(value) else value.to_pydatetime()


def _alarm_event_starts(df: pd.DataFrame) -> np.ndarray:
    """Boolean mask of rows (``df`` sorted by site, timestamp) that start a run of alarms within their site."""
    alarm = df["alarm"].to_numpy(dtype=bool)
    site = df["site"].astype(str).to_numpy()
    previous_alarm = np.r_[False, alarm[:-1]] & np.r_[False, site[1:] == site[:-1]]
    return alarm & ~previous_alarm


def evaluate_detection(
    scores_df: pd.DataFrame,
    failure_time: datetime | str | None,
    healthy_until: datetime | str | None = None,
    onset: datetime | str | None = None,
) -> DetectionReport:
    """Detection numbers of ``scores_df`` (columns timestamp, site, is_anomaly, alarm, file, top_channel).

    See the module docstring for the definitions. ``failure_time=None`` evaluates a healthy series (every
    snapshot is in the healthy period, unless ``healthy_until``/``onset`` say otherwise).
    """
    missing = [c for c in ("timestamp", "site", "is_anomaly", "alarm") if c not in scores_df.columns]
    if missing:
        raise ValueError(f"scores table is missing columns {missing}")
    failure, until, onset_ts = _ts(failure_time), _ts(healthy_until), _ts(onset)
    df = scores_df.assign(site=scores_df["site"].astype(str)).sort_values(["site", "timestamp"], kind="stable")
    df = df.reset_index(drop=True)
    ts = pd.to_datetime(df["timestamp"])
    if until is not None:
        healthy = (ts <= until).to_numpy()
    elif onset_ts is not None:
        healthy = (ts < onset_ts).to_numpy()
    elif failure is None:
        healthy = np.ones(len(df), dtype=bool)
    else:
        healthy = np.zeros(len(df), dtype=bool)
    window = ~healthy & ((ts <= failure).to_numpy() if failure is not None else True)
    alarm = df["alarm"].to_numpy(dtype=bool)
    anomaly = df["is_anomaly"].to_numpy(dtype=bool)
    starts = _alarm_event_starts(df)
    healthy_ts = ts[healthy]
    healthy_days = (healthy_ts.max() - healthy_ts.min()).total_seconds() / 86400 if len(healthy_ts) else 0.0
    events = int((starts & healthy).sum())

    def first(mask: np.ndarray) -> pd.Series | None:
        hits = df[mask]
        return hits.loc[pd.to_datetime(hits["timestamp"]).idxmin()] if len(hits) else None

    first_alarm = first(alarm & window)
    first_anomaly = first(anomaly & window)
    alarm_time = _ts(first_alarm["timestamp"]) if first_alarm is not None else None
    channel = str(first_alarm["top_channel"]) if first_alarm is not None and "top_channel" in df else None
    lead = (failure - alarm_time).total_seconds() / 3600 if alarm_time is not None and failure is not None else None
    return DetectionReport(
        snapshots=len(df),
        failure_time=_py(failure),
        healthy_until=_py(until),
        onset=_py(onset_ts),
        healthy_snapshots=int(healthy.sum()),
        healthy_days=float(healthy_days),
        false_alarm_snapshots=int((alarm & healthy).sum()),
        false_alarm_events=events,
        false_alarm_rate_per_day=events / healthy_days if healthy_days > 0 else None,
        false_anomaly_snapshots=int((anomaly & healthy).sum()),
        first_anomaly_time=_py(_ts(first_anomaly["timestamp"])) if first_anomaly is not None else None,
        first_alarm_time=_py(alarm_time),
        first_alarm_file=str(first_alarm["file"]) if first_alarm is not None and "file" in df else None,
        first_alarm_channel=channel,
        detected=alarm_time is not None,
        lead_time_hours=lead,
        delay_after_onset_hours=(
            (alarm_time - onset_ts).total_seconds() / 3600 if alarm_time is not None and onset_ts is not None else None
        ),
    )


def evaluate_against_ground_truth(scores_df: pd.DataFrame, truth: GroundTruth) -> pd.DataFrame:
    """One row per ground-truth site: faulty sites' onset, failure, first alarm, detection and lead time; every
    site's false alarms (before onset, or anywhere on a healthy site). Sites missing from ``scores_df`` are
    reported with 0 snapshots."""
    rows = []
    for site, site_truth in sorted(truth.sites.items()):
        part = scores_df[scores_df["site"].astype(str) == site]
        report = evaluate_detection(part, site_truth.failure if site_truth.faulty else None, onset=site_truth.onset)
        rows.append(
            {
                "site": site,
                "faulty": site_truth.faulty,
                "bearing": site_truth.bearing or "",
                "defect": site_truth.defect or "",
                "snapshots": report.snapshots,
                "onset": site_truth.onset,
                "failure": site_truth.failure,
                "first_alarm": report.first_alarm_time,
                "first_alarm_channel": report.first_alarm_channel or "",
                "detected_after_onset": report.detected if site_truth.faulty else False,
                "correct_bearing": bool(site_truth.faulty and report.first_alarm_channel in set(site_truth.channels)),
                "delay_after_onset_hours": report.delay_after_onset_hours,
                "lead_time_hours": report.lead_time_hours,
                "false_alarm_snapshots": report.false_alarm_snapshots,
                "false_alarm_events": report.false_alarm_events,
            }
        )
    return pd.DataFrame(rows)


def plot_scores(
    scores_df: pd.DataFrame,
    threshold: float | None,
    out_png: str | os.PathLike[str],
    onset: datetime | Mapping[str, datetime | None] | None = None,
    failure: datetime | Mapping[str, datetime | None] | None = None,
    title: str = "Anomaly score",
) -> Path:
    """One panel per site: score over time (log y), threshold line, alarm snapshots, known onset/failure lines.

    ``threshold=None`` draws each row's own ``threshold`` column (per-site thresholds); ``onset`` and ``failure``
    are one time for every panel or a mapping ``site → time``. The PNG is written atomically.
    """
    from bearing_core.plotting import pyplot, save_png

    plt = pyplot()
    sites = sorted(scores_df["site"].astype(str).unique())
    if not sites:
        raise ValueError("nothing to plot: the scores table is empty")
    fig, axes = plt.subplots(len(sites), 1, figsize=(10, 2.6 * len(sites) + 0.6), sharex=True, squeeze=False)

    def for_site(value: datetime | Mapping[str, datetime | None] | None, site: str) -> datetime | None:
        return value.get(site) if isinstance(value, Mapping) else value

    for ax, site in zip(axes[:, 0], sites):
        part = scores_df[scores_df["site"].astype(str) == site].sort_values("timestamp")
        ts = pd.to_datetime(part["timestamp"])
        floor = np.finfo(float).tiny
        ax.plot(ts, np.maximum(part["score"], floor), lw=0.9, color="tab:blue", label="score (reconstruction MSE)")
        level = part["threshold"] if threshold is None else np.full(len(part), threshold)
        ax.plot(ts, level, ls="--", lw=1.0, color="black", label="threshold")
        alarms = part["alarm"].to_numpy(dtype=bool)
        ax.scatter(ts[alarms], np.maximum(part["score"][alarms], floor), s=12, color="tab:red", zorder=3, label="alarm")
        site_onset, site_failure = for_site(onset, site), for_site(failure, site)
        if site_onset is not None:
            ax.axvline(pd.Timestamp(site_onset), color="tab:orange", lw=1.2, label="defect onset")
        if site_failure is not None:
            ax.axvline(pd.Timestamp(site_failure), color="tab:purple", lw=1.2, label="failure")
        ax.set_yscale("log")
        ax.set_ylabel("MSE (scaled units)")
        ax.set_title(site, fontsize=9, loc="left")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("time (UTC)")
    fig.suptitle(title)
    fig.autofmt_xdate()
    fig.tight_layout()
    return save_png(fig, out_png)
