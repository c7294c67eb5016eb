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
* fails the run with one clear error when fewer than ``min_fit_fraction`` of the sampled clients succeeded;
* sorts replies by partition id before aggregation, so the floating-point sum order (hence the global model) does
  not depend on which client answered first.

The strategy also forwards the run's fault injections (:meth:`FederatedConfig.fault_config`, chaos testing) to
the clients in every train instruction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp import strategy as flwr_strategy
from flwr.supercore import log

from bearing_core.federated.config import STRATEGY_CLASSES, FederatedConfig
from bearing_core.federated.messages import PARTITION_KEY, WEIGHT_KEY


class NotEnoughClients(RuntimeError):
    """Fewer clients than required replied successfully in a step; the run stops (it would not be meaningful)."""


@dataclass
class RoundLedger:
    """Per-client and global metrics of every round, plus the failures the run survived."""

    cfg: FederatedConfig
    node_partitions: dict[int, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
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
    ) -> list[Message]:
        """Log failed, missing and (train step) non-finite replies, enforce ``min_fit_fraction``.

        Returns the usable replies sorted by partition id, then the error replies (flwr skips those); rejected
        non-finite replies are left out entirely. With ``sampled_nodes`` (the instructions' destination node
        ids) every missing reply is logged under its own client, else one row counts them.
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
                server_round, step, msg.metadata.src_node_id, f"client {pid} round {server_round}: {problem} rejected",
                client=pid,
            )
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

    def _fail(
        self, server_round: int, step: str, node_id: int | None, reason: str, client: int | None = None
    ) -> None:
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
        self.rows.append(
            {
                "round": server_round,
                "client": "global",
                "train_loss": float(train["train_loss"]) if train else float("nan"),
                "eval_mse": float(evaluation["eval_mse"]) if evaluation else float("nan"),
                "eval_rmse": float(evaluation["eval_rmse"]) if evaluation else float("nan"),
                "num_train_examples": sum(int(r.get("num_train_examples", 0)) for r in rows),
                "num_eval_examples": sum(int(r.get("num_eval_examples", 0)) for r in rows),
                "wall_s": time.perf_counter() - self._round_start.get(server_round, time.perf_counter()),
            }
        )


def _partition_id(msg: Message) -> int:
    """The ``partition-id`` a client put in its reply's metrics (-1 if absent)."""
    return int(next(iter(msg.content.metric_records.values()), {}).get(PARTITION_KEY, -1))


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

    def attach_ledger(self, ledger: RoundLedger) -> None:
        """Start recording into ``ledger`` (called once, right after construction)."""
        self.ledger = ledger
        self._sampled = {}
        self._train_agg = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.ledger.start_round(server_round)
        config = ConfigRecord({**dict(config), **self.ledger.cfg.fault_config()})
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self._sampled[(server_round, "train")] = [m.metadata.dst_node_id for m in messages]
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        nodes = self._sampled[(server_round, "train")]
        checked = self.ledger.check_replies(server_round, "train", len(nodes), list(replies), nodes)
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


def build_strategy(cfg: FederatedConfig, ledger: RoundLedger | None = None) -> flwr_strategy.FedAvg:
    """The flwr strategy named by ``cfg.strategy`` (validated by :class:`FederatedConfig`), with a ledger."""
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
