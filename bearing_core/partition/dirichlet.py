"""Label-skew partitioning with Dirichlet proportions (Hsu et al., 2019; as ``flwr-datasets``' DirichletPartitioner).

Rows are grouped (by site, by any column, or by time block); for each group a proportion vector over clients is
drawn from ``Dirichlet(alpha · 1)`` and the group's rows (shuffled) are cut accordingly. Small ``alpha`` gives each
client few groups (strong skew), large ``alpha`` approaches IID. The whole draw is repeated until every client has
at least ``min_size`` rows.

``by="time_block"`` groups rows into ``time_blocks`` equal blocks of the time order (column ``timestamp``), so
clients see different periods of the healthy run — a proxy for clients that joined at different times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from bearing_core.partition.base import Partitioner, check_sizes

TIME_BLOCK = "time_block"


@dataclass(frozen=True)
class DirichletPartitioner(Partitioner):
    """Per-group Dirichlet(alpha) shares over clients, redrawn until each client has ``min_size`` rows."""

    name: ClassVar[str] = "dirichlet"
    alpha: float = 0.5
    by: str = "site"
    min_size: int = 1
    time_blocks: int = 10
    max_tries: int = 1000

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"dirichlet: alpha must be > 0, got {self.alpha}")
        if self.min_size < 1:
            raise ValueError(f"dirichlet: min_size must be >= 1, got {self.min_size}")
        if self.time_blocks < 1 or self.max_tries < 1:
            raise ValueError("dirichlet: time_blocks and max_tries must be >= 1")

    def group_codes(self, df: pd.DataFrame) -> np.ndarray:
        """Integer group of every row."""
        if self.by == TIME_BLOCK:
            if "timestamp" not in df.columns:
                raise ValueError("dirichlet: by='time_block' needs a 'timestamp' column")
            rank = np.empty(len(df), dtype=np.int64)
            rank[np.argsort(df["timestamp"].to_numpy(), kind="stable")] = np.arange(len(df))
            return rank * self.time_blocks // max(len(df), 1)
        if self.by not in df.columns:
            raise ValueError(f"dirichlet: column '{self.by}' not in data; available: {', '.join(map(str, df.columns))}")
        return pd.factorize(df[self.by], sort=True)[0].astype(np.int64)

    def partition(self, df: pd.DataFrame, num_clients: int, seed: int) -> list[np.ndarray]:
        n = len(df)
        check_sizes(n, num_clients, self.name)
        if self.min_size * num_clients > n:
            raise ValueError(f"dirichlet: {num_clients} clients × min_size {self.min_size} > {n} rows")
        codes = self.group_codes(df)
        groups = [np.flatnonzero(codes == g) for g in np.unique(codes)]
        rng = np.random.default_rng(seed)
        for _ in range(self.max_tries):
            owner = np.empty(n, dtype=np.int64)
            for rows in groups:
                shares = rng.dirichlet(np.full(num_clients, self.alpha))
                cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
                counts = np.diff(cuts, prepend=0, append=len(rows))
                owner[rng.permutation(rows)] = np.repeat(np.arange(num_clients), counts)
            if np.bincount(owner, minlength=num_clients).min() >= self.min_size:
                return [np.flatnonzero(owner == k).astype(np.int64) for k in range(num_clients)]
        raise ValueError(
            f"dirichlet: no draw in {self.max_tries} tries gave every one of {num_clients} clients >= {self.min_size} "
            f"rows (alpha={self.alpha}, {len(groups)} groups of '{self.by}'); raise alpha or lower min_size/num_clients"
        )
