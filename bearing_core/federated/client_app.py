"""The bearing ClientApp: one site (SuperNode) training the autoencoder on its OWN partition file only.

A client reads ``<clients-dir>/client_<partition-id>.parquet`` (written by :mod:`bearing_core.partition`):
metadata columns, the model's input columns, and ``split`` ("train" | "holdout"). It answers four message types
(see :mod:`bearing_core.federated.messages`): ``query`` (scaler statistics of its train rows), ``train`` (local
epochs from the global weights, optionally with the FedProx term), ``evaluate`` (MSE on its holdout rows) and
``query.calibrate`` (a histogram sketch of the final model's errors on its holdout rows).
Only weights and aggregate statistics leave the client.

Where the partition is:

* simulation: :func:`build_client_app` bakes ``clients_dir`` in; Flower's simulation sets ``partition-id`` in
  each virtual node's ``node_config``;
* deployment: ``flower-supernode --node-config "clients-dir='/site/clients/iid' partition-id=0"`` (what
  ``bearing site`` passes); the module-level :data:`app` reads both from ``node_config``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from bearing_core.alarms import AlarmConfig, window_statistic
from bearing_core.autoencoder import build_model, get_weights, set_weights
from bearing_core.federated.config import (
    SCALE_ATTACK_FACTOR,
    SCALE_ATTACK_ROWS,
    SKETCH_ATTACK_ERROR,
    FaultInjection,
)
from bearing_core.federated.messages import (
    ARRAYS_KEY,
    CALIBRATE_ACTION,
    CONFIG_KEY,
    METRICS_KEY,
    PARTITION_KEY,
    WEIGHT_KEY,
    parse_round_config,
    sketch_reply,
    stats_reply,
)
from bearing_core.inputs import META_COLUMNS
from bearing_core.partition.writer import SPLIT_HOLDOUT, SPLIT_TRAIN
from bearing_core.scaling import local_stats
from bearing_core.threshold import ErrorSketch
from bearing_core.training import derive_seed, evaluate, reconstruction_errors, train_local

#: Columns of a client partition file that are not model inputs.
NON_INPUT_COLUMNS = frozenset({*META_COLUMNS, "split"})


def partition_file(clients_dir: str | os.PathLike[str], partition_id: int) -> Path:
    """``<clients_dir>/client_<partition_id>.parquet``."""
    return Path(clients_dir) / f"client_{partition_id}.parquet"


@functools.lru_cache(maxsize=8)
def _read_partition(path: str, mtime_ns: int) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Input column names, train rows and holdout rows (float64) of one partition file (cached per version)."""
    table = pq.read_table(path)
    if "split" not in table.column_names:
        raise ValueError(f"{path}: no 'split' column (expected a client partition file)")
    columns = tuple(name for name in table.column_names if name not in NON_INPUT_COLUMNS)
    if not columns:
        raise ValueError(f"{path}: no input columns besides {sorted(NON_INPUT_COLUMNS)}")
    split = np.asarray(table.column("split").to_numpy(zero_copy_only=False)).astype(str)
    unknown = sorted(set(split) - {SPLIT_TRAIN, SPLIT_HOLDOUT})
    if unknown:
        raise ValueError(f"{path}: column 'split' has values {unknown}, expected 'train' or 'holdout'")
    X = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns])
    return columns, X[split == SPLIT_TRAIN], X[split == SPLIT_HOLDOUT]


def load_partition(clients_dir: str | os.PathLike[str], partition_id: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(input_columns, X_train, X_holdout)`` of this client; clear error when the file is missing."""
    path = partition_file(clients_dir, partition_id)
    if not path.is_file():
        raise FileNotFoundError(f"partition file not found: {path} (clients-dir / partition-id of this node)")
    columns, X_train, X_holdout = _read_partition(str(path), path.stat().st_mtime_ns)
    return list(columns), X_train, X_holdout


def _node_partition(context: Context, clients_dir: Path | None) -> tuple[Path, int]:
    """Where this node's data is: baked ``clients_dir`` or node config ``clients-dir``, and ``partition-id``."""
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError("node config has no 'partition-id' (pass --node-config \"partition-id=<k> ...\")")
    where = clients_dir if clients_dir is not None else node.get("clients-dir")
    if where is None:
        raise ValueError("node config has no 'clients-dir' (pass --node-config \"clients-dir='<dir>' ...\")")
    return Path(str(where)), int(node["partition-id"])


def _maybe_fail(config: Mapping[str, object], partition_id: int, server_round: int) -> str | None:
    """Deliberate failure of the train step requested by the server's fault-injection settings (chaos testing).

    ``raise`` raises here; ``sleep`` stalls here, then the client trains normally (its reply comes too late for a
    shorter round timeout); ``nan`` and ``scale`` are returned: the caller replies :func:`_poisoned` weights, or
    :func:`_scaled` weights with a false row count. None otherwise (``sketch`` concerns calibration only).
    """
    for fault in FaultInjection.all_from_config(config):
        if (fault.partition_id, fault.round) != (partition_id, server_round) or fault.mode == "sketch":
            continue
        if fault.mode == "sleep":
            time.sleep(fault.sleep_s)
        elif fault.mode in ("nan", "scale"):
            return fault.mode
        else:
            raise RuntimeError(f"injected fault: client {partition_id} fails in round {server_round}")
    return None


def _poisons_sketch(config: Mapping[str, object], partition_id: int) -> bool:
    """Whether this client must send a poisoned calibration sketch (fault mode ``sketch``, any round)."""
    return any(f.partition_id == partition_id and f.mode == "sketch" for f in FaultInjection.all_from_config(config))


def _poisoned(weights: list[np.ndarray]) -> list[np.ndarray]:
    """``weights`` with the first entry of every array set to NaN: a partly corrupted (diverged) update."""
    out = [w.copy() for w in weights]
    for array in out:
        array.flat[0] = np.nan
    return out


def _scaled(weights: list[np.ndarray]) -> list[np.ndarray]:
    """``weights`` x :data:`SCALE_ATTACK_FACTOR` (fault mode ``scale``, sent with a claimed row count)."""
    return [w * np.asarray(SCALE_ATTACK_FACTOR, dtype=w.dtype) for w in weights]


def _row_times(clients_dir: str | os.PathLike[str], partition_id: int) -> pd.DataFrame:
    """``site`` and ``timestamp`` of this client's train rows then holdout rows, each in file order (the order of
    ``load_partition``'s two arrays)."""
    frame = pq.read_table(partition_file(clients_dir, partition_id), columns=["timestamp", "site", "split"]).to_pandas()
    return pd.concat([frame[frame["split"] == SPLIT_TRAIN], frame[frame["split"] == SPLIT_HOLDOUT]], ignore_index=True)


def build_client_app(clients_dir: str | os.PathLike[str] | None = None) -> ClientApp:
    """A ClientApp reading partitions from ``clients_dir`` (``None``: from each node's ``clients-dir`` config)."""
    baked = Path(clients_dir) if clients_dir is not None else None
    app = ClientApp()

    @app.query()
    def scaler_stats(msg: Message, context: Context) -> Message:
        """Count / sum / sum of squared deviations of the TRAIN rows: the input of federated scaling."""
        where, pid = _node_partition(context, baked)
        columns, X_train, X_holdout = load_partition(where, pid)
        return stats_reply(msg, local_stats(X_train), columns, pid, len(X_holdout))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Local epochs from the global weights on the scaled TRAIN rows; replies new weights + train loss."""
        torch.set_num_threads(1)
        where, pid = _node_partition(context, baked)
        config = msg.content[CONFIG_KEY]
        server_round = int(config["server-round"])
        attack = _maybe_fail(dict(config), pid, server_round)
        model_cfg, scaler, train_cfg = parse_round_config(config)
        _, X_train, _ = load_partition(where, pid)
        if len(X_train) == 0:
            raise ValueError(f"client {pid} has no train rows")
        global_weights = msg.content[ARRAYS_KEY].to_numpy_ndarrays()
        model = build_model(model_cfg, train_cfg.seed)
        set_weights(model, global_weights)
        local_cfg = train_cfg.model_copy(update={"seed": derive_seed(train_cfg.seed, server_round, pid)})
        start = time.perf_counter()
        result = train_local(model, scaler.transform(X_train), local_cfg, global_weights=global_weights)
        metrics = MetricRecord(
            {
                "train_loss": float(result["train_loss"]),
                "train_s": time.perf_counter() - start,
                PARTITION_KEY: pid,
                WEIGHT_KEY: SCALE_ATTACK_ROWS if attack == "scale" else int(result["num_examples"]),
            }
        )
        weights = get_weights(model)
        weights = _poisoned(weights) if attack == "nan" else _scaled(weights) if attack == "scale" else weights
        content = RecordDict({ARRAYS_KEY: ArrayRecord(weights), METRICS_KEY: metrics})
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate_holdout(msg: Message, context: Context) -> Message:
        """MSE / RMSE of the global model on the scaled HOLDOUT rows (weight 0 when the client has none)."""
        torch.set_num_threads(1)
        where, pid = _node_partition(context, baked)
        model_cfg, scaler, train_cfg = parse_round_config(msg.content[CONFIG_KEY])
        _, _, X_holdout = load_partition(where, pid)
        model = build_model(model_cfg, train_cfg.seed)
        set_weights(model, msg.content[ARRAYS_KEY].to_numpy_ndarrays())
        if len(X_holdout):
            result = evaluate(model, scaler.transform(X_holdout))
            mse, rmse = float(result["mse"]), float(result["rmse"])
        else:
            mse = rmse = float("nan")
        metrics = MetricRecord({"eval_mse": mse, "eval_rmse": rmse, PARTITION_KEY: pid, WEIGHT_KEY: len(X_holdout)})
        return Message(RecordDict({METRICS_KEY: metrics}), reply_to=msg)

    @app.query(CALIBRATE_ACTION)
    def calibrate(msg: Message, context: Context) -> Message:
        """Sketch of the final model's reconstruction errors on the HOLDOUT rows (never trained on)."""
        torch.set_num_threads(1)
        where, pid = _node_partition(context, baked)
        config = msg.content[CONFIG_KEY]
        model_cfg, scaler, train_cfg = parse_round_config(config)
        _, X_train, X_holdout = load_partition(where, pid)
        model = build_model(model_cfg, train_cfg.seed)
        set_weights(model, msg.content[ARRAYS_KEY].to_numpy_ndarrays())
        persistence_h = float(config.get("calibrate-persistence-h", 0.0))
        if persistence_h > 0:  # the alarm rule's statistic over every healthy row: bursts and warm-ups cannot set it
            rule = AlarmConfig(
                persistence_h=persistence_h,
                fraction=float(config["calibrate-fraction"]),
                warmup_h=float(config["calibrate-warmup-h"]),
            )
            X_all = np.vstack([X_train, X_holdout])
            errors = reconstruction_errors(model, scaler.transform(X_all))[0] if len(X_all) else np.zeros(0)
            stat = window_statistic(_row_times(where, pid), errors, rule)
            errors = stat[np.isfinite(stat)]
        else:
            errors = reconstruction_errors(model, scaler.transform(X_holdout))[0] if len(X_holdout) else np.zeros(0)
        if _poisons_sketch(dict(config), pid):
            errors = np.full(errors.shape, SKETCH_ATTACK_ERROR)
        sketch = ErrorSketch.from_errors(errors, bins_per_decade=int(config["bins-per-decade"]))
        return sketch_reply(msg, sketch, pid)

    return app


#: Deployment entry point (``[tool.flwr.app.components] clientapp``): partition location from node config.
app = build_client_app()
