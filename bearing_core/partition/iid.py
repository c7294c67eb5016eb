"""IID partitioning: a seeded shuffle cut into equal parts (sizes differ by at most one row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from bearing_core.partition.base import Partitioner, check_sizes


@dataclass(frozen=True)
class IidPartitioner(Partitioner):
    """Every client gets a uniformly random, equally sized share of the rows."""

    name: ClassVar[str] = "iid"

    def partition(self, df: pd.DataFrame, num_clients: int, seed: int) -> list[np.ndarray]:
        check_sizes(len(df), num_clients, self.name)
        order = np.random.default_rng(seed).permutation(len(df))
        return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_clients)]
