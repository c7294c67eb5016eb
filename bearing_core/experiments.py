"""Experiment grids: the same data, seeds, epochs and evaluation set for every training recipe, then one table.

A *grid* (:class:`GridConfig`) is a training recipe shared by all experiments plus a list of
:class:`ExperimentSpec` (centralized baseline, or a Flower strategy on a partitioning). Two presets:

``seed``
    the reference notebook as it was actually run: raw samples of the real IMS 1st-test files
    2003.10.22.12.14.13 and 2003.10.22.12.19.13 (40,960 rows of 8 channels, no scaling), 10 clients, widths
    8→16→4→16→8 with ReLU, Adam lr 1e-3, batch 128, 1 local epoch, 20 rounds, FedAvg weighted by samples,
    threshold = 95th percentile of the per-sample evaluation MSE.
``demo``
    the synthetic multi-site data (``generate_demo``), per-snapshot ``mean_abs`` inputs (scaled), the project's
    training defaults, one more experiment with the natural partition (one client per site), and detection
    results against the ground truth.

**One evaluation set per dataset** (:class:`EvaluationSplit`). The union of the clients' holdout rows depends on
the partition, so it cannot compare partitions. The evaluation set E is carved out *before* partitioning and is the
same for every experiment: seed preset — the rows are cut into 10 contiguous equal blocks and the last 20 % of each
block (in time order) is E, the notebook's 80/20 in-order split of its IID clients; demo preset — the last 20 % in
time of each site's healthy period. Only the remaining rows T are partitioned and trained on.

In each Flower run E is dealt out to the clients as their ``holdout`` split (by site for the natural partition,
else contiguous shares proportional to the clients' train rows), so every round's example-weighted global
``eval_mse`` *is* the MSE of that round's global model over all of E, and the federated threshold calibration
(clients' error sketches) runs on E as well. The centralized baseline trains on T and is evaluated on E every
round. The final numbers (:class:`ExperimentResult`) are recomputed from each final model on T and E directly.

Everything here is plain Python (no Prefect): :mod:`flows.experiments` composes it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bearing_core.fingerprint import sha256_file
from bearing_core.inputs import (
    META_COLUMNS,
    InputConfig,
    healthy_period,
    input_columns,
    load_features,
)
from bearing_core.io import write_json_atomic, write_parquet_atomic
from bearing_core.model_io import CENTRALIZED_CLIENT, GLOBAL_CLIENT
from bearing_core.partition import Partitioner, get_partitioner
from bearing_core.partition.base import largest_remainder, split_by_sizes
from bearing_core.partition.writer import (
    MANIFEST_FILE,
    SPLIT_HOLDOUT,
    SPLIT_TRAIN,
    ClientEntry,
    PartitionManifest,
    holdout_size,
    scheme_dir,
)

CENTRALIZED = "centralized"
SEED_FILES = ("2003.10.22.12.14.13", "2003.10.22.12.19.13")
"""The two real IMS 1st-test snapshots the reference notebook trained and evaluated on."""
SEED_SITE = "1st_test"
SUMMARY_COLUMNS = (
    "experiment",
    "final_train_mse",
    "final_eval_mse",
    "final_eval_rmse",
    "rounds_to_5pct",
    "wall_s",
    "threshold",
)
DETECTION_COLUMNS = ("lead_time_hours", "false_alarm_events", "detected")
NOTEBOOK_RESULTS: dict[str, dict[str, str]] = {
    "fedavg-iid": {"eval_mse": "≈ 0.0040", "train_mse": "≈ 0.0039"},
    "fedavg-quantity": {"eval_mse": "≈ 0.0027–0.0037", "train_mse": "≈ 0.0028–0.0038"},
}
"""What the reference notebook reported (final evaluation / train MSE), keyed by the seed preset's experiments."""


class ExperimentSpec(BaseModel):
    """One experiment of a grid: the centralized baseline, or a Flower strategy on one partitioning of T."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Slug: directory names, table key")
    label: str = Field(..., min_length=1, description="Human name in tables and legends, e.g. 'FedAvg IID'")
    kind: Literal["centralized", "federated"] = Field("federated", description="Flower run or centralized baseline")
    strategy: str = Field("fedavg", description="Flower strategy (federated only), see federated.config.STRATEGIES")
    partition: str | None = Field(None, description="Partitioner name (federated only): iid, blocks, quantity, ...")
    params: dict[str, Any] = Field(default_factory=dict, description="Partitioner parameters")
    num_clients: int | None = Field(
        None, ge=1, description="Clients; default: the grid's num_clients (natural: the number of sites)"
    )

    @model_validator(mode="after")
    def _partition_for_federated(self) -> ExperimentSpec:
        if self.kind == "federated" and not self.partition:
            raise ValueError(f"experiment {self.name!r}: a federated experiment needs a partition")
        if self.kind == "centralized" and self.partition:
            raise ValueError(f"experiment {self.name!r}: the centralized baseline takes no partition")
        return self


class GridConfig(BaseModel):
    """The recipe every experiment of a grid shares (same seeds, same total epochs, same evaluation set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["seed", "demo"] = Field(..., description="Which data and defaults")
    rounds: int = Field(20, ge=1, description="Federated rounds (centralized: the same number of 'rounds')")
    local_epochs: int = Field(1, ge=1, description="Epochs per round (total epochs = rounds × local_epochs)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of every local / centralized optimizer")
    batch_size: int = Field(128, ge=1, description="Mini-batch rows")
    hidden: tuple[int, ...] = Field((16, 4, 16), min_length=1, description="Autoencoder hidden widths")
    activation: Literal["relu", "tanh", "elu"] = Field("relu", description="Hidden activation")
    scale: bool = Field(False, description="Standardise inputs with the (federated) mean/std of T")
    seed: int = Field(0, ge=0, description="Seed of partitioning, model initialisation and shuffling")
    num_clients: int = Field(10, ge=1, description="Clients of every partition except 'natural'")
    proximal_mu: float = Field(0.01, ge=0, description="FedProx proximal weight mu")
    server_lr: float = Field(1e-2, gt=0, description="FedAdam server learning rate eta")
    threshold_quantile: float = Field(0.95, gt=0, lt=1, description="Alarm threshold = this quantile of E's errors")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each block / site's healthy rows in E")
    eval_blocks: int | None = Field(
        10, ge=1, description="Seed: E = the last eval_fraction of each of this many equal contiguous blocks"
    )
    mode: Literal["samples", "features"] = Field("samples", description="Model rows: raw samples or snapshots")
    feature: str = Field("mean_abs", description="Per-channel feature used in 'features' mode")
    train_fraction: float = Field(0.5, gt=0, le=1, description="Demo: healthy period = earliest fraction per site")
    experiments: tuple[ExperimentSpec, ...] = Field(..., min_length=1, description="The experiments, in order")

    @model_validator(mode="after")
    def _unique_names(self) -> GridConfig:
        names = [e.name for e in self.experiments]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"experiment names must be unique; repeated: {duplicates}")
        return self

    def federated_config(self, spec: ExperimentSpec, num_clients: int) -> Any:
        """The :class:`~bearing_core.federated.config.FederatedConfig` of one federated experiment."""
        from bearing_core.federated.config import FederatedConfig

        return FederatedConfig(
            strategy=spec.strategy,
            rounds=self.rounds,
            local_epochs=self.local_epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            proximal_mu=self.proximal_mu,
            server_lr=self.server_lr,
            hidden=self.hidden,
            activation=self.activation,
            scale=self.scale,
            seed=self.seed,
            num_clients=num_clients,
            threshold_method="quantile",
            threshold_quantile=self.threshold_quantile,
        )

    def select(self, names: Sequence[str] | None) -> GridConfig:
        """The grid restricted to the experiments called ``names`` (in grid order); ``None`` keeps all."""
        if not names:
            return self
        known = {e.name for e in self.experiments}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"unknown experiments {unknown}; this grid has: {', '.join(e.name for e in self.experiments)}"
            )
        return self.model_copy(update={"experiments": tuple(e for e in self.experiments if e.name in set(names))})


def default_experiments(iid: str, dirichlet_by: str, natural: bool) -> tuple[ExperimentSpec, ...]:
    """Centralized, FedAvg IID, FedAvg quantity skew, FedAvg Dirichlet(0.3), FedProx on both non-IID splits,
    FedAdam on quantity skew, and (``natural``) FedAvg with one client per site.

    ``iid`` is the IID partitioner (``blocks`` = the notebook's equal contiguous blocks, ``iid`` = a shuffle);
    ``dirichlet_by`` is the grouping of the Dirichlet shares (``site``, or ``time_block`` for a single site).
    """
    quantity: dict[str, Any] = {}  # resolved per client count by resolve_partitioner (notebook ratios for 10)
    dirichlet = {"alpha": 0.3, "by": dirichlet_by}
    specs = [
        ExperimentSpec(name=CENTRALIZED, label="centralized", kind="centralized"),
        ExperimentSpec(name="fedavg-iid", label="FedAvg IID", partition=iid),
        ExperimentSpec(name="fedavg-quantity", label="FedAvg quantity skew", partition="quantity", params=quantity),
        ExperimentSpec(name="fedavg-dirichlet", label="FedAvg Dirichlet 0.3", partition="dirichlet", params=dirichlet),
        ExperimentSpec(
            name="fedprox-quantity",
            label="FedProx quantity skew",
            strategy="fedprox",
            partition="quantity",
            params=quantity,
        ),
        ExperimentSpec(
            name="fedprox-dirichlet",
            label="FedProx Dirichlet 0.3",
            strategy="fedprox",
            partition="dirichlet",
            params=dirichlet,
        ),
        ExperimentSpec(
            name="fedadam-quantity",
            label="FedAdam quantity skew",
            strategy="fedadam",
            partition="quantity",
            params=quantity,
        ),
    ]
    if natural:
        specs.append(ExperimentSpec(name="fedavg-natural", label="FedAvg natural (site = client)", partition="natural"))
    return tuple(specs)


def seed_grid(rounds: int | None = None) -> GridConfig:
    """The reference notebook's recipe (see the module docstring) with the full default grid."""
    return GridConfig(
        preset="seed",
        rounds=rounds or 20,
        local_epochs=1,
        lr=1e-3,
        batch_size=128,
        hidden=(16, 4, 16),
        activation="relu",
        scale=False,
        num_clients=10,
        threshold_quantile=0.95,
        eval_fraction=0.2,
        eval_blocks=10,
        mode="samples",
        experiments=default_experiments("blocks", "time_block", natural=False),
    )


def demo_grid(rounds: int | None = None, num_clients: int = 10) -> GridConfig:
    """The project's training defaults on the synthetic demo (per-snapshot mean|x|, scaled, ELU, lr 1e-2,
    10 local epochs), healthy period = each site's first half, threshold = the 99.5th percentile of E's errors."""
    return GridConfig(
        preset="demo",
        rounds=rounds or 20,
        local_epochs=10,
        lr=1e-2,
        batch_size=32,
        hidden=(4, 2, 4),
        activation="elu",
        scale=True,
        num_clients=num_clients,
        threshold_quantile=0.995,
        eval_fraction=0.2,
        eval_blocks=None,
        mode="features",
        feature="mean_abs",
        train_fraction=0.5,
        experiments=default_experiments("iid", "site", natural=True),
    )


# ------------------------------------------------------------------------------------------ data and splits


@dataclass
class EvaluationSplit:
    """The rows every experiment trains on (``train`` = T) and is evaluated on (``eval`` = E).

    Both frames hold :data:`~bearing_core.inputs.META_COLUMNS` and the input ``columns``, in time order.
    ``train_position`` / ``eval_position`` are the rows' positions in the whole healthy series (for timelines).
    """

    train: pd.DataFrame
    eval: pd.DataFrame
    columns: list[str]
    description: str
    train_position: np.ndarray
    eval_position: np.ndarray
    dataset_dir: Path | None = None
    ground_truth: Path | None = None
    faulty: pd.DataFrame | None = None
    """Rows known to be defective (demo: snapshots at or after a site's onset), for the reconstruction plot."""

    @property
    def sites(self) -> list[str]:
        return sorted(pd.unique(self.train["site"].astype(str)))

    def X_train(self) -> np.ndarray:
        return self.train[self.columns].to_numpy(np.float64)

    def X_eval(self) -> np.ndarray:
        return self.eval[self.columns].to_numpy(np.float64)


def block_holdout_split(n_rows: int, blocks: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions of T and E: ``blocks`` contiguous equal blocks (``np.array_split``), each split in order, its last
    ``ceil(eval_fraction × block)`` rows to E (the notebook's ``train_test_split(shuffle=False)`` per client)."""
    if not 1 <= blocks <= n_rows:
        raise ValueError(f"need 1 <= blocks <= rows, got {blocks} blocks for {n_rows} rows")
    sizes = np.array([len(p) for p in np.array_split(np.arange(n_rows), blocks)])
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    n_eval = np.array([holdout_size(int(s), eval_fraction) for s in sizes])
    block_of = np.repeat(np.arange(blocks), sizes)
    position = np.arange(n_rows)
    is_eval = position >= (starts + sizes - n_eval)[block_of]
    return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)


def site_holdout_split(rows: pd.DataFrame, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in ``rows``, sorted by time within each site) of T and E: E = the last ``ceil(fraction × n)``
    rows in time of each site (at least one row of each site stays in T)."""
    ordered = rows.reset_index(drop=True)
    rank = ordered.groupby("site", sort=False, observed=True).cumcount().to_numpy()
    size = ordered.groupby("site", sort=False, observed=True)["site"].transform("size").to_numpy()
    n_eval = np.minimum(np.ceil(eval_fraction * size), size - 1)
    is_eval = rank >= size - n_eval
    return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)


def read_seed_rows(raw_dir: str | os.PathLike[str], files: Sequence[str] = SEED_FILES) -> pd.DataFrame:
    """The notebook's rows: every raw sample of ``files`` (in that order) in ``raw_dir``, one row per sample."""
    from bearing_core.config import channel_names
    from bearing_core.ims_reader import read_ims_file

    raw_dir = Path(raw_dir)
    frames = []
    for name in files:
        path = raw_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"seed preset: IMS file {name} not found in {raw_dir} (pass --raw-dir)")
        snapshot = read_ims_file(path)
        channels = channel_names(snapshot.data.shape[1])
        frame = pd.DataFrame(snapshot.data, columns=list(channels))
        frame.insert(0, "timestamp", pd.Timestamp(snapshot.timestamp).as_unit("us"))
        frame.insert(1, "file", name)
        frame.insert(2, "site", SEED_SITE)
        frame.insert(3, "path", f"{SEED_SITE}/{name}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def seed_split(raw_dir: str | os.PathLike[str], grid: GridConfig) -> EvaluationSplit:
    """T and E of the seed preset: the two notebook files' samples, per-block 80/20 in-order split."""
    rows = read_seed_rows(raw_dir)
    columns = [c for c in rows.columns if c not in META_COLUMNS]
    train_pos, eval_pos = block_holdout_split(len(rows), grid.eval_blocks or 1, grid.eval_fraction)
    description = (
        f"{len(rows):,} raw samples (rows) of the IMS 1st-test files {' and '.join(SEED_FILES)}, {len(columns)} "
        f"channels in g, {'standardised' if grid.scale else 'unscaled'}; cut into {grid.eval_blocks} contiguous "
        f"equal blocks, the last {grid.eval_fraction:.0%} of each "
        f"block (in time order) form E ({len(eval_pos):,} rows), the rest T ({len(train_pos):,} rows)"
    )
    return EvaluationSplit(
        train=rows.iloc[train_pos].reset_index(drop=True),
        eval=rows.iloc[eval_pos].reset_index(drop=True),
        columns=columns,
        description=description,
        train_position=train_pos,
        eval_position=eval_pos,
    )


def prepare_demo_dataset(
    out: str | os.PathLike[str],
    raw_dir: str | os.PathLike[str] | None,
    sites: int = 4,
    files: int = 60,
    seed: int = 0,
    n_samples: int | None = None,
) -> tuple[Path, Path | None]:
    """A processed demo dataset under ``out/data``: ``raw_dir`` (or freshly generated demo data) ingested.

    Returns the dataset directory and the ``ground_truth.json`` path (None when ``raw_dir`` has none).
    """
    from bearing_core.config import IMS_SAMPLES_PER_SNAPSHOT, IngestConfig
    from bearing_core.ingest import ingest_directory
    from bearing_core.synthetic import (
        GROUND_TRUTH_FILE,
        generate_demo,
        load_ground_truth,
    )

    out = Path(out)
    samples = n_samples or IMS_SAMPLES_PER_SNAPSHOT
    if raw_dir is None:
        raw = out / "data" / "raw" / "demo"
        if (raw / GROUND_TRUTH_FILE).is_file():  # generated by an earlier run: reuse it only if it is the same
            truth = load_ground_truth(raw)
            have = (len(truth.sites), truth.files_per_site, truth.n_samples, truth.seed)
            if have != (sites, files, samples, seed):
                raise ValueError(
                    f"{raw} holds demo data generated with (sites, files, samples, seed) = {have}, not "
                    f"{(sites, files, samples, seed)}: use another output directory or delete {raw}"
                )
        else:
            generate_demo(
                raw,
                sites=sites,
                files_per_site=files,
                seed=seed,
                n_samples=samples,
                workers=min(2, os.cpu_count() or 1),
            )
    else:
        raw = Path(raw_dir)
    dataset_dir = out / "data" / "processed" / raw.name
    report = ingest_directory(IngestConfig(raw_dir=raw, out_dir=dataset_dir, expected_samples=samples, workers=2))
    if report.quarantined:
        print(f"ingest: {report.summary_line()} (quarantined files are left out)")
    truth = raw / GROUND_TRUTH_FILE
    return dataset_dir, truth if truth.is_file() else None


def demo_split(dataset_dir: str | os.PathLike[str], grid: GridConfig, ground_truth: Path | None) -> EvaluationSplit:
    """T and E of a processed dataset: healthy period per site, E = its last ``eval_fraction`` in time per site."""
    dataset_dir = Path(dataset_dir)
    input_cfg = InputConfig(mode="features", feature=grid.feature, train_fraction=grid.train_fraction)
    columns = input_columns(dataset_dir, input_cfg)
    features = load_features(dataset_dir)
    healthy = healthy_period(features, input_cfg)[[*META_COLUMNS, *columns]]
    healthy = healthy.sort_values(["site", "timestamp"], kind="stable").reset_index(drop=True)
    train_pos, eval_pos = site_holdout_split(healthy, grid.eval_fraction)
    by_time = ["timestamp", "site"]
    train = healthy.iloc[train_pos].sort_values(by_time, kind="stable")
    evaluation = healthy.iloc[eval_pos].sort_values(by_time, kind="stable")
    faulty = None
    if ground_truth is not None:
        from bearing_core.synthetic import load_ground_truth

        truth = load_ground_truth(ground_truth)
        onset = features["site"].astype(str).map({s: t.onset for s, t in truth.sites.items() if t.onset})
        faulty = features[pd.to_datetime(onset).notna() & (features["timestamp"] >= pd.to_datetime(onset))]
        faulty = faulty[[*META_COLUMNS, *columns]].reset_index(drop=True)
    n_sites = healthy["site"].nunique()
    description = (
        f"{len(features):,} snapshots of {n_sites} sites, inputs {', '.join(columns)} (standardised with the "
        f"federated mean/std of T); healthy period = the earliest {grid.train_fraction:.0%} of each site's "
        f"snapshots; E = the last {grid.eval_fraction:.0%} in time of each site's healthy period "
        f"({len(evaluation)} snapshots), T = the rest ({len(train)} snapshots)"
    )
    return EvaluationSplit(
        train=train.reset_index(drop=True),
        eval=evaluation.reset_index(drop=True),
        columns=columns,
        description=description,
        train_position=train.index.to_numpy(),
        eval_position=evaluation.index.to_numpy(),
        dataset_dir=dataset_dir,
        ground_truth=ground_truth,
        faulty=faulty,
    )


# ------------------------------------------------------------------------------------------ client files


def deal_eval_rows(
    evaluation: pd.DataFrame, train_sizes: Sequence[int], partition: str, params: dict[str, Any]
) -> list[np.ndarray]:
    """Which rows of E each client holds as its ``holdout`` split (disjoint, covering E).

    Natural partition: each site's client holds its own site's rows of E. Otherwise contiguous shares of E (time
    order) proportional to the clients' train rows — the notebook's "each client tests on the latest 20 % of its
    own volume", and for equal blocks exactly its per-block split. The global example-weighted eval MSE is the
    MSE over all of E whatever the deal.
    """
    k = len(train_sizes)
    if partition == "natural":
        return get_partitioner("natural", **params).partition(evaluation, k, 0)
    sizes = largest_remainder(len(evaluation), np.asarray(train_sizes, dtype=np.float64), minimum=0)
    return split_by_sizes(np.arange(len(evaluation)), sizes)


def write_experiment_clients(
    split: EvaluationSplit,
    parts: Sequence[np.ndarray],
    eval_parts: Sequence[np.ndarray],
    work_dir: str | os.PathLike[str],
    scheme: str,
    params: dict[str, Any],
    seed: int,
) -> Path:
    """Client files (format of :mod:`bearing_core.partition.writer`) where client ``k`` trains on
    ``split.train[parts[k]]`` and holds ``split.eval[eval_parts[k]]`` as its holdout; returns the scheme dir."""
    target = scheme_dir(work_dir, scheme)
    target.mkdir(parents=True, exist_ok=True)
    columns = [*META_COLUMNS, *split.columns]
    entries: list[ClientEntry] = []
    for k, (idx, eval_idx) in enumerate(zip(parts, eval_parts, strict=True)):
        rows = pd.concat(
            [
                split.train.iloc[np.sort(idx)][columns].assign(split=SPLIT_TRAIN),
                split.eval.iloc[np.sort(eval_idx)][columns].assign(split=SPLIT_HOLDOUT),
            ],
            ignore_index=True,
        )
        rows["timestamp"] = rows["timestamp"].astype("datetime64[us]")
        name = f"client_{k}.parquet"
        write_parquet_atomic(target / name, rows)
        entries.append(
            ClientEntry(
                client_id=k,
                file=name,
                train_rows=len(idx),
                holdout_rows=len(eval_idx),
                sites=sorted(map(str, pd.unique(rows["site"].astype(str)))),
                sha256=sha256_file(target / name),
            )
        )
    manifest = PartitionManifest(
        scheme=scheme,
        params=params,
        seed=seed,
        num_clients=len(entries),
        input_columns=list(split.columns),
        holdout_fraction=len(split.eval) / (len(split.train) + len(split.eval)),
        clients=entries,
        provenance={"holdout": "common evaluation set E dealt to the clients (bearing_core.experiments)"},
    )
    write_json_atomic(target / MANIFEST_FILE, manifest.model_dump(mode="json"))
    keep = {e.file for e in entries}
    for stale in target.glob("client_*.parquet"):
        if stale.name not in keep:
            stale.unlink()
    return target


# ------------------------------------------------------------------------------------------ running


@dataclass
class ExperimentResult:
    """Outcome of one experiment; every ``final_*`` number is the final model's, recomputed on T / E."""

    spec: ExperimentSpec
    metrics: pd.DataFrame
    """Per round (and per client for Flower runs): columns of ``federated.strategies.METRICS_COLUMNS``; the
    experiment's own curve is ``client == "global"`` (Flower) or ``"centralized"``."""
    model_dir: Path
    clients_dir: Path
    wall_s: float
    threshold: float
    train_errors: np.ndarray
    """Per-row MSE of the final model on T (split.train order)."""
    eval_errors: np.ndarray
    """Per-row MSE of the final model on E (split.eval order)."""
    clients: pd.DataFrame
    """Per client: client, train_rows, eval_rows, final_mse (final global model on the client's own train rows)."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    detection: pd.DataFrame | None = None
    scores: pd.DataFrame | None = None

    @property
    def curve(self) -> pd.DataFrame:
        """The experiment's per-round row (global or centralized), sorted by round."""
        rows = self.metrics[self.metrics["client"].astype(str).isin([GLOBAL_CLIENT, CENTRALIZED_CLIENT])]
        return rows.sort_values("round").reset_index(drop=True)

    @property
    def final_train_mse(self) -> float:
        return float(self.train_errors.mean())

    @property
    def final_eval_mse(self) -> float:
        return float(self.eval_errors.mean())

    @property
    def final_eval_rmse(self) -> float:
        return math.sqrt(self.final_eval_mse)


def rounds_to_within(values: Sequence[float], rel: float = 0.05) -> int:
    """The first round (1-based) from which every later value stays within ``rel`` of the last value."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("rounds_to_within needs at least one value")
    outside = np.abs(values - values[-1]) > rel * abs(values[-1])
    hits = np.flatnonzero(outside)
    return int(hits[-1]) + 2 if hits.size else 1


def resolve_partitioner(spec: ExperimentSpec, num_clients: int) -> Partitioner:
    """The partitioner of a federated experiment for ``num_clients`` clients.

    Quantity skew without explicit ratios: the reference notebook's ratios (contiguous) for 10 clients, Zipf-like
    shares for other counts (:func:`bearing_core.federated.simulation.partition_params`).
    """
    from bearing_core.federated.simulation import partition_params

    if spec.partition is None:
        raise ValueError(f"experiment {spec.name!r} has no partition")
    params = dict(spec.params)
    if spec.partition == "quantity" and "ratios" not in params:
        params = {**partition_params("quantity", num_clients), **params}
    return get_partitioner(spec.partition, **params)


def _client_table(owner: np.ndarray, train_errors: np.ndarray, eval_sizes: Sequence[int]) -> pd.DataFrame:
    k = len(eval_sizes)
    rows = np.bincount(owner, minlength=k)
    sse = np.bincount(owner, weights=train_errors, minlength=k)
    return pd.DataFrame(
        {
            "client": np.arange(k),
            "train_rows": rows,
            "eval_rows": np.asarray(eval_sizes),
            "final_mse": sse / np.maximum(rows, 1),
        }
    )


def run_experiment(
    spec: ExperimentSpec,
    grid: GridConfig,
    split: EvaluationSplit,
    work_dir: str | os.PathLike[str],
    resources: Any | None = None,
) -> ExperimentResult:
    """Run one experiment into ``work_dir/models/<name>`` (client files under ``work_dir/clients/<name>``)."""
    from bearing_core.model_io import load_model
    from bearing_core.threshold import load_threshold, snapshot_errors

    work_dir = Path(work_dir)
    model_dir = work_dir / "models" / spec.name
    failures: list[dict[str, Any]] = []
    if spec.kind == "federated":
        assert spec.partition is not None  # validated by ExperimentSpec
        k = spec.num_clients or (len(split.sites) if spec.partition == "natural" else grid.num_clients)
        partitioner = resolve_partitioner(spec, k)
        parts = partitioner.partition(split.train, k, grid.seed)
        eval_parts = deal_eval_rows(split.eval, [len(p) for p in parts], spec.partition, spec.params)
        clients_dir = write_experiment_clients(
            split, parts, eval_parts, work_dir, spec.name, partitioner.params(), grid.seed
        )
        from bearing_core.federated.simulation import run_federated

        result = run_federated(
            clients_dir, grid.federated_config(spec, k), model_dir, resources=resources, baseline=False
        )
        metrics, wall_s, failures = result.metrics, result.wall_s, result.failures
    else:
        parts = [np.arange(len(split.train))]
        eval_parts = [np.arange(len(split.eval))]
        clients_dir = write_experiment_clients(split, parts, eval_parts, work_dir, spec.name, {}, grid.seed)
        metrics, wall_s = _train_centralized(grid, split, model_dir, clients_dir)
    loaded = load_model(model_dir)
    threshold = load_threshold(model_dir).threshold
    train_errors = snapshot_errors(loaded, split.X_train())[0]
    eval_errors = snapshot_errors(loaded, split.X_eval())[0]
    owner = np.empty(len(split.train), dtype=np.int64)
    for client, idx in enumerate(parts):
        owner[idx] = client
    clients = _client_table(owner, train_errors, [len(e) for e in eval_parts])
    detection = scores = None
    if split.dataset_dir is not None and split.ground_truth is not None:
        from bearing_core.evaluation import evaluate_against_ground_truth
        from bearing_core.scoring import score_dataset
        from bearing_core.synthetic import load_ground_truth

        scores = score_dataset(split.dataset_dir, model_dir)
        detection = evaluate_against_ground_truth(scores, load_ground_truth(split.ground_truth))
    return ExperimentResult(
        spec=spec,
        metrics=metrics,
        model_dir=model_dir,
        clients_dir=clients_dir,
        wall_s=wall_s,
        threshold=threshold,
        train_errors=train_errors,
        eval_errors=eval_errors,
        clients=clients,
        failures=failures,
        detection=detection,
        scores=scores,
    )


def _train_centralized(
    grid: GridConfig, split: EvaluationSplit, model_dir: Path, clients_dir: Path
) -> tuple[pd.DataFrame, float]:
    """The baseline: same model, init, optimizer, epochs and scaler statistics as the Flower runs, on all of T,
    evaluated on E every round; saved and calibrated (E's error sketch) like a federated model."""
    import torch

    from bearing_core.autoencoder import ModelConfig
    from bearing_core.federated.strategies import metrics_frame
    from bearing_core.model_io import save_model
    from bearing_core.scaling import Scaler, local_stats
    from bearing_core.threshold import ThresholdConfig, calibrate_from_clients
    from bearing_core.training import TrainConfig, train_centralized

    X_train, X_eval = split.X_train(), split.X_eval()
    scaler = Scaler.from_stats(local_stats(X_train)) if grid.scale else Scaler.identity(len(split.columns))
    model_cfg = ModelConfig(n_inputs=len(split.columns), hidden=grid.hidden, activation=grid.activation)
    train_cfg = TrainConfig(lr=grid.lr, batch_size=grid.batch_size, local_epochs=grid.local_epochs, seed=grid.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Flower client does: comparable wall times, no oversubscription
    try:
        start = time.perf_counter()
        result = train_centralized(
            scaler.transform(X_train), scaler.transform(X_eval), model_cfg, train_cfg, grid.rounds
        )
        wall_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    save_model(
        model_dir,
        result.model,
        model_cfg,
        scaler,
        list(split.columns),
        extra={"trained_by": CENTRALIZED, "grid": grid.model_dump(mode="json", exclude={"experiments"})},
    )
    calibrate_from_clients(model_dir, clients_dir, ThresholdConfig(method="quantile", quantile=grid.threshold_quantile))
    rows = [
        {
            "round": int(h["round"]),
            "client": CENTRALIZED_CLIENT,
            "train_loss": h["train_loss"],
            "eval_mse": h["mse"],
            "eval_rmse": h["rmse"],
            "num_train_examples": len(X_train),
            "num_eval_examples": len(X_eval),
            "wall_s": wall_s / grid.rounds,
        }
        for h in result.history
    ]
    return metrics_frame(rows), wall_s


def run_grid(
    grid: GridConfig,
    split: EvaluationSplit,
    work_dir: str | os.PathLike[str],
    progress: Callable[[ExperimentResult], None] | None = None,
    resources: Any | None = None,
) -> list[ExperimentResult]:
    """Every experiment of ``grid`` on ``split``, in order; ``progress`` is called after each one."""
    results = []
    for spec in grid.experiments:
        result = run_experiment(spec, grid, split, work_dir, resources)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def summary_table(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """One row per experiment: :data:`SUMMARY_COLUMNS`, plus :data:`DETECTION_COLUMNS` and ``faulty_sites`` when
    detection was evaluated (lead time = mean over the detected faulty sites, false alarm events summed)."""
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "experiment": r.spec.name,
            "final_train_mse": r.final_train_mse,
            "final_eval_mse": r.final_eval_mse,
            "final_eval_rmse": r.final_eval_rmse,
            "rounds_to_5pct": rounds_to_within(r.curve["eval_mse"].to_numpy()),
            "wall_s": r.wall_s,
            "threshold": r.threshold,
        }
        if r.detection is not None:
            faulty = r.detection[r.detection["faulty"]]
            caught = faulty[faulty["detected_after_onset"]]
            row["lead_time_hours"] = float(caught["lead_time_hours"].mean()) if len(caught) else float("nan")
            row["false_alarm_events"] = int(r.detection["false_alarm_events"].sum())
            row["detected"] = len(caught)
            row["faulty_sites"] = len(faulty)
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_table(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """All experiments' per-round metrics in one long table (column ``experiment`` first)."""
    return pd.concat([r.metrics.assign(experiment=r.spec.name) for r in results], ignore_index=True)[
        ["experiment", *results[0].metrics.columns]
    ]


def write_results(out_dir: str | os.PathLike[str], grid: GridConfig, results: Sequence[ExperimentResult]) -> Path:
    """``summary.csv``, ``metrics.csv`` (per round), ``clients.csv`` (per client) and ``grid.json`` in ``out_dir``."""
    from bearing_core.io import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clients = pd.concat([r.clients.assign(experiment=r.spec.name) for r in results], ignore_index=True)
    for name, frame in (
        ("summary.csv", summary_table(results)),
        ("metrics.csv", metrics_table(results)),
        ("clients.csv", clients),
    ):
        with atomic_path(out_dir / name, suffix=".csv.tmp") as tmp:
            frame.to_csv(tmp, index=False)
    write_json_atomic(out_dir / "grid.json", json.loads(grid.model_dump_json()))
    return out_dir / "summary.csv"
