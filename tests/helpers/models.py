"""Small trained models for tests: a scored demo model (scoring, score flow) and a registry-ready training output."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bearing_core.alarms import AlarmConfig
from bearing_core.autoencoder import ModelConfig, build_model
from bearing_core.config import IngestConfig
from bearing_core.ingest import ingest_directory
from bearing_core.inputs import InputConfig
from bearing_core.model_io import save_model
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import SPLIT_TRAIN, load_manifest, read_client, scheme_dir
from bearing_core.registry import (
    holdout_data,
)
from bearing_core.scaling import Scaler, local_stats, merge_stats
from bearing_core.synthetic import GroundTruth, generate_demo
from bearing_core.threshold import ThresholdConfig, calibrate_from_clients
from bearing_core.training import TrainConfig, evaluate, train_centralized

N_SAMPLES = 8192


THREE_IN_A_ROW = AlarmConfig(persistence_h=0.6, fraction=1.0, warmup_h=0)


@dataclass
class DemoModel:
    """A small ingested demo dataset and a model trained + calibrated on its healthy period."""

    raw: Path
    dataset: Path
    model: Path
    truth: GroundTruth
    held_back: Path
    """site_1's last raw file, moved out of ``raw`` before ingest (to test incremental scoring)."""


def build_demo_model(root: Path) -> DemoModel:
    """2 sites x 24 files (site_1 faulty, site_2 healthy) → ingest (without site_1's last file) → natural partition
    (earliest half of each site, last 20 % of it held out) → ELU autoencoder on the envelope features → calibration."""
    raw, dataset = root / "raw", root / "dataset"
    truth = generate_demo(raw, sites=2, files_per_site=24, n_samples=N_SAMPLES)
    last = sorted((raw / "site_1").iterdir())[-1]
    held_back = root / "held_back" / last.name
    held_back.parent.mkdir()
    shutil.move(last, held_back)
    ingest_directory(IngestConfig(raw_dir=raw, out_dir=dataset, workers=1, expected_samples=N_SAMPLES))
    columns = [f"{ch}_{f}" for ch in truth.channels for f in ("env_bpfo", "env_bpfi", "env_bsf")]
    manifest = partition_dataset(dataset, "natural", 2, 0, InputConfig(columns=tuple(columns), train_fraction=0.5))
    clients = scheme_dir(dataset, "natural")
    parts = [read_client(clients, c.client_id, split=SPLIT_TRAIN)[columns].to_numpy() for c in manifest.clients]
    scaler = Scaler.from_stats(merge_stats([local_stats(p) for p in parts]))
    model_cfg = ModelConfig(n_inputs=len(columns), hidden=(12, 6, 12), activation="elu")
    result = train_centralized(
        scaler.transform(np.concatenate(parts)),
        None,
        model_cfg,
        TrainConfig(lr=1e-2, local_epochs=50, seed=0),
        rounds=1,
    )
    model = save_model(root / "models" / "v1", result.model, model_cfg, scaler, columns)
    calibrate_from_clients(model, clients, ThresholdConfig())
    return DemoModel(raw, dataset, model, truth, held_back)


def train_model(out: Path, manifest_path: Path, rounds: int, calibrate: bool = False, seed: int = 0) -> Path:
    """A training output like the federated run's: model files + metrics.parquet (+ calibrated threshold.json)."""
    spec = load_manifest(manifest_path)
    columns = spec.input_columns
    train = pd.concat([read_client(manifest_path.parent, c.client_id, SPLIT_TRAIN) for c in spec.clients])
    X_train = train[columns].to_numpy()
    X_hold = holdout_data(manifest_path)[columns].to_numpy()
    scaler = Scaler.from_stats(local_stats(X_train))
    model_cfg = ModelConfig(n_inputs=len(columns))
    if rounds:
        result = train_centralized(
            scaler.transform(X_train),
            scaler.transform(X_hold),
            model_cfg,
            TrainConfig(lr=0.01, batch_size=16, seed=seed),
            rounds,
        )
        model, history = result.model, result.history
    else:  # untrained: the weights as initialised
        model = build_model(model_cfg, seed)
        history = [{"round": 1, "train_loss": float("nan"), **evaluate(model, scaler.transform(X_hold))}]
    final_mse = float(history[-1]["mse"])
    save_model(
        out,
        model,
        model_cfg,
        scaler,
        columns,
        extra={
            "trained_by": "federated",
            "strategy": "fedavg",
            "strategy_params": {"fraction_train": 1.0},
            "federated_config": {"strategy": "fedavg", "rounds": len(history), "lr": 0.01},
            "final_eval_mse": final_mse,
            "failures": [],
        },
    )
    rows = [
        {
            "round": int(h["round"]),
            "client": client,
            "train_loss": h["train_loss"],
            "eval_mse": h["mse"] * factor,
            "eval_rmse": float(np.sqrt(h["mse"] * factor)),
            "num_train_examples": len(X_train),
            "num_eval_examples": len(X_hold),
            "wall_s": 0.01,
        }
        for h in history
        for client, factor in (("global", 1.0), ("centralized", 0.9), ("0", 1.1))
    ]
    pd.DataFrame(rows).to_parquet(out / "metrics.parquet", index=False)
    if calibrate:
        calibrate_from_clients(out, manifest_path.parent)
    return out
