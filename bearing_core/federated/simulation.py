"""Federated training on one machine (Flower simulation, in-process runtime) and its centralized baseline.

:func:`run_federated` runs the bearing ServerApp and one virtual ClientApp per partition file in this process
(:func:`bearing_core.federated.backend.run_inprocess`: Flower's simulation engine without Ray, no socket opened),
then :func:`run_centralized` trains the same model on the union of the same clients' train rows for the same
number of epochs (``rounds × local_epochs``), evaluated on the union of their holdout rows, and appends its per-round
rows (``client="centralized"``) to ``metrics.parquet``: what federation
costs is read off one table.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bearing_core.env import configure_environment
from bearing_core.federated.config import FederatedConfig, SimulationResources
from bearing_core.io import write_parquet_atomic
from bearing_core.model_io import CENTRALIZED_CLIENT, GLOBAL_CLIENT, METRICS_FILE, load_model
from bearing_core.partition.quantity import NOTEBOOK_RATIOS
from bearing_core.partition.writer import CLIENTS_DIR, MANIFEST_FILE, PartitionManifest, load_manifest


@dataclass
class FederatedResult:
    """Outcome of :func:`run_federated`."""

    metrics: pd.DataFrame
    model_dir: Path
    clients_dir: Path
    config: FederatedConfig
    failures: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    """Where the run's seconds went (:data:`~bearing_core.federated.server_app.TIMINGS_FILE`)."""
    training_stop: dict[str, Any] = field(default_factory=dict)
    """Rounds run and why training stopped (:meth:`~bearing_core.federated.strategies.EarlyStopping.summary`)."""

    def final(self, client: str = GLOBAL_CLIENT) -> pd.Series:
        """The last round's metrics row of ``client`` ("global", "centralized" or a partition id)."""
        rows = self.metrics[self.metrics["client"] == client]
        if rows.empty:
            raise KeyError(f"no metrics for client {client!r}")
        return rows.sort_values("round").iloc[-1]


def partition_params(scheme: str, num_clients: int, alpha: float = 0.5) -> dict[str, Any]:
    """Partitioner parameters for ``bearing train`` / ``train_flow``'s ``--partition`` choice.

    ``quantity`` uses the reference notebook's ratios for 10 clients and Zipf-like shares (1/(k+1), normalised)
    for any other count; ``dirichlet`` takes ``alpha`` (smaller = more skewed).
    """
    if scheme == "dirichlet":
        return {"alpha": alpha}
    if scheme == "quantity" and num_clients != len(NOTEBOOK_RATIOS):
        shares = 1.0 / np.arange(1, num_clients + 1)
        return {"ratios": tuple(float(r) for r in shares / shares.sum())}
    return {}


def model_version(manifest_sha256: str, cfg: FederatedConfig, now: datetime | None = None) -> str:
    """``<UTC timestamp>-<8 hex>``: when the model was trained and a short hash of its data + configuration."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha256(json.dumps([manifest_sha256, cfg.model_dump(mode="json")], sort_keys=True).encode())
    return f"{stamp}-{digest.hexdigest()[:8]}"


def resolve_clients_dir(source: str | os.PathLike[str], scheme: str | None = None) -> Path:
    """The partition directory (the one holding ``manifest.json``) for a clients dir or a dataset dir.

    A dataset dir needs ``scheme`` unless exactly one partitioning exists under ``<dataset>/clients/``.
    """
    source = Path(source)
    if (source / MANIFEST_FILE).is_file():
        return source
    root = source / CLIENTS_DIR
    schemes = sorted(p.name for p in root.iterdir() if (p / MANIFEST_FILE).is_file()) if root.is_dir() else []
    if scheme is not None:
        if scheme not in schemes:
            raise FileNotFoundError(f"no partitioning '{scheme}' in {root} (found: {', '.join(schemes) or 'none'})")
        return root / scheme
    if len(schemes) == 1:
        return root / schemes[0]
    raise FileNotFoundError(
        f"{source} is neither a partition directory (no {MANIFEST_FILE}) nor a dataset with exactly one "
        f"partitioning under {CLIENTS_DIR}/ (found: {', '.join(schemes) or 'none'}); pass the scheme"
    )


def run_federated(
    source: str | os.PathLike[str],
    cfg: FederatedConfig,
    model_dir: str | os.PathLike[str],
    *,
    scheme: str | None = None,
    resources: SimulationResources | None = None,
    baseline: bool = True,
) -> FederatedResult:
    """Federated training of the partitioning at ``source`` in a Flower simulation; the model goes to ``model_dir``.

    ``cfg.num_clients`` is taken from the partition manifest (one virtual SuperNode per client file). With
    ``baseline`` the centralized baseline's rows are added to the metrics (see :func:`run_centralized`).
    """
    configure_environment()
    from bearing_core.federated.backend import run_inprocess  # heavy imports (torch, flwr), only when simulating
    from bearing_core.federated.client_app import build_client_app
    from bearing_core.federated.server_app import build_server_app

    clients_dir = resolve_clients_dir(source, scheme)
    manifest = load_manifest(clients_dir)
    # the server checks each client's claimed row counts against the partition manifest (poisoning defence)
    cfg = cfg.model_copy(update={"num_clients": manifest.num_clients, "manifest": str(clients_dir / MANIFEST_FILE)})
    model_dir = Path(model_dir)
    resources = resources or SimulationResources()
    start = time.perf_counter()
    run_inprocess(
        build_server_app(cfg, model_dir), build_client_app(clients_dir), manifest.num_clients, resources.workers
    )
    wall_s = time.perf_counter() - start
    if not (model_dir / METRICS_FILE).is_file():
        raise RuntimeError(f"the federated run ended without writing {model_dir / METRICS_FILE} (see the log above)")
    metrics = pd.read_parquet(model_dir / METRICS_FILE)
    timings = record_timings(model_dir, wall_s=wall_s)
    if baseline:
        start = time.perf_counter()
        metrics = run_centralized(clients_dir, cfg, model_dir)
        timings = record_timings(model_dir, centralized_s=time.perf_counter() - start)
    extra = load_model(model_dir).extra
    failures = list(extra.get("failures", []))
    return FederatedResult(
        metrics, model_dir, clients_dir, cfg, failures, wall_s, timings, dict(extra.get("training_stop") or {})
    )


def record_timings(
    model_dir: str | os.PathLike[str], *, wall_s: float | None = None, centralized_s: float | None = None
) -> dict[str, float]:
    """Add the simulation's own steps to the server's ``timings.json`` in ``model_dir`` and return it.

    ``wall_s`` (the whole in-process federation): ``backend_s`` = what the server's steps do not account for
    (starting and stopping the in-process runtime, the server thread, waiting for clients' last replies);
    ``centralized_s``: the centralized baseline.
    """
    from bearing_core.federated.server_app import TIMINGS_FILE
    from bearing_core.io import write_json_atomic

    path = Path(model_dir) / TIMINGS_FILE
    timings: dict[str, float] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if wall_s is not None:
        steps = sum(timings.get(k, 0.0) for k in ("scaler_s", "rounds_s", "calibration_s"))
        timings.update(federation_s=wall_s, backend_s=max(0.0, wall_s - steps))
    if centralized_s is not None:
        timings["centralized_s"] = centralized_s
    write_json_atomic(path, timings)
    return timings


def _union(clients_dir: Path, manifest: PartitionManifest) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Input columns, union of all clients' train rows, union of their holdout rows (client order)."""
    from bearing_core.federated.client_app import load_partition

    parts = [load_partition(clients_dir, entry.client_id) for entry in manifest.clients]
    return parts[0][0], np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def run_centralized(
    source: str | os.PathLike[str], cfg: FederatedConfig, model_dir: str | os.PathLike[str]
) -> pd.DataFrame:
    """Centralized baseline for the federated model in ``model_dir``; returns (and rewrites) its metrics table.

    Same model shape and initialisation, same scaler (the federated one, read from ``model_dir``), same
    hyper-parameters and number of epochs (the rounds the federated run actually ran, when it stopped early); rows
    of every client pooled. It always starts from the seed's weights, also when the federated run was warm-started.
    ``wall_s`` is the mean time per round.
    Re-running replaces earlier centralized rows.
    """
    from bearing_core.training import train_centralized

    clients_dir = resolve_clients_dir(source)
    model_dir = Path(model_dir)
    loaded = load_model(model_dir)
    columns, X_train, X_holdout = _union(clients_dir, load_manifest(clients_dir))
    if columns != loaded.input_columns:
        raise ValueError(f"{clients_dir} has input columns {columns}, the model in {model_dir} {loaded.input_columns}")
    train_cfg = cfg.train_config()
    X_eval = loaded.scaler.transform(X_holdout) if len(X_holdout) else None
    start = time.perf_counter()
    rounds = int((loaded.extra.get("training_stop") or {}).get("rounds_run") or cfg.rounds)  # as many as federated
    result = train_centralized(loaded.scaler.transform(X_train), X_eval, loaded.model_cfg, train_cfg, rounds)
    per_round = (time.perf_counter() - start) / rounds
    rows = [
        {
            "round": int(h["round"]),
            "client": CENTRALIZED_CLIENT,
            "train_loss": h["train_loss"],
            "eval_mse": h.get("mse", float("nan")),
            "eval_rmse": h.get("rmse", float("nan")),
            "num_train_examples": len(X_train),
            "num_eval_examples": len(X_holdout),
            "wall_s": per_round,
        }
        for h in result.history
    ]
    previous = pd.read_parquet(model_dir / METRICS_FILE)
    previous = previous[previous["client"] != CENTRALIZED_CLIENT]
    from bearing_core.federated.strategies import metrics_frame  # flwr: imported only when training

    metrics = pd.concat([previous, metrics_frame(rows)], ignore_index=True)
    write_parquet_atomic(model_dir / METRICS_FILE, metrics)
    return metrics
