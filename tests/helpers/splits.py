"""Evaluation splits of synthetic samples for the experiments and report tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bearing_core.experiments import (
    EvaluationSplit,
    block_holdout_split,
)

CHANNELS = ("B1_a", "B1_b", "B2_a", "B2_b", "B3_a", "B3_b", "B4_a", "B4_b")


def samples_split(n_rows: int = 2000, blocks: int = 10, seed: int = 0) -> EvaluationSplit:
    """A samples-mode split of synthetic raw samples (8 correlated channels in g), cut like the seed preset."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_rows, 2))
    mixing = rng.normal(size=(2, len(CHANNELS)))
    values = 0.1 * latent @ mixing + 0.01 * rng.normal(size=(n_rows, len(CHANNELS)))
    rows = pd.DataFrame(values.astype(np.float32), columns=list(CHANNELS))
    stamp = pd.Timestamp("2003-10-22 12:14:13").as_unit("us")
    rows.insert(0, "timestamp", stamp)
    rows.insert(1, "file", "2003.10.22.12.14.13")
    rows.insert(2, "site", "1st_test")
    rows.insert(3, "path", "1st_test/2003.10.22.12.14.13")
    train_pos, eval_pos = block_holdout_split(n_rows, blocks, 0.2)
    return EvaluationSplit(
        train=rows.iloc[train_pos].reset_index(drop=True),
        eval=rows.iloc[eval_pos].reset_index(drop=True),
        columns=list(CHANNELS),
        description="synthetic samples",
        train_position=train_pos,
        eval_position=eval_pos,
    )
