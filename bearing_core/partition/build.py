"""From a processed dataset directory to client files: load, select the healthy period, partition, write.

This is the library side of ``tasks/partition.py`` (and usable without Prefect). The *provenance* of a
partitioning — content hashes of its inputs plus the normalised request — is recorded in the manifest, so a
caller can tell whether the partitioning on disk is exactly the one it would produce now
(:func:`bearing_core.partition.writer.manifest_is_current`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bearing_core.fingerprint import sha256_files
from bearing_core.inputs import (
    DATASET_FILE,
    FEATURES_FILE,
    META_COLUMNS,
    QUARANTINE_FILE,
    InputConfig,
    healthy_period,
    input_columns,
    load_features,
    load_samples_rows,
)
from bearing_core.partition import get_partitioner
from bearing_core.partition.writer import PartitionManifest, write_partitions


def partition_provenance(
    dataset_dir: str | os.PathLike[str],
    scheme: str,
    num_clients: int,
    seed: int,
    input_cfg: InputConfig,
    params: dict[str, Any] | None = None,
    healthy_file: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Content hash of the inputs (features, quarantine, dataset.json) and a fingerprint of the whole request.

    Equivalent requests (e.g. default parameters given explicitly) get the same fingerprint, because the
    partitioner's parameters are normalised by building it.
    """
    dataset_dir = Path(dataset_dir)
    partitioner = get_partitioner(scheme, **(params or {}))
    data_sha = sha256_files(dataset_dir / name for name in (FEATURES_FILE, QUARANTINE_FILE, DATASET_FILE))
    request = {
        "scheme": scheme,
        "params": partitioner.params(),
        "num_clients": num_clients,
        "seed": seed,
        "inputs": input_cfg.model_dump(mode="json"),
        "data_sha256": data_sha,
    }
    if healthy_file is not None:  # a healthy-rows selection (bearing_core.healthy) replaces the healthy period
        request["healthy_sha256"] = sha256_files([Path(healthy_file)])
    fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    return {"data_sha256": data_sha, "fingerprint": fingerprint}


def partition_dataset(
    dataset_dir: str | os.PathLike[str],
    scheme: str,
    num_clients: int,
    seed: int,
    input_cfg: InputConfig,
    params: dict[str, Any] | None = None,
    healthy_file: str | os.PathLike[str] | None = None,
) -> PartitionManifest:
    """Partition the healthy period of ``dataset_dir`` with partitioner ``scheme`` into ``dataset_dir/clients/``.

    Rows are snapshots ('features' mode) or raw time samples of the healthy snapshots ('samples' mode). With
    ``healthy_file`` (a selection of rows by path, :mod:`bearing_core.healthy`) the healthy rows are those it names
    instead of ``input_cfg``'s healthy period.
    """
    partitioner = get_partitioner(scheme, **(params or {}))
    columns = input_columns(dataset_dir, input_cfg)
    if healthy_file is not None:
        from bearing_core.healthy import read_selection, selection_mask

        features = load_features(dataset_dir)
        healthy = features[selection_mask(features, read_selection(healthy_file))].reset_index(drop=True)
        if healthy.empty:
            raise ValueError(f"empty healthy period: {healthy_file} names no row of {dataset_dir}")
    else:
        healthy = healthy_period(load_features(dataset_dir), input_cfg)
    if input_cfg.mode == "samples":
        rows = load_samples_rows(dataset_dir, healthy["path"].tolist())
    else:
        rows = healthy[[*META_COLUMNS, *columns]]
    parts = partitioner.partition(rows, num_clients, seed)
    return write_partitions(
        rows,
        parts,
        dataset_dir,
        scheme,
        columns,
        partitioner.params(),
        seed,
        input_cfg.holdout_fraction,
        provenance=partition_provenance(dataset_dir, scheme, num_clients, seed, input_cfg, params, healthy_file),
        holdout_mode=input_cfg.holdout_mode,
    )
