"""Alarm threshold calibration: from healthy reconstruction errors to one number saved with the model.

A snapshot's anomaly score is its reconstruction error: the MSE over the model's inputs in *scaled* units
(:func:`bearing_core.training.reconstruction_errors`). The threshold is a high point of the score distribution on
healthy data the model never trained on — the partition's ``split == "holdout"`` rows of every client.

Two methods (:class:`ThresholdConfig`):

``quantile``
    the ``q`` quantile of the healthy errors (``np.quantile``, linear interpolation), e.g. q = 0.995;
``mean_kstd``
    ``mean + k·std`` of the healthy errors (population std, ``ddof=0``).

Federated calibration: no per-snapshot error leaves a client. Each client summarises its errors as an
:class:`ErrorSketch` (fixed log-spaced histogram + count, mean/M2, min, max), the server merges the sketches
(:func:`merge_sketches`) and derives the threshold (:func:`threshold_from_sketch`). ``mean_kstd`` is exact;
``quantile`` is exact up to the histogram's bin width (see :class:`ErrorSketch`). :func:`calibrate_from_clients`
runs exactly that recipe locally (each client file → sketch → merge → threshold) and writes ``threshold.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.fingerprint import sha256_file
from bearing_core.io import write_json_atomic
from bearing_core.model_io import CONFIG_FILE, WEIGHTS_FILE, LoadedModel, load_model
from bearing_core.partition.writer import SPLIT_HOLDOUT, load_manifest, read_client

THRESHOLD_FILE = "threshold.json"
DEFAULT_LOG10_MIN = -8.0
DEFAULT_LOG10_MAX = 4.0
DEFAULT_BINS_PER_DECADE = 100
_META_FIELDS = ("log10_min", "log10_max", "bins_per_decade", "count", "mean", "m2", "min", "max")


class ThresholdConfig(BaseModel):
    """How the alarm threshold is derived from healthy calibration errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["quantile", "mean_kstd", "max"] = Field(
        "quantile",
        description="'quantile': q-quantile of healthy errors; 'mean_kstd': mean + k·std; 'max': the "
        "largest (with the alarm rule's statistic: the most the healthy period ever sustained)",
    )
    quantile: float = Field(0.995, gt=0, lt=1, description="Quantile q for method 'quantile'")
    margin: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Margin added to the threshold in units of the inputs' healthy standard "
        "deviation: threshold = (sqrt(t) + margin)^2, t the method's value (errors are mean squared standardised "
        "deviations)",
    )
    k: float = Field(3.0, gt=0, description="Number of standard deviations above the mean for method 'mean_kstd'")
    per_site: bool = Field(
        False, description="Also derive one threshold per site (on top of the global model) where data allow"
    )
    min_site_rows: int = Field(
        20, ge=1, description="Calibration rows a site needs for its own threshold (else it uses the global one)"
    )
    bins_per_decade: int = Field(
        DEFAULT_BINS_PER_DECADE, ge=1, le=10_000, description="Resolution of the federated error histogram"
    )

    def describe(self) -> str:
        """Short human form, e.g. ``quantile q=0.995`` or ``mean+3σ``."""
        if self.method == "max":
            base = "max of the healthy period"
        else:
            base = f"quantile q={self.quantile:g}" if self.method == "quantile" else f"mean+{self.k:g}σ"
        return f"{base}, margin {self.margin:g} std" if self.margin else base


PIPELINE_MARGIN = 0.5
"""The pipeline's default threshold margin (``bearing run --threshold-margin``), chosen by the rule in BENCHMARKS.md
("Pipeline detection defaults", amendment 3); the library's own default is no margin."""


@dataclass(frozen=True)
class ErrorSketch:
    """Mergeable summary of a set of non-negative errors: log-spaced histogram + exact moments and extremes.

    Bins: ``bins_per_decade`` (B) equal-width bins per decade in log10 space over ``[10**log10_min, 10**log10_max)``
    (default 1e-8 .. 1e4, B = 100 → 1,200 bins), plus an underflow bin (errors below the range, zeros included)
    and an overflow bin. ``counts`` has ``n_bins + 2`` entries: ``[underflow, bin_0 .. bin_{n-1}, overflow]``.
    Every sketch with the same range and B has the same edges, so merging is adding counts.

    Relative error bound: an error ``x`` inside the range is represented by the geometric centre of its bin,
    which is within a factor ``10**(1/(2B))`` of ``x`` (±1.16 % for B = 100); estimates are also clamped to the
    exact ``[min, max]``. :meth:`quantile` interpolates linearly between the estimates of the two order statistics
    ``np.quantile`` interpolates between, so its result ``Q̂`` satisfies
    ``Q / 10**(1/(2B)) <= Q̂ <= Q · 10**(1/(2B))`` for the pooled ``Q = np.quantile(errors, q)``, provided those
    two order statistics lie inside the histogram range (:attr:`relative_error_bound`).

    Moments are exact: ``count``, ``mean`` and ``m2`` (sum of squared deviations from the mean) merge with the
    pairwise update of Chan et al., so :meth:`mean_kstd` equals ``np.mean + k·np.std`` of the pooled errors up to
    floating-point rounding.
    """

    counts: np.ndarray
    count: int
    mean: float
    m2: float
    min: float
    max: float
    log10_min: float = DEFAULT_LOG10_MIN
    log10_max: float = DEFAULT_LOG10_MAX
    bins_per_decade: int = DEFAULT_BINS_PER_DECADE

    def __post_init__(self) -> None:
        if self.log10_max <= self.log10_min:
            raise ValueError(f"log10_max ({self.log10_max}) must exceed log10_min ({self.log10_min})")
        if self.counts.shape != (self.n_bins + 2,):
            raise ValueError(f"counts must have shape ({self.n_bins + 2},), got {self.counts.shape}")
        if int(self.counts.sum()) != self.count:
            raise ValueError(f"histogram holds {int(self.counts.sum())} errors but count is {self.count}")

    @property
    def n_bins(self) -> int:
        """Bins inside the range (without under/overflow)."""
        return int(round((self.log10_max - self.log10_min) * self.bins_per_decade))

    @property
    def relative_error_bound(self) -> float:
        """Largest relative error of :meth:`quantile` for errors inside the range: ``10**(1/(2B)) − 1``."""
        return 10 ** (1 / (2 * self.bins_per_decade)) - 1

    @property
    def std(self) -> float:
        """Population standard deviation of the summarised errors."""
        return math.sqrt(max(self.m2, 0.0) / self.count) if self.count else float("nan")

    @classmethod
    def empty(
        cls,
        log10_min: float = DEFAULT_LOG10_MIN,
        log10_max: float = DEFAULT_LOG10_MAX,
        bins_per_decade: int = DEFAULT_BINS_PER_DECADE,
    ) -> ErrorSketch:
        """The sketch of no errors (neutral element of :func:`merge_sketches`)."""
        n_bins = int(round((log10_max - log10_min) * bins_per_decade))
        return cls(
            counts=np.zeros(n_bins + 2, dtype=np.int64),
            count=0,
            mean=0.0,
            m2=0.0,
            min=math.inf,
            max=-math.inf,
            log10_min=log10_min,
            log10_max=log10_max,
            bins_per_decade=bins_per_decade,
        )

    @classmethod
    def from_errors(
        cls,
        errors: np.ndarray,
        log10_min: float = DEFAULT_LOG10_MIN,
        log10_max: float = DEFAULT_LOG10_MAX,
        bins_per_decade: int = DEFAULT_BINS_PER_DECADE,
    ) -> ErrorSketch:
        """Sketch of a 1-D array of finite, non-negative errors."""
        errors = np.asarray(errors, dtype=np.float64).ravel()
        if errors.size == 0:
            return cls.empty(log10_min, log10_max, bins_per_decade)
        if not np.isfinite(errors).all() or (errors < 0).any():
            raise ValueError("errors must be finite and >= 0")
        n_bins = int(round((log10_max - log10_min) * bins_per_decade))
        with np.errstate(divide="ignore"):
            position = (np.log10(errors) - log10_min) * bins_per_decade
        index = np.clip(np.floor(position), -1, n_bins).astype(np.int64) + 1  # -inf (zeros) → underflow
        counts = np.bincount(index, minlength=n_bins + 2).astype(np.int64)
        mean = float(errors.mean())
        return cls(
            counts=counts,
            count=int(errors.size),
            mean=mean,
            m2=float(np.sum((errors - mean) ** 2)),
            min=float(errors.min()),
            max=float(errors.max()),
            log10_min=log10_min,
            log10_max=log10_max,
            bins_per_decade=bins_per_decade,
        )

    def _compatible(self, other: ErrorSketch) -> None:
        mine = (self.log10_min, self.log10_max, self.bins_per_decade)
        theirs = (other.log10_min, other.log10_max, other.bins_per_decade)
        if mine != theirs:
            raise ValueError(
                f"cannot merge sketches with different bins (log10 min, max, bins/decade): {mine} vs {theirs}"
            )

    def merge(self, other: ErrorSketch) -> ErrorSketch:
        """The sketch of both sets of errors (exact for counts, moments and extremes)."""
        self._compatible(other)
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        return ErrorSketch(
            counts=self.counts + other.counts,
            count=n,
            mean=self.mean + delta * other.count / n,
            m2=self.m2 + other.m2 + delta * delta * self.count * other.count / n,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            log10_min=self.log10_min,
            log10_max=self.log10_max,
            bins_per_decade=self.bins_per_decade,
        )

    def _order_statistic(self, j: np.ndarray) -> np.ndarray:
        """Estimates of the ``j``-th smallest errors (0-based): geometric bin centres clamped to [min, max]."""
        cumulative = np.cumsum(self.counts)
        slot = np.searchsorted(cumulative, j, side="right")  # the bin holding the (j+1)-th error
        centre = 10 ** (self.log10_min + (slot - 1 + 0.5) / self.bins_per_decade)
        centre = np.where(slot == 0, self.min, np.where(slot == self.n_bins + 1, self.max, centre))
        return np.clip(centre, self.min, self.max)

    def quantile(self, q: float) -> float:
        """Estimate of ``np.quantile(errors, q)`` (linear method) within :attr:`relative_error_bound`."""
        if self.count == 0:
            raise ValueError("quantile of an empty sketch")
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}")
        position = (self.count - 1) * q
        lower = math.floor(position)
        upper = min(lower + 1, self.count - 1)
        low_value, high_value = self._order_statistic(np.array([lower, upper]))
        return float(low_value + (position - lower) * (high_value - low_value))

    def mean_kstd(self, k: float) -> float:
        """``mean + k·std`` (population std) of the summarised errors; exact."""
        if self.count == 0:
            raise ValueError("mean_kstd of an empty sketch")
        return self.mean + k * self.std

    def to_arrays(self) -> list[np.ndarray]:
        """``[meta (float64, 8 values), counts (int64)]`` for a Flower ``ArrayRecord``.

        ``meta`` = log10_min, log10_max, bins_per_decade, count, mean, m2, min, max.
        """
        meta = np.array([getattr(self, name) for name in _META_FIELDS], dtype=np.float64)
        return [meta, np.asarray(self.counts, dtype=np.int64)]

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> ErrorSketch:
        """Inverse of :meth:`to_arrays`."""
        if len(arrays) != 2:
            raise ValueError(f"expected 2 arrays [meta, counts], got {len(arrays)}")
        meta = np.asarray(arrays[0], dtype=np.float64).ravel()
        if meta.size != len(_META_FIELDS):
            raise ValueError(f"meta must hold {len(_META_FIELDS)} values ({', '.join(_META_FIELDS)}), got {meta.size}")
        values = dict(zip(_META_FIELDS, meta.tolist()))
        return cls(
            counts=np.asarray(arrays[1], dtype=np.int64).copy(),
            count=int(values["count"]),
            mean=values["mean"],
            m2=values["m2"],
            min=values["min"],
            max=values["max"],
            log10_min=values["log10_min"],
            log10_max=values["log10_max"],
            bins_per_decade=int(values["bins_per_decade"]),
        )


def merge_sketches(sketches: Sequence[ErrorSketch]) -> ErrorSketch:
    """Merge the sketches of several clients (the server side of federated calibration)."""
    if not sketches:
        raise ValueError("merge_sketches needs at least one sketch")
    merged = sketches[0]
    for sketch in sketches[1:]:
        merged = merged.merge(sketch)
    return merged


def screen_sketches(
    sketches: Sequence[ErrorSketch], factor: float, q: float, caps: Sequence[int | None] | None = None
) -> list[str | None]:
    """Robust screening of the clients' calibration sketches before :func:`merge_sketches`: per sketch, why it is
    rejected, or None to keep it.

    * non-finite moments: rejected;
    * more errors than the client has holdout rows (its cap in ``caps``, see :func:`bearing_core.scaling.cap_counts`):
      rejected (a sketch's histogram cannot be re-weighted);
    * with ``factor`` > 0 and at least :data:`bearing_core.scaling.MIN_ROBUST_SITES` non-empty sketches left, mass
      far from the others': a median error more than ``factor`` times, or a ``q``-quantile (the tail, which sets
      the threshold) more than ``factor**2`` times, above or below the median over the sketches: rejected. A sketch
      whose mass sits beyond the others' would otherwise move the threshold alone (up: no alarm ever fires; down:
      alarms on healthy data). The tail gets the wider bound because honest sites differ most there: on the demo,
      a healthy site whose bearings have bursts has a 0.99-quantile of the alarm statistic 30x the sites' median
      (rejecting it lowered the threshold enough for 54 false alarm events on one seed); a poisoned sketch sits
      orders of magnitude further out.
    """
    from bearing_core.scaling import MIN_ROBUST_SITES, robust_median

    caps = list(caps) if caps is not None else [None] * len(sketches)
    notes: list[str | None] = []
    for sketch, cap in zip(sketches, caps, strict=True):
        if not all(math.isfinite(v) for v in (sketch.mean, sketch.m2)) or sketch.count < 0:
            notes.append("non-finite error sketch rejected")
        elif cap is not None and sketch.count > cap:
            notes.append(f"error sketch of {sketch.count} errors, more than its {cap} holdout rows: rejected")
        else:
            notes.append(None)
    live = [k for k, note in enumerate(notes) if note is None and sketches[k].count > 0]
    if factor <= 0 or len(live) < MIN_ROBUST_SITES:
        return notes
    tiny = np.finfo(np.float64).tiny
    stats = np.array([[max(sketches[k].quantile(0.5), tiny), max(sketches[k].quantile(q), tiny)] for k in live])
    ratio = stats / robust_median(stats)
    for row, k in enumerate(live):
        for col, (what, bound) in enumerate((("median error", factor), (f"{q:g}-quantile", factor**2))):
            r = ratio[row, col]
            if r > bound or r < 1 / bound:
                notes[k] = (
                    f"error sketch rejected: its {what} {stats[row, col]:.3g} is {r:.3g} x the sites' "
                    f"median (bound {bound:g}x either way)"
                )
                break
    return notes


def with_margin(threshold: float, margin: float) -> float:
    """``(sqrt(threshold) + margin)^2``: ``threshold`` widened by ``margin`` standard deviations of the inputs.

    No margin returns ``threshold`` itself (sqrt then square can lose the last bit, and with method 'max' the healthy
    row that sets the threshold would then be over it)."""
    if margin == 0:
        return float(threshold)
    return float((np.sqrt(max(threshold, 0.0)) + margin) ** 2)


def threshold_from_sketch(sketch: ErrorSketch, cfg: ThresholdConfig) -> float:
    """The threshold ``cfg`` defines, from a (merged) sketch (its margin included)."""
    if sketch.count == 0:
        raise ValueError("no calibration errors: every client's holdout is empty")
    if cfg.method == "max":
        value = sketch.max
    else:
        value = sketch.quantile(cfg.quantile) if cfg.method == "quantile" else sketch.mean_kstd(cfg.k)
    return with_margin(value, cfg.margin)


def threshold_from_errors(errors: np.ndarray, cfg: ThresholdConfig) -> float:
    """The exact threshold of pooled errors (reference for the sketch; used where errors are local anyway)."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        raise ValueError("no calibration errors")
    if cfg.method == "max":
        value = float(errors.max())
    elif cfg.method == "quantile":
        value = float(np.quantile(errors, cfg.quantile))
    else:
        value = float(errors.mean() + cfg.k * errors.std())
    return with_margin(value, cfg.margin)


def snapshot_errors(loaded: LoadedModel, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row MSE and per-input squared error of raw (unscaled) input rows ``X``, in scaled units."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(loaded.input_columns):
        raise ValueError(f"expected rows of {len(loaded.input_columns)} inputs ({loaded.input_columns}), got {X.shape}")
    if len(X) == 0:
        return np.zeros(0), np.zeros((0, X.shape[1]))
    from bearing_core.training import reconstruction_errors  # torch: only when a model runs

    return reconstruction_errors(loaded.model, loaded.scaler.transform(X))


def client_error_sketch(
    loaded: LoadedModel, X_holdout: np.ndarray, bins_per_decade: int = DEFAULT_BINS_PER_DECADE
) -> ErrorSketch:
    """What a client sends for calibration: the sketch of its holdout rows' errors (raw input rows)."""
    errors, _ = snapshot_errors(loaded, X_holdout)
    return ErrorSketch.from_errors(errors, bins_per_decade=bins_per_decade)


class ThresholdRecord(BaseModel):
    """Contents of ``<model_dir>/threshold.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(..., gt=0, description="Global alarm threshold on the per-snapshot MSE (scaled units)")
    config: ThresholdConfig = Field(..., description="Method and parameters used")
    calibration_size: int = Field(..., ge=1, description="Healthy holdout snapshots the threshold was derived from")
    model_version: str = Field(..., description="Model the threshold belongs to (model directory name)")
    weights_sha256: str = Field(..., description="SHA-256 of the model's weights.pt")
    site_thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-site thresholds (sites with at least min_site_rows calibration rows)"
    )
    site_calibration_sizes: dict[str, int] = Field(default_factory=dict, description="Calibration rows per site")
    error_mean: float = Field(..., description="Mean healthy calibration error")
    error_std: float = Field(..., description="Std of healthy calibration errors")
    error_max: float = Field(..., description="Largest healthy calibration error")
    source: str = Field("", description="Where the calibration rows came from (e.g. a clients directory)")
    rejected_sketches: dict[str, str] = Field(
        default_factory=dict, description="Clients whose calibration sketch the server rejected, with the reason"
    )
    created: datetime = Field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def for_sites(self, sites: Sequence[str] | np.ndarray) -> np.ndarray:
        """The threshold to apply to each row of ``sites``: its site's own threshold, else the global one."""
        return (
            pd.Series(np.asarray(sites, dtype=object))
            .map(self.site_thresholds)
            .fillna(self.threshold)
            .to_numpy(dtype=np.float64)
        )


def save_threshold(
    model_dir: str | os.PathLike[str],
    sketch: ErrorSketch,
    cfg: ThresholdConfig,
    site_sketches: Mapping[str, ErrorSketch] | None = None,
    source: str = "",
    rejected_sketches: Mapping[str, str] | None = None,
) -> ThresholdRecord:
    """Derive the threshold(s) from merged sketches and write ``<model_dir>/threshold.json`` atomically.

    ``site_sketches`` (optional, used when ``cfg.per_site``) gives each site's merged sketch; sites with fewer than
    ``cfg.min_site_rows`` rows keep the global threshold.
    """
    model_dir = Path(model_dir)
    if not (model_dir / WEIGHTS_FILE).is_file() or not (model_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"not a model directory: {model_dir} (no {WEIGHTS_FILE} / {CONFIG_FILE})")
    threshold = threshold_from_sketch(sketch, cfg)
    site_thresholds: dict[str, float] = {}
    site_sizes: dict[str, int] = {}
    if cfg.per_site and site_sketches:
        for site, site_sketch in sorted(site_sketches.items()):
            site_sizes[site] = site_sketch.count
            if site_sketch.count >= cfg.min_site_rows:
                site_thresholds[site] = max(threshold_from_sketch(site_sketch, cfg), np.finfo(float).tiny)
    record = ThresholdRecord(
        threshold=max(threshold, np.finfo(float).tiny),
        config=cfg,
        calibration_size=sketch.count,
        model_version=model_dir.resolve().name,
        weights_sha256=sha256_file(model_dir / WEIGHTS_FILE),
        site_thresholds=site_thresholds,
        site_calibration_sizes=site_sizes,
        error_mean=sketch.mean,
        error_std=sketch.std,
        error_max=sketch.max,
        source=source,
        rejected_sketches=dict(rejected_sketches or {}),
    )
    write_json_atomic(model_dir / THRESHOLD_FILE, record.model_dump(mode="json"))
    return record


def load_threshold(model_dir: str | os.PathLike[str]) -> ThresholdRecord:
    """Read ``<model_dir>/threshold.json``; refuses a record calibrated for other weights."""
    model_dir = Path(model_dir)
    path = model_dir / THRESHOLD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: calibrate the model first (threshold.calibrate_from_clients)")
    record = ThresholdRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
    weights = model_dir / WEIGHTS_FILE
    if weights.is_file() and sha256_file(weights) != record.weights_sha256:
        raise ValueError(f"{path} was calibrated for other weights than {weights}: calibrate again")
    return record


def calibrate_from_clients(
    model_dir: str | os.PathLike[str], clients_dir: str | os.PathLike[str], cfg: ThresholdConfig | None = None
) -> ThresholdRecord:
    """Calibrate the model in ``model_dir`` on every client's holdout rows and save ``threshold.json``.

    Exactly the federated recipe, run locally: each client computes :func:`client_error_sketch` on its own
    ``split == "holdout"`` rows (never rows it trained on), the sketches are merged (:func:`merge_sketches`) and
    the threshold is derived (:func:`threshold_from_sketch`). With ``cfg.per_site`` each client also sketches its
    rows per site and the per-site sketches are merged across clients.
    """
    cfg = cfg or ThresholdConfig()
    loaded = load_model(model_dir)
    manifest = load_manifest(clients_dir)
    missing = [c for c in loaded.input_columns if c not in manifest.input_columns]
    if missing:
        raise ValueError(f"clients in {clients_dir} lack the model's input columns {missing}")
    client_sketches: list[ErrorSketch] = []
    site_sketches: dict[str, ErrorSketch] = {}
    for entry in manifest.clients:
        rows = read_client(clients_dir, entry.client_id, split=SPLIT_HOLDOUT)
        X = rows[loaded.input_columns].to_numpy(dtype=np.float64)
        client_sketches.append(client_error_sketch(loaded, X, cfg.bins_per_decade))
        if cfg.per_site:
            for site, part in rows.groupby("site", sort=True, observed=True):
                X_site = part[loaded.input_columns].to_numpy(np.float64)
                local = client_error_sketch(loaded, X_site, cfg.bins_per_decade)
                site_sketches[str(site)] = (
                    site_sketches[str(site)].merge(local) if str(site) in site_sketches else local
                )
    merged = merge_sketches(client_sketches)
    if merged.count == 0:
        raise ValueError(f"no holdout rows in {clients_dir}: partition with holdout_fraction > 0")
    return save_threshold(model_dir, merged, cfg, site_sketches, source=str(Path(clients_dir)))
