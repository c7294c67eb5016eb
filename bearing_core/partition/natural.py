"""Natural partitioning: one client per value of a grouping column (by default one client per site).

This is the realistic federated setting: each site (plant, machine) keeps its own data. With ``parent=True`` rows are
grouped by the parent of a hierarchical value: the per-bearing layout names its rows' site ``<site>/<bearing>``, and
the client is the site (``<site>``) that holds all its bearings' rows. ``num_clients`` must
equal the number of groups — a mismatch is an error rather than a silent merge or split. Clients are numbered in
sorted group order; the seed is not used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from bearing_core.inputs import DATASET_FILE
from bearing_core.partition.base import Partitioner


@dataclass(frozen=True)
class NaturalPartitioner(Partitioner):
    """Client ``k`` holds every row of the ``k``-th group (sorted) of column ``by`` (of its parent with ``parent``)."""

    name: ClassVar[str] = "natural"
    by: str = "site"
    parent: bool = False

    def _values(self, df: pd.DataFrame) -> pd.Series:
        if self.by not in df.columns:
            raise ValueError(f"natural: column '{self.by}' not in data; available: {', '.join(map(str, df.columns))}")
        values = df[self.by].astype(str)
        return values.str.rpartition("/")[0] if self.parent else values

    def groups(self, df: pd.DataFrame) -> list[str]:
        """The group values, in client order."""
        return sorted(pd.unique(self._values(df)))

    def partition(self, df: pd.DataFrame, num_clients: int, seed: int) -> list[np.ndarray]:
        groups = self.groups(df)
        if num_clients != len(groups):
            raise ValueError(
                f"natural: partitioning by '{self.by}' gives {len(groups)} clients ({', '.join(groups)}), "
                f"but num_clients={num_clients}"
            )
        codes = pd.Categorical(self._values(df), categories=groups).codes
        order = np.argsort(codes, kind="stable")
        cuts = np.cumsum(np.bincount(codes, minlength=len(groups)))[:-1]
        return [part.astype(np.int64) for part in np.split(order, cuts)]


def natural_clients(
    dataset_dir: str | os.PathLike[str], healthy_file: str | os.PathLike[str] | None = None
) -> tuple[int, dict[str, bool], list[str]]:
    """How many clients the natural partition of ``dataset_dir`` gives, its partitioner parameters, and the sites
    left out.

    One client per site of ``dataset.json``; in the per-bearing layout (sites ``<site>/<bearing>``) one client per
    site that holds the bearings (``parent=True``), so a site trains on all its bearings' rows. With
    ``healthy_file`` (a healthy-rows selection, :mod:`bearing_core.healthy`) only the sites with at least one
    selected row are clients: a site whose every bearing is in alarm (or has no row in the window) has nothing to
    train on and is left out of this training (returned, sorted, for the log); no selected row at all is an error.
    """
    from bearing_core.per_bearing import LAYOUT_NAME  # per_bearing imports the partition writer

    path = Path(dataset_dir) / DATASET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {dataset_dir} a processed dataset?")
    meta = json.loads(path.read_text(encoding="utf-8"))
    parent = meta.get("layout") == LAYOUT_NAME
    params = {"parent": True} if parent else {}

    def group(site: str) -> str:
        return site.rpartition("/")[0] if parent else site

    groups = {group(str(s)) for s in meta.get("sites", [])}
    if healthy_file is None:
        return max(1, len(groups)), params, []
    from bearing_core.healthy import read_selection

    chosen = {group(s) for s in pd.unique(read_selection(healthy_file)["site"].astype(str))}
    if not chosen:
        raise ValueError(
            f"no site has a healthy row in {healthy_file}: every bearing of every site is in alarm or "
            "outside the healthy window; clear alarms (bearing alarms clear) or widen the window"
        )
    return len(chosen), params, sorted(groups - chosen)
