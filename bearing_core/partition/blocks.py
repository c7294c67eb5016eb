"""Block partitioning: contiguous, equally sized blocks of rows in their current order (±1 row).

On a time-sorted frame, client ``k`` gets the ``k``-th slice of time: the split used by the reference notebook
reproduction. Deterministic; the seed is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from bearing_core.partition.base import Partitioner, check_sizes


@dataclass(frozen=True)
class BlockPartitioner(Partitioner):
    """Client ``k`` gets rows ``[k·n/K, (k+1)·n/K)`` (``np.array_split`` boundaries)."""

    name: ClassVar[str] = "blocks"

    def partition(self, df: pd.DataFrame, num_clients: int, seed: int) -> list[np.ndarray]:
        check_sizes(len(df), num_clients, self.name)
        return [part.astype(np.int64) for part in np.array_split(np.arange(len(df)), num_clients)]
