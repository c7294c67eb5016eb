"""Quantity-skew partitioning: fixed, unequal shares of the rows per client.

The default ratios are the reference notebook's 10 clients (30 %, 5 %, 12 %, ... 1 %). Sizes are the ratios times
the row count, rounded by the largest-remainder method so they sum exactly to the row count; every client gets at
least one row (taken from the largest clients when a tiny ratio would round to zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from bearing_core.partition.base import Partitioner, check_sizes, largest_remainder, split_by_sizes

NOTEBOOK_RATIOS = (0.30, 0.05, 0.12, 0.10, 0.09, 0.08, 0.08, 0.07, 0.10, 0.01)


@dataclass(frozen=True)
class QuantityPartitioner(Partitioner):
    """Client ``k`` gets a share ``ratios[k]`` of the rows: contiguous slices in row order, or a seeded shuffle."""

    name: ClassVar[str] = "quantity"
    ratios: tuple[float, ...] = NOTEBOOK_RATIOS
    shuffle: bool = False

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.ratios)
        object.__setattr__(self, "ratios", ratios)
        if not ratios or any(r <= 0 for r in ratios):
            raise ValueError(f"quantity: ratios must be positive, got {ratios}")
        if abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"quantity: ratios must sum to 1, they sum to {sum(ratios):.6g}")

    def partition(self, df: pd.DataFrame, num_clients: int, seed: int) -> list[np.ndarray]:
        if num_clients != len(self.ratios):
            raise ValueError(f"quantity: {len(self.ratios)} ratios given but num_clients={num_clients}")
        check_sizes(len(df), num_clients, self.name)
        sizes = largest_remainder(len(df), np.asarray(self.ratios), minimum=1)
        order = np.random.default_rng(seed).permutation(len(df)) if self.shuffle else np.arange(len(df))
        return split_by_sizes(order, sizes)
