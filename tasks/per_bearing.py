"""Prefect task: the per-bearing layout of a processed dataset (one row per snapshot and bearing), content-cached.

Thin wrapper over :func:`bearing_core.per_bearing.write_per_bearing_dataset`. The derived dataset lives inside the
source dataset (``<dataset>/per_bearing/``, under the same dataset lock). Cache key = output location + content of the
source (features, quarantine, dataset.json) + the healthy period and transform + the task's source; a cached result
is served only while the derived dataset on disk still records that same source and transform.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy, TaskSource
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.results import get_result_store
from prefect.utilities.hashing import hash_objects

from bearing_core.fingerprint import sha256_file, sha256_files
from bearing_core.healthy import HealthyPolicy, read_selection, rolling_for_dataset, write_selection
from bearing_core.inputs import DATASET_FILE, FEATURES_FILE, QUARANTINE_FILE, InputConfig
from bearing_core.per_bearing import PerBearingConfig, selection_digest, write_per_bearing_dataset
from tasks.results import UNCACHED, persisted
from tasks.retry import transient_io_error


def _source_sha(dataset_dir: str) -> str:
    return sha256_files(Path(dataset_dir) / name for name in (FEATURES_FILE, QUARANTINE_FILE, DATASET_FILE))


def _selection_sha(healthy_file: str | None) -> str | None:
    return None if healthy_file is None else sha256_file(healthy_file)


def _is_current(
    out_dir: Path, source_sha: str, input_cfg: dict[str, Any], cfg: dict[str, Any], healthy_file: str | None = None
) -> bool:
    """The derived dataset on disk was made from this source content with this healthy period and transform."""
    try:
        meta = json.loads((out_dir / DATASET_FILE).read_text(encoding="utf-8"))
        transform = meta["transform"]
        return (
            meta["source"]["sha256"] == source_sha
            and transform["healthy"] == input_cfg
            and transform["log"] == cfg["log"]
            and transform.get("relative", "off") == cfg["relative"]
            and transform.get("min_std") == cfg["min_std"]
            and meta["features"] == list(cfg["features"])
            and transform.get("healthy_rows") == _selection_digest_of(healthy_file)
            and (out_dir / FEATURES_FILE).is_file()
        )
    except (OSError, KeyError, TypeError, ValueError):
        return False


@dataclass
class PerBearingContentPolicy(CachePolicy):
    """Key = output location + source content + request + task source; never served for outputs that are gone."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        try:
            out_dir = Path(inputs["out_dir"])
            input_cfg = InputConfig.model_validate(inputs["input_cfg"]).model_dump(mode="json")
            cfg = PerBearingConfig.model_validate(inputs["cfg"]).model_dump(mode="json")
            source_sha = _source_sha(inputs["dataset_dir"])
            healthy_file = inputs.get("healthy_file")
            selection_sha = _selection_sha(healthy_file)
        except (KeyError, OSError, ValueError):
            return None  # the task body raises the precise error
        source_key = TaskSource().compute_key(task_ctx, inputs, flow_parameters)
        key = hash_objects(
            str(out_dir.resolve()), source_sha, input_cfg, cfg, selection_sha, source_key, raise_on_failure=True
        )
        if _is_current(out_dir, source_sha, input_cfg, cfg, healthy_file):
            return key
        return None if get_result_store().exists(key) else key


@task(
    **persisted(PerBearingContentPolicy()),
    name="per-bearing",
    task_run_name="per-bearing",  # the same name on every run (no -xyz suffix)
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=transient_io_error,
)
def per_bearing_task(
    dataset_dir: str, out_dir: str, input_cfg: dict[str, Any], cfg: dict[str, Any], healthy_file: str | None = None
) -> dict[str, Any]:
    """Write the per-bearing layout of ``dataset_dir`` to ``out_dir``; return its path, sites and input columns.

    ``healthy_file``: the rolling policy's selection (:func:`healthy_task`), used for each bearing's moments."""
    result = write_per_bearing_dataset(
        dataset_dir,
        out_dir,
        InputConfig.model_validate(input_cfg),
        PerBearingConfig.model_validate(cfg),
        None if healthy_file is None else read_selection(healthy_file),
    )
    get_run_logger().info(
        "per-bearing layout: %d rows, %d bearings, inputs %s",
        result.rows,
        len(result.sites),
        ", ".join(result.input_columns),
    )
    return {
        "out_dir": str(result.out_dir),
        "sha256": sha256_file(Path(out_dir) / FEATURES_FILE),
        "sites": result.sites,
        "input_columns": result.input_columns,
    }


def _selection_digest_of(healthy_file: str | None) -> str | None:
    return None if healthy_file is None else selection_digest(read_selection(healthy_file))


@task(name="healthy-rows", **UNCACHED, retries=1, retry_delay_seconds=2, retry_condition_fn=transient_io_error)
def healthy_task(dataset_dir: str, scored_dir: str, policy: dict[str, Any]) -> dict[str, Any]:
    """The rolling healthy policy's rows for tonight: from the champion's scores in ``<scored_dir>/scores.parquet``
    (the dataset the model runs on: the per-bearing layout, or the dataset itself), the alarm clearances of
    ``dataset_dir`` and the latest snapshot time of ``dataset_dir``. Writes ``<dataset_dir>/healthy/rolling.parquet``
    and returns ``{"path", "detail"}``; ``path`` is None when there is no champion (or no scores) yet: first-fraction.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from bearing_core.config import DataPaths
    from bearing_core.registry import current_champion, dataset_name
    from bearing_core.scoring import SCORES_FILE

    logger = get_run_logger()
    champion = current_champion(DataPaths().models_root, dataset_name(scored_dir))
    end = pc.max(pq.read_table(Path(dataset_dir) / FEATURES_FILE, columns=["timestamp"]).column("timestamp")).as_py()
    chosen, detail = rolling_for_dataset(
        Path(scored_dir) / SCORES_FILE, champion, end, dataset_dir, HealthyPolicy.model_validate(policy)
    )
    (logger.info if chosen is not None else logger.warning)(detail)
    path = None if chosen is None else str(write_selection(dataset_dir, chosen))
    return {"path": path, "detail": detail}
