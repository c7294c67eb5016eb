"""Partitioners: split a dataset's healthy rows among simulated federated clients.

    iid        seeded shuffle, equal sizes (±1)
    quantity   fixed unequal shares (the reference notebook's 10-client ratios by default)
    dirichlet  per-group Dirichlet(alpha) shares (group = site, any column, or time block)
    natural    one client per site (or per value of another column)
    blocks     contiguous equal blocks in time order (reference notebook reproduction)

:func:`get_partitioner` builds one by name; :func:`~bearing_core.partition.writer.write_partitions` writes the
client files and manifest; :func:`~bearing_core.partition.build.partition_dataset` does both from a processed
dataset directory.
"""

from __future__ import annotations

from typing import Any

from bearing_core.partition.base import Partitioner
from bearing_core.partition.blocks import BlockPartitioner
from bearing_core.partition.dirichlet import DirichletPartitioner
from bearing_core.partition.iid import IidPartitioner
from bearing_core.partition.natural import NaturalPartitioner
from bearing_core.partition.quantity import QuantityPartitioner

PARTITIONERS: dict[str, type[Partitioner]] = {
    cls.name: cls
    for cls in (IidPartitioner, QuantityPartitioner, DirichletPartitioner, NaturalPartitioner, BlockPartitioner)
}


def get_partitioner(name: str, **params: Any) -> Partitioner:
    """The partitioner called ``name``, built with ``params`` (unknown names or parameters raise ValueError)."""
    cls = PARTITIONERS.get(name)
    if cls is None:
        raise ValueError(f"unknown partitioner '{name}'; available: {', '.join(PARTITIONERS)}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"partitioner '{name}': bad parameters {sorted(params)} ({exc})") from exc


__all__ = [
    "PARTITIONERS",
    "BlockPartitioner",
    "DirichletPartitioner",
    "IidPartitioner",
    "NaturalPartitioner",
    "Partitioner",
    "QuantityPartitioner",
    "get_partitioner",
]
