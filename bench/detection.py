"""Detection quality benchmark: does the calibrated, debounced alarm catch known failures early, without false alarms?

Run: ``.venv/bin/python -m bench.detection``. Writes the ``## Detection`` section of ``BENCHMARKS.md``.

1. **Demo data** (``generate_demo``: 4 sites x 120 files, seed 0; ingested under ``.bench/detection/``, git-ignored):
   natural partition (one client per site), healthy period = each site's earliest ``--demo-train-fraction`` of files
   (the last 20 % of it held out for calibration), centralized training on the clients' train rows with a scaler
   merged from the clients' statistics, threshold from the clients' holdout sketches, 3-of-3 debounced alarms.
   Feature sets compared: ``mean_abs``; ``env_*`` (envelope band energies at BPFO/BPFI/BSF) as is; ``log10 env_*``;
   ``mean_abs + log10 env_*``. The log transform is applied to a derived copy of ``features.parquet`` (bench only).
   Checked against ``ground_truth.json``: every defect alarmed after onset and before failure, no false alarm.
2. **Real IMS 1st test** (``../shared/ims/features/1st_test_mean_abs.csv``, 2,156 files, bearings 3 and 4 failed),
   trained on the first 20 % of files (30 % for reference). First, the product recipe exactly as a user runs it
   through the ``bearing`` command line (:func:`product_recipe_scores`: ``import-features --per-bearing --log``,
   federated ``train``, ``score``), three seeds, under several alarm rules (k of n, warm-up after stops). Then the
   variants, trained centrally on the clients' train rows: the snapshot layout (8 inputs; bottleneck 2, 3, 4; a
   rolling median of 5 snapshots; common-mode-free inputs, :func:`common_mode_free_dataset`) and the per-bearing
   layout (:mod:`bearing_core.per_bearing`; raw or ln; bottleneck 1 or 2; median of 5); thresholds ``quantile``
   0.995 and ``mean_kstd`` k = 3, calibrated on the last 20 % of the healthy period or interleaved (every 5th row,
   ``InputConfig.holdout_mode``); plus, as a bound and not a detector, the lowest threshold chosen with hindsight
   under which no false alarm fires (:func:`hindsight_threshold`). Reported per detector and rule, next to the
   published anchor (per-bearing mean|x| above the baseline mean + 3σ, recomputed here): first alarm, first alarm
   naming bearing 4 / 3, false alarm events (an alarm that starts before the named bearing's *level onset*,
   :func:`level_onsets`), alarm events on the bearings that did not fail, and from which file the alarm stays on.
   Derived copies of the dataset (log, median, common-mode-free) are bench-only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bearing_core.alarms import AlarmConfig, debounce_alarms
from bearing_core.autoencoder import ModelConfig
from bearing_core.config import IngestConfig
from bearing_core.evaluation import evaluate_against_ground_truth, plot_scores
from bearing_core.features_import import import_features
from bearing_core.ingest import ingest_directory
from bearing_core.inputs import (
    DATASET_FILE,
    FEATURES_FILE,
    QUARANTINE_FILE,
    InputConfig,
)
from bearing_core.io import write_parquet_atomic, write_text_atomic
from bearing_core.model_io import save_model
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import (
    SPLIT_TRAIN,
    read_client,
    scheme_dir,
)
from bearing_core.per_bearing import (
    PerBearingConfig,
    source_site_scores,
    write_per_bearing_dataset,
)
from bearing_core.scaling import Scaler, local_stats, merge_stats
from bearing_core.scoring import update_scores
from bearing_core.synthetic import generate_demo, load_ground_truth
from bearing_core.threshold import (
    ThresholdConfig,
    ThresholdRecord,
    calibrate_from_clients,
)
from bearing_core.training import TrainConfig, train_centralized
from bench.ingest import replace_section

REPO = Path(__file__).resolve().parents[1]
SHARED_CSV = REPO.parent / "shared" / "ims" / "features" / "1st_test_mean_abs.csv"
HEADING = "## Detection"
ENV_FEATURES = ("env_bpfo", "env_bpfi", "env_bsf")


@dataclass(frozen=True)
class Recipe:
    """Training settings of one benchmark run (also the recommended defaults reported to the lead)."""

    activation: str = "elu"
    lr: float = 1e-2
    epochs: int = 200
    batch_size: int = 32
    seed: int = 0

    def describe(self) -> str:
        return (
            f"{self.activation}, Adam lr {self.lr:g}, {self.epochs} epochs, batch {self.batch_size}, seed {self.seed}"
        )


def hidden_layers(n_inputs: int) -> tuple[int, ...]:
    """Notebook shape 8 → 4 → 2 → 4 → 8, widened proportionally for more inputs: n/2 → n/4 → n/2, at least 4 → 1 → 4.

    The bottleneck stays narrower than the input (2 per-bearing inputs → 1), else the model can learn the identity
    and reconstruct anything."""
    return (max(4, n_inputs // 2), max(1, n_inputs // 4), max(4, n_inputs // 2))


def derived_dataset(source: Path, target: Path, features: pd.DataFrame) -> Path:
    """A copy of the dataset ``source`` at ``target`` whose ``features.parquet`` is ``features`` (bench only)."""
    target.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(target / FEATURES_FILE, features)
    for name in (QUARANTINE_FILE, DATASET_FILE):
        shutil.copyfile(source / name, target / name)
    return target


def log_dataset(source: Path, target: Path, columns: list[str]) -> Path:
    """A copy of the dataset ``source`` whose ``columns`` are replaced by their log10 (floored at 1e-12)."""
    features = pd.read_parquet(source / FEATURES_FILE)
    features[columns] = np.log10(np.maximum(features[columns].to_numpy(dtype=np.float64), 1e-12))
    return derived_dataset(source, target, features)


def rolling_median_dataset(source: Path, target: Path, columns: list[str], window: int) -> Path:
    """A copy of the dataset ``source`` whose ``columns`` are replaced by their rolling median over each site's last
    ``window`` snapshots (time order, fewer at the start): what a "median of the last few readings" rule does."""
    features = pd.read_parquet(source / FEATURES_FILE).sort_values(["site", "timestamp"], kind="stable")
    rolled = features.groupby("site", sort=False)[columns].rolling(window, min_periods=1).median()
    features[columns] = rolled.reset_index(level=0, drop=True).loc[features.index, columns]
    return derived_dataset(source, target, features.sort_values(["timestamp", "site"], kind="stable"))


COMMON_MODE_SUFFIX = "rel_log_mean_abs"
LEVEL_COLUMN = "level_log_mean_abs"


def common_mode_free_dataset(source: Path, target: Path, channels: list[str]) -> tuple[Path, list[str]]:
    """A copy of the dataset ``source`` with per-snapshot common-mode-free inputs added (bench only).

    For each snapshot, ``l_c = ln(mean|x|_c)`` (floored at 1e-12) and the common level ``L = mean_c l_c``. Added
    columns: ``<channel>_rel_log_mean_abs = l_c - L`` (they sum to zero per row: a restart or load change that scales
    every channel by the same factor leaves them unchanged, a defect that raises one bearing does not) and
    ``level_log_mean_abs = L``. Returns the dataset directory and the relative columns in channel order.
    """
    features = pd.read_parquet(source / FEATURES_FILE)
    logs = np.log(np.maximum(features[[f"{ch}_mean_abs" for ch in channels]].to_numpy(dtype=np.float64), 1e-12))
    level = logs.mean(axis=1, keepdims=True)
    relative = [f"{ch}_{COMMON_MODE_SUFFIX}" for ch in channels]
    features = features.assign(**dict(zip(relative, (logs - level).T)), **{LEVEL_COLUMN: level[:, 0]})
    return derived_dataset(source, target, features), relative


HOLDOUT_LAST, HOLDOUT_INTERLEAVED = "last", "interleaved"
"""Calibration holdout (``InputConfig.holdout_mode``): the latest 20 % of each client's healthy rows, or 20 % spread
evenly over the healthy period (every 5th row)."""


def calibrate_and_score(
    dataset_dir: Path, model_dir: Path, clients_dir: Path, threshold_cfg: ThresholdConfig
) -> tuple[pd.DataFrame, ThresholdRecord]:
    """Calibrate the model in ``model_dir`` on the clients' holdout rows with ``threshold_cfg`` and score
    ``dataset_dir`` with it (a new threshold invalidates the previous scores)."""
    record = calibrate_from_clients(model_dir, clients_dir, threshold_cfg)
    return update_scores(dataset_dir, model_dir, out=model_dir / "scores.parquet").scores, record


def train_and_score(
    dataset_dir: Path,
    columns: list[str],
    train_fraction: float,
    recipe: Recipe,
    threshold_cfg: ThresholdConfig,
    model_dir: Path,
    hidden: tuple[int, ...] | None = None,
    holdout: str = HOLDOUT_LAST,
) -> tuple[pd.DataFrame, ThresholdRecord, float]:
    """Natural partition → merged scaler → centralized training → holdout calibration → scores. Returns the scores,
    the threshold record and the final training loss. ``hidden`` overrides :func:`hidden_layers`; ``holdout``
    :data:`HOLDOUT_INTERLEAVED` holds out every 5th healthy row instead of the last 20 %."""
    input_cfg = InputConfig(columns=tuple(columns), train_fraction=train_fraction, holdout_mode=holdout)
    n_sites = len(json.loads((dataset_dir / DATASET_FILE).read_text(encoding="utf-8"))["sites"])
    manifest = partition_dataset(dataset_dir, "natural", n_sites, recipe.seed, input_cfg)
    clients_dir = scheme_dir(dataset_dir, "natural")
    train_parts = [
        read_client(clients_dir, c.client_id, split=SPLIT_TRAIN)[columns].to_numpy(np.float64) for c in manifest.clients
    ]
    scaler = Scaler.from_stats(merge_stats([local_stats(x) for x in train_parts]))
    model_cfg = ModelConfig(
        n_inputs=len(columns), hidden=hidden or hidden_layers(len(columns)), activation=recipe.activation
    )
    train_cfg = TrainConfig(lr=recipe.lr, batch_size=recipe.batch_size, local_epochs=recipe.epochs, seed=recipe.seed)
    torch.set_num_threads(1)
    result = train_centralized(scaler.transform(np.concatenate(train_parts)), None, model_cfg, train_cfg, rounds=1)
    save_model(model_dir, result.model, model_cfg, scaler, columns, extra={"bench": "detection"})
    scores, record = calibrate_and_score(dataset_dir, model_dir, clients_dir, threshold_cfg)
    return scores, record, float(result.history[-1]["train_loss"])


def demo_benchmark(
    work: Path, fractions: tuple[float, ...], recipe: Recipe, threshold_cfg: ThresholdConfig
) -> tuple[str, dict[str, pd.DataFrame]]:
    """Markdown of the demo comparison (feature sets x healthy fractions, plus the untuned default recipe) and the
    per-site tables keyed ``"<inputs> @ <fraction>"``."""
    raw, dataset = work / "raw", work / "demo"
    if not (raw / "ground_truth.json").is_file():
        print("generating demo data ...", flush=True)
        generate_demo(raw, workers=2)
    if not (dataset / DATASET_FILE).is_file():
        print("ingesting demo data ...", flush=True)
        ingest_directory(IngestConfig(raw_dir=raw, out_dir=dataset, workers=2))
    truth = load_ground_truth(raw)
    channels = truth.channels
    env_cols = [f"{ch}_{f}" for ch in channels for f in ENV_FEATURES]
    mean_cols = [f"{ch}_mean_abs" for ch in channels]
    logged = log_dataset(dataset, work / "demo_log", env_cols)
    variants = {
        "mean_abs": (dataset, mean_cols),
        "env_* (raw)": (dataset, env_cols),
        "log10 env_*": (logged, env_cols),
        "mean_abs + log10 env_*": (logged, mean_cols + env_cols),
    }
    per_bearing = {
        "per-bearing ln mean_abs": PerBearingConfig(log=True),
        "per-bearing ln (mean_abs + env_*)": PerBearingConfig(features=("mean_abs", *ENV_FEATURES), log=True),
    }
    for name, cfg in per_bearing.items():
        for fraction in fractions:
            written = write_per_bearing_dataset(
                dataset,
                work / f"demo_per_bearing_{len(cfg.features)}_{int(fraction * 100)}",
                InputConfig(train_fraction=fraction),
                cfg,
            )
            variants[f"{name} @ {fraction:g}"] = (written.out_dir, written.input_columns)
    lines = [
        "| inputs | n | healthy fraction | recipe | detected after onset | correct bearing | false alarm snapshots | delay after onset, h (per faulty site) | lead time, h | threshold |",
        "|---|---:|---:|---|---:|---:|---:|---|---|---:|",
    ]
    default_recipe = Recipe(activation="relu", lr=1e-3, epochs=10)
    runs = [(name, fraction, recipe) for fraction in fractions for name in [*variants, *per_bearing] if "@" not in name]
    runs += [(name, fractions[0], default_recipe) for name in ("mean_abs", "log10 env_*")]
    tables: dict[str, pd.DataFrame] = {}
    for name, fraction, run_recipe in runs:
        ds, cols = variants[f"{name} @ {fraction:g}" if name in per_bearing else name]
        start = time.perf_counter()
        key = "".join(c if c.isalnum() else "_" for c in f"{name}_{fraction}_{run_recipe.activation}")
        scores, record, loss = train_and_score(ds, cols, fraction, run_recipe, threshold_cfg, work / "models" / key)
        if name in per_bearing:
            scores = source_site_scores(scores, ds)
        table = evaluate_against_ground_truth(scores, truth)
        if run_recipe == recipe:
            tables[f"{name} @ {fraction:g}"] = table
        faulty = table[table["faulty"]]
        delays = ", ".join("-" if pd.isna(v) else f"{v:.1f}" for v in faulty["delay_after_onset_hours"])
        leads = ", ".join("-" if pd.isna(v) else f"{v:.1f}" for v in faulty["lead_time_hours"])
        recipe_name = "tuned" if run_recipe == recipe else "default (relu, lr 1e-3, 10 epochs)"
        lines.append(
            f"| {name} | {len(cols)} | {fraction:.0%} | {recipe_name} | {int(faulty['detected_after_onset'].sum())}/{len(faulty)} | "
            f"{int(faulty['correct_bearing'].sum())}/{len(faulty)} | {int(table['false_alarm_snapshots'].sum())} | "
            f"{delays} | {leads} | {record.threshold:.3g} |"
        )
        print(
            f"{name} @ {fraction} {run_recipe.activation}: loss {loss:.4f}, threshold {record.threshold:.4g}, "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
        print(table.to_string(), flush=True)
        plot_scores(
            scores,
            None,
            work / f"demo_{key}.png",
            onset={s: t.onset for s, t in truth.sites.items()},
            failure={s: t.failure for s, t in truth.sites.items()},
            title=f"demo, inputs {name}, healthy fraction {fraction:.0%}",
        )
    return "\n".join(lines), tables


def bearing_cli(*args: str) -> None:
    """Run a ``bearing`` sub-command in this process, its printout suppressed; raise when it fails."""
    from cli.main import main as bearing

    with contextlib.redirect_stdout(io.StringIO()):
        if bearing(list(args)) != 0:
            raise RuntimeError(f"bearing {' '.join(args)} failed")


DEMO_PRODUCT_SEEDS = (0, 1, 2)


def demo_product_runs(work: Path, seeds: tuple[int, ...] = DEMO_PRODUCT_SEEDS) -> str:
    """Markdown table: the demo data through the command line with the product's defaults (FedAvg, 20 rounds x 10
    local epochs, 0.995 quantile of the federated holdout sketches, 3 of 3), default layout (8 inputs, one client
    per site, 8-4-2-4-8) next to the per-bearing layout (``bearing per-bearing --log``, one client per bearing,
    2-4-1-4-2), per seed."""
    raw, dataset = work / "raw", work / "demo"
    truth = load_ground_truth(raw)
    per_bearing_dir = work / "demo_cli_per_bearing"
    bearing_cli("per-bearing", str(dataset), "--out", str(per_bearing_dir), "--log")
    n_bearing_sites = len(json.loads((per_bearing_dir / DATASET_FILE).read_text(encoding="utf-8"))["sites"])
    layouts = {
        "default: 8 x mean_abs, 8-4-2-4-8, 4 site-clients": (dataset, ["--clients", "4"]),
        f"per-bearing: (a, b) ln mean_abs, 2-4-1-4-2, {n_bearing_sites} bearing-clients": (
            per_bearing_dir,
            ["--clients", str(n_bearing_sites), "--hidden", "4,1,4"],
        ),
    }
    lines = [
        (
            "| layout | seed | detected after onset | correct bearing | false alarm snapshots | delay after onset, h "
            "(per faulty site) | lead time, h | threshold |"
        ),
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for name, (ds, options) in layouts.items():
        for seed in seeds:
            model = work / "models" / f"demo_cli_{'per_bearing' if ds == per_bearing_dir else 'default'}_seed{seed}"
            bearing_cli("train", str(ds), "--partition", "natural", *options, "--seed", str(seed), "--out", str(model))
            bearing_cli("score", str(ds), "--model", str(model), "--out", str(model / "scores.parquet"))
            scores = pd.read_parquet(model / "scores.parquet")
            threshold = float(scores["threshold"].iloc[0])
            if ds == per_bearing_dir:
                scores = source_site_scores(scores, ds)
            table = evaluate_against_ground_truth(scores, truth)
            faulty = table[table["faulty"]]
            delays = ", ".join("-" if pd.isna(v) else f"{v:.1f}" for v in faulty["delay_after_onset_hours"])
            leads = ", ".join("-" if pd.isna(v) else f"{v:.1f}" for v in faulty["lead_time_hours"])
            lines.append(
                f"| {name} | {seed} | {int(faulty['detected_after_onset'].sum())}/{len(faulty)} | "
                f"{int(faulty['correct_bearing'].sum())}/{len(faulty)} | {int(table['false_alarm_snapshots'].sum())} | "
                f"{delays} | {leads} | {threshold:.3g} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


@dataclass(frozen=True)
class AlarmSeries:
    """Debounced alarms of one scored series (a site) over the IMS files, with the bearing each file's alarm names.

    Snapshot layout: one series, the bearing is the top channel's; per-bearing layout and the anchor: one series per
    bearing, which it names throughout."""

    alarm: np.ndarray
    bearing: np.ndarray


def k_of_n(over: np.ndarray, k: int, n: int) -> np.ndarray:
    """The anchor's debounce: at least ``k`` of the last ``n`` snapshots over (a count, as published)."""
    cumulative = np.concatenate([[0], np.cumsum(over.astype(np.int64))])
    position = np.arange(len(over))
    return cumulative[position + 1] - cumulative[np.maximum(position - n + 1, 0)] >= k


@dataclass(frozen=True)
class Rule:
    """Alarm rule: ``k`` of the last ``n`` snapshots over threshold, optional warm-up after stops (hours)."""

    k: int = 3
    n: int = 3
    warmup_h: float = 0.0

    def describe(self) -> str:
        return f"{self.k} of {self.n}" + (f", {self.warmup_h:g} h warm-up" if self.warmup_h else "")


def alarm_series(scores: pd.DataFrame, n_train: int, rule: Rule) -> list[AlarmSeries]:
    """Alarms of each site of ``scores`` under ``rule`` (every site covers the same files), none in the training
    files. Sites ``<site>/<bearing>`` (per-bearing layout) name their bearing, others their top channel's."""
    series = []
    for site, part in scores.groupby("site", sort=True):
        part = part.sort_values("timestamp").reset_index(drop=True)
        cfg = AlarmConfig(persistence_h=rule.n * 10 / 60, fraction=rule.k / rule.n, warmup_h=rule.warmup_h)
        alarm = debounce_alarms(part, cfg) & (np.arange(len(part)) >= n_train)
        named = part["top_channel"].str.split("_").str[0].to_numpy(dtype=object)
        if "/" in str(site):
            named = np.full(len(part), str(site).rpartition("/")[2], dtype=object)
        series.append(AlarmSeries(alarm=alarm, bearing=named))
    return series


def bearing_levels(features: pd.DataFrame, channels: list[str]) -> dict[str, np.ndarray]:
    """Per bearing, the mean over its channels of ln mean|x| (time order)."""
    levels = {}
    for bearing in sorted({ch.split("_")[0] for ch in channels}):
        columns = [f"{ch}_mean_abs" for ch in channels if ch.split("_")[0] == bearing]
        levels[bearing] = np.log(features[columns].to_numpy(dtype=np.float64)).mean(axis=1)
    return levels


ONSET_WINDOW = 24
"""Snapshots of the rolling median that defines a bearing's level onset (4 h at the IMS 1st test's 10 min)."""


def level_onsets(features: pd.DataFrame, channels: list[str], n_train: int) -> dict[str, int | None]:
    """Per bearing, the first file from which its level (:func:`bearing_levels`, rolling median over
    :data:`ONSET_WINDOW` snapshots) stays above the highest value that rolling median reached in the training
    files, to the end of the test. Computed from the whole test with hindsight and independently of any detector:
    an alarm on a bearing before its level onset is a false alarm (its level was still inside its healthy range
    or came back to it)."""
    onsets = {}
    for bearing, level in bearing_levels(features, channels).items():
        median = pd.Series(level).rolling(ONSET_WINDOW).median().to_numpy()
        above = median > np.nanmax(median[ONSET_WINDOW - 1 : n_train])
        onsets[bearing] = first_persistent(above)
    return onsets


def anchor_series(
    features: pd.DataFrame, channels: list[str], n_baseline: int, k: int = 3, n: int = 3
) -> tuple[list[AlarmSeries], dict[str, int | None]]:
    """The published simple anchor, per bearing: the mean of its channels' mean|x| above the baseline (first
    ``n_baseline`` files) mean + 3σ, debounced ``k`` of ``n``. Returns one series per bearing and each bearing's first
    single exceedance (0-based file index, None: never)."""
    series, first_exceedance = [], {}
    for bearing in sorted({ch.split("_")[0] for ch in channels}):
        level = features[[f"{ch}_mean_abs" for ch in channels if ch.split("_")[0] == bearing]].mean(axis=1).to_numpy()
        base = level[:n_baseline]
        over = (level > base.mean() + 3 * base.std()) & (np.arange(len(level)) >= n_baseline)
        alarm = k_of_n(over, k, n)
        series.append(AlarmSeries(alarm=alarm, bearing=np.full(len(level), bearing, dtype=object)))
        first_exceedance[bearing] = _first(over)
    return series, first_exceedance


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def first_persistent(mask: np.ndarray) -> int | None:
    """First index from which ``mask`` stays true to the end (None when the last value is false)."""
    quiet = np.flatnonzero(~mask)
    start = int(quiet[-1]) + 1 if len(quiet) else 0
    return start if start < len(mask) else None


FAILED = ("B3", "B4")
"""Bearings with a defect at the end of the IMS 1st test."""


def alarm_events(series: list[AlarmSeries]) -> list[tuple[int, str]]:
    """(first file, bearing named there) of every alarm event (a run of alarm files), in time order."""
    return sorted(
        (int(i), str(s.bearing[i])) for s in series for i in np.flatnonzero(s.alarm & ~np.r_[False, s.alarm[:-1]])
    )


def false_alarm_events(series: list[AlarmSeries], onsets: dict[str, int | None]) -> list[tuple[int, str]]:
    """Alarm events that start before the level onset (:func:`level_onsets`) of the bearing they name."""
    return [(i, b) for i, b in alarm_events(series) if onsets.get(b) is None or i < onsets[b]]


def alarm_cells(series: list[AlarmSeries], timestamps: pd.Series, onsets: dict[str, int | None]) -> list[str]:
    """Table cells of one detector: first alarm (file, time, bearing), first alarm naming B4 / B3, false alarm
    events (:func:`false_alarm_events`, by bearing), alarm events on the bearings that did not fail (and the first),
    and in alarm for good from (per bearing for per-bearing series, else for any bearing)."""

    def at(i: int | None, bearing: str = "") -> str:
        if i is None:
            return "never"
        return f"{i} ({timestamps.iloc[i]:%m-%d %H:%M}{', ' + bearing if bearing else ''})"

    def first_naming(wanted: str | None) -> tuple[int | None, str]:
        hits = [
            (i, str(s.bearing[i]))
            for s in series
            if (i := _first(s.alarm & (True if wanted is None else s.bearing == wanted))) is not None
        ]
        return min(hits) if hits else (None, "")

    def counted(events: list[tuple[int, str]]) -> str:
        by_bearing = pd.Series([b for _, b in events], dtype=object).value_counts().sort_index()
        return f"{len(events)}" + (f" ({', '.join(f'{b} {c}' for b, c in by_bearing.items())})" if len(events) else "")

    false = false_alarm_events(series, onsets)
    healthy = [(i, b) for i, b in alarm_events(series) if b not in FAILED]
    others = counted(healthy) + (f", first {healthy[0][0]}" if healthy else "")
    if len(series) == 1:
        good = f"any: {at(first_persistent(series[0].alarm))}"
    else:
        good = ", ".join(f"{s.bearing[0]} {first_persistent(s.alarm)}" for s in series if s.bearing[0] in FAILED)
    return [at(*first_naming(None)), at(first_naming("B4")[0]), at(first_naming("B3")[0]), counted(false), others, good]


def hindsight_threshold(scores: pd.DataFrame, n_train: int, rule: Rule, onsets: dict[str, int | None]) -> float:
    """The lowest threshold (one of the scores) under which ``rule`` raises no false alarm event
    (:func:`false_alarm_events`): chosen knowing the outcome, so not a detector, but the best any calibration rule
    could do with these scores and one global threshold. Bisection: raising the threshold only removes alarms (and
    so false alarm events; an event split in two by a higher threshold starts no earlier than the original)."""

    def quiet(threshold: float) -> bool:
        return not false_alarm_events(
            alarm_series(scores.assign(is_anomaly=scores["score"] > threshold), n_train, rule), onsets
        )

    candidates = np.unique(scores["score"].to_numpy(dtype=np.float64))
    low, high = 0, len(candidates) - 1
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if quiet(candidates[middle]) else (middle + 1, high)
    return float(candidates[low])


@dataclass(frozen=True)
class ImsRun:
    """One detector trained and scored on the IMS 1st test."""

    name: str
    dataset: Path
    inputs: list[str]
    fraction: float = 0.2
    rules: tuple[Rule, ...] = (Rule(),)
    hidden: tuple[int, ...] | None = None
    holdout: str = HOLDOUT_LAST
    thresholds: tuple[ThresholdConfig, ...] = ()
    """Threshold rules calibrated on the same trained model, one table row each (empty: the benchmark's rule)."""
    hindsight: bool = False
    """Add a row with :func:`hindsight_threshold` (3 of 3): the bound on what calibration alone can achieve."""


def calibration_label(cfg: ThresholdConfig, holdout: str, record: ThresholdRecord) -> str:
    """Table cell naming the threshold rule and the healthy rows it was calibrated on."""
    rows = "last 20 % of healthy" if holdout == HOLDOUT_LAST else "every 5th healthy"
    return f"{cfg.describe().replace('quantile ', '')}, {rows} ({record.calibration_size})"


PRODUCT_RULES = (Rule(3, 3), Rule(6, 6), Rule(6, 6, 4.0), Rule(12, 12), Rule(12, 12, 4.0))
PRODUCT_SEEDS = (0, 1, 2)


def product_recipe_scores(work: Path, seed: int) -> tuple[pd.DataFrame, float]:
    """The recipe as a user runs it, through the command line: ``bearing import-features --per-bearing --log``,
    ``bearing train --partition natural --clients 4 --hidden 4,1,4 --seed SEED`` (Flower FedAvg, 20 rounds x 10
    local epochs, threshold from the federated holdout sketches), ``bearing score`` (3 of 3; other rules are applied
    to its ``is_anomaly``). Returns the scores and the threshold."""
    dataset, model = work / "ims_1st_cli_per_bearing_log", work / "models" / f"cli_per_bearing_log_seed{seed}"
    scores_file = model / "scores.parquet"
    bearing_cli("import-features", str(SHARED_CSV), "--out", str(dataset), "--per-bearing", "--log")
    bearing_cli(
        "train",
        str(dataset),
        "--partition",
        "natural",
        "--clients",
        "4",
        "--hidden",
        "4,1,4",
        "--seed",
        str(seed),
        "--out",
        str(model),
    )
    bearing_cli("score", str(dataset), "--model", str(model), "--out", str(scores_file))
    scores = pd.read_parquet(scores_file)
    return scores, float(scores["threshold"].iloc[0])


def ims_benchmark(work: Path, recipe: Recipe, threshold_cfg: ThresholdConfig) -> str:
    """Markdown of the IMS 1st-test comparison: the anchor, the snapshot-layout autoencoder (8 inputs), the
    per-bearing layout (2 inputs per bearing) with the preprocessing, capacity, calibration and alarm-rule variants,
    and the product recipe run through the command line."""
    dataset = work / "ims_1st"
    channels = import_features(SHARED_CSV, dataset, site="1st_test").channels
    cols = [f"{ch}_mean_abs" for ch in channels]
    features = pd.read_parquet(dataset / FEATURES_FILE).sort_values("timestamp").reset_index(drop=True)
    n_base = int(np.ceil(0.2 * len(features)))
    onsets = level_onsets(features, channels, n_base)
    anchor, exceedance = anchor_series(features, channels, n_base)
    header = [
        (
            "| detector | training files | threshold (calibration rows) | alarm rule | first alarm after training (file, "
            "time, bearing) | first alarm naming B4 | first alarm naming B3 | false alarm events (bearing named) | "
            "alarm events naming B1 / B2 (did not fail) | in alarm for good from |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        *header,
        f"| anchor: bearing mean of mean\\|x\\| > baseline mean + 3σ | 0..{n_base - 1} (baseline) | "
        f"mean+3σ, whole baseline ({n_base}) | 3 of 3 | "
        + " | ".join(alarm_cells(anchor, features["timestamp"], onsets))
        + " |",
    ]
    relative_dataset, relative = common_mode_free_dataset(dataset, work / "ims_1st_common_mode_free", channels)
    median_dataset = rolling_median_dataset(dataset, work / "ims_1st_median5", cols, window=5)
    per_bearing = {
        (fraction, log, source.name, holdout): write_per_bearing_dataset(
            source,
            work / f"{source.name}_per_bearing{'_log' if log else ''}_{int(fraction * 100)}_{holdout}",
            InputConfig(train_fraction=fraction, holdout_mode=holdout),
            PerBearingConfig(log=log),
        ).out_dir
        for fraction, log, source, holdout in (
            (0.2, False, dataset, HOLDOUT_LAST),
            (0.2, True, dataset, HOLDOUT_LAST),
            (0.3, True, dataset, HOLDOUT_LAST),
            (0.2, True, median_dataset, HOLDOUT_LAST),
            (0.2, True, dataset, HOLDOUT_INTERLEAVED),
        )
    }
    kstd = ThresholdConfig(method="mean_kstd", k=3.0)
    both = (threshold_cfg, kstd)
    snapshot, pb = "snapshot layout: 8 x mean\\|x\\|", "per-bearing layout: (a, b) mean\\|x\\|"
    relative_name = "snapshot layout: 8 x (ln mean\\|x\\| − channel mean)"
    all_rules = (Rule(3, 3), Rule(5, 6), Rule(6, 6))
    pb_in = ["a_mean_abs", "b_mean_abs"]
    runs = [
        ImsRun(
            f"{snapshot}, 8-4-2-4-8",
            dataset,
            cols,
            rules=all_rules + (Rule(12, 12), Rule(12, 12, 4.0)),
            thresholds=both,
            hindsight=True,
        ),
        ImsRun(f"{snapshot}, 8-4-2-4-8", dataset, cols, rules=all_rules, thresholds=both, holdout=HOLDOUT_INTERLEAVED),
        ImsRun(f"{snapshot}, 8-4-3-4-8", dataset, cols, hidden=(4, 3, 4)),
        ImsRun(f"{snapshot}, 8-6-4-6-8", dataset, cols, hidden=(6, 4, 6)),
        ImsRun(f"{snapshot}, median of 5 snapshots", median_dataset, cols),
        ImsRun(f"{snapshot}, 8-4-2-4-8", dataset, cols, fraction=0.3),
        ImsRun(relative_name, relative_dataset, relative, rules=(Rule(3, 3), Rule(5, 6))),
        ImsRun(relative_name + " + level", relative_dataset, relative + [LEVEL_COLUMN], rules=(Rule(3, 3), Rule(5, 6))),
        ImsRun(relative_name, relative_dataset, relative, fraction=0.3),
        ImsRun(f"{pb}, 2-4-1-4-2", per_bearing[0.2, False, "ims_1st", HOLDOUT_LAST], pb_in, rules=all_rules),
        ImsRun(
            f"{pb}, ln, 2-4-1-4-2",
            per_bearing[0.2, True, "ims_1st", HOLDOUT_LAST],
            pb_in,
            rules=all_rules + (Rule(6, 6, 4.0), Rule(12, 12), Rule(12, 12, 4.0)),
            thresholds=both,
            hindsight=True,
        ),
        ImsRun(
            f"{pb}, ln, 2-4-1-4-2",
            per_bearing[0.2, True, "ims_1st", HOLDOUT_INTERLEAVED],
            pb_in,
            rules=all_rules + (Rule(12, 12, 4.0),),
            thresholds=both,
            holdout=HOLDOUT_INTERLEAVED,
        ),
        ImsRun(
            f"{pb}, ln, 2-4-2-4-2 (no bottleneck)",
            per_bearing[0.2, True, "ims_1st", HOLDOUT_LAST],
            pb_in,
            hidden=(4, 2, 4),
        ),
        ImsRun(
            f"{pb}, ln, median of 5 snapshots, 2-4-1-4-2",
            per_bearing[0.2, True, "ims_1st_median5", HOLDOUT_LAST],
            pb_in,
        ),
        ImsRun(f"{pb}, ln, 2-4-1-4-2", per_bearing[0.3, True, "ims_1st", HOLDOUT_LAST], pb_in, fraction=0.3),
    ]
    notes = []
    for run in runs:
        label = "first 20 %" if run.fraction == 0.2 else "first 30 % (covers the Nov 1-3 stop and restart)"
        key = "".join(c if c.isalnum() else "_" for c in f"{run.name}_{run.fraction}_{run.holdout}").replace("__", "_")
        thresholds = run.thresholds or (threshold_cfg,)
        model_dir = work / "models" / key
        scores, record, loss = train_and_score(
            run.dataset,
            run.inputs,
            run.fraction,
            recipe,
            thresholds[0],
            model_dir,
            hidden=run.hidden,
            holdout=run.holdout,
        )
        n_train = int(np.ceil(run.fraction * len(features)))
        calibrations = []
        for cfg in thresholds:
            if cfg != thresholds[0]:
                scores, record = calibrate_and_score(run.dataset, model_dir, scheme_dir(run.dataset, "natural"), cfg)
            calibration = calibration_label(cfg, run.holdout, record)
            calibrations.append(f"{calibration.partition(' (')[0]}: {record.threshold:.3g}")
            for rule in run.rules:
                cells = alarm_cells(alarm_series(scores, n_train, rule), features["timestamp"], onsets)
                rows.append(
                    f"| {run.name} | {label}: 0..{n_train - 1} | {calibration} | {rule.describe()} | "
                    + " | ".join(cells)
                    + " |"
                )
                print(rows[-1], flush=True)
        if run.hindsight:
            best = hindsight_threshold(scores, n_train, Rule(), onsets)
            series = alarm_series(scores.assign(is_anomaly=scores["score"] > best), n_train, Rule())
            rows.append(
                f"| {run.name} | {label}: 0..{n_train - 1} | *hindsight, not a detector*: lowest with no "
                f"false alarm ({best:.3g}) | 3 of 3 | "
                + " | ".join(alarm_cells(series, features["timestamp"], onsets))
                + " |"
            )
            print(rows[-1], flush=True)
        notes.append(
            f"{run.name.replace(chr(92), '')}, {label}: threshold {'; '.join(calibrations)}, final train "
            f"loss {loss:.3g}"
        )
        plot_scores(
            scores,
            None,
            work / f"{key}.png",
            failure=scores["timestamp"].max().to_pydatetime(),
            title=f"IMS 1st test, {run.name.replace(chr(92), '')}, trained on the {label}",
        )
    product = [*header]
    for seed in PRODUCT_SEEDS:
        scores, threshold = product_recipe_scores(work, seed)
        for rule in PRODUCT_RULES:
            cells = alarm_cells(alarm_series(scores, n_base, rule), features["timestamp"], onsets)
            product.append(
                f"| `bearing` CLI: per-bearing ln, FedAvg 4 bearing-clients, 2-4-1-4-2, seed {seed} | "
                f"first 20 %: 0..{n_base - 1} | q=0.995, last 20 % of healthy, federated sketches "
                f"({threshold:.3g}) | {rule.describe()} | " + " | ".join(cells) + " |"
            )
            print(product[-1], flush=True)
    onset_text = ", ".join(
        f"{b} {i} ({features['timestamp'].iloc[i]:%m-%d %H:%M})" if i is not None else f"{b} never"
        for b, i in onsets.items()
    )
    return "\n".join(
        [
            (
                "File numbers are 0-based indices in time order (file 0 = 2003-10-22 12:06:24, file 2155 = the last). "
                "Anchor recomputed here: first single exceedance B4 "
                f"{exceedance['B4']}, B3 {exceedance['B3']}; with the 3-of-3 debounce B4 from 1747, B3 from 2121 "
                "(published: B4 1748, B3 2119). *In alarm for good from*: the file after the last non-alarm file "
                "(per bearing for per-bearing detectors and the anchor; for the snapshot layout, whatever bearing it names)."
            ),
            "",
            (
                "*False alarm*: an alarm event (a run of alarm files) that starts before the *level onset* of the bearing "
                "it names. Level onset = the first file from which the bearing's level (mean of ln mean|x| over its two "
                f"channels, rolling median of {ONSET_WINDOW} snapshots = 4 h) stays above the highest value it reached in "
                f"the training files, to the end of the test (computed from the data with hindsight, independently of "
                f"any detector): {onset_text}. Bearings 1 and 2 did not fail; their levels still rise at the end, with "
                "the whole rig's vibration, so alarms naming them after their onset are listed apart. *Warm-up*: no "
                "alarm in the first h hours after a stop of at least h hours, unless the bearing was already in alarm "
                "(`bearing score --warmup-hours`)."
            ),
            "",
            (
                "**The product recipe, run through the command line** (`bearing import-features --per-bearing --log`, "
                "`bearing train --partition natural --clients 4 --hidden 4,1,4`, `bearing score --k K --n N "
                "--warmup-hours H`), three seeds:"
            ),
            "",
            *product,
            "",
            "**Variants** (centralized training on the clients' train rows, bench recipe):",
            "",
            *rows,
            "",
            "; ".join(notes) + ".",
        ]
    )


FINDINGS = (
    (
        "- Demo, through the command line with the product's defaults (FedAvg, 3 of 3), three seeds: both layouts alarm "
        "every defect after onset with no false alarm. The default layout (8 inputs, one client per site) alarms 1.0-3.2 "
        "h after onset and names the wrong bearing on one site in two seeds of three (site_3, a B2 defect: `make run` "
        "says B1_a); the per-bearing layout (`bearing per-bearing --log`, one client per bearing, 2-4-1-4-2) names the "
        "right bearing at every site in every seed and alarms earlier: 0.5 / 0.3 / 1.7-2.2 h after onset, 6.3-7.0 h "
        "before failure."
    ),
    (
        "- Demo: the untuned default recipe (ReLU 4-2-4, lr 1e-3, 10 epochs) does not learn on these few-hundred-row "
        "datasets (loss ≈ 1: the score is the distance to the mean) and alarms 3-4 h after onset on `mean_abs`; ELU, lr "
        "1e-2, 200 epochs fits. Envelope inputs see every demo defect within 2-3 snapshots of onset. On `mean_abs` the "
        "snapshot layout names a neighbouring bearing on site_3 at 20 % (B3_a here, B4_b in `make run`, for a B2 defect); the per-bearing layout "
        "names the right bearing at every site on `mean_abs` alone (B2_a on site_3), and with `env_*` it is as early "
        "as the best snapshot-layout inputs."
    ),
    (
        "- IMS 1st test, first 20 % of files: **the product recipe beats the anchor on both failed bearings, and "
        "nothing fires before its bearing-4 alarm.** Run through the command line (per-bearing layout, ln mean|x|, "
        "2-4-1-4-2, Flower FedAvg over the four bearing-clients, 0.995 quantile of the federated holdout sketches) with "
        "the alarm rule 12 of 12 (2 h over threshold) and a 4 h warm-up after stops, all three seeds: first alarm = "
        "bearing 4 at file 1649 (11-21 05:24), 98 files and 21 h before the anchor's 1747 (11-22 02:16), 114 h before "
        "the end of the test; bearing 3 at 1993 (seed 0) or 2013 (seeds 1, 2), 35 h / 32 h before the anchor's 2121 "
        "(published 2119). The price is on the bearings that did not fail, in the last four days, after the bearing-4 "
        "alarm (and after the anchor's own first alarm): 6-8 alarm events on bearings 1 and 2 from file 1788-1809 (the "
        "whole rig's vibration rises; bearing 2's level leaves its healthy range for good at 1713), 1-2 of them on "
        "bearing 1 counted as false alarms (its level onset is 2127). The anchor has one such event (B2, file 2150). "
        "**Disclosure:** the two alarm settings (12 of 12, 4 h warm-up) were chosen after looking at this test's false "
        "alarms (below); nothing here validates them on an independent run-to-failure. With the default 3 of 3 and no "
        "warm-up the same models raise 23-30 false alarm events, the first at the Nov 3 restart (file 514)."
    ),
    (
        "- What the early false alarms are, and which setting removes which: (1) the Nov 3 restart after a 34 h stop "
        "raises bearing 1's level by ~4 % on both channels for ~5 h (files 512-541), 1-2σ of its healthy spread: the "
        "warm-up removes it (12 of 12 alone leaves it: first alarm on bearing 1 at file 523-524); (2) short one-channel spikes of bearing "
        "4 from the Nov 14 restart to Nov 18 (its healthy a/b ratio already has 7-15x the spread of the other bearings'): "
        "the 2 h persistence removes them (6 of 6 + warm-up leaves one, file 1203 on seed 1). Bearing 4's real "
        "degradation is a ramp over days (its level leaves its healthy range for good at file 1433 by the onset "
        "definition above), so 2 h of persistence costs little: 12 of 12 alarms 6 files after 6 of 6 (1649 vs 1643)."
    ),
    (
        "- Correction of the previous benchmark: it counted *every* alarm event before file 1747 against a detector, "
        "including a real bearing-4 alarm during its ramp, so its hindsight bound could by construction never beat 1747 "
        '("no calibration can" was an artefact). With false alarms defined by each bearing\'s level onset, the lowest '
        "threshold without a false alarm (hindsight, 3 of 3) gives B4 1682 / B3 2053 per bearing and B4 1722 / B3 2119 "
        "in the snapshot layout: a threshold alone *could* beat the anchor, but it is ~10x the calibrated one (per "
        "bearing 0.161 vs 0.0165): the calm last 20 % of the healthy period does not show the restarts and spikes."
    ),
    (
        "- Calibration variants (rules fixed before looking): mean + 3σ on the calm holdout is *tighter* than the 0.995 "
        "quantile (per bearing 0.0104 vs 0.0165: 45 vs 23 false events at 3 of 3). The interleaved holdout (now "
        "`--holdout interleaved`, every 5th healthy row) contains file 24, a one-snapshot glitch of channel B4_a (2.3x "
        "its b channel) whose error is 25-100x any other healthy row's and sets the quantile: 0 false alarms, B4 from "
        "1694-1746, but B3 only from 2121-2124 or never (snapshot layout: B4 never named). It trades bearing 3 for "
        "bearing 4; the product default stays `last`."
    ),
    (
        "- Preprocessing and capacity (3 of 3): ln helps (per bearing, B4 in alarm for good 2050 → 1654, first B3 2011 → "
        "1864); a rolling median of 5 snapshots makes things worse in both layouts (32-46 false events): it shrinks the "
        "calm holdout's spread, so the threshold tightens more than the noise it removes. A bottleneck as wide as the "
        "input (per-bearing 2-4-2-4-2) approaches the identity and is noisier (15 false events); in the snapshot layout a "
        "bottleneck of 3 or 4 does not remove the restart alarm (18 false events). Common-mode-free inputs (ln mean|x| of "
        "each channel minus the mean over the 8) do not help: the restart is not a common-mode shift (files 512-559 vs "
        "460-511: common level +0.6 %, bearing 1 +3.9 %, others -1.4 to +0.4 %)."
    ),
    (
        "- Training on 30 % (covers the Nov 1-3 stop and restart) also works, with the default 3 of 3: snapshot layout 0 "
        "false alarms, B4 from 1680, B3 2006 (the bearing names come from the top channel); per-bearing ln 1 false event "
        "(a bearing-4 spike at file 1218)."
    ),
)
"""Conclusions drawn from the tables above (figures quoted from the run recorded in BENCHMARKS.md)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / ".bench" / "detection", help="data and models (reused)")
    parser.add_argument(
        "--demo-train-fractions", type=float, nargs="+", default=[0.2, 0.4], help="healthy fractions per demo site"
    )
    parser.add_argument("--activation", default="elu", choices=("relu", "elu", "tanh"))
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--method", default="quantile", choices=("quantile", "mean_kstd"))
    parser.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md", help="markdown file to update")
    args = parser.parse_args(argv)
    recipe = Recipe(activation=args.activation, lr=args.lr, epochs=args.epochs)
    threshold_cfg = ThresholdConfig(method=args.method)
    demo_md, tables = demo_benchmark(args.work, tuple(args.demo_train_fractions), recipe, threshold_cfg)
    demo_cli_md = demo_product_runs(args.work)
    ims_md = (
        ims_benchmark(args.work, recipe, threshold_cfg)
        if SHARED_CSV.is_file()
        else "(shared IMS table absent: skipped)"
    )
    best_key = f"mean_abs + log10 env_* @ {args.demo_train_fractions[0]:g}"
    best = tables[best_key]
    per_site = [
        "| site | faulty | bearing / defect | onset | first alarm (channel) | delay after onset, h | lead time, h | false alarm snapshots |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for row in best.itertuples():

        def fmt(v: object) -> str:
            return "-" if v is None or pd.isna(v) else f"{v:.1f}" if isinstance(v, float) else str(v)

        alarm = (
            f"{row.first_alarm:%m-%d %H:%M} ({row.first_alarm_channel})"
            if row.first_alarm is not None and not pd.isna(row.first_alarm)
            else "-"
        )
        onset = f"{row.onset:%m-%d %H:%M}" if row.onset is not None and not pd.isna(row.onset) else "-"
        per_site.append(
            f"| {row.site} | {row.faulty} | {row.bearing} {row.defect} | {onset} | {alarm} | "
            f"{fmt(row.delay_after_onset_hours)} | {fmt(row.lead_time_hours)} | {row.false_alarm_snapshots} |"
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            HEADING,
            "",
            f"Command: `.venv/bin/python -m bench.detection` ({stamp}; Python {platform.python_version()}, CPU).",
            (
                f"Training recipe: autoencoder n → n/2 → n/4 → n/2 → n (at least 4 → 1 → 4), {recipe.describe()}; "
                f"threshold {threshold_cfg.describe()} of the holdout reconstruction MSE, alarm = k of the last n "
                "snapshots of a site over threshold (3 of 3 unless stated). Per-bearing layout: "
                "`bearing_core.per_bearing` (each bearing a site and a client, its inputs standardised by its own "
                "healthy training rows; one shared model)."
            ),
            "",
            "### Demo data (4 sites x 120 files, seed 0; healthy period = each site's earliest fraction of files)",
            "",
            (
                "Through the command line with the product's defaults (`bearing train --partition natural`: FedAvg, 20 "
                "rounds x 10 local epochs, lr 1e-2, threshold = 0.995 quantile of the federated holdout sketches; "
                "`bearing score`: 3 of 3; healthy period 20 %), the default layout next to the per-bearing layout "
                "(`bearing per-bearing --log`, `--hidden 4,1,4`):"
            ),
            "",
            demo_cli_md,
            "",
            "Variants, trained centrally with the bench recipe:",
            "",
            demo_md,
            "",
            f"Per site, `{best_key}`:",
            "",
            "\n".join(per_site),
            "",
            "### Real IMS 1st test (mean|x| per channel, 2,156 files)",
            "",
            ims_md,
            "",
            "### Findings",
            "",
            *FINDINGS,
            "",
        ]
    )
    report = args.report.read_text(encoding="utf-8") if args.report.is_file() else "# Benchmarks\n"
    write_text_atomic(args.report, replace_section(report, HEADING, section))
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
