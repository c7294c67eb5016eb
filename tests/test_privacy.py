"""Privacy accounting (issue 14, point 9): epsilon of the central-DP federated run, reported in the model card."""

from __future__ import annotations

import math

import pytest

from bearing_core.federated.config import FederatedConfig
from bearing_core.federated.strategies import privacy_summary
from bearing_core.privacy import effective_noise_multiplier, gaussian_delta, gaussian_epsilon

# Reference epsilons at delta 1e-5 from Google's dp-accounting 0.4 PLD accountant (an independent implementation),
# SelfComposedDpEvent(GaussianDpEvent(z), T): computed once in a scratch environment, not a dependency of ours.
PLD_REFERENCE = [(1.0, 20, 28.3735), (2.0, 20, 11.4800), (0.5, 5, 28.3735), (4.0, 50, 8.5959)]


@pytest.mark.parametrize(("z", "rounds", "expected"), PLD_REFERENCE)
def test_epsilon_matches_an_independent_accountant(z: float, rounds: int, expected: float) -> None:
    assert gaussian_epsilon(z, rounds, 1e-5) == pytest.approx(expected, rel=2e-3)


def test_epsilon_is_consistent_with_the_classic_gaussian_bound_and_monotone() -> None:
    # classic bound (Dwork & Roth, eps < 1): sigma = sqrt(2 ln(1.25/delta)) / eps gives (eps, delta)-DP
    eps = 0.5
    sigma = math.sqrt(2 * math.log(1.25 / 1e-5)) / eps
    assert gaussian_epsilon(sigma, 1, 1e-5) <= eps
    assert gaussian_delta(gaussian_epsilon(2.0, 10), math.sqrt(10) / 2.0) == pytest.approx(1e-5, rel=1e-4)
    more_noise = [gaussian_epsilon(z, 20) for z in (0.5, 1.0, 2.0, 4.0)]
    assert more_noise == sorted(more_noise, reverse=True)
    more_rounds = [gaussian_epsilon(1.0, t) for t in (1, 5, 20, 100)]
    assert more_rounds == sorted(more_rounds)
    assert gaussian_epsilon(0.0, 5) == math.inf and gaussian_epsilon(1.0, 0) == 0.0
    with pytest.raises(ValueError, match="delta"):
        gaussian_epsilon(1.0, 5, 0.0)


def test_a_site_with_most_rows_weakens_the_guarantee() -> None:
    assert effective_noise_multiplier(1.0, None, 4) == 1.0
    assert effective_noise_multiplier(1.0, [10, 10, 10, 10], 4) == pytest.approx(1.0)
    assert effective_noise_multiplier(1.0, [70, 10, 10, 10], 4) == pytest.approx(1.0 / (4 * 0.7))


def test_model_card_privacy_summary_reports_epsilon() -> None:
    assert privacy_summary(FederatedConfig()) is None
    cfg = FederatedConfig(num_clients=4, rounds=20, clipping_norm=1.0, dp_noise_multiplier=1.0)
    uniform = privacy_summary(cfg)
    assert uniform["epsilon"] == pytest.approx(28.3735, rel=2e-3) and uniform["delta"] == 1e-5
    skewed = privacy_summary(cfg, {0: 70, 1: 10, 2: 10, 3: 10}, rounds=5)
    assert skewed["rounds"] == 5 and skewed["effective_noise_multiplier"] == pytest.approx(1 / 2.8, rel=1e-5)
    assert skewed["epsilon"] == pytest.approx(gaussian_epsilon(1 / 2.8, 5), rel=1e-4)


def test_the_run_report_states_the_privacy_budget() -> None:
    from bearing_core.run_report import _privacy_line

    assert _privacy_line(None).startswith("- differential privacy: off")
    cfg = FederatedConfig(dp_noise_multiplier=1.0, clipping_norm=0.5, num_clients=4, rounds=20)
    summary = privacy_summary(cfg)
    assert summary is not None
    line = _privacy_line(summary)
    assert f"epsilon {summary['epsilon']:g} at delta 1e-05" in line
    assert "noise multiplier 1, clipping norm 0.5, 20 rounds" in line
