"""Local training, FedProx, evaluation and the centralized baseline (small generated data; real IMS when present)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bearing_core.autoencoder import ModelConfig, build_model, get_weights, set_weights
from bearing_core.scaling import Scaler, local_stats
from bearing_core.training import (
    TrainConfig,
    derive_seed,
    evaluate,
    proximal_term,
    reconstruction_errors,
    train_centralized,
    train_local,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: intra-op threads only add contention (the caller owns torch.set_num_threads)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _low_rank_rows(n: int, seed: int = 0) -> np.ndarray:
    """8 standardised inputs driven by 2 latent factors: exactly what an 8-4-2-4-8 autoencoder can learn."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    X = latent @ rng.normal(size=(2, 8)) + 0.05 * rng.normal(size=(n, 8))
    return Scaler.from_stats(local_stats(X)).transform(X)


def _distance(model: torch.nn.Module, weights: list[np.ndarray]) -> float:
    return float(sum(np.sum((w - g) ** 2) for w, g in zip(get_weights(model), weights)))


@pytest.mark.parametrize(("activation", "init_seed"), [("relu", 1), ("elu", 0), ("tanh", 0)])
def test_train_local_decreases_the_reconstruction_error(activation: str, init_seed: int) -> None:
    # (the 8-4-2-4-8 ReLU net can start with dead units: with init seed 0 it stays at the mean; ELU/tanh cannot)
    X = _low_rank_rows(256)
    model = build_model(ModelConfig(n_inputs=8, activation=activation), seed=init_seed)
    before = evaluate(model, X)["mse"]
    result = train_local(model, X, TrainConfig(lr=1e-2, local_epochs=30, seed=1))
    after = evaluate(model, X)
    assert result["num_examples"] == 256
    assert after["mse"] < 0.5 * before
    assert after["rmse"] == pytest.approx(np.sqrt(after["mse"]))
    # the reported loss is the last epoch's mean MSE (weights still moving during it): same order as a final eval
    assert 0.5 * after["mse"] < result["train_loss"] < 2 * after["mse"]


def test_train_local_is_deterministic_for_a_seed() -> None:
    X = _low_rank_rows(100)
    runs = []
    for seed in (5, 5, 6):
        model = build_model(ModelConfig(n_inputs=8), seed=0)
        metrics = train_local(model, X, TrainConfig(lr=1e-2, local_epochs=2, batch_size=16, seed=seed))
        runs.append((metrics, get_weights(model)))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert not all(np.array_equal(a, c) for a, c in zip(runs[0][1], runs[2][1]))  # another seed, another shuffle
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is restored after training


def _count_steps(model: torch.nn.Module) -> list[int]:
    """A list whose length grows by one per forward pass in training mode (= per mini-batch step)."""
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, out: calls.append(1) if module.training else None)
    return calls


def test_max_steps_bounds_a_rounds_work_whatever_the_rows() -> None:
    """Issue 17.1: with a step cap, a round costs the same on 100 rows and on 10,000 (13 batches an epoch at 100
    rows, 10 epochs: 130 steps uncapped)."""
    steps = {}
    for rows, cap in ((100, 0), (100, 25), (10_000, 25), (100, 500)):
        model = build_model(ModelConfig(n_inputs=8), seed=0)
        calls = _count_steps(model)
        metrics = train_local(
            model, _low_rank_rows(rows), TrainConfig(lr=1e-2, local_epochs=10, batch_size=8, seed=1, max_steps=cap)
        )
        steps[rows, cap] = len(calls)
        assert metrics["num_examples"] == rows and np.isfinite(metrics["train_loss"])
    assert steps == {(100, 0): 130, (100, 25): 25, (10_000, 25): 25, (100, 500): 130}
    # below the cap nothing changes: the same weights as without it
    capped, free = (build_model(ModelConfig(n_inputs=8), seed=0) for _ in range(2))
    X = _low_rank_rows(100)
    train_local(capped, X, TrainConfig(lr=1e-2, local_epochs=3, batch_size=8, seed=1, max_steps=39))
    train_local(free, X, TrainConfig(lr=1e-2, local_epochs=3, batch_size=8, seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(capped), get_weights(free)))


def test_proximal_term_equals_the_hand_computed_penalty() -> None:
    model = build_model(ModelConfig(n_inputs=8), seed=0)
    global_weights = get_weights(build_model(ModelConfig(n_inputs=8), seed=1))
    anchor = {name: torch.from_numpy(w) for name, w in zip(model.state_dict(), global_weights)}
    by_hand = 0.3 / 2 * sum(np.sum((w.astype(np.float64) - g) ** 2) for w, g in zip(get_weights(model), global_weights))
    assert proximal_term(model, anchor, mu=0.3).item() == pytest.approx(by_hand, rel=1e-5)
    set_weights(model, global_weights)
    assert proximal_term(model, anchor, mu=0.3).item() == 0.0


def test_fedprox_keeps_weights_closer_to_the_global_model() -> None:
    X = _low_rank_rows(200, seed=3)
    global_weights = get_weights(build_model(ModelConfig(n_inputs=8), seed=0))
    distances = {}
    for mu in (0.0, 1.0):
        model = build_model(ModelConfig(n_inputs=8), seed=0)
        set_weights(model, global_weights)
        train_local(model, X, TrainConfig(lr=1e-2, local_epochs=10, proximal_mu=mu, seed=2), global_weights)
        distances[mu] = _distance(model, global_weights)
    assert 0 < distances[1.0] < 0.5 * distances[0.0]


def test_fedprox_anchor_defaults_to_the_starting_weights() -> None:
    X = _low_rank_rows(64, seed=4)
    cfg = TrainConfig(lr=1e-2, local_epochs=3, proximal_mu=0.5, seed=0)
    explicit, implicit = build_model(ModelConfig(n_inputs=8), 0), build_model(ModelConfig(n_inputs=8), 0)
    train_local(explicit, X, cfg, get_weights(explicit))
    train_local(implicit, X, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(explicit), get_weights(implicit)))


def test_evaluate_and_reconstruction_errors_match_a_hand_computation() -> None:
    X = _low_rank_rows(50, seed=5)
    model = build_model(ModelConfig(n_inputs=8), seed=0)
    with torch.no_grad():
        squared = ((model(torch.from_numpy(X)) - torch.from_numpy(X)) ** 2).double().numpy()
    per_row, per_input = reconstruction_errors(model, X, batch_size=7)
    assert per_row.shape == (50,) and per_input.shape == (50, 8)
    np.testing.assert_allclose(per_input, squared, rtol=1e-6)
    np.testing.assert_allclose(per_row, squared.mean(axis=1), rtol=1e-6)
    metrics = evaluate(model, X, batch_size=7)
    assert metrics["num_examples"] == 50
    assert metrics["mse"] == pytest.approx(squared.mean(), rel=1e-6)


def test_bad_inputs_raise_clear_errors() -> None:
    model = build_model(ModelConfig(n_inputs=8), seed=0)
    with pytest.raises(ValueError, match=r"shape \(n, 8\), got \(4, 3\)"):
        evaluate(model, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        train_local(model, np.full((4, 8), np.nan), TrainConfig())
    with pytest.raises(ValueError, match="at least one row"):
        train_local(model, np.zeros((0, 8)), TrainConfig())


def test_train_centralized_reports_comparable_per_round_metrics_with_decreasing_loss() -> None:
    X_train, X_eval = _low_rank_rows(300, seed=6)[:240], _low_rank_rows(300, seed=6)[240:]
    model_cfg, train_cfg = ModelConfig(n_inputs=8), TrainConfig(lr=1e-2, local_epochs=2, seed=3)
    result = train_centralized(X_train, X_eval, model_cfg, train_cfg, rounds=8)
    assert [h["round"] for h in result.history] == list(range(1, 9))
    assert set(result.history[0]) == {"round", "train_loss", "num_examples", "mse", "rmse"}
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["mse"] < result.history[0]["mse"]
    assert all(np.array_equal(a, b) for a, b in zip(result.weights, get_weights(result.model)))

    # it is exactly "FL with one client": same init, same per-round seeds, same local loop
    model = build_model(model_cfg, train_cfg.seed)
    for rnd in range(1, 9):
        train_local(model, X_train, train_cfg.model_copy(update={"seed": derive_seed(train_cfg.seed, rnd)}))
    assert all(np.array_equal(a, b) for a, b in zip(result.weights, get_weights(model)))


def test_derive_seed_is_reproducible_and_separates_keys() -> None:
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, r, c) for r in range(5) for c in range(5)}) == 25


def test_real_ims_healthy_model_flags_the_failing_end_of_the_1st_test(shared_ims: Path) -> None:
    df = pd.read_csv(shared_ims / "features" / "1st_test_mean_abs.csv")
    X = df.drop(columns="file").to_numpy(np.float64)
    healthy, holdout, end = X[:400], X[400:432], X[-50:]  # first ~20 % healthy; bearings 3 and 4 fail at the end
    scaler = Scaler.from_stats(local_stats(healthy))
    result = train_centralized(
        scaler.transform(healthy),
        scaler.transform(holdout),
        ModelConfig(n_inputs=8),
        TrainConfig(lr=5e-3, batch_size=32, local_epochs=5, seed=0),
        rounds=6,
    )
    holdout_err, _ = reconstruction_errors(result.model, scaler.transform(holdout))
    end_err, _ = reconstruction_errors(result.model, scaler.transform(end))
    assert np.median(end_err) > 10 * np.median(holdout_err)


def test_the_step_cap_travels_to_the_clients_with_the_round_config() -> None:
    from bearing_core.federated.messages import parse_round_config, round_config

    scaler = Scaler(mean=np.zeros(2), std=np.ones(2))
    model_cfg = ModelConfig(n_inputs=2, hidden=(4, 1, 4), activation="tanh")
    for cap in (0, 200):
        record = round_config(model_cfg, scaler, TrainConfig(lr=1e-2, local_epochs=10, seed=3, max_steps=cap))
        assert ("max-local-steps" in record) == (cap > 0)  # no key without a cap: what older sites send
        assert parse_round_config(record)[2].max_steps == cap
