"""The bearing ServerApp: federated scaling, then R rounds of a flwr strategy, then the model on disk.

Steps of :func:`run_server`:

1. wait until ``min_available_fraction`` of the expected clients are connected;
2. **federated scaling**: a ``query`` message to every client; each returns count/sum/sum of squared deviations of
   its TRAIN rows, the server screens them (:func:`bearing_core.scaling.screen_stats`: counts capped at the
   partition manifest's rows or ``outlier_factor`` x the median, implausible moments rejected), merges the rest
   exactly (:func:`bearing_core.scaling.merge_stats`) into the global :class:`~bearing_core.scaling.Scaler` and
   checks that every client has the same input columns. The counts also fix each client's row caps for training
   and calibration (:class:`~bearing_core.federated.strategies.RoundLedger`);
3. up to R rounds of train + evaluate (:func:`~bearing_core.federated.strategies.run_rounds`: early stopping
   once the federated holdout MSE stops improving, with ``patience`` > 0), the scaler and model shape travelling in
   the round config; round 1 starts from the ``warm_start`` model's weights when its inputs and architecture match
   (:func:`warm_start_weights`), else from the seed's;
4. writes ``out_dir`` = the model (:func:`bearing_core.model_io.save_model`, with strategy, parameters and
   failures in ``extra``) + ``metrics.parquet`` (per client and global, per round);
5. **federated calibration**: a ``query.calibrate`` message with the final weights to every client; each returns
   a log-histogram sketch of its holdout rows' errors, the server screens them
   (:func:`bearing_core.threshold.screen_sketches`: more errors than holdout rows, or mass far from the other
   sites', rejected), merges the rest and writes ``threshold.json`` (:func:`bearing_core.threshold.save_threshold`).
   No per-snapshot error leaves a client.

Simulation bakes the :class:`FederatedConfig` and output directory into :func:`build_server_app`; a deployment
(``flwr run``) uses the module-level :data:`app`, which reads them from the run config (``out-dir`` key).
"""

from __future__ import annotations

import os
import random
import time
from logging import INFO
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from bearing_core.autoencoder import ModelConfig, build_model, get_weights, set_weights
from bearing_core.federated.config import FederatedConfig
from bearing_core.federated.messages import (
    ARRAYS_KEY,
    CALIBRATE_ACTION,
    CONFIG_KEY,
    QUERY_ACTION,
    parse_sketch_reply,
    parse_stats_reply,
    round_config,
)
from bearing_core.federated.strategies import (
    NotEnoughClients,
    RoundLedger,
    build_strategy,
    metrics_frame,
    privacy_summary,
    run_rounds,
    strategy_params,
)
from bearing_core.io import write_json_atomic, write_parquet_atomic
from bearing_core.model_io import GLOBAL_CLIENT, METRICS_FILE, load_model, save_model
from bearing_core.partition.writer import load_manifest
from bearing_core.scaling import Scaler, cap_counts, merge_stats, screen_stats
from bearing_core.threshold import ThresholdRecord, merge_sketches, save_threshold, screen_sketches

OUT_DIR_KEY = "out-dir"
TIMINGS_FILE = "timings.json"
"""Seconds of each server step of the run (``scaler_s``, ``rounds_s``, ``calibration_s``; the simulation adds
``backend_s`` and ``centralized_s``): where a training run's time goes."""


def wait_for_clients(grid: Grid, needed: int, timeout_s: float) -> list[int]:
    """Node ids once at least ``needed`` clients are connected; :class:`NotEnoughClients` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := sorted(grid.get_node_ids())) < needed:
        if time.monotonic() > deadline:
            raise NotEnoughClients(
                f"only {len(nodes)} of the {needed} required clients connected within {timeout_s:g}s"
            )
        time.sleep(0.5)
    return nodes


def federated_scaler(grid: Grid, nodes: list[int], ledger: RoundLedger) -> tuple[Scaler, list[str], dict[int, int]]:
    """Global scaler from the clients' train-row statistics, the shared input columns, train rows per client."""
    cfg = ledger.cfg
    query = RecordDict({CONFIG_KEY: ConfigRecord({"action": QUERY_ACTION})})
    messages = [Message(query, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    answers = list(grid.send_and_receive(messages, timeout=cfg.round_timeout_s))
    replies = ledger.check_replies(0, "scaler-stats", len(messages), answers)
    ok = [msg for msg in replies if not msg.has_error()]
    parsed = [parse_stats_reply(msg) for msg in ok]
    ledger.node_partitions.update({msg.metadata.src_node_id: p[0] for msg, p in zip(ok, parsed)})
    columns = parsed[0][2]
    for pid, _, cols, _ in parsed[1:]:
        if cols != columns:
            raise ValueError(
                f"client {pid} has input columns {cols}, client {parsed[0][0]} has {columns}: "
                "all partitions must come from the same partitioning run"
            )
    pids = [pid for pid, _, _, _ in parsed]
    train_ref, holdout_ref = manifest_rows(cfg.manifest, pids)
    counts, holdouts = [s.count for _, s, _, _ in parsed], [h for _, _, _, h in parsed]
    train_caps = cap_counts(counts, cfg.outlier_factor, train_ref)
    holdout_caps = cap_counts(holdouts, cfg.outlier_factor, holdout_ref)
    if cfg.outlier_factor > 0 or cfg.manifest:
        # a client trains and calibrates on all its rows: later claims must not exceed what it reported here
        ledger.row_caps = {pid: _least(n, cap) for pid, n, cap in zip(pids, counts, train_caps)}
        ledger.holdout_caps = {pid: _least(n, cap) for pid, n, cap in zip(pids, holdouts, holdout_caps)}
    kept = []
    for msg, pid, (stats, note) in zip(
        ok, pids, screen_stats([s for _, s, _, _ in parsed], cfg.outlier_factor, train_caps, columns)
    ):
        if stats is None:
            ledger.reject(0, "scaler-stats", msg.metadata.src_node_id, pid, str(note))
            continue
        if note is not None:
            ledger.adjust(0, "scaler-stats", msg, note, client=pid)
        kept.append(stats)
    needed = cfg.min_successful(len(messages))
    if len(kept) < needed:
        raise NotEnoughClients(
            f"scaler statistics: {len(kept)} of {len(messages)} clients passed the screening, "
            f"{needed} required; " + "; ".join(f["reason"] for f in ledger.failures)
        )
    scaler = Scaler.from_stats(merge_stats(kept)) if cfg.scale else Scaler.identity(len(columns))
    return scaler, columns, {pid: ledger.row_caps.get(pid, n) for pid, n in zip(pids, counts)}


def _least(count: int, cap: int | None) -> int:
    return count if cap is None else min(count, cap)


def manifest_rows(manifest: str, pids: list[int]) -> tuple[list[int | None] | None, list[int | None] | None]:
    """Train and holdout rows per partition id from the partition manifest at ``manifest`` (``""``: None, None).

    A partition id the manifest does not list gets 0 rows: it may not weigh in at all.
    """
    if not manifest:
        return None, None
    entries = {entry.client_id: entry for entry in load_manifest(manifest).clients}
    train = [entries[pid].train_rows if pid in entries else 0 for pid in pids]
    holdout = [entries[pid].holdout_rows if pid in entries else 0 for pid in pids]
    return train, holdout


def federated_threshold(
    grid: Grid,
    nodes: list[int],
    ledger: RoundLedger,
    model: torch.nn.Module,
    config: ConfigRecord,
    model_dir: Path,
) -> ThresholdRecord:
    """Merge the clients' holdout error sketches into the alarm threshold and save it with the model."""
    cfg = ledger.cfg
    threshold_cfg = cfg.threshold_config()
    config = ConfigRecord(
        {
            **dict(config),
            "bins-per-decade": threshold_cfg.bins_per_decade,
            **cfg.fault_config(),
            "calibrate-persistence-h": cfg.calibrate_persistence_h,
            "calibrate-fraction": cfg.calibrate_fraction,
            "calibrate-warmup-h": cfg.calibrate_warmup_h,
        }
    )
    content = RecordDict({ARRAYS_KEY: ArrayRecord(get_weights(model)), CONFIG_KEY: config})
    messages = [
        Message(content, dst_node_id=node, message_type=f"{MessageType.QUERY}.{CALIBRATE_ACTION}") for node in nodes
    ]
    answers = list(grid.send_and_receive(messages, timeout=cfg.round_timeout_s))
    final_round = ledger.rounds_run or cfg.rounds
    replies = ledger.check_replies(final_round, "calibrate", len(messages), answers)
    ok = [msg for msg in replies if not msg.has_error()]
    sketches = [parse_sketch_reply(msg)[1] for msg in ok]
    pids = [ledger.partition_of(msg) for msg in ok]
    if cfg.calibrate_persistence_h > 0:  # the alarm statistic over every healthy row (train + holdout)
        caps = [
            None if ledger.holdout_caps.get(pid) is None else ledger.holdout_caps[pid] + ledger.row_caps.get(pid, 0)
            for pid in pids
        ]
    else:
        caps = [ledger.holdout_caps.get(pid) for pid in pids]
    notes = screen_sketches(sketches, cfg.outlier_factor, threshold_cfg.quantile, caps)
    rejected: dict[str, str] = {}
    for msg, pid, note in zip(ok, pids, notes):
        if note is not None:
            ledger.reject(final_round, "calibrate", msg.metadata.src_node_id, pid, note)
            rejected[str(pid)] = note
    kept = [sketch for sketch, note in zip(sketches, notes) if note is None]
    if not kept or (merged := merge_sketches(kept)).count == 0:
        raise ValueError(
            "no client has holdout rows to calibrate the threshold on (holdout_fraction > 0 needed)"
            + (f"; rejected sketches: {rejected}" if rejected else "")
        )
    return save_threshold(
        model_dir, merged, threshold_cfg, source=f"federated: {len(kept)} clients", rejected_sketches=rejected
    )


def warm_start_weights(source: str, model_cfg: ModelConfig, columns: list[str]) -> tuple[list[np.ndarray] | None, str]:
    """The weights of the model in ``source`` when it can start this run (same input columns, same architecture),
    else None; and why, in one line (saved with the model, shown in the model card)."""
    try:
        loaded = load_model(source)
    except (OSError, ValueError, KeyError) as exc:
        return None, f"from scratch: {source} is not a loadable model ({exc})"
    if loaded.input_columns != columns:
        return None, f"from scratch: {source} has inputs {loaded.input_columns}, this run {columns}"
    if loaded.model_cfg != model_cfg:
        return None, f"from scratch: {source} is {loaded.model_cfg}, this run {model_cfg}"
    return get_weights(loaded.model), f"fine-tuned from {source}"


def run_server(grid: Grid, cfg: FederatedConfig, out_dir: str | os.PathLike[str]) -> Path:
    """The whole federated run against ``grid`` (see module doc); returns the model directory ``out_dir``."""
    random.seed(cfg.seed)  # flwr samples nodes with the `random` module
    if cfg.dp_noise_multiplier > 0:
        np.random.seed(cfg.seed)  # flwr draws the privacy noise from numpy's global generator
    ledger = RoundLedger(cfg)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    nodes = wait_for_clients(grid, cfg.min_available_clients, cfg.round_timeout_s)
    scaler, columns, train_rows = federated_scaler(grid, nodes, ledger)
    timings["scaler_s"] = time.perf_counter() - start

    model_cfg = ModelConfig(n_inputs=len(columns), hidden=cfg.hidden, activation=cfg.activation)
    model = build_model(model_cfg, cfg.seed)
    warm = None
    if cfg.warm_start:
        initial, how = warm_start_weights(cfg.warm_start, model_cfg, columns)
        if initial is not None:
            set_weights(model, initial)
        warm = {"source": cfg.warm_start, "used": initial is not None, "detail": how}
        log(INFO, "warm start: %s", how)
    train_cfg = cfg.train_config()
    fault = {} if cfg.fault is None else cfg.fault.to_config()
    strategy = build_strategy(cfg, ledger)
    start = time.perf_counter()
    arrays, stopping = run_rounds(
        strategy,
        grid,
        ArrayRecord(get_weights(model)),
        cfg,
        train_config=round_config(model_cfg, scaler, train_cfg, fault),
        evaluate_config=round_config(model_cfg, scaler, train_cfg),
    )
    timings["rounds_s"] = time.perf_counter() - start
    ledger.rounds_run = stopping.rounds_run
    set_weights(model, arrays.to_numpy_ndarrays())

    out_dir = Path(out_dir)
    frame = metrics_frame(ledger.rows)
    final = frame[frame["client"] == GLOBAL_CLIENT].iloc[-1]
    extra: dict[str, object] = {
        "trained_by": "federated",
        "strategy": cfg.strategy,
        "strategy_params": strategy_params(cfg),
        "federated_config": cfg.model_dump(mode="json"),
        "train_rows_per_client": {str(k): v for k, v in sorted(train_rows.items())},
        "final_eval_mse": float(final["eval_mse"]),
        "final_train_loss": float(final["train_loss"]),
        "training_stop": stopping.summary(),
        "warm_start": warm,
        "failures": ledger.failures,
        "screening": ledger.adjustments,
        "privacy": privacy_summary(cfg, train_rows, rounds=stopping.summary()["rounds_run"]),
    }
    save_model(out_dir, model, model_cfg, scaler, columns, extra=extra)
    write_parquet_atomic(out_dir / METRICS_FILE, frame)
    start = time.perf_counter()
    federated_threshold(grid, nodes, ledger, model, round_config(model_cfg, scaler, train_cfg), out_dir)
    timings["calibration_s"] = time.perf_counter() - start
    write_json_atomic(out_dir / TIMINGS_FILE, timings)
    return out_dir


def build_server_app(cfg: FederatedConfig | None = None, out_dir: str | os.PathLike[str] | None = None) -> ServerApp:
    """A ServerApp running :func:`run_server`; ``None`` arguments are read from the run config at run time."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = cfg if cfg is not None else FederatedConfig.from_run_config(context.run_config)
        target = out_dir if out_dir is not None else context.run_config.get(OUT_DIR_KEY)
        if not target:
            raise ValueError(f"no output directory: set the run config key '{OUT_DIR_KEY}'")
        run_server(grid, run_cfg, str(target))

    return app


#: Deployment entry point (``[tool.flwr.app.components] serverapp``): configuration from the run config.
app = build_server_app()
