"""Privacy accounting of central differential privacy (Gaussian noise on the aggregate, fixed clipping).

A federated run with ``dp_noise_multiplier`` z adds, every round, Gaussian noise of std ``z x C / m`` to the
aggregate of ``m`` clipped updates (norm <= C). One site changes the aggregate by at most ``C x w_max`` (its weight
in the average: ``1/m`` for a uniform mean, ``rows_i / sum(rows)`` for FedAvg's row-weighted mean), so each round is
a Gaussian mechanism of effective multiplier ``z / (m x w_max)`` with respect to adding or removing one site's
whole contribution (site-level privacy). ``T`` rounds compose exactly into one Gaussian mechanism of multiplier
``z_eff / sqrt(T)`` (mu-GDP with ``mu = sqrt(T) / z_eff``; Dong, Roth & Su 2019), whose tight (epsilon, delta)
curve is the analytic Gaussian mechanism's (Balle & Wang 2018):

    delta(eps) = Phi(-eps / mu + mu / 2) - exp(eps) * Phi(-eps / mu - mu / 2)

No subsampling amplification is assumed (it would need the sites to be sampled at random, which a fleet does not
guarantee). The guarantee covers the model weights only: scaler moments, error sketches and per-site metrics are
released without noise.
"""

from __future__ import annotations

import math

DEFAULT_DELTA = 1e-5


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(epsilon: float, mu: float) -> float:
    """The smallest delta for which a mu-GDP mechanism is (epsilon, delta)-DP."""
    if mu <= 0:
        return 0.0
    # exp(eps) * Phi(b) underflows to 0 * inf for large eps; compute it in log space
    b = -epsilon / mu - mu / 2
    tail = math.exp(epsilon + math.log(_phi(b))) if _phi(b) > 0 else 0.0
    return max(0.0, _phi(-epsilon / mu + mu / 2) - tail)


def gaussian_epsilon(noise_multiplier: float, compositions: int, delta: float = DEFAULT_DELTA) -> float:
    """Epsilon at ``delta`` of ``compositions`` Gaussian mechanisms of ``noise_multiplier`` (sensitivity 1).

    Exact for the composed Gaussian (bisection on the analytic curve to 1e-9 relative); ``inf`` without noise.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if compositions < 0:
        raise ValueError(f"compositions must be >= 0, got {compositions}")
    if compositions == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    mu = math.sqrt(compositions) / noise_multiplier
    if gaussian_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, mu) > delta:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-9 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mid, mu) > delta else (lo, mid)
    return hi


def effective_noise_multiplier(noise_multiplier: float, weights: list[float] | None, sampled: int) -> float:
    """The noise multiplier relative to one site's largest possible influence on the aggregate.

    ``weights``: the sites' weights in the average (e.g. their training rows; normalised here); ``None`` = a uniform
    mean over ``sampled`` sites.
    """
    if sampled < 1:
        raise ValueError(f"sampled must be >= 1, got {sampled}")
    if not weights:
        return noise_multiplier
    total = float(sum(weights))
    if total <= 0 or min(weights) < 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    return noise_multiplier / (sampled * max(weights) / total)
