"""Federated feature standardisation: the global mean/std without any raw row leaving its client.

Each client summarises its own *training* rows as :class:`ScalerStats` (row count, per-column sum, per-column sum
of squared deviations from its own mean); the server merges the summaries and builds one :class:`Scaler` that
every client then applies. The merge uses the pairwise update of Chan, Golub & LeVeque (1979), which is exact and
numerically stable: it never forms ``E[x²] − E[x]²``, the textbook formula that cancels catastrophically when the
mean is large compared to the spread (vibration features sit at ~0.1 g with ~1e-3 g spread).

The merged statistics equal what ``np.mean`` / ``np.std`` (population, ``ddof=0``) give on the concatenation of
all clients' rows, up to floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MIN_STD = 1e-8
"""Standard deviations below this are raised to it, so constant columns scale to 0 instead of dividing by 0."""


@dataclass(frozen=True)
class ScalerStats:
    """Sufficient statistics of a set of rows, per column.

    ``sumsq`` is the sum of squared deviations from *these rows'* mean (often called M2), not the raw sum of
    squares; together with ``count`` and ``sum`` it carries exactly the same information, in a numerically
    stable form.
    """

    count: int
    sum: np.ndarray
    sumsq: np.ndarray

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if self.sum.shape != self.sumsq.shape or self.sum.ndim != 1:
            raise ValueError(f"sum and sumsq must be 1-D of equal length, got {self.sum.shape} and {self.sumsq.shape}")

    @property
    def n_features(self) -> int:
        return int(self.sum.shape[0])

    def to_arrays(self) -> list[np.ndarray]:
        """Serialise as three float64 arrays ``[count (shape (1,)), sum, sumsq]`` (e.g. for a Flower message)."""
        return [
            np.array([self.count], dtype=np.float64),
            np.asarray(self.sum, dtype=np.float64),
            np.asarray(self.sumsq, dtype=np.float64),
        ]

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> ScalerStats:
        """Inverse of :meth:`to_arrays`."""
        if len(arrays) != 3:
            raise ValueError(f"expected 3 arrays [count, sum, sumsq], got {len(arrays)}")
        count_arr, total, m2 = (np.asarray(a, dtype=np.float64) for a in arrays)
        if count_arr.size != 1 or count_arr.ravel()[0] != np.round(count_arr.ravel()[0]):
            raise ValueError(f"count must be a single integer, got {count_arr!r}")
        return cls(count=int(count_arr.ravel()[0]), sum=total.copy(), sumsq=m2.copy())

    def merge(self, others: Sequence[ScalerStats]) -> ScalerStats:
        """These statistics merged with ``others`` (see :func:`merge_stats`)."""
        return merge_stats([self, *others])


def local_stats(X: np.ndarray) -> ScalerStats:
    """Statistics of one client's rows ``X`` (shape ``(n, n_features)``), computed in float64."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (rows, features), got shape {X.shape}")
    n = X.shape[0]
    if n == 0:
        zeros = np.zeros(X.shape[1], dtype=np.float64)
        return ScalerStats(count=0, sum=zeros, sumsq=zeros.copy())
    total = X.sum(axis=0)
    centred = X - total / n
    return ScalerStats(count=n, sum=total, sumsq=np.einsum("ij,ij->j", centred, centred))


def merge_stats(stats: Sequence[ScalerStats]) -> ScalerStats:
    """Exact merge of several clients' statistics (Chan et al. pairwise update; empty clients are neutral)."""
    if not stats:
        raise ValueError("merge_stats needs at least one ScalerStats")
    widths = {s.n_features for s in stats}
    if len(widths) != 1:
        raise ValueError(f"cannot merge statistics of different widths: {sorted(widths)}")
    count = 0
    total = np.zeros(stats[0].n_features, dtype=np.float64)
    m2 = np.zeros_like(total)
    for s in stats:
        if s.count == 0:
            continue
        if count == 0:
            count, total, m2 = s.count, np.asarray(s.sum, np.float64).copy(), np.asarray(s.sumsq, np.float64).copy()
            continue
        delta = s.sum / s.count - total / count
        merged = count + s.count
        m2 = m2 + s.sumsq + delta * delta * (count * s.count / merged)
        total = total + s.sum
        count = merged
    return ScalerStats(count=count, sum=total, sumsq=m2)


@dataclass(frozen=True)
class Scaler:
    """Per-column standardisation ``(x − mean) / std``, shared by all clients and saved with the model."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ValueError(f"mean and std must be 1-D of equal length, got {self.mean.shape} and {self.std.shape}")
        if not np.all(self.std > 0):
            raise ValueError("every std must be > 0")

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def identity(cls, n_features: int) -> Scaler:
        """The "no scaling" scaler (mean 0, std 1)."""
        return cls(mean=np.zeros(n_features, dtype=np.float64), std=np.ones(n_features, dtype=np.float64))

    @classmethod
    def from_stats(cls, stats: ScalerStats, min_std: float = DEFAULT_MIN_STD) -> Scaler:
        """The scaler of merged statistics: population std (``ddof=0``), floored at ``min_std``."""
        if stats.count == 0:
            raise ValueError("cannot build a scaler from zero rows")
        if min_std <= 0:
            raise ValueError(f"min_std must be > 0, got {min_std}")
        mean = stats.sum / stats.count
        std = np.sqrt(np.maximum(stats.sumsq, 0.0) / stats.count)
        return cls(mean=mean, std=np.maximum(std, min_std))

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected shape (n, {self.n_features}), got {X.shape}")
        return X

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Standardised copy of ``X``, as float32 (the model's dtype)."""
        X = self._check(X)
        return ((X - self.mean) / self.std).astype(np.float32)

    def inverse_transform(self, X: np.ndarray) -> np.ndarray:
        """Back to the original units (float64)."""
        X = self._check(X)
        return np.asarray(X, dtype=np.float64) * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists of floats)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scaler:
        """Inverse of :meth:`to_dict`."""
        missing = {"mean", "std"} - set(data)
        if missing:
            raise ValueError(f"scaler dict is missing {sorted(missing)}")
        return cls(mean=np.asarray(data["mean"], dtype=np.float64), std=np.asarray(data["std"], dtype=np.float64))


MIN_ROBUST_SITES = 3
"""Median-based screening needs at least this many sites: with two, neither can be told from the other."""


def robust_median(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """The median along ``axis`` (helper of the screening functions, so they share one definition)."""
    return np.median(np.asarray(values, dtype=np.float64), axis=axis)


def cap_counts(counts: Sequence[int], factor: float, reference: Sequence[int | None] | None = None) -> list[int | None]:
    """The largest row count each client may claim, or None for no cap.

    ``reference`` (e.g. the partition manifest's rows per client) is authoritative where given; elsewhere, with
    ``factor`` > 0 and at least :data:`MIN_ROBUST_SITES` clients, the cap is ``factor`` x the median claim.
    """
    reference = list(reference) if reference is not None else [None] * len(counts)
    if len(reference) != len(counts):
        raise ValueError(f"{len(counts)} counts but {len(reference)} reference counts")
    median_cap: int | None = None
    if factor > 0 and len(counts) >= MIN_ROBUST_SITES:
        median_cap = max(1, int(factor * float(robust_median(np.asarray(counts, dtype=np.float64)))))
    return [ref if ref is not None else median_cap for ref in reference]


def screen_stats(
    stats: Sequence[ScalerStats],
    factor: float,
    caps: Sequence[int | None] | None = None,
    columns: Sequence[str] | None = None,
) -> list[tuple[ScalerStats | None, str | None]]:
    """Robust screening of the clients' statistics before :func:`merge_stats`: per client, ``(stats, note)``.

    ``stats`` is what to merge (None: rejected), ``note`` what was done (None: nothing). In order:

    * non-finite sums, negative or non-finite sums of squared deviations: rejected;
    * a count above its cap (``caps``, see :func:`cap_counts`): re-weighted to the cap (sum and sum of squared
      deviations scaled alike, so the client's mean and variance are kept but its weight is bounded);
    * with ``factor`` > 0 and at least :data:`MIN_ROBUST_SITES` non-empty clients, moments outside the sites'
      plausible range: a column mean further than ``factor`` robust scales from the median of the clients' means
      (robust scale = median within-client std + 1.4826 x the median absolute deviation of the means, i.e. the
      within- and between-site spread), or a column std above ``factor`` x the median std: rejected.
    """
    names = list(columns) if columns is not None else [str(j) for j in range(stats[0].n_features if stats else 0)]
    caps = list(caps) if caps is not None else [None] * len(stats)
    out: list[tuple[ScalerStats | None, str | None]] = []
    for s, cap in zip(stats, caps, strict=True):
        if not (np.isfinite(s.sum).all() and np.isfinite(s.sumsq).all()) or (s.sumsq < 0).any():
            out.append((None, "non-finite or negative scaler statistics rejected"))
        elif cap is not None and s.count > cap:
            ratio = cap / s.count
            kept = ScalerStats(count=cap, sum=s.sum * ratio, sumsq=s.sumsq * ratio)
            out.append((kept, f"claimed {s.count} train rows, more than its cap {cap}: weighted as {cap}"))
        else:
            out.append((s, None))
    live = [k for k, (s, _) in enumerate(out) if s is not None and s.count > 0]
    if factor <= 0 or len(live) < MIN_ROBUST_SITES:
        return out
    means = np.stack([out[k][0].sum / out[k][0].count for k in live])  # type: ignore[union-attr]
    stds = np.sqrt(np.stack([out[k][0].sumsq / out[k][0].count for k in live]))  # type: ignore[union-attr]
    centre = robust_median(means)
    median_std = np.maximum(robust_median(stds), DEFAULT_MIN_STD)
    scale = median_std + 1.4826 * robust_median(np.abs(means - centre))
    deviation = np.abs(means - centre) / scale
    std_ratio = stds / median_std
    for row, k in enumerate(live):
        worst_mean, worst_std = int(np.argmax(deviation[row])), int(np.argmax(std_ratio[row]))
        if deviation[row, worst_mean] > factor:
            note = (
                f"mean of {names[worst_mean]} lies {deviation[row, worst_mean]:.3g} robust scales from the "
                f"sites' median (bound {factor:g}): scaler statistics rejected"
            )
        elif std_ratio[row, worst_std] > factor:
            note = (
                f"std of {names[worst_std]} is {std_ratio[row, worst_std]:.3g} x the sites' median "
                f"(bound {factor:g}): scaler statistics rejected"
            )
        else:
            continue
        out[k] = (None, note)
    return out
