"""A tiny processed features-only dataset an autoencoder can learn (federated, training and flow tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bearing_core.config import IMS_CHANNELS_4


def write_feature_dataset(root: Path, rows_per_site: int = 90, sites: tuple[str, ...] = ("site_1", "site_2")) -> Path:
    """A tiny processed dataset (features.parquet + dataset.json): correlated channels, so an AE can learn it."""
    rng = np.random.default_rng(7)
    frames = []
    for offset, site in enumerate(sites):
        stamps = pd.date_range("2004-02-12 10:32:39", periods=rows_per_site, freq="10min").astype("datetime64[us]")
        frame = pd.DataFrame({"timestamp": stamps, "file": stamps.strftime("%Y.%m.%d.%H.%M.%S"), "site": site})
        frame["path"] = site + "/" + frame["file"]
        latent = rng.normal(size=rows_per_site)
        for j, channel in enumerate(IMS_CHANNELS_4):
            noise = 0.002 * rng.normal(size=rows_per_site)
            frame[f"{channel}_mean_abs"] = 0.1 + 0.01 * offset + 0.01 * (j + 1) * latent + noise
        frames.append(frame)
    features = pd.concat(frames).sort_values(["timestamp", "site"]).reset_index(drop=True)
    root.mkdir(parents=True, exist_ok=True)
    features.to_parquet(root / "features.parquet", index=False)
    meta = {
        "name": root.name,
        "channels": list(IMS_CHANNELS_4),
        "expected_samples": 20480,
        "fs_hz": 20000.0,
        "features": ["mean_abs"],
        "sites": list(sites),
        "rig": {},
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
