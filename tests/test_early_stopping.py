"""Early stopping of the federated rounds (rounds as a maximum) and the record it leaves."""

from __future__ import annotations

import math

from bearing_core.federated.config import FederatedConfig
from bearing_core.federated.strategies import EarlyStopping


def _run(stopping: EarlyStopping, mses: list[float]) -> int:
    for server_round, mse in enumerate(mses, start=1):
        if stopping.update(server_round, mse):
            break
    return stopping.rounds_run


def test_stops_after_patience_rounds_without_a_relative_improvement() -> None:
    stopping = EarlyStopping.from_config(FederatedConfig(rounds=20, patience=3, min_improvement=0.01))
    # 1.0 -> 0.5 -> 0.4 improve; then 0.399, 0.398, 0.397 (< 1 % below 0.4 each) -> stop after round 6
    assert _run(stopping, [1.0, 0.5, 0.4, 0.399, 0.398, 0.397, 0.1]) == 6
    summary = stopping.summary()
    assert summary["stopped_early"] and summary["best_round"] == 6 and summary["best_eval_mse"] == 0.397
    assert summary["reason"].startswith("converged")


def test_slow_drift_does_not_reset_the_reference_and_nan_rounds_do_not_count() -> None:
    stopping = EarlyStopping(max_rounds=10, patience=2, min_improvement=0.01)
    assert _run(stopping, [1.0, math.nan, math.nan, 0.995, 0.991, 0.5]) == 5  # 0.991 is < 1 % below 1.0


def test_patience_zero_runs_every_round_and_says_so() -> None:
    stopping = EarlyStopping.from_config(FederatedConfig(rounds=4))
    assert _run(stopping, [1.0, 1.0, 1.0, 1.0]) == 4
    assert not stopping.stopped_early and "early stopping off" in stopping.reason
    capped = EarlyStopping(max_rounds=3, patience=5)
    assert _run(capped, [1.0, 0.5, 0.25]) == 3 and "maximum of 3 rounds" in capped.reason
