"""Prefect task: validate a processed dataset (thin wrapper over :func:`bearing_core.validation.validate_dataset`).

Cache key = :func:`validation_inputs_fingerprint` (content of what validation reads) + the validation settings +
this task's source (``INPUTS + TASK_SOURCE``): re-running on an unchanged dataset is served from cache, a new or
changed snapshot, a re-ingest or new thresholds re-run it. Validation is deterministic, so no retries.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from bearing_core.fingerprint import sha256_file, tree_fingerprint
from bearing_core.validation import ValidationConfig, validate_dataset
from tasks.results import persisted


def validation_inputs_fingerprint(dataset_dir: str | Path) -> str:
    """Content hash of what validation reads: features.parquet, dataset.json, the samples listing (path, size,
    mtime) and quarantine.parquet's rows *other than validation's own* (which each run rewrites, so hashing them
    would change the key after every run).
    """
    d = Path(dataset_dir)
    h = hashlib.sha256()
    for name in ("features.parquet", "dataset.json"):
        p = d / name
        h.update(f"{name}\0{sha256_file(p) if p.is_file() else '<missing>'}\n".encode())
    h.update(f"samples\0{tree_fingerprint(d / 'samples')}\n".encode())
    quarantine = d / "quarantine.parquet"
    if quarantine.is_file():
        table = pq.read_table(quarantine, columns=["file", "reason", "stage"])
        table = table.filter(pc.invert(pc.equal(table["stage"], "validate"))).sort_by("file")
        for row in table.to_pylist():
            h.update(f"{row['file']}\0{row['reason']}\0{row['stage']}\n".encode())
    return h.hexdigest()


@task(
    name="validate",
    task_run_name="validate",  # the same name on every run (no -xyz suffix)
    **persisted(INPUTS + TASK_SOURCE),
)
def validate_task(dataset_dir: str, settings: dict[str, Any], inputs_fingerprint: str) -> dict[str, Any]:
    """Run the expectation suites on ``dataset_dir`` with ``settings`` (a ValidationConfig as a dict).

    Returns the report (counts, per-check outcomes, quarantined paths, Data Docs path) as JSON
    (``ValidationReport.model_dump(mode="json")``; read it back with ``ValidationReport.model_validate``), never
    DataFrames.
    Does not raise on failed expectations: the flow publishes the report first, then fails the run. Logs nothing:
    the flow logs the headline and the failures, on a cache hit too.
    ``inputs_fingerprint`` is only part of the cache key (computed by the caller).
    """
    return validate_dataset(dataset_dir, ValidationConfig(**settings)).model_dump(mode="json")
