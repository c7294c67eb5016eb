"""Prefect tasks: federated training (Flower simulation) and the centralized baseline.

Thin wrappers over :mod:`bearing_core.federated.simulation`; they take and return paths and content hashes.

Caching is keyed on content: the partition manifest's SHA-256 (which pins every client file's hash), the training
parameters and the task's source. A cached result is only served while the model directory it points to is still
complete; otherwise the task trains again and caches the new result (see :class:`TrainedModelPolicy`). Retries
with backoff cover transient failures (clients timing out, I/O); configuration and data errors fail at
once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import CachePolicy, TaskSource
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.results import get_result_store
from prefect.states import State
from prefect.utilities.hashing import hash_objects

from bearing_core.federated.config import FederatedConfig, SimulationResources
from bearing_core.federated.logs import flower_log_to
from bearing_core.fingerprint import sha256_file
from bearing_core.model_io import CENTRALIZED_CLIENT, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from bearing_core.threshold import THRESHOLD_FILE, load_threshold
from tasks.results import persisted
from tasks.retry import PERMANENT_OS_ERRORS

PERMANENT_ERRORS = (ValueError, TypeError, KeyError, *PERMANENT_OS_ERRORS)


def retry_on_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry unless the failure is a configuration or data error (retrying those cannot help)."""
    try:
        state.result(raise_on_failure=True)
    except PERMANENT_ERRORS:
        return False
    except Exception:  # noqa: BLE001 - anything else (timeouts, I/O) may be transient
        return True
    return True


def _model_complete(model_dir: str | None, need_centralized: bool) -> bool:
    """True when ``model_dir`` holds weights, config, threshold and metrics (with centralized rows if required)."""
    if not model_dir:
        return False
    path = Path(model_dir)
    if not all((path / name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE, THRESHOLD_FILE)):
        return False
    if need_centralized:
        import pyarrow.parquet as pq

        clients = pq.read_table(path / METRICS_FILE, columns=["client"]).column("client").to_pylist()
        return CENTRALIZED_CLIENT in clients
    return True


@dataclass
class TrainedModelPolicy(CachePolicy):
    """Key = manifest SHA-256 + parameters (+ model weights for the baseline) + task source; never stale.

    A record whose model directory is gone or incomplete cannot be served, and Prefect cannot delete it, so the
    policy walks *generations* of the key: ``key``, ``hash(key, 1)``, ``hash(key, 2)`` ... and returns the first
    one that is either valid (a cache hit) or free (train and cache there). Deleting a model therefore costs one
    retraining, after which the new record is served again.
    """

    centralized: bool = False
    max_generations: int = 100

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        parts: list[Any] = [inputs["manifest_sha256"], json.dumps(inputs["cfg"], sort_keys=True)]
        if self.centralized:
            weights = Path(inputs["model_dir"]) / WEIGHTS_FILE
            parts.append(sha256_file(weights) if weights.is_file() else "<no model>")
        parts.append(TaskSource().compute_key(task_ctx, inputs, flow_parameters))
        base = hash_objects(*parts, raise_on_failure=True)
        store = get_result_store()
        for generation in range(self.max_generations):
            key = base if generation == 0 else hash_objects(base, generation, raise_on_failure=True)
            if not store.exists(key):
                return key
            try:
                cached = store.read(key).result
            except Exception:  # noqa: BLE001 - an unreadable record counts as stale
                continue
            if _model_complete(cached.get("model_dir"), self.centralized):
                return key
        return None


@task(
    name="train-federated",
    task_run_name="train-federated",  # the same name on every run (no -xyz suffix)
    **persisted(TrainedModelPolicy()),
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_on_transient,
)
def train_federated_task(
    manifest_path: str,
    manifest_sha256: str,
    model_dir: str,
    cfg: dict[str, Any],
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Federated training of the partitioning whose manifest is ``manifest_path``; the model goes to ``model_dir``.

    ``cfg`` is a :class:`FederatedConfig` as a dict. Returns the model directory, metrics path, weights hash and
    final global metrics.
    """
    from bearing_core.federated.simulation import run_federated

    logger = get_run_logger()
    clients_dir = Path(manifest_path).parent
    if sha256_file(manifest_path) != manifest_sha256:
        raise ValueError(f"{manifest_path} changed since partitioning (sha256 mismatch): re-run the partition task")
    config = FederatedConfig.model_validate(cfg)
    models_root = Path(model_dir).parent
    try:  # fail before starting the simulation (and without retrying) when the model cannot be written
        models_root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise NotADirectoryError(f"cannot write the model: {models_root} is not a directory ({exc})") from exc
    with flower_log_to(logger.log):  # once, no colour codes, one line a round (bearing_core.federated.logs)
        result = run_federated(
            clients_dir,
            config,
            model_dir,
            resources=SimulationResources.model_validate(resources or {}),
            baseline=False,
        )
    final = result.final()
    threshold = load_threshold(result.model_dir)
    stop = result.training_stop
    extra = load_model_extra(result.model_dir)
    logger.info(
        "training stopped after %s of at most %d rounds: %s; seconds: %s",
        stop.get("rounds_run"),
        config.rounds,
        stop.get("reason"),
        ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()),
    )
    logger.info(
        "federated %s, %d clients, %d rounds: final eval MSE %.5f, threshold %.5g (%s, %d calibration rows), "
        "%d failed replies, %.1fs",
        config.strategy,
        result.config.num_clients,
        int(stop.get("rounds_run", config.rounds)),
        final["eval_mse"],
        threshold.threshold,
        threshold.config.describe(),
        threshold.calibration_size,
        len(result.failures),
        result.wall_s,
    )
    return {
        "model_dir": str(result.model_dir),
        "metrics_path": str(result.model_dir / METRICS_FILE),
        "weights_sha256": sha256_file(result.model_dir / WEIGHTS_FILE),
        "final_eval_mse": float(final["eval_mse"]),
        "final_train_loss": float(final["train_loss"]),
        "failures": len(result.failures),
        "wall_s": result.wall_s,
        "threshold": threshold.threshold,
        "threshold_method": threshold.config.describe(),
        "calibration_size": threshold.calibration_size,
        "rounds_run": int(stop.get("rounds_run", config.rounds)),
        "stop_reason": str(stop.get("reason", "")),
        "warm_start": (extra.get("warm_start") or {}).get("detail"),
        "privacy": extra.get("privacy"),
        "timings_s": result.timings,
    }


def load_model_extra(model_dir: str | Path) -> dict[str, Any]:
    """The ``extra`` metadata of the model in ``model_dir`` (its config.json, without loading the weights)."""
    return dict(json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8")).get("extra") or {})


@task(
    name="train-centralized",
    task_run_name="train-centralized",  # the same name on every run (no -xyz suffix)
    **persisted(TrainedModelPolicy(centralized=True)),
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_transient,
)
def train_centralized_task(
    manifest_path: str, manifest_sha256: str, model_dir: str, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Centralized baseline for the federated model in ``model_dir``: rows appended to its ``metrics.parquet``."""
    from bearing_core.federated.simulation import run_centralized

    if sha256_file(manifest_path) != manifest_sha256:
        raise ValueError(f"{manifest_path} changed since partitioning (sha256 mismatch): re-run the partition task")
    metrics = run_centralized(Path(manifest_path).parent, FederatedConfig.model_validate(cfg), model_dir)
    final = metrics[metrics["client"] == CENTRALIZED_CLIENT].sort_values("round").iloc[-1]
    get_run_logger().info("centralized baseline: final eval MSE %.5f", final["eval_mse"])
    return {
        "model_dir": model_dir,
        "metrics_path": str(Path(model_dir) / METRICS_FILE),
        "final_eval_mse": float(final["eval_mse"]),
        "final_train_loss": float(final["train_loss"]),
    }
