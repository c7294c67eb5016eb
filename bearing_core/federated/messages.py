"""What travels between the bearing ServerApp and its ClientApps: record keys and their (de)serialisation.

Three exchanges, all aggregates (no raw row ever leaves a client):

* ``query`` (before round 1): the server asks for :class:`~bearing_core.scaling.ScalerStats` of the client's TRAIN
  rows; the client answers with ``count/sum/sumsq`` (an ArrayRecord), its input column names and row counts.
* ``train``: global weights + a config carrying the merged :class:`~bearing_core.scaling.Scaler`, the model shape
  and the local training hyper-parameters; the client answers with new weights + train loss + ``num-examples``.
* ``evaluate``: global weights + the same config; the client answers with MSE/RMSE on its HOLDOUT rows.
* ``query.calibrate`` (after the last round): final weights + config; the client answers with an
  :class:`~bearing_core.threshold.ErrorSketch` (fixed log-bin histogram + moments) of its HOLDOUT rows'
  reconstruction errors, never the errors themselves. The server merges the sketches into the alarm threshold.

Every reply's MetricRecord carries ``partition-id`` so the server can report per-client metrics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from bearing_core.autoencoder import ModelConfig
from bearing_core.scaling import Scaler, ScalerStats
from bearing_core.threshold import ErrorSketch
from bearing_core.training import TrainConfig

ARRAYS_KEY = "arrays"  # flwr strategies' default arrayrecord_key
CONFIG_KEY = "config"  # flwr strategies' default configrecord_key
METRICS_KEY = "metrics"
STATS_KEY = "scaler-stats"
WEIGHT_KEY = "num-examples"  # flwr strategies' default weighted_by_key
PARTITION_KEY = "partition-id"
QUERY_ACTION = "scaler-stats"
CALIBRATE_ACTION = "calibrate"  # message type "query.calibrate"
SKETCH_KEY = "error-sketch"


def stats_reply(
    message: Message, stats: ScalerStats, columns: list[str], partition_id: int, num_holdout: int
) -> Message:
    """The client's answer to the scaler-statistics query."""
    content = RecordDict(
        {
            STATS_KEY: ArrayRecord(stats.to_arrays()),
            CONFIG_KEY: ConfigRecord({"columns": list(columns)}),
            METRICS_KEY: MetricRecord(
                {PARTITION_KEY: partition_id, WEIGHT_KEY: stats.count, "num-holdout": num_holdout}
            ),
        }
    )
    return Message(content, reply_to=message)


def parse_stats_reply(message: Message) -> tuple[int, ScalerStats, list[str], int]:
    """``(partition_id, stats, columns, num_holdout)`` from a :func:`stats_reply` message."""
    content = message.content
    metrics = content[METRICS_KEY]
    stats = ScalerStats.from_arrays(content[STATS_KEY].to_numpy_ndarrays())
    columns = [str(c) for c in content[CONFIG_KEY]["columns"]]
    return int(metrics[PARTITION_KEY]), stats, columns, int(metrics["num-holdout"])


def round_config(
    model_cfg: ModelConfig, scaler: Scaler, train_cfg: TrainConfig, extra: dict[str, Any] | None = None
) -> ConfigRecord:
    """The ConfigRecord sent with every train/evaluate message (the strategy adds ``server-round``)."""
    record: dict[str, Any] = {
        "n-inputs": model_cfg.n_inputs,
        "hidden": list(model_cfg.hidden),
        "activation": model_cfg.activation,
        "scaler-mean": scaler.mean.astype(float).tolist(),
        "scaler-std": scaler.std.astype(float).tolist(),
        "lr": train_cfg.lr,
        "batch-size": train_cfg.batch_size,
        "local-epochs": train_cfg.local_epochs,
        "seed": train_cfg.seed,
    }
    if train_cfg.max_steps:  # absent = no cap (what a site of an older version sends and expects)
        record["max-local-steps"] = train_cfg.max_steps
    record.update(extra or {})
    return ConfigRecord(record)


def parse_round_config(config: ConfigRecord) -> tuple[ModelConfig, Scaler, TrainConfig]:
    """Model shape, global scaler and local training config from a :func:`round_config` record.

    ``proximal-mu`` is added by flwr's FedProx strategy; absent (other strategies) means no proximal term.
    """
    model_cfg = ModelConfig(
        n_inputs=int(config["n-inputs"]),
        hidden=tuple(int(w) for w in config["hidden"]),
        activation=str(config["activation"]),
    )
    scaler = Scaler(
        mean=np.asarray(config["scaler-mean"], dtype=np.float64),
        std=np.asarray(config["scaler-std"], dtype=np.float64),
    )
    train_cfg = TrainConfig(
        lr=float(config["lr"]),
        batch_size=int(config["batch-size"]),
        local_epochs=int(config["local-epochs"]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        seed=int(config["seed"]),
        max_steps=int(config.get("max-local-steps", 0)),
    )
    return model_cfg, scaler, train_cfg


def sketch_reply(message: Message, sketch: ErrorSketch, partition_id: int) -> Message:
    """The client's answer to the calibration query: its holdout error sketch (aggregate only)."""
    content = RecordDict(
        {
            SKETCH_KEY: ArrayRecord(sketch.to_arrays()),
            METRICS_KEY: MetricRecord({PARTITION_KEY: partition_id, WEIGHT_KEY: sketch.count}),
        }
    )
    return Message(content, reply_to=message)


def parse_sketch_reply(message: Message) -> tuple[int, ErrorSketch]:
    """``(partition_id, sketch)`` from a :func:`sketch_reply` message."""
    content = message.content
    return int(content[METRICS_KEY][PARTITION_KEY]), ErrorSketch.from_arrays(content[SKETCH_KEY].to_numpy_ndarrays())
