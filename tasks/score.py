"""Prefect task: score a processed dataset with a calibrated model (incremental, content-cached).

Thin wrapper over :func:`bearing_core.scoring.update_scores`; it takes paths and returns paths + hashes.

Cache key = output location + dataset content (SHA-256 of ``features.parquet`` and ``quarantine.parquet``) +
model (SHA-256 of ``weights.pt`` and ``threshold.json``) + alarm rule + the task's source. A cached result
is served only while the scores file it describes is still on disk with the recorded SHA-256; otherwise the task
runs again (cheaply: :func:`update_scores` reuses every row still valid in the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy, TaskSource
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.results import get_result_store
from prefect.utilities.hashing import hash_objects

from bearing_core.alarms import AlarmConfig
from bearing_core.fingerprint import sha256_file, sha256_files
from bearing_core.inputs import FEATURES_FILE, QUARANTINE_FILE
from bearing_core.model_io import WEIGHTS_FILE
from bearing_core.scoring import SCORES_FILE, alarm_summary, update_scores
from bearing_core.threshold import THRESHOLD_FILE
from tasks.results import persisted
from tasks.retry import transient_io_error


def scores_path(dataset_dir: str, out: str | None) -> Path:
    """Where the scores go: ``out``, else ``<dataset_dir>/scores.parquet``."""
    return Path(out) if out else Path(dataset_dir) / SCORES_FILE


@dataclass
class ScoresContentPolicy(CachePolicy):
    """Key = output location + data/model content + parameters + task source; never served for a stale file."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        try:
            dataset_dir, model_dir = Path(inputs["dataset_dir"]), Path(inputs["model_dir"])
            out = scores_path(str(dataset_dir), inputs.get("out"))
            data_sha = sha256_files(dataset_dir / name for name in (FEATURES_FILE, QUARANTINE_FILE))
            model_sha = sha256_files(model_dir / name for name in (WEIGHTS_FILE, THRESHOLD_FILE))
        except (KeyError, OSError, ValueError):
            return None  # the task body raises the precise error
        source_key = TaskSource().compute_key(task_ctx, inputs, flow_parameters)
        key = hash_objects(
            str(out.resolve()),
            data_sha,
            model_sha,
            AlarmConfig.model_validate(inputs.get("alarms") or {}).model_dump(),
            source_key,
            raise_on_failure=True,
        )
        store = get_result_store()
        if not store.exists(key):
            return key
        try:
            recorded = store.read(key).result
            if out.is_file() and recorded["sha256"] == sha256_file(out):
                return key
        except Exception:  # noqa: BLE001 - an unreadable record is as good as a stale one
            pass
        return None  # record exists but its output is gone or changed: recompute without caching


@task(
    name="score",
    task_run_name="score",  # the same name on every run (no -xyz suffix)
    **persisted(ScoresContentPolicy()),
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=transient_io_error,
)
def score_task(
    dataset_dir: str,
    model_dir: str,
    alarms: dict[str, Any] | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    """Bring the scores file up to date; return ``{"path", "sha256", "n_scored", "n_reused", "alarms", ...}``.

    ``alarms`` is the per-site alarm summary (site, snapshots, anomalies, alarm_snapshots, first_alarm,
    first_alarm_file, top_channel) as JSON-ready rows.
    """
    logger = get_run_logger()
    rule = AlarmConfig.model_validate(alarms or {})
    result = update_scores(dataset_dir, model_dir, scores_path(dataset_dir, out), rule)
    summary = alarm_summary(result.scores)
    summary["first_alarm"] = summary["first_alarm"].map(lambda t: "" if t is None or str(t) == "NaT" else str(t))
    logger.info(
        "scored %d new snapshots of %s (reused %d); %d in alarm",
        result.n_scored,
        dataset_dir,
        result.n_reused,
        int(result.scores["alarm"].sum()),
    )
    return {
        "path": str(result.path),
        "sha256": sha256_file(result.path),
        "model_dir": str(model_dir),
        "n_scored": result.n_scored,
        "n_reused": result.n_reused,
        "rows": len(result.scores),
        "alarm_snapshots": int(result.scores["alarm"].sum()),
        "alarms": summary.to_dict(orient="records"),
    }
