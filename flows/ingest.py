"""Flow: ingest a raw IMS directory into a processed dataset (same as `bearing ingest`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from bearing_core.config import DataPaths, IngestConfig
from bearing_core.fingerprint import tree_fingerprint
from bearing_core.run_report import relative
from tasks.ingest import ingest_task


@flow(name="ingest", log_prints=True)
def ingest_flow(
    raw_dir: str = "data/raw/demo",
    out_dir: str | None = None,
    workers: int | None = None,
    batch_size: int = 32,
    channels: int | None = None,
    follow_symlinks: bool = False,
) -> dict[str, Any]:
    """Raw IMS snapshot files -> samples/ + features.parquet + quarantine.parquet.

    Args:
        raw_dir: directory of raw IMS files (one sub-folder per site, or files at its top).
        out_dir: processed dataset directory; default data/processed/ followed by the name of raw_dir
            (data/raw/demo -> data/processed/demo).
        workers: parallel worker processes (default: all cores).
        batch_size: files per worker task.
        channels: 4 or 8; default inferred from the first valid file.
        follow_symlinks: read files raw_dir links to wherever they are (DVC-style folders); default: links leaving
            raw_dir are quarantined.
    """
    cfg = IngestConfig(
        raw_dir=raw_dir, out_dir=out_dir, batch_size=batch_size, channels=channels, follow_symlinks=follow_symlinks
    )
    out = str(cfg.resolved_out_dir(DataPaths()))
    state = ingest_task(  # cached on the raw tree; re-runs when the outputs no longer match (IngestOutputsPolicy)
        raw_dir=str(Path(raw_dir)),
        out_dir=out,
        raw_fingerprint=tree_fingerprint(raw_dir),
        workers=workers,
        batch_size=batch_size,
        channels=channels,
        follow_symlinks=follow_symlinks,
        return_state=True,
    )
    result = state.result()
    if state.name == "Cached":  # the task logs its summary when it runs; a cache hit did no work: say so
        print(
            f"ingest cached: the raw files are unchanged since {relative(result['out_dir'])} was ingested "
            f"({result['summary']})"
        )
    return result
