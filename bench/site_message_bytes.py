"""What a site sends per round in the cross-site mode, in bytes: the serialised Flower messages of the bearing
ClientApp (protobuf, as the Fleet API carries them before HTTP/TLS framing), built with the real model shapes.

    PYTHONPATH=. python bench/site_message_bytes.py [--inputs 2] [--hidden 4,1,4]

Per round a site sends one train reply (its weights + train metrics) and one evaluate reply (metrics only); once a
run, a query reply (scaler moments) and a calibration reply (its holdout error sketch).
"""

from __future__ import annotations

import argparse

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from bearing_core.autoencoder import ModelConfig, build_model, get_weights
from bearing_core.federated.messages import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PARTITION_KEY,
    SKETCH_KEY,
    STATS_KEY,
    WEIGHT_KEY,
)
from bearing_core.scaling import local_stats
from bearing_core.threshold import ErrorSketch


def _reply(content: RecordDict) -> int:
    """Serialised size of a reply's content (the message metadata adds ~200 B: ids, type, timestamps)."""
    return recorddict_to_proto(content).ByteSize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=int, default=2)
    parser.add_argument("--hidden", default="4,1,4")
    args = parser.parse_args()
    cfg = ModelConfig(n_inputs=args.inputs, hidden=tuple(int(h) for h in args.hidden.split(",")))
    weights = get_weights(build_model(cfg, 0))
    raw = sum(w.nbytes for w in weights)
    metrics = MetricRecord({"train_loss": 0.1, "train_s": 1.0, PARTITION_KEY: 2, WEIGHT_KEY: 38})
    train = _reply(RecordDict({ARRAYS_KEY: ArrayRecord(weights), METRICS_KEY: metrics}))
    evaluate = _reply(
        RecordDict({METRICS_KEY: MetricRecord({"eval_mse": 0.1, "eval_rmse": 0.3, PARTITION_KEY: 2, WEIGHT_KEY: 10})})
    )
    print(
        f"model {cfg.n_inputs}-{args.hidden}-{cfg.n_inputs}: {sum(w.size for w in weights)} parameters, "
        f"{raw} bytes of arrays ({weights[0].dtype})"
    )
    print(f"per round: train reply {train} B + evaluate reply {evaluate} B = {train + evaluate} B")
    X = np.random.default_rng(0).normal(size=(38, cfg.n_inputs))
    stats = _reply(
        RecordDict(
            {  # as messages.stats_reply
                STATS_KEY: ArrayRecord(local_stats(X).to_arrays()),
                CONFIG_KEY: ConfigRecord({"columns": [f"x_mean_abs_{i}" for i in range(cfg.n_inputs)]}),
                METRICS_KEY: MetricRecord({PARTITION_KEY: 2, WEIGHT_KEY: 38, "num-holdout": 10}),
            }
        )
    )
    sketch = _reply(
        RecordDict(
            {  # as messages.sketch_reply
                SKETCH_KEY: ArrayRecord(ErrorSketch.from_errors(np.abs(X[:, 0]) + 1e-3).to_arrays()),
                METRICS_KEY: MetricRecord({PARTITION_KEY: 2, WEIGHT_KEY: 10}),
            }
        )
    )
    print(f"once a run: scaler moments {stats} B, error sketch {sketch} B")


if __name__ == "__main__":
    main()
