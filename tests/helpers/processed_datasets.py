"""Processed datasets in the shared contract format (samples/<rel>.parquet, features.parquet, dataset.json)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bearing_core.config import RigConfig, channel_names
from bearing_core.features import FEATURES, compute_features_batch, feature_columns

N_SAMPLES = 2_048


T0 = pd.Timestamp("2004-02-12 10:32:39")


def _write_samples(out: Path, rel: str, ts: pd.Timestamp, x: np.ndarray, channels: Sequence[str]) -> None:
    cols: dict[str, pa.Array] = {"timestamp": pa.array(np.full(len(x), ts.to_datetime64()), pa.timestamp("us"))}
    cols |= {c: pa.array(x[:, k].astype(np.float32)) for k, c in enumerate(channels)}
    path = out / "samples" / f"{rel}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def write_dataset(
    out: Path,
    sites: dict[str, int],
    n_samples: int = N_SAMPLES,
    n_channels: int = 4,
    interval_min: float = 10.0,
    scale: Callable[[str, int], float] = lambda site, i: 1.0,
    quarantine_rows: Sequence[tuple[str, str, str]] = (),
    seed: int = 0,
) -> list[str]:
    """Write a processed dataset (shared contract) of Gaussian vibration snapshots; return the paths in order.

    ``scale(site, i)`` multiplies snapshot ``i`` of ``site`` (e.g. 0.01 for a shut-down snapshot); features
    come from :func:`bearing_core.features.compute_features_batch`, as in ingest.
    """
    rng = np.random.default_rng(seed)
    channels = channel_names(n_channels)
    rows = []
    for site, n in sites.items():
        x = rng.normal(0.0, 0.08, (n, n_samples, n_channels))
        x *= np.array([scale(site, i) for i in range(n)])[:, None, None]
        x = x.astype(np.float32)
        feats = compute_features_batch(x, RigConfig()).reshape(n, -1)
        for i in range(n):
            ts = T0 + pd.Timedelta(minutes=interval_min * i)
            name = ts.strftime("%Y.%m.%d.%H.%M.%S")
            rel = f"{site}/{name}"
            _write_samples(out, rel, ts, x[i], channels)
            rows.append({"timestamp": ts, "file": name, "site": site, "path": rel,
                         **dict(zip(feature_columns(channels), feats[i]))})  # fmt: skip
    df = pd.DataFrame(rows).sort_values(["timestamp", "site"], kind="stable").reset_index(drop=True)
    df["timestamp"] = df["timestamp"].astype("datetime64[us]")
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), out / "features.parquet")
    quarantine = pa.table({k: pa.array([r[j] for r in quarantine_rows], pa.string())
                           for j, k in enumerate(("file", "reason", "stage"))})  # fmt: skip
    pq.write_table(quarantine, out / "quarantine.parquet")
    meta = {"name": out.name, "channels": list(channels), "expected_samples": n_samples, "fs_hz": 20_000.0,
            "features": list(FEATURES), "sites": sorted(sites), "rig": RigConfig().model_dump()}  # fmt: skip
    (out / "dataset.json").write_text(json.dumps(meta))
    return df["path"].tolist()


def rewrite_features(ds: Path, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = ds / "features.parquet"
    pq.write_table(pa.Table.from_pandas(fn(pd.read_parquet(path)), preserve_index=False), path)
