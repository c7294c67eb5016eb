"""Prefect task: raw IMS directory -> processed Parquet dataset (thin wrapper over bearing_core.ingest).

The cache key is the raw tree's fingerprint (path, size, mtime of every file) + the ingest settings + this task's
source, so a second run on an unchanged directory is served from cache while a new raw file or changed settings
re-run it (the flow refreshes the cache when the outputs have been deleted). The core ingest is itself incremental: when it does
run, only new or changed files are parsed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE

from bearing_core.config import IngestConfig
from bearing_core.fingerprint import sha256_file, sha256_files
from bearing_core.ingest import IngestProgress, ingest_directory


def dataset_fingerprint(out_dir: str | Path) -> str:
    """Content hash of a processed dataset's tables (features, quarantine): what downstream caches key on."""
    out = Path(out_dir)
    return sha256_files([out / "features.parquet", out / "quarantine.parquet"])


@task(
    name="ingest",
    cache_policy=INPUTS + TASK_SOURCE,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[2, 10],
    task_run_name="ingest {raw_dir}",
)
def ingest_task(
    raw_dir: str,
    out_dir: str,
    raw_fingerprint: str,
    workers: int | None = None,
    batch_size: int = 32,
    channels: int | None = None,
) -> dict[str, Any]:
    """Ingest ``raw_dir`` into ``out_dir``; returns output paths and their content hashes (never DataFrames).

    ``raw_fingerprint`` is only part of the cache key (computed by the caller).
    """
    logger = get_run_logger()
    kwargs: dict[str, Any] = {"raw_dir": raw_dir, "out_dir": out_dir, "batch_size": batch_size, "channels": channels}
    if workers:
        kwargs["workers"] = workers
    cfg = IngestConfig(**kwargs)
    artifact_id = create_progress_artifact(progress=0.0, description=f"Ingesting {raw_dir}")

    last_pct = -1.0

    def on_progress(p: IngestProgress) -> None:
        nonlocal last_pct
        pct = 100.0 * p.files_done / max(p.files_total, 1)
        if pct - last_pct >= 5.0 or p.files_done == p.files_total:
            update_progress_artifact(artifact_id=artifact_id, progress=pct)
            last_pct = pct

    report = ingest_directory(cfg, progress=on_progress)
    update_progress_artifact(artifact_id=artifact_id, progress=100.0)
    logger.info("%s -> %s", report.summary_line(), report.out_dir)
    features = Path(report.out_dir) / "features.parquet"
    return {
        "out_dir": str(report.out_dir),
        "summary": report.summary_line(),
        "ingested": report.ingested,
        "unchanged": report.unchanged,
        "quarantined": report.quarantined,
        "features": str(features),
        "features_sha256": sha256_file(features) if features.exists() else None,
        "dataset_sha256": dataset_fingerprint(report.out_dir),
    }
