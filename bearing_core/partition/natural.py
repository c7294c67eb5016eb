"""Natural partitioning: one client per value of a grouping column (by default one client per site).

This is the realistic federated setting: each site (plant, machine) keeps its own data. ``num_clients`` must
equal the number of groups — a mismatch is an error rather than a silent merge or split. Clients are numbered in
sorted group order; the seed is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from bearing_core.partition.base import Partitioner


@dataclass(frozen=True)
class NaturalPartitioner(Partitioner):
    """Client ``k`` holds every row of the ``k``-th group (sorted) of column ``by``."""

    name: ClassVar[str] = "natural"
    by: str = "site"

    def groups(self, df: pd.DataFrame) -> list[str]:
        """The group values, in client order."""
        if self.by not in df.columns:
            raise ValueError(f"natural: column '{self.by}' not in data; available: {', '.join(map(str, df.columns))}")
        return sorted(pd.unique(df[self.by].astype(str)))

    def partition(self, df: pd.DataFrame, num_clients: int, seed: int) -> list[np.ndarray]:
        groups = self.groups(df)
        if num_clients != len(groups):
            raise ValueError(
                f"natural: partitioning by '{self.by}' gives {len(groups)} clients ({', '.join(groups)}), "
                f"but num_clients={num_clients}"
            )
        codes = pd.Categorical(df[self.by].astype(str), categories=groups).codes
        order = np.argsort(codes, kind="stable")
        cuts = np.cumsum(np.bincount(codes, minlength=len(groups)))[:-1]
        return [part.astype(np.int64) for part in np.split(order, cuts)]
