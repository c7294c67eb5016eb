"""Strategy selection, per-client metrics and fault tolerance on top of flwr's Message-API strategies.

:func:`build_strategy` instantiates one of ``flwr.serverapp.strategy`` (FedAvg, FedProx, FedAdam, FedMedian,
FedTrimmedAvg, Krum) with a :class:`RoundLedger` mixed in. The ledger:

* records every client's reply per round (train loss, eval MSE/RMSE, examples, time) and a weighted global row
  (``client="global"``), the rows of ``metrics.parquet``;
* records failed replies (the ClientApp raised) and missing ones (no reply within the round timeout, named per
  client when the sampled nodes are known), which flwr already leaves out of the aggregate;
* rejects train replies whose weights or train loss are not finite (NaN/inf) BEFORE aggregation: flwr would
  average them in and one diverged or corrupted client would turn the global model into NaN. They are logged as
  failures ("client 7 round 1: non-finite weights rejected");
* screens the finite train replies (``outlier_factor`` > 0), since one site can otherwise take the global model
  over: a claimed ``num-examples`` above the client's row cap (:attr:`RoundLedger.row_caps`, from the partition
  manifest or the scaler-statistics step; else ``outlier_factor`` x the round's median claim) is cut down to it,
  and an update (reply minus the global model the round started from) whose L2 norm exceeds ``outlier_factor`` x
  the round's median norm is left out (``norm_action="reject"``) or scaled down onto that bound (``"clip"``;
  measured: a x1e6 update clipped to 10 x the median, at its true weight, still raised the demo's final holdout
  MSE 15-fold when sent in the last round, hence rejection by default).
  Caps and clips are logged in :attr:`RoundLedger.adjustments`, rejections in the failures, each with its client;
* fails the run with one clear error when fewer than ``min_fit_fraction`` of the sampled clients succeeded;
* sorts replies by partition id before aggregation, so the floating-point sum order (hence the global model) does
  not depend on which client answered first.

:func:`run_rounds` drives the rounds (train, then evaluate, per round) and stops early through
:class:`EarlyStopping` once the federated holdout MSE has stopped improving (``patience`` > 0): ``rounds`` is then
a maximum. flwr's ``Strategy.start`` runs a fixed number of rounds, so the loop is the server's own (same calls).

With ``dp_noise_multiplier`` > 0 the strategy is wrapped in Flower's central differential privacy (:class:`Private`):
every update clipped to ``clipping_norm`` (the same absolute bound the screening applies without privacy), Gaussian
noise added to the aggregate.

The strategy also forwards the run's fault injections (:meth:`FederatedConfig.fault_config`, chaos testing) to
the clients in every train instruction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flwr_strategy
from flwr.supercore import log

from bearing_core.federated.config import STRATEGY_CLASSES, FederatedConfig
from bearing_core.federated.messages import ARRAYS_KEY, PARTITION_KEY, WEIGHT_KEY
from bearing_core.model_io import GLOBAL_CLIENT
from bearing_core.privacy import DEFAULT_DELTA, effective_noise_multiplier, gaussian_epsilon
from bearing_core.scaling import MIN_ROBUST_SITES, cap_counts, robust_median


class NotEnoughClients(RuntimeError):
    """Fewer clients than required replied successfully in a step; the run stops (it would not be meaningful)."""


@dataclass
class RoundLedger:
    """Per-client and global metrics of every round, the failures the run survived and the screening's actions.

    ``row_caps`` / ``holdout_caps``: the most train / holdout rows each partition id may claim (set by the server
    after the scaler-statistics step); ``adjustments``: every cap and clip applied to a client's reply.
    """

    cfg: FederatedConfig
    node_partitions: dict[int, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    adjustments: list[dict[str, Any]] = field(default_factory=list)
    row_caps: dict[int, int] = field(default_factory=dict)
    holdout_caps: dict[int, int] = field(default_factory=dict)
    rounds_run: int = 0
    _round_start: dict[int, float] = field(default_factory=dict)
    _current: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def start_round(self, server_round: int) -> None:
        """Mark the start of ``server_round`` (its wall time runs until :meth:`close_round`)."""
        self._round_start.setdefault(server_round, time.perf_counter())

    def check_replies(
        self,
        server_round: int,
        step: str,
        sampled: int,
        replies: list[Message],
        sampled_nodes: Collection[int] | None = None,
        reference: list[np.ndarray] | None = None,
    ) -> list[Message]:
        """Log failed, missing and (train step) non-finite replies, screen the train replies, enforce
        ``min_fit_fraction``.

        Returns the usable replies sorted by partition id, then the error replies (flwr skips those); rejected
        replies are left out entirely. With ``sampled_nodes`` (the instructions' destination node ids) every
        missing reply is logged under its own client, else one row counts them. ``reference``: the global
        weights the round started from (train step), against which update norms are measured.
        """
        errors = [m for m in replies if m.has_error()]
        for msg in errors:
            self._fail(server_round, step, msg.metadata.src_node_id, msg.error.reason)
        ok: list[Message] = []
        for msg in (m for m in replies if not m.has_error()):
            problem = non_finite_update(msg) if step == "train" else None
            if problem is None:
                ok.append(msg)
                continue
            pid = _partition_id(msg)
            self._fail(
                server_round,
                step,
                msg.metadata.src_node_id,
                f"client {pid} round {server_round}: {problem} rejected",
                client=pid,
            )
        if step == "train":
            ok = self._screen_train(server_round, ok, reference)
        self._fail_missing(server_round, step, sampled, replies, sampled_nodes)
        needed = self.cfg.min_successful(sampled)
        if len(ok) < needed:
            raise NotEnoughClients(
                f"round {server_round} {step}: {len(ok)} of {sampled} sampled clients succeeded, {needed} required "
                f"(min_fit_fraction={self.cfg.min_fit_fraction}); failures: "
                + "; ".join(f["reason"] for f in self.failures if f["round"] == server_round)
            )
        ok.sort(key=_partition_id)
        self._record(server_round, step, ok)
        return ok + errors

    def _screen_train(
        self, server_round: int, replies: list[Message], reference: list[np.ndarray] | None
    ) -> list[Message]:
        """Cap claimed row counts and bound update norms (see the module doc); returns the replies kept."""
        factor = self.cfg.outlier_factor
        claims = [int(_metrics(m)[WEIGHT_KEY]) for m in replies]
        median_caps = cap_counts(claims, factor)
        for msg, claim, median_cap in zip(replies, claims, median_caps, strict=True):
            pid = self.partition_of(msg)
            cap = self.row_caps.get(pid, median_cap)
            if cap is not None and claim > cap:
                _metrics(msg)[WEIGHT_KEY] = cap
                self.adjust(
                    server_round,
                    "train",
                    msg,
                    f"claimed {claim} train rows, more than its cap {cap}: weighted as {cap}",
                )
        if reference is None:
            return replies
        replies = self._screen_norms(server_round, replies, reference) if len(replies) >= MIN_ROBUST_SITES else replies
        bound = self.cfg.clipping_norm
        if bound > 0 and self.cfg.dp_noise_multiplier == 0:  # with privacy on, Flower's wrapper clips (same bound)
            for msg in replies:
                norm = update_norm(_arrays(msg), reference)
                if norm > bound:
                    msg.content[ARRAYS_KEY] = ArrayRecord(clip_update(_arrays(msg), reference, bound))
                    self.adjust(
                        server_round,
                        "train",
                        msg,
                        f"update norm {norm:.4g} above clipping_norm {bound:g}: clipped to it",
                    )
        return replies

    def _screen_norms(self, server_round: int, replies: list[Message], reference: list[np.ndarray]) -> list[Message]:
        """Reject (or clip) updates whose norm exceeds ``outlier_factor`` x the round's median."""
        factor = self.cfg.outlier_factor
        if factor <= 0:
            return replies
        norms = np.array([update_norm(_arrays(m), reference) for m in replies])
        median = float(robust_median(norms))
        bound = factor * median
        kept: list[Message] = []
        for msg, norm in zip(replies, norms, strict=True):
            if norm <= bound:
                kept.append(msg)
                continue
            what = f"update norm {norm:.4g} above {factor:g} x the round's median {median:.4g}"
            if self.cfg.norm_action == "reject":
                self.reject(server_round, "train", msg.metadata.src_node_id, self.partition_of(msg), f"{what} rejected")
                continue
            msg.content[ARRAYS_KEY] = ArrayRecord(clip_update(_arrays(msg), reference, bound))
            self.adjust(server_round, "train", msg, f"{what}: clipped to it")
            kept.append(msg)
        return kept

    def partition_of(self, msg: Message) -> int:
        """The partition id of a reply's sender: as mapped at the scaler-statistics step, else as it claims."""
        return self.node_partitions.get(msg.metadata.src_node_id, _partition_id(msg))

    def adjust(self, server_round: int, step: str, msg: Message | None, reason: str, client: int | None = None) -> None:
        """Log a cap or clip applied to a client's reply (kept in the aggregate, with bounded influence)."""
        node_id = msg.metadata.src_node_id if msg is not None else None
        client = client if client is not None or msg is None else self.partition_of(msg)
        log(WARNING, "round %s %s: client %s (node %s): %s", server_round, step, client, node_id, reason)
        self.adjustments.append(
            {"round": server_round, "step": step, "client": client, "node_id": node_id, "reason": reason}
        )

    def reject(self, server_round: int, step: str, node_id: int | None, client: int | None, reason: str) -> None:
        """Log a reply left out by the server's screening (a failure of that client in that step)."""
        self._fail(server_round, step, node_id, f"client {client} round {server_round}: {reason}", client=client)

    def _fail_missing(
        self, server_round: int, step: str, sampled: int, replies: list[Message], sampled_nodes: Collection[int] | None
    ) -> None:
        """Log the sampled clients that sent no reply within the round timeout."""
        timeout = f"{self.cfg.round_timeout_s:g}s"
        if sampled_nodes is None:
            missing = sampled - len(replies)
            if missing > 0:
                self._fail(server_round, step, None, f"{missing} client(s) sent no reply within {timeout}")
            return
        replied = {m.metadata.src_node_id for m in replies}
        for node_id in sorted(set(sampled_nodes) - replied):
            client = self.node_partitions.get(node_id)
            who = f"client {client}" if client is not None else f"node {node_id}"
            self._fail(server_round, step, node_id, f"{who} round {server_round}: no reply within {timeout}")

    def _fail(self, server_round: int, step: str, node_id: int | None, reason: str, client: int | None = None) -> None:
        if client is None and node_id is not None:
            client = self.node_partitions.get(node_id)
        reason = short_reason(reason)
        log(WARNING, "round %s %s: excluded client %s (node %s): %s", server_round, step, client, node_id, reason)
        self.failures.append(
            {"round": server_round, "step": step, "client": client, "node_id": node_id, "reason": reason}
        )

    def _client(self, server_round: int, pid: int) -> dict[str, Any]:
        rows = self._current.setdefault(server_round, {})
        return rows.setdefault(str(pid), {"round": server_round, "client": str(pid)})

    def _record(self, server_round: int, step: str, replies: list[Message]) -> None:
        """Per-client rows from every successful train / evaluate reply (whether or not the strategy uses it)."""
        if step not in ("train", "evaluate"):
            return
        for msg in replies:
            metrics = next(iter(msg.content.metric_records.values()))
            row = self._client(server_round, int(metrics[PARTITION_KEY]))
            if step == "train":
                row.update(
                    train_loss=float(metrics["train_loss"]),
                    num_train_examples=int(metrics[WEIGHT_KEY]),
                    wall_s=float(metrics["train_s"]),
                )
            else:
                row.update(
                    eval_mse=float(metrics["eval_mse"]),
                    eval_rmse=float(metrics["eval_rmse"]),
                    num_eval_examples=int(metrics[WEIGHT_KEY]),
                )

    def close_round(self, server_round: int, train: MetricRecord | None, evaluation: MetricRecord | None) -> None:
        """Append the round's client rows and its global row (weighted means, round wall time)."""
        clients = self._current.pop(server_round, {})
        rows = [clients[k] for k in sorted(clients, key=int)]
        self.rows.extend(rows)
        glob = {
            "round": server_round,
            "client": GLOBAL_CLIENT,
            "train_loss": float(train["train_loss"]) if train else float("nan"),
            "eval_mse": float(evaluation["eval_mse"]) if evaluation else float("nan"),
            "eval_rmse": float(evaluation["eval_rmse"]) if evaluation else float("nan"),
            "num_train_examples": sum(int(r.get("num_train_examples", 0)) for r in rows),
            "num_eval_examples": sum(int(r.get("num_eval_examples", 0)) for r in rows),
            "wall_s": time.perf_counter() - self._round_start.get(server_round, time.perf_counter()),
        }
        self.rows.append(glob)
        # the one line a round in the log (Flower's own per-round lines are dropped: bearing_core.federated.logs)
        log(
            INFO,
            "round %d/%d: train loss %.4g, holdout MSE %.4g, %d clients replied, %.1f s",
            server_round,
            self.cfg.rounds,
            glob["train_loss"],
            glob["eval_mse"],
            len(rows),
            glob["wall_s"],
        )


@dataclass
class EarlyStopping:
    """When to stop the rounds: after ``patience`` rounds in a row whose federated holdout MSE is not below the
    reference by at least ``min_improvement`` (relative). The reference is the MSE of the last round that improved
    by that much (as Keras' ``min_delta``), so a slow drift of 0.3 % a round does not keep training going for ever.
    Rounds without a holdout MSE (no client has holdout rows) cannot be judged and count neither way.
    """

    max_rounds: int
    patience: int = 0
    min_improvement: float = 0.01
    reference: float = math.inf
    best_mse: float = math.inf
    best_round: int = 0
    stale: int = 0
    rounds_run: int = 0
    stopped_early: bool = False

    @classmethod
    def from_config(cls, cfg: FederatedConfig) -> EarlyStopping:
        return cls(max_rounds=cfg.rounds, patience=cfg.patience, min_improvement=cfg.min_improvement)

    def update(self, server_round: int, eval_mse: float) -> bool:
        """Record the round's federated holdout MSE; True when training should stop after this round."""
        self.rounds_run = server_round
        if not math.isfinite(eval_mse):
            return False
        if eval_mse < self.best_mse:
            self.best_mse, self.best_round = eval_mse, server_round
        if eval_mse < self.reference * (1.0 - self.min_improvement):
            self.reference, self.stale = eval_mse, 0
        else:
            self.stale += 1
        self.stopped_early = 0 < self.patience <= self.stale and server_round < self.max_rounds
        return self.stopped_early

    @property
    def reason(self) -> str:
        """Why training stopped, in one line (model card, run report, logs)."""
        if self.stopped_early:
            return (
                f"converged: holdout MSE improved by less than {self.min_improvement:.2%} for {self.patience} "
                f"rounds (after round {self.rounds_run} of at most {self.max_rounds})"
            )
        if self.patience == 0:
            return f"fixed rounds: early stopping off (patience 0), {self.rounds_run} rounds"
        return f"reached the maximum of {self.max_rounds} rounds before converging (patience {self.patience})"

    def summary(self) -> dict[str, Any]:
        """The stopping record saved with the model (``extra['training_stop']``)."""
        return {
            "rounds_run": self.rounds_run,
            "max_rounds": self.max_rounds,
            "stopped_early": self.stopped_early,
            "reason": self.reason,
            "patience": self.patience,
            "min_improvement": self.min_improvement,
            "best_round": self.best_round,
            "best_eval_mse": self.best_mse if math.isfinite(self.best_mse) else None,
        }


def run_rounds(
    strategy: Any,
    grid: Grid,
    arrays: ArrayRecord,
    cfg: FederatedConfig,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
) -> tuple[ArrayRecord, EarlyStopping]:
    """Up to ``cfg.rounds`` rounds of ``strategy`` (train, aggregate, evaluate, aggregate, as ``Strategy.start``),
    stopping early per :class:`EarlyStopping`; returns the last round's global weights and the stopping record."""
    stopping = EarlyStopping.from_config(cfg)
    for server_round in range(1, cfg.rounds + 1):
        log(INFO, "[ROUND %s/%s]", server_round, cfg.rounds)
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = grid.send_and_receive(messages=messages, timeout=cfg.round_timeout_s)
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = aggregated
        messages = strategy.configure_evaluate(server_round, arrays, evaluate_config, grid)
        replies = grid.send_and_receive(messages=messages, timeout=cfg.round_timeout_s)
        evaluation = strategy.aggregate_evaluate(server_round, replies)
        mse = float(evaluation["eval_mse"]) if evaluation is not None and "eval_mse" in evaluation else math.nan
        if stopping.update(server_round, mse):
            break
    log(INFO, "training stopped: %s", stopping.reason)
    return arrays, stopping


def _partition_id(msg: Message) -> int:
    """The ``partition-id`` a client put in its reply's metrics (-1 if absent)."""
    return int(next(iter(msg.content.metric_records.values()), {}).get(PARTITION_KEY, -1))


def _metrics(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()))


def _arrays(msg: Message) -> list[np.ndarray]:
    return msg.content[ARRAYS_KEY].to_numpy_ndarrays()


def update_norm(arrays: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """L2 norm of ``arrays − reference`` over all arrays (a client's update relative to the global model)."""
    if len(arrays) != len(reference):
        return math.inf
    squares = 0.0
    for array, ref in zip(arrays, reference, strict=True):
        if array.shape != ref.shape:
            return math.inf
        delta = np.asarray(array, dtype=np.float64) - np.asarray(ref, dtype=np.float64)
        squares += float(np.dot(delta.ravel(), delta.ravel()))
    return math.sqrt(squares)


def clip_update(arrays: list[np.ndarray], reference: list[np.ndarray], bound: float) -> list[np.ndarray]:
    """``reference + (arrays − reference)`` scaled so that the update's norm is at most ``bound`` (dtype kept)."""
    norm = update_norm(arrays, reference)
    factor = 1.0 if norm <= bound else bound / norm
    out = []
    for array, ref in zip(arrays, reference, strict=True):
        base = np.asarray(ref, np.float64)
        out.append((base + factor * (np.asarray(array, np.float64) - base)).astype(array.dtype))
    return out


def non_finite_update(msg: Message) -> str | None:
    """Why a train reply must not be aggregated (``"non-finite weights"`` / ``"non-finite train_loss"``), or None.

    Any NaN/inf in any array of the reply counts: averaging it would make the global model NaN (FedAvg) or
    silently skew it; robust strategies (median, Krum) would not be told either.
    """
    for record in msg.content.array_records.values():
        if not all(np.isfinite(array).all() for array in record.to_numpy_ndarrays()):
            return "non-finite weights"
    for metrics in msg.content.metric_records.values():
        if "train_loss" in metrics and not math.isfinite(float(metrics["train_loss"])):
            return "non-finite train_loss"
    return None


def short_reason(reason: str, limit: int = 300) -> str:
    """The informative line of a Flower error reason (which embeds a whole Ray traceback) for logs and tables."""
    marker = "Message: "
    if marker in reason:
        reason = reason.rsplit(marker, 1)[1].rstrip("'>\n ")
    else:
        lines = [line.strip() for line in reason.splitlines() if line.strip()]
        reason = lines[-1] if lines else reason
    return reason[:limit]


def aggregate_train_metrics(records: list[RecordDict], weight_key: str = WEIGHT_KEY) -> MetricRecord:
    """Example-weighted mean train loss of the replies the strategy aggregated (Krum: the selected ones)."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    losses, weights = [float(m["train_loss"]) for m in metrics], [float(m[weight_key]) for m in metrics]
    return MetricRecord({"train_loss": _weighted_mean(losses, weights)})


def aggregate_eval_metrics(records: list[RecordDict], weight_key: str = WEIGHT_KEY) -> MetricRecord:
    """Example-weighted holdout MSE (clients without holdout rows weigh 0) and RMSE = sqrt(that MSE)."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    used = [m for m in metrics if int(m[weight_key]) > 0]
    mse = _weighted_mean([float(m["eval_mse"]) for m in used], [float(m[weight_key]) for m in used])
    return MetricRecord({"eval_mse": mse, "eval_rmse": math.sqrt(mse) if np.isfinite(mse) else mse})


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    total = float(np.sum(weights)) if weights else 0.0
    if total <= 0:
        return float("nan")
    return float(np.dot(values, weights) / total)


class _LedgerMixin:
    """Routes a flwr strategy's configure/aggregate steps through a :class:`RoundLedger` (see module doc)."""

    ledger: RoundLedger
    _sampled: dict[tuple[int, str], list[int]]
    _train_agg: dict[int, MetricRecord | None]
    _reference: dict[int, list[np.ndarray]]

    def attach_ledger(self, ledger: RoundLedger) -> None:
        """Start recording into ``ledger`` (called once, right after construction)."""
        self.ledger = ledger
        self._sampled = {}
        self._train_agg = {}
        self._reference = {}
        self._held_errors: dict[int, list[Message]] = {}

    def hold_errors(self, server_round: int, errors: list[Message]) -> None:
        """Error replies of ``server_round`` that an outer wrapper kept from this strategy (see :class:`Private`)."""
        self._held_errors[server_round] = errors

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.ledger.start_round(server_round)
        self._reference[server_round] = arrays.to_numpy_ndarrays()
        config = ConfigRecord({**dict(config), **self.ledger.cfg.fault_config()})
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self._sampled[(server_round, "train")] = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        nodes = self._sampled[(server_round, "train")]
        reference = self._reference.pop(server_round, None)
        replies = list(replies) + self._held_errors.pop(server_round, [])
        checked = self.ledger.check_replies(server_round, "train", len(nodes), replies, nodes, reference)
        arrays, metrics = super().aggregate_train(server_round, checked)  # type: ignore[misc]
        self._train_agg[server_round] = metrics
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]
        self._sampled[(server_round, "evaluate")] = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        nodes = self._sampled[(server_round, "evaluate")]
        checked = self.ledger.check_replies(server_round, "evaluate", len(nodes), list(replies), nodes)
        metrics = super().aggregate_evaluate(server_round, checked)  # type: ignore[misc]
        self.ledger.close_round(server_round, self._train_agg.pop(server_round, None), metrics)
        return metrics


class Private(flwr_strategy.DifferentialPrivacyServerSideFixedClipping):
    """Flower's central differential privacy with server-side fixed clipping, around a ledger strategy.

    Flower's wrapper clips every successful update to ``clipping_norm``, lets the inner strategy aggregate and adds
    Gaussian noise of std ``noise_multiplier x clipping_norm / num_sampled_clients`` to the aggregate. It skips a
    round's aggregation altogether when any reply is an error; here error replies go straight to the inner
    strategy's ledger instead (logged, left out, counted against ``min_fit_fraction``) and the round goes on.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.strategy.hold_errors(server_round, [m for m in replies if m.has_error()])  # type: ignore[attr-defined]
        return super().aggregate_train(server_round, [m for m in replies if not m.has_error()])


def privacy_summary(
    cfg: FederatedConfig, train_rows: dict[int, int] | None = None, rounds: int | None = None
) -> dict[str, Any] | None:
    """What a private run guarantees, for the model card (None when ``dp_noise_multiplier`` is 0).

    Epsilon at delta 1e-5 for adding or removing one site's whole contribution (:mod:`bearing_core.privacy`):
    ``rounds`` Gaussian mechanisms (default ``cfg.rounds``), each of multiplier ``z / (m x w_max)`` where ``w_max``
    is the largest site's share of FedAvg's row-weighted mean (``train_rows``, the capped counts the server
    weighted by; uniform when not given). No amplification by sampling is assumed.
    """
    if cfg.dp_noise_multiplier <= 0:
        return None
    sampled = max(1, math.ceil(cfg.fraction_train * cfg.num_clients))
    rounds = cfg.rounds if rounds is None else rounds
    weights = None if not train_rows else [float(n) for n in train_rows.values()]
    z_eff = effective_noise_multiplier(cfg.dp_noise_multiplier, weights, sampled)
    return {
        "mechanism": "central DP, Gaussian noise, server-side fixed clipping "
        "(flwr DifferentialPrivacyServerSideFixedClipping)",
        "noise_multiplier": cfg.dp_noise_multiplier,
        "clipping_norm": cfg.clipping_norm,
        "noise_std_per_round": cfg.dp_noise_multiplier * cfg.clipping_norm / sampled,
        "rounds": rounds,
        "clients_per_round": sampled,
        "num_clients": cfg.num_clients,
        "effective_noise_multiplier": round(z_eff, 6),
        "epsilon": round(gaussian_epsilon(z_eff, rounds, DEFAULT_DELTA), 4),
        "delta": DEFAULT_DELTA,
        "accountant": "exact composition of Gaussian mechanisms (mu-GDP, analytic Gaussian), site-level "
        "add/remove adjacency, no sampling amplification; covers the model weights only (scaler moments, error "
        "sketches and per-site metrics are released without noise)",
    }


def strategy_params(cfg: FederatedConfig) -> dict[str, Any]:
    """Strategy-specific constructor arguments (also saved with the model)."""
    if cfg.strategy == "fedprox":
        return {"proximal_mu": cfg.proximal_mu}
    if cfg.strategy == "fedadam":
        # eta_l only scales flwr's logged client lr; clients use cfg.lr.
        return {"eta": cfg.server_lr, "eta_l": cfg.lr}
    if cfg.strategy == "fedtrimmedavg":
        return {"beta": cfg.trim_beta}
    return {}


def build_strategy(cfg: FederatedConfig, ledger: RoundLedger | None = None) -> flwr_strategy.FedAvg | Private:
    """The flwr strategy named by ``cfg.strategy`` (validated by :class:`FederatedConfig`), with a ledger; wrapped
    in :class:`Private` when ``cfg.dp_noise_multiplier`` > 0."""
    base: type[flwr_strategy.FedAvg] = getattr(flwr_strategy, STRATEGY_CLASSES[cfg.strategy])
    ledger = ledger or RoundLedger(cfg)
    sampled = max(1, math.ceil(cfg.fraction_train * cfg.num_clients))
    cls = type(f"Bearing{base.__name__}", (_LedgerMixin, base), {})
    strategy = cls(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_train,
        min_train_nodes=min(sampled, cfg.min_available_clients),
        min_evaluate_nodes=min(sampled, cfg.min_available_clients),
        min_available_nodes=cfg.min_available_clients,
        train_metrics_aggr_fn=aggregate_train_metrics,
        evaluate_metrics_aggr_fn=aggregate_eval_metrics,
        **strategy_params(cfg),
    )
    strategy.attach_ledger(ledger)
    if cfg.dp_noise_multiplier > 0:
        return Private(strategy, cfg.dp_noise_multiplier, cfg.clipping_norm, sampled)
    return strategy


METRICS_COLUMNS: dict[str, str] = {
    "round": "int64",
    "client": "string",
    "train_loss": "float64",
    "eval_mse": "float64",
    "eval_rmse": "float64",
    "num_train_examples": "int64",
    "num_eval_examples": "int64",
    "wall_s": "float64",
}


def metrics_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The metrics table (columns :data:`METRICS_COLUMNS`, in that order); absent values are NaN / 0."""
    frame = pd.DataFrame(rows, columns=list(METRICS_COLUMNS))
    for name in ("num_train_examples", "num_eval_examples"):
        frame[name] = frame[name].fillna(0)
    return frame.astype(METRICS_COLUMNS)
