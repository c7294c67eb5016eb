"""Processed datasets written field by field for the model-input layer (bearing_core.inputs) and partitioning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bearing_core.config import IMS_CHANNELS_8, IMS_SAMPLES_PER_SNAPSHOT

FEATURES = ("mean_abs", "rms", "kurtosis")


def write_dataset(
    root: Path,
    sites: dict[str, int],
    channels: tuple[str, ...] = IMS_CHANNELS_8,
    quarantined: tuple[str, ...] = (),
    features: pd.DataFrame | None = None,
) -> Path:
    """A minimal processed dataset (the ingest contract): features.parquet, quarantine.parquet, dataset.json.

    Site ``s`` gets ``sites[s]`` snapshots, 10 minutes apart, sites interleaved in time; every value is distinct.
    """
    if features is None:
        frames = []
        for s, (site, n) in enumerate(sites.items()):
            ts = pd.Timestamp("2004-02-12 10:00") + pd.to_timedelta(np.arange(n) * 10 + s, unit="min")
            files = ts.strftime("%Y.%m.%d.%H.%M.%S")
            frame = pd.DataFrame(
                {
                    "timestamp": ts.astype("datetime64[us]"),
                    "file": files,
                    "site": site,
                    "path": [f"{site}/{f}" for f in files],
                }
            )
            for c, ch in enumerate(channels):
                for f, feat in enumerate(FEATURES):
                    frame[f"{ch}_{feat}"] = 1000.0 * s + np.arange(n) + 0.01 * c + 0.001 * f
            frames.append(frame)
        features = pd.concat(frames).sort_values(["timestamp", "site"]).reset_index(drop=True)
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(features, preserve_index=False), root / "features.parquet")
    quarantine = pd.DataFrame(
        {"file": list(quarantined), "reason": "line 17: 7 columns, expected 8", "stage": "ingest"},
        columns=["file", "reason", "stage"],
    )
    pq.write_table(pa.Table.from_pandas(quarantine, preserve_index=False), root / "quarantine.parquet")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": root.name,
                "channels": list(channels),
                "expected_samples": IMS_SAMPLES_PER_SNAPSHOT,
                "fs_hz": 20000.0,
                "features": list(FEATURES),
                "sites": sorted(sites),
                "rig": {},
            }
        )
    )
    return root


def write_samples(root: Path, rel: str, data: np.ndarray, channels: tuple[str, ...], ts: str) -> None:
    """One samples/<rel>.parquet file as ingest writes it (timestamp column + float32 channels + metadata)."""
    table = pa.table(
        {
            "timestamp": pa.array(np.full(len(data), np.datetime64(ts, "us")), pa.timestamp("us")),
            **{ch: pa.array(data[:, i].astype(np.float32)) for i, ch in enumerate(channels)},
        }
    )
    site = rel.split("/")[0] if "/" in rel else root.name
    table = table.replace_schema_metadata({"file": rel.split("/")[-1], "site": site, "path": rel, "timestamp": ts})
    path = root / "samples" / f"{rel}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
