"""When an anomalous score becomes an alarm: persistence over a duration, and a warm-up after stops.

A single snapshot over the threshold pages nobody. An alarm is raised at a snapshot when the site (in the
per-bearing layout: the bearing) has been over its threshold for ``persistence_h`` hours: at least ``fraction`` of
its snapshots in the window ``(t - persistence_h, t]`` are anomalous. The window is a *duration*, so the rule means
the same at a site that records every 5 minutes and at one that records every 30. A window that holds fewer
snapshots than the site's usual interval would put in it (a gap in the data) counts as that usual number: an alarm
needs ``persistence_h`` hours of evidence, never less.

Warm-up after a stop (``warmup_h`` > 0): when a site's acquisition resumes after a gap of at least ``warmup_h``
hours (the machine was stopped), its snapshots in the first ``warmup_h`` hours after the restart do not count
towards an alarm: a cold bearing's vibration level settles for hours after a long stop. ``score`` and
``is_anomaly`` are unchanged; only ``alarm`` is inhibited. A site already in alarm at its last snapshot before the
stop stays in alarm after the restart for as long as its snapshots are over the threshold, until its window holds
new evidence again (a restart does not clear a defect).

Defaults (:class:`AlarmConfig`) were chosen by the rule written in BENCHMARKS.md ("Alarm defaults"), on the demo
data only, before the real IMS runs were scored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field


class AlarmConfig(BaseModel):
    """How anomalous snapshots become an alarm (one definition for the CLI, the flows and the UI form)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    persistence_h: float = Field(
        3.0,
        gt=0,
        le=24 * 7,
        allow_inf_nan=False,
        title="Persistence (hours)",
        description="An alarm needs the score over the threshold for this long (a duration, whatever the interval)",
    )
    fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        allow_inf_nan=False,
        title="Fraction over threshold",
        description="Share of the snapshots in the persistence window that must be over the threshold",
    )
    warmup_h: float = Field(
        4.0,
        ge=0,
        le=24 * 7,
        allow_inf_nan=False,
        title="Warm-up after a stop (hours)",
        description="After a gap of at least this long, snapshots in the next warm-up hours do not count towards "
        "an alarm, unless the site was already in alarm; 0 = off",
    )

    def describe(self) -> str:
        """Short human form, e.g. ``80 % of 2 h over threshold, 4 h warm-up after stops``."""
        text = f"{self.fraction:.0%} of {self.persistence_h:g} h over threshold"
        return text + (f", {self.warmup_h:g} h warm-up after stops" if self.warmup_h else "")


def debounce_alarms(df: pd.DataFrame, cfg: AlarmConfig | None = None) -> np.ndarray:
    """Alarm flags aligned with ``df``'s rows (see the module docstring).

    ``df`` needs ``site``, ``timestamp`` and boolean ``is_anomaly``; rows may be in any order (they are ranked by
    timestamp within each site). Vectorised: one cumulative sum and one ``searchsorted`` over rows sorted by
    (site, timestamp); the warm-up adds one pass per restart at most.
    """
    cfg = cfg or AlarmConfig()
    size = len(df)
    if size == 0:
        return np.zeros(0, dtype=bool)
    site_codes = pd.factorize(df["site"].astype(str))[0]
    timestamps = df["timestamp"].to_numpy().astype("datetime64[us]").astype(np.int64)
    order = np.lexsort((timestamps, site_codes))
    anomalous = df["is_anomaly"].to_numpy(dtype=bool)[order]
    window = _Windows(site_codes[order], timestamps[order], cfg)
    alarm_sorted = window.alarms(anomalous) if cfg.warmup_h <= 0 else _inhibit_warmup(anomalous, window, cfg)
    alarm = np.empty(size, dtype=bool)
    alarm[order] = alarm_sorted
    return alarm


class _Windows:
    """For rows sorted by (site, time): where each row's persistence window starts, and how many anomalous rows it
    needs."""

    def __init__(self, codes: np.ndarray, times_us: np.ndarray, cfg: AlarmConfig) -> None:
        self.codes, self.times = codes, times_us
        size = len(codes)
        same_site = np.r_[False, codes[1:] == codes[:-1]]
        persistence = int(round(cfg.persistence_h * 3600e6))
        # one monotonic key over (site, time): sites are spaced further apart than any window reaches
        span = int(times_us.max() - times_us.min()) + persistence + 1
        key = (codes.astype(np.int64) - codes.min()) * span + (times_us - times_us.min())
        self.start = np.searchsorted(key, key - persistence, side="right")
        in_window = np.arange(size) - self.start + 1
        gaps = np.where(same_site, np.diff(times_us, prepend=times_us[0]), np.nan)
        interval = pd.Series(gaps).groupby(codes).transform("median").to_numpy()  # each site's usual interval
        usual = np.where(
            np.isfinite(interval) & (interval > 0), np.rint(persistence / np.where(interval > 0, interval, 1)), 1
        )
        self.needed = np.ceil(cfg.fraction * np.maximum(in_window, np.maximum(usual, 1)) - 1e-9).astype(np.int64)
        self.same_site = same_site

    def alarms(self, anomalous: np.ndarray) -> np.ndarray:
        cumulative = np.concatenate([[0], np.cumsum(anomalous.astype(np.int64))])
        count = cumulative[np.arange(1, len(anomalous) + 1)] - cumulative[self.start]
        return count >= self.needed


def _inhibit_warmup(anomalous: np.ndarray, window: _Windows, cfg: AlarmConfig) -> np.ndarray:
    """Alarms with the warm-up rows after each stop (gap >= ``warmup_h``) not counting, except after a stop the site
    entered in alarm. A latched stop can only add alarms, so the fixed point is reached by re-counting at most once
    per stop."""
    warmup = int(round(cfg.warmup_h * 3600e6))
    carry = max(warmup, int(round(cfg.persistence_h * 3600e6)))  # how long a latched alarm rides on anomalies alone
    times, same_site = window.times, window.same_site
    gap = np.r_[0, np.diff(times)]
    restart = same_site & (gap >= warmup)
    if not restart.any():
        return window.alarms(anomalous)
    segment = np.cumsum(~same_site | restart)  # one id per (site, run between stops)
    segment_start = times[np.flatnonzero(~same_site | restart)][segment - 1]
    after_restart = np.isin(segment, segment[restart])
    in_warmup = after_restart & (times - segment_start < warmup)
    riding = after_restart & (times - segment_start < carry)
    latched = np.zeros(len(anomalous), dtype=bool)
    restarts = np.flatnonzero(restart)
    alarm = window.alarms(anomalous & ~in_warmup)
    for _ in range(len(restarts) + 1):
        entered_in_alarm = restarts[alarm[restarts - 1]]
        now_latched = np.isin(segment, segment[entered_in_alarm])
        if (now_latched == latched).all():
            return alarm
        latched = now_latched
        alarm = window.alarms(anomalous & ~(in_warmup & ~latched)) | (latched & riding & anomalous)
    return alarm


def window_statistic(df: pd.DataFrame, errors: np.ndarray, cfg: AlarmConfig) -> np.ndarray:
    """What the alarm rule compares with the threshold, per row: the level that at least ``cfg.fraction`` of the
    site's snapshots in the persistence window ending at the row exceed (the ``1 - fraction`` quantile of the
    window's errors, lower interpolation). NaN where the window does not hold the evidence an alarm needs (fewer
    snapshots than the site's usual interval puts in it) or where the row is in a warm-up after a stop.

    A site whose rows span less than one window (a short calibration holdout) gives one value: the same quantile over
    all its settled rows. A threshold calibrated as a quantile of this statistic on healthy rows is one the rule would
    cross on healthy
    data that rarely: a burst shorter than the persistence, or a restart transient inside the warm-up, cannot set it.
    ``df`` needs ``site`` and ``timestamp``; ``errors`` is aligned with its rows.
    """
    out = np.full(len(df), np.nan)
    if len(df) == 0:
        return out
    frame = pd.DataFrame(
        {
            "site": df["site"].astype(str).to_numpy(),
            "error": np.asarray(errors, dtype=np.float64),
            "timestamp": pd.to_datetime(df["timestamp"]).to_numpy(),
            "row": np.arange(len(df)),
        }
    )
    window = f"{int(round(cfg.persistence_h * 3600))}s"
    for _, part in frame.sort_values(["site", "timestamp"], kind="stable").groupby("site", sort=False):
        series = part.set_index("timestamp")["error"]
        rolling = series.rolling(window)
        stat = rolling.quantile(1 - cfg.fraction, interpolation="lower").to_numpy().copy()
        count = rolling.count().to_numpy()
        gaps = np.diff(part["timestamp"].to_numpy()).astype("timedelta64[s]").astype(np.float64)
        usual = float(np.median(gaps)) if len(gaps) else np.nan
        needed = max(1.0, round(cfg.persistence_h * 3600 / usual)) if usual > 0 else 1.0
        valid = count >= np.ceil(cfg.fraction * needed - 1e-9)
        if cfg.warmup_h > 0 and len(gaps):
            restart = np.r_[False, gaps >= cfg.warmup_h * 3600]
            seconds = (part["timestamp"].to_numpy() - part["timestamp"].to_numpy()[0]).astype("timedelta64[s]")
            seconds = seconds.astype(np.float64)
            segment_start = np.maximum.accumulate(np.where(restart, seconds, -np.inf))
            valid &= ~(np.isfinite(segment_start) & (seconds - segment_start < cfg.warmup_h * 3600))
        settled = np.ones(len(part), dtype=bool)
        if cfg.warmup_h > 0 and len(gaps):
            settled = ~(np.isfinite(segment_start) & (seconds - segment_start < cfg.warmup_h * 3600))
        if not valid.any() and settled.any():  # the site's rows span less than one window: they are the window
            last = np.flatnonzero(settled)[-1]
            valid[last] = True
            stat[last] = np.quantile(part["error"].to_numpy()[settled], 1 - cfg.fraction, method="lower")
        out[part["row"].to_numpy()] = np.where(valid, stat, np.nan)
    return out
