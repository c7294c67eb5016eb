"""Client files and manifest of one partitioning scheme.

Layout, under a processed dataset directory ``OUT``::

    OUT/clients/<scheme>/client_<k>.parquet   timestamp, file, site, path, <input columns>, split
    OUT/clients/<scheme>/manifest.json        PartitionManifest

Each client's rows are in time order; ``holdout_fraction`` of them have ``split="holdout"`` (:func:`holdout_mask`:
the latest in time, or spread evenly over time with ``holdout_mode="interleaved"``): they are never trained on and
serve for evaluation and threshold calibration. Files are written atomically, the
manifest last, then client files left over from a previous run with more clients are deleted — so a reader that
goes through the manifest always sees a complete, consistent set.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.fingerprint import sha256_file
from bearing_core.inputs import META_COLUMNS
from bearing_core.io import write_json_atomic, write_parquet_atomic

CLIENTS_DIR = "clients"
MANIFEST_FILE = "manifest.json"
SPLIT_TRAIN = "train"
SPLIT_HOLDOUT = "holdout"
_SCHEME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CLIENT_FILE_RE = re.compile(r"^client_\d+\.parquet$")


class ClientEntry(BaseModel):
    """One client file of a partitioning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: int = Field(..., ge=0, description="Client index k (file client_<k>.parquet)")
    file: str = Field(..., description="File name, relative to the manifest's directory")
    train_rows: int = Field(..., ge=0, description="Rows with split='train'")
    holdout_rows: int = Field(..., ge=0, description="Rows with split='holdout'")
    sites: list[str] = Field(..., description="Sites present in this client's rows")
    sha256: str = Field(..., description="SHA-256 of the client file")


class PartitionManifest(BaseModel):
    """What a partitioning is: how it was made and what each client received."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: str = Field(..., description="Scheme name = sub-directory of clients/ (normally the partitioner name)")
    params: dict[str, Any] = Field(..., description="Partitioner parameters")
    seed: int = Field(..., description="Seed of the partitioning")
    num_clients: int = Field(..., ge=1)
    input_columns: list[str] = Field(..., description="Model input columns present in every client file")
    holdout_fraction: float = Field(..., ge=0, lt=1)
    holdout_mode: Literal["last", "interleaved"] = Field("last", description="Which rows are held out (holdout_mask)")
    clients: list[ClientEntry]
    provenance: dict[str, str] = Field(
        default_factory=dict, description="Fingerprints of what the partitioning was made from (content hashes)"
    )

    @property
    def sizes(self) -> list[int]:
        """Total rows per client."""
        return [c.train_rows + c.holdout_rows for c in self.clients]


def scheme_dir(dataset_dir: str | os.PathLike[str], scheme: str) -> Path:
    """``<dataset_dir>/clients/<scheme>`` (the scheme name is checked: no path separators)."""
    if not _SCHEME_RE.match(scheme):
        raise ValueError(f"invalid scheme name {scheme!r}: use letters, digits, '_', '-', '.'")
    return Path(dataset_dir) / CLIENTS_DIR / scheme


def holdout_size(n_rows: int, holdout_fraction: float) -> int:
    """Rows held out of ``n_rows``: ``ceil(fraction × n)``, but always leaving at least one training row."""
    if holdout_fraction <= 0 or n_rows <= 1:
        return 0
    return min(math.ceil(holdout_fraction * n_rows), n_rows - 1)


def holdout_mask(n_rows: int, holdout_fraction: float, mode: str = "last") -> np.ndarray:
    """Which of ``n_rows`` time-ordered rows are held out: :func:`holdout_size` of them, either the last ones
    (``"last"``) or spread evenly (``"interleaved"``: the ``j``-th of ``m`` held-out rows is row
    ``floor((j + 1) · n / m) − 1``, so every 5th row at 0.2, and always the last row)."""
    n_hold = holdout_size(n_rows, holdout_fraction)
    mask = np.zeros(n_rows, dtype=bool)
    if mode == "last":
        mask[n_rows - n_hold :] = True
    elif mode == "interleaved":
        mask[(np.arange(1, n_hold + 1) * n_rows) // max(n_hold, 1) - 1] = True
    else:
        raise ValueError(f"holdout mode must be 'last' or 'interleaved', got {mode!r}")
    return mask


def _check_parts(parts: Sequence[np.ndarray], n_rows: int) -> None:
    if not parts:
        raise ValueError("no partitions to write")
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
    if flat.size and (flat.min() < 0 or flat.max() >= n_rows):
        raise ValueError(f"partition indices out of range [0, {n_rows})")
    if np.unique(flat).size != flat.size:
        raise ValueError("partitions overlap: a row is assigned to more than one client")
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ValueError(f"clients {empty} have no rows")


def write_partitions(
    df: pd.DataFrame,
    parts: Sequence[np.ndarray],
    out_dir: str | os.PathLike[str],
    scheme: str,
    input_cols: Sequence[str],
    params: dict[str, Any],
    seed: int,
    holdout_fraction: float,
    provenance: dict[str, str] | None = None,
    holdout_mode: str = "last",
) -> PartitionManifest:
    """Write ``out_dir/clients/<scheme>/client_<k>.parquet`` for each part and the manifest; return the manifest.

    ``df`` holds the rows (``timestamp, file, site, path`` and ``input_cols``), ``parts`` positional row indices
    per client (disjoint, non-empty). Output is a pure function of the arguments (no clock, no randomness).
    """
    missing = [c for c in (*META_COLUMNS, *input_cols) if c not in df.columns]
    if missing:
        raise ValueError(f"write_partitions: columns {missing} not in data; available: {', '.join(df.columns)}")
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    _check_parts(parts, len(df))
    target = scheme_dir(out_dir, scheme)
    target.mkdir(parents=True, exist_ok=True)
    columns = [*META_COLUMNS, *input_cols]
    entries: list[ClientEntry] = []
    for k, idx in enumerate(parts):
        rows = df.iloc[np.sort(np.asarray(idx, dtype=np.int64))][columns]
        rows = rows.sort_values(["timestamp", "site", "path"], kind="stable").reset_index(drop=True)
        held = holdout_mask(len(rows), holdout_fraction, holdout_mode)
        n_hold = int(held.sum())
        split = np.where(held, SPLIT_HOLDOUT, SPLIT_TRAIN).astype(object)
        table = pa.Table.from_pandas(rows, preserve_index=False).append_column("split", pa.array(split, pa.string()))
        name = f"client_{k}.parquet"
        write_parquet_atomic(target / name, table)
        entries.append(
            ClientEntry(
                client_id=k,
                file=name,
                train_rows=len(rows) - n_hold,
                holdout_rows=n_hold,
                sites=sorted(map(str, pd.unique(rows["site"].astype(str)))),
                sha256=sha256_file(target / name),
            )
        )
    manifest = PartitionManifest(
        scheme=scheme,
        params=params,
        seed=seed,
        num_clients=len(parts),
        input_columns=list(input_cols),
        holdout_fraction=holdout_fraction,
        holdout_mode=holdout_mode,
        clients=entries,
        provenance=provenance or {},
    )
    write_json_atomic(target / MANIFEST_FILE, manifest.model_dump(mode="json"))
    keep = {e.file for e in entries}
    for stale in target.iterdir():
        if _CLIENT_FILE_RE.match(stale.name) and stale.name not in keep:
            stale.unlink()
    return manifest


def load_manifest(path: str | os.PathLike[str]) -> PartitionManifest:
    """Read a manifest, given its path or its scheme directory."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"partition manifest not found: {path}")
    return PartitionManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))


def read_client(scheme_path: str | os.PathLike[str], client_id: int, split: str | None = None) -> pd.DataFrame:
    """Rows of client ``client_id`` of the scheme in ``scheme_path`` (optionally only ``split`` train/holdout)."""
    path = Path(scheme_path) / f"client_{client_id}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"client file not found: {path}")
    if split not in (None, SPLIT_TRAIN, SPLIT_HOLDOUT):
        raise ValueError(f"split must be '{SPLIT_TRAIN}', '{SPLIT_HOLDOUT}' or None, got {split!r}")
    filters = None if split is None else [("split", "==", split)]
    return pq.read_table(path, filters=filters).to_pandas()


def manifest_is_current(path: str | os.PathLike[str], provenance: dict[str, str]) -> bool:
    """True when the manifest at ``path`` exists, records ``provenance``, and every client file matches its hash."""
    try:
        manifest = load_manifest(path)
    except (FileNotFoundError, ValueError):
        return False
    if manifest.provenance != provenance:
        return False
    base = Path(path) if Path(path).is_dir() else Path(path).parent
    return all((base / c.file).is_file() and sha256_file(base / c.file) == c.sha256 for c in manifest.clients)
