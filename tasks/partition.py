"""Prefect task: partition a processed dataset's healthy period into federated client files.

Caching is keyed on *content*, not on run ids: the key is the fingerprint of the request (SHA-256 of
``features.parquet``, ``quarantine.parquet`` and ``dataset.json``, the normalised partitioner parameters, number of
clients, seed, input config) combined with the task's source. A cached result is only served while the
partitioning on disk is still the one that key describes (its manifest records the same fingerprint and every
client file matches its SHA-256); otherwise the task runs again, so deleted or overwritten client files are
always rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import CachePolicy, TaskSource
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.results import get_result_store
from prefect.utilities.hashing import hash_objects

from bearing_core.fingerprint import sha256_file
from bearing_core.inputs import InputConfig
from bearing_core.partition.build import partition_dataset, partition_provenance
from bearing_core.partition.writer import MANIFEST_FILE, manifest_is_current, scheme_dir
from tasks.results import persisted
from tasks.retry import transient_io_error


def _request(inputs: dict[str, Any]) -> tuple[str, str, int, int, InputConfig, dict[str, Any], str | None]:
    """The task's arguments, normalised (``input_cfg`` dict → InputConfig)."""
    return (
        str(inputs["dataset_dir"]),
        str(inputs["scheme"]),
        int(inputs["num_clients"]),
        int(inputs["seed"]),
        InputConfig.model_validate(inputs.get("input_cfg") or {}),
        dict(inputs.get("params") or {}),
        inputs.get("healthy_file"),
    )


@dataclass
class PartitionContentPolicy(CachePolicy):
    """Cache key = output location + fingerprint of data content and request + task source.

    A cached result is never served for outputs that are gone:

    * outputs on disk match the fingerprint → the key (a cache hit when a record exists);
    * outputs missing/stale and no record under the key yet → the key (first run: computed and persisted);
    * outputs missing/stale but a record exists → ``None``: recompute without touching the cache. The rewrite is
      deterministic, so afterwards the outputs match the existing record again.
    """

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        try:
            dataset_dir, scheme, num_clients, seed, input_cfg, params, healthy_file = _request(inputs)
            provenance = partition_provenance(dataset_dir, scheme, num_clients, seed, input_cfg, params, healthy_file)
        except (ValueError, OSError):
            return None  # invalid request or unreadable inputs: no key; the task body raises the precise error
        source_key = TaskSource().compute_key(task_ctx, inputs, flow_parameters)
        # the output location is part of the key: the same content elsewhere has its own outputs
        location = str(Path(dataset_dir).resolve())
        key = hash_objects(location, provenance["fingerprint"], source_key, raise_on_failure=True)
        if manifest_is_current(scheme_dir(dataset_dir, scheme), provenance):
            return key
        return None if get_result_store().exists(key) else key


@task(
    name="partition",
    task_run_name="partition",  # the same name on every run (no -xyz suffix)
    **persisted(PartitionContentPolicy()),
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=transient_io_error,
)
def partition_task(
    dataset_dir: str,
    scheme: str,
    num_clients: int,
    seed: int,
    input_cfg: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    healthy_file: str | None = None,
) -> dict[str, Any]:
    """Write ``<dataset_dir>/clients/<scheme>/`` and return ``{"path": manifest path, "sha256", "sizes", ...}``.

    ``input_cfg`` is an :class:`~bearing_core.inputs.InputConfig` as a dict (``model_dump(mode="json")``),
    ``params`` the partitioner's parameters (e.g. ``{"alpha": 0.3}`` for ``dirichlet``), ``healthy_file`` a
    healthy-rows selection (:mod:`bearing_core.healthy`, rolling policy) replacing the input config's healthy period.
    """
    logger = get_run_logger()
    cfg = InputConfig.model_validate(input_cfg or {})
    manifest = partition_dataset(dataset_dir, scheme, num_clients, seed, cfg, params or {}, healthy_file)
    manifest_path = scheme_dir(dataset_dir, scheme) / MANIFEST_FILE
    logger.info(
        "partitioned %s with %s into %d clients: train rows %s, holdout rows %s",
        dataset_dir,
        scheme,
        manifest.num_clients,
        [c.train_rows for c in manifest.clients],
        [c.holdout_rows for c in manifest.clients],
    )
    create_table_artifact(
        key=f"partition-{scheme}".lower().replace("_", "-").replace(".", "-"),
        table=[
            {
                "client": c.client_id,
                "train_rows": c.train_rows,
                "holdout_rows": c.holdout_rows,
                "sites": ", ".join(c.sites),
            }
            for c in manifest.clients
        ],
        description=f"Client sizes of partitioning '{scheme}' (seed {seed}) of {Path(dataset_dir).name}",
    )
    return {
        "path": str(manifest_path),
        "sha256": sha256_file(manifest_path),
        "scheme": scheme,
        "num_clients": manifest.num_clients,
        "sizes": manifest.sizes,
        "input_columns": manifest.input_columns,
        "fingerprint": manifest.provenance["fingerprint"],
    }
