"""Plain torch training and evaluation loops, shared by Flower clients and the centralized baseline.

Everything is deterministic for a seed: the mini-batch order comes from a dedicated ``torch.Generator`` seeded
from :attr:`TrainConfig.seed`, and the loops run with ``torch.use_deterministic_algorithms(True)`` (restored on
exit). The number of intra-op threads is the caller's business (``torch.set_num_threads``).

The loss is the mean squared reconstruction error over rows and inputs. FedProx (Li et al., 2020) adds
``mu/2 · ||w − w_global||²`` to each mini-batch loss when ``proximal_mu > 0``; the reported ``train_loss`` is
the reconstruction MSE alone, so runs with and without FedProx report comparable numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.autoencoder import Autoencoder, ModelConfig, build_model, get_weights


class TrainConfig(BaseModel):
    """Local training hyper-parameters (one Flower round = ``local_epochs`` passes over the client's rows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    batch_size: int = Field(32, ge=1, description="Rows per mini-batch")
    local_epochs: int = Field(1, ge=1, description="Passes over the local rows per call of train_local (per round)")
    proximal_mu: float = Field(0.0, ge=0, description="FedProx proximal weight mu; 0 = plain FedAvg local training")
    seed: int = Field(0, ge=0, description="Seed of model init and mini-batch order")
    max_steps: int = Field(
        0,
        ge=0,
        description="At most this many mini-batch steps per call of train_local (per round), however many rows: "
        "a round's cost no longer grows with the data; 0 = every epoch in full",
    )


@dataclass
class CentralizedResult:
    """Outcome of :func:`train_centralized`: the trained model and one metrics dict per round."""

    model: Autoencoder
    weights: list[np.ndarray]
    history: list[dict[str, float]] = field(default_factory=list)


def derive_seed(seed: int, *keys: int) -> int:
    """A seed derived from ``seed`` and integer keys (e.g. round, client id): independent streams, reproducible.

    Use it so that every (round, client) pair shuffles differently while the whole run stays reproducible.
    """
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint32)[0])


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Run the block with ``torch.use_deterministic_algorithms(True)``, restoring the previous setting after."""
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)


def _as_tensor(X: np.ndarray, n_inputs: int) -> torch.Tensor:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != n_inputs:
        raise ValueError(f"expected an array of shape (n, {n_inputs}), got {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("inputs contain NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(X))


def _n_inputs(model: torch.nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    return int(first.in_features)


def proximal_term(model: torch.nn.Module, global_params: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx penalty ``mu/2 · Σ_params ||w − w_global||²`` (differentiable w.r.t. the model's parameters)."""
    total = torch.zeros((), dtype=torch.float32)
    for name, param in model.named_parameters():
        total = total + torch.sum((param - global_params[name]) ** 2)
    return 0.5 * mu * total


def _global_params(model: torch.nn.Module, global_weights: Sequence[np.ndarray] | None) -> dict[str, torch.Tensor]:
    """Name → frozen tensor of the global weights (``state_dict`` order), or of the model's current weights."""
    weights = get_weights(model) if global_weights is None else list(global_weights)
    state_names = list(model.state_dict())
    if len(weights) != len(state_names):
        raise ValueError(f"global_weights has {len(weights)} arrays, the model has {len(state_names)}")
    by_name = {name: torch.as_tensor(np.asarray(w), dtype=torch.float32) for name, w in zip(state_names, weights)}
    return {name: by_name[name].detach() for name, _ in model.named_parameters()}


def train_local(
    model: torch.nn.Module,
    X: np.ndarray,
    cfg: TrainConfig,
    global_weights: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on the rows ``X`` for ``cfg.local_epochs`` epochs of shuffled mini-batches (Adam).

    With ``cfg.proximal_mu > 0`` the FedProx term is anchored at ``global_weights`` (the weights the server sent;
    default: the model's weights at the start of this call, which is the same thing in a Flower client that has
    just loaded them). A fresh optimizer is used per call, as a Flower client does per round.

    With ``cfg.max_steps > 0`` training stops after that many mini-batch steps (the last epoch may be partial): the
    cost of a call is then bounded whatever ``len(X)``.

    Returns ``{"train_loss": mean reconstruction MSE over the last (possibly partial) epoch, "num_examples":
    len(X)}``.
    """
    n_inputs = _n_inputs(model)
    data = _as_tensor(X, n_inputs)
    n = data.shape[0]
    if n == 0:
        raise ValueError("train_local needs at least one row")
    anchor = _global_params(model, global_weights) if cfg.proximal_mu > 0 else None
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    epoch_loss = float("nan")
    steps, budget = 0, cfg.max_steps or None
    with deterministic_algorithms():
        for _ in range(cfg.local_epochs):
            if budget is not None and steps >= budget:
                break
            order = torch.randperm(n, generator=generator)
            sse = torch.zeros((), dtype=torch.float64)
            seen = 0
            for start in range(0, n, cfg.batch_size):
                if budget is not None and steps >= budget:
                    break
                batch = data[order[start : start + cfg.batch_size]]
                optimizer.zero_grad(set_to_none=True)
                mse = torch.mean((model(batch) - batch) ** 2)
                loss = mse if anchor is None else mse + proximal_term(model, anchor, cfg.proximal_mu)
                loss.backward()
                optimizer.step()
                steps += 1
                sse += mse.detach().double() * batch.shape[0]
                seen += batch.shape[0]
            epoch_loss = float(sse / seen)
    model.eval()
    return {"train_loss": epoch_loss, "num_examples": int(n)}


def reconstruction_errors(
    model: torch.nn.Module, X: np.ndarray, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row MSE (shape ``(n,)``) and per-input squared error (shape ``(n, n_inputs)``), float64."""
    data = _as_tensor(X, _n_inputs(model))
    model.eval()
    chunks: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, data.shape[0], batch_size):
            batch = data[start : start + batch_size]
            chunks.append((model(batch) - batch).double() ** 2)
    per_input = torch.cat(chunks).numpy() if chunks else np.zeros((0, data.shape[1]), dtype=np.float64)
    return per_input.mean(axis=1), per_input


def evaluate(model: torch.nn.Module, X: np.ndarray, batch_size: int = 4096) -> dict[str, float]:
    """``{"mse": mean squared error over rows and inputs, "rmse": sqrt(mse), "num_examples": n}``."""
    data = _as_tensor(X, _n_inputs(model))
    n = data.shape[0]
    if n == 0:
        raise ValueError("evaluate needs at least one row")
    model.eval()
    sse = 0.0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = data[start : start + batch_size]
            sse += float(torch.sum((model(batch) - batch).double() ** 2))
    mse = sse / (n * data.shape[1])
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "num_examples": int(n)}


def train_centralized(
    X_train: np.ndarray,
    X_eval: np.ndarray | None,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    rounds: int,
) -> CentralizedResult:
    """The centralized baseline: the federated recipe with all training rows on one client.

    Same model and initialisation (``build_model(model_cfg, train_cfg.seed)``), same local loop, same number of
    epochs (``rounds × local_epochs``, fresh optimizer each "round" as in FL), so its per-round history is directly
    comparable to a Flower run's: ``{"round", "train_loss", "num_examples"}`` plus ``"mse"``, ``"rmse"`` on
    ``X_eval`` when given. Round ``r`` shuffles with ``derive_seed(train_cfg.seed, r)``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    model = build_model(model_cfg, train_cfg.seed)
    history: list[dict[str, float]] = []
    for rnd in range(1, rounds + 1):
        round_cfg = train_cfg.model_copy(update={"seed": derive_seed(train_cfg.seed, rnd)})
        metrics: dict[str, float] = {"round": rnd, **train_local(model, X_train, round_cfg)}
        if X_eval is not None:
            metrics.update({k: v for k, v in evaluate(model, X_eval).items() if k != "num_examples"})
        history.append(metrics)
    return CentralizedResult(model=model, weights=get_weights(model), history=history)
