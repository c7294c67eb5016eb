"""The partitioner interface: how the healthy rows of one dataset are split among simulated clients.

Modelled on ``flwr-datasets``: one small class per strategy over this base. A partitioner only computes row
indices; :mod:`bearing_core.partition.writer` turns them into client files.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import pandas as pd


class Partitioner(ABC):
    """Split the rows of a DataFrame among ``num_clients`` clients.

    :meth:`partition` returns one sorted ``int64`` array of *positional* row indices (``0 .. len(df) - 1``) per
    client. Every implementation here returns disjoint parts that together cover every row, and every client gets
    at least one row. Results depend only on ``df``, ``num_clients``, ``seed`` and the partitioner's parameters.

    Subclasses are frozen dataclasses; their fields are the parameters recorded in the partition manifest.
    """

    name: ClassVar[str]

    @abstractmethod
    def partition(self, df: pd.DataFrame, num_clients: int, seed: int) -> list[np.ndarray]:
        """Row indices per client."""

    def params(self) -> dict[str, Any]:
        """The partitioner's parameters, JSON-ready."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_sizes(n_rows: int, num_clients: int, who: str) -> None:
    """Raise a clear error unless ``1 <= num_clients <= n_rows``."""
    if num_clients < 1:
        raise ValueError(f"{who}: num_clients must be >= 1, got {num_clients}")
    if num_clients > n_rows:
        raise ValueError(f"{who}: more clients ({num_clients}) than rows ({n_rows}); every client needs a row")


def split_by_sizes(order: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """Cut ``order`` into consecutive parts of the given ``sizes`` (which sum to ``len(order)``), each sorted."""
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(part).astype(np.int64) for part in np.split(np.asarray(order, dtype=np.int64), cuts)]


def largest_remainder(total: int, weights: np.ndarray, minimum: int = 0) -> np.ndarray:
    """Integer sizes summing to ``total`` in proportion to ``weights`` (Hamilton's method), each ``>= minimum``.

    Sizes below ``minimum`` are topped up from the currently largest sizes.
    """
    weights = np.asarray(weights, dtype=np.float64)
    exact = weights / weights.sum() * total
    sizes = np.floor(exact).astype(np.int64)
    shortfall = total - int(sizes.sum())
    if shortfall:
        sizes[np.argsort(-(exact - sizes), kind="stable")[:shortfall]] += 1
    if minimum * len(sizes) > total:
        raise ValueError(f"cannot give {len(sizes)} clients at least {minimum} row(s) each out of {total}")
    for k in np.flatnonzero(sizes < minimum):
        need = minimum - sizes[k]
        sizes[k] = minimum
        while need:
            donor = int(np.argmax(sizes))
            give = min(need, int(sizes[donor]) - minimum)
            sizes[donor] -= give
            need -= give
    return sizes
