"""The bearing ServerApp: federated scaling, then R rounds of a flwr strategy, then the model on disk.

Steps of :func:`run_server`:

1. wait until ``min_available_fraction`` of the expected clients are connected;
2. **federated scaling**: a ``query`` message to every client; each returns count/sum/sum of squared deviations of
   its TRAIN rows, the server merges them exactly (:func:`bearing_core.scaling.merge_stats`) into the global
   :class:`~bearing_core.scaling.Scaler` and checks that every client has the same input columns;
3. ``strategy.start``: R rounds of train + evaluate, the scaler and model shape travelling in the round config;
4. writes ``out_dir`` = the model (:func:`bearing_core.model_io.save_model`, with strategy, parameters and
   failures in ``extra``) + ``metrics.parquet`` (per client and global, per round);
5. **federated calibration**: a ``query.calibrate`` message with the final weights to every client; each returns
   a log-histogram sketch of its holdout rows' errors, the server merges them and writes ``threshold.json``
   (:func:`bearing_core.threshold.save_threshold`). No per-snapshot error leaves a client.

Simulation bakes the :class:`FederatedConfig` and output directory into :func:`build_server_app`; a deployment
(``flwr run``) uses the module-level :data:`app`, which reads them from the run config (``out-dir`` key).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

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
    strategy_params,
)
from bearing_core.io import write_parquet_atomic
from bearing_core.model_io import METRICS_FILE, save_model
from bearing_core.scaling import Scaler, merge_stats
from bearing_core.threshold import ThresholdRecord, merge_sketches, save_threshold
from bearing_core.training import TrainConfig

OUT_DIR_KEY = "out-dir"


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
    merged = merge_stats([stats for _, stats, _, _ in parsed])
    scaler = Scaler.from_stats(merged) if cfg.scale else Scaler.identity(len(columns))
    return scaler, columns, {pid: stats.count for pid, stats, _, _ in parsed}


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
    config = ConfigRecord({**dict(config), "bins-per-decade": threshold_cfg.bins_per_decade})
    content = RecordDict({ARRAYS_KEY: ArrayRecord(get_weights(model)), CONFIG_KEY: config})
    messages = [
        Message(content, dst_node_id=node, message_type=f"{MessageType.QUERY}.{CALIBRATE_ACTION}") for node in nodes
    ]
    answers = list(grid.send_and_receive(messages, timeout=cfg.round_timeout_s))
    replies = ledger.check_replies(cfg.rounds, "calibrate", len(messages), answers)
    sketches = [parse_sketch_reply(msg)[1] for msg in replies if not msg.has_error()]
    merged = merge_sketches(sketches)
    if merged.count == 0:
        raise ValueError("no client has holdout rows to calibrate the threshold on (holdout_fraction > 0 needed)")
    return save_threshold(model_dir, merged, threshold_cfg, source=f"federated: {len(sketches)} clients")


def run_server(grid: Grid, cfg: FederatedConfig, out_dir: str | os.PathLike[str]) -> Path:
    """The whole federated run against ``grid`` (see module doc); returns the model directory ``out_dir``."""
    random.seed(cfg.seed)  # flwr samples nodes with the `random` module
    ledger = RoundLedger(cfg)
    nodes = wait_for_clients(grid, cfg.min_available_clients, cfg.round_timeout_s)
    scaler, columns, train_rows = federated_scaler(grid, nodes, ledger)

    model_cfg = ModelConfig(n_inputs=len(columns), hidden=cfg.hidden, activation=cfg.activation)
    model = build_model(model_cfg, cfg.seed)
    train_cfg = TrainConfig(lr=cfg.lr, batch_size=cfg.batch_size, local_epochs=cfg.local_epochs, seed=cfg.seed)
    fault = {} if cfg.fault is None else cfg.fault.to_config()
    strategy = build_strategy(cfg, ledger)
    result = strategy.start(
        grid,
        ArrayRecord(get_weights(model)),
        num_rounds=cfg.rounds,
        timeout=cfg.round_timeout_s,
        train_config=round_config(model_cfg, scaler, train_cfg, fault),
        evaluate_config=round_config(model_cfg, scaler, train_cfg),
    )
    set_weights(model, result.arrays.to_numpy_ndarrays())

    out_dir = Path(out_dir)
    frame = metrics_frame(ledger.rows)
    final = frame[frame["client"] == "global"].iloc[-1]
    save_model(
        out_dir,
        model,
        model_cfg,
        scaler,
        columns,
        extra={
            "trained_by": "federated",
            "strategy": cfg.strategy,
            "strategy_params": strategy_params(cfg),
            "federated_config": cfg.model_dump(mode="json"),
            "train_rows_per_client": {str(k): v for k, v in sorted(train_rows.items())},
            "final_eval_mse": float(final["eval_mse"]),
            "final_train_loss": float(final["train_loss"]),
            "failures": ledger.failures,
        },
    )
    write_parquet_atomic(out_dir / METRICS_FILE, frame)
    federated_threshold(grid, nodes, ledger, model, round_config(model_cfg, scaler, train_cfg), out_dir)
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
