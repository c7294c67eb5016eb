"""Detection quality benchmark: does the calibrated, debounced alarm catch known failures early, without false alarms?

Run: ``.venv/bin/python -m bench.detection``. Writes the ``## Detection`` section of ``BENCHMARKS.md``.

1. **Demo data** (``generate_demo``: 4 sites x 120 files, seed 0; ingested under ``.bench/detection/``, git-ignored):
   natural partition (one client per site), healthy period = each site's earliest ``--demo-train-fraction`` of files
   (the last 20 % of it held out for calibration), centralized training on the clients' train rows with a scaler
   merged from the clients' statistics, threshold from the clients' holdout sketches, 3-of-3 debounced alarms.
   Feature sets compared: ``mean_abs``; ``env_*`` (envelope band energies at BPFO/BPFI/BSF) as is; ``log10 env_*``;
   ``mean_abs + log10 env_*``. The log transform is applied to a derived copy of ``features.parquet`` (bench only).
   Checked against ``ground_truth.json``: every defect alarmed after onset and before failure, no false alarm.
2. **Real IMS 1st test** (``../shared/ims/features/1st_test_mean_abs.csv``, 2,156 files, bearings 3 and 4 failed):
   imported with ``import_features``, trained on the first 20 % of files, scored; reported: first alarm per bearing
   (by ``top_channel``) and anything earlier, side by side with the published anchor (per-channel mean|x| above the
   baseline mean + 3σ, persistent), which this script recomputes. Also tried: common-mode-free inputs
   (per snapshot ``ln mean|x|_c`` minus its mean over the 8 channels, with and without that mean as a 9th "level"
   input; built by :func:`common_mode_free_dataset` on a derived copy, bench only) and a 5-of-6 alarm rule next to
   3 of 3, to test whether removing what moves all channels together removes the Nov 3 restart alarm.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bearing_core.autoencoder import ModelConfig
from bearing_core.config import IngestConfig
from bearing_core.evaluation import evaluate_against_ground_truth, plot_scores
from bearing_core.features_import import import_features
from bearing_core.ingest import ingest_directory
from bearing_core.inputs import DATASET_FILE, FEATURES_FILE, QUARANTINE_FILE, InputConfig
from bearing_core.io import write_parquet_atomic, write_text_atomic
from bearing_core.model_io import save_model
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import SPLIT_TRAIN, read_client, scheme_dir
from bearing_core.scaling import Scaler, local_stats, merge_stats
from bearing_core.scoring import debounce_alarms, update_scores
from bearing_core.synthetic import generate_demo, load_ground_truth
from bearing_core.threshold import ThresholdConfig, ThresholdRecord, calibrate_from_clients
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
        return f"{self.activation}, Adam lr {self.lr:g}, {self.epochs} epochs, batch {self.batch_size}, seed {self.seed}"


def hidden_layers(n_inputs: int) -> tuple[int, ...]:
    """Notebook shape 8 → 4 → 2 → 4 → 8, widened proportionally for more inputs (n/2 → n/4 → n/2, at least 4-2-4)."""
    return (max(4, n_inputs // 2), max(2, n_inputs // 4), max(4, n_inputs // 2))


def log_dataset(source: Path, target: Path, columns: list[str]) -> Path:
    """A copy of the dataset ``source`` whose ``columns`` are replaced by their log10 (floored at 1e-12)."""
    features = pd.read_parquet(source / FEATURES_FILE)
    features[columns] = np.log10(np.maximum(features[columns].to_numpy(dtype=np.float64), 1e-12))
    target.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(target / FEATURES_FILE, features)
    for name in (QUARANTINE_FILE, DATASET_FILE):
        shutil.copyfile(source / name, target / name)
    return target


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
    target.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(target / FEATURES_FILE, features)
    for name in (QUARANTINE_FILE, DATASET_FILE):
        shutil.copyfile(source / name, target / name)
    return target, relative


def train_and_score(
    dataset_dir: Path,
    columns: list[str],
    train_fraction: float,
    recipe: Recipe,
    threshold_cfg: ThresholdConfig,
    model_dir: Path,
) -> tuple[pd.DataFrame, ThresholdRecord, float]:
    """Natural partition → merged scaler → centralized training → holdout calibration → scores. Returns the scores,
    the threshold record and the final training loss."""
    input_cfg = InputConfig(columns=tuple(columns), train_fraction=train_fraction)
    n_sites = len(json.loads((dataset_dir / DATASET_FILE).read_text(encoding="utf-8"))["sites"])
    manifest = partition_dataset(dataset_dir, "natural", n_sites, recipe.seed, input_cfg)
    clients_dir = scheme_dir(dataset_dir, "natural")
    train_parts = [
        read_client(clients_dir, c.client_id, split=SPLIT_TRAIN)[columns].to_numpy(np.float64) for c in manifest.clients
    ]
    scaler = Scaler.from_stats(merge_stats([local_stats(x) for x in train_parts]))
    model_cfg = ModelConfig(n_inputs=len(columns), hidden=hidden_layers(len(columns)), activation=recipe.activation)
    train_cfg = TrainConfig(lr=recipe.lr, batch_size=recipe.batch_size, local_epochs=recipe.epochs, seed=recipe.seed)
    torch.set_num_threads(1)
    result = train_centralized(scaler.transform(np.concatenate(train_parts)), None, model_cfg, train_cfg, rounds=1)
    save_model(model_dir, result.model, model_cfg, scaler, columns, extra={"bench": "detection"})
    record = calibrate_from_clients(model_dir, clients_dir, threshold_cfg)
    scores = update_scores(dataset_dir, model_dir, out=model_dir / "scores.parquet").scores
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
    lines = [
        "| inputs | n | healthy fraction | recipe | detected after onset | correct bearing | false alarm snapshots | delay after onset, h (per faulty site) | lead time, h | threshold |",
        "|---|---:|---:|---|---:|---:|---:|---|---|---:|",
    ]
    default_recipe = Recipe(activation="relu", lr=1e-3, epochs=10)
    runs = [(name, fraction, recipe) for fraction in fractions for name in variants]
    runs += [(name, fractions[0], default_recipe) for name in ("mean_abs", "log10 env_*")]
    tables: dict[str, pd.DataFrame] = {}
    for name, fraction, run_recipe in runs:
        ds, cols = variants[name]
        start = time.perf_counter()
        key = "".join(c if c.isalnum() else "_" for c in f"{name}_{fraction}_{run_recipe.activation}")
        scores, record, loss = train_and_score(ds, cols, fraction, run_recipe, threshold_cfg, work / "models" / key)
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
        print(f"{name} @ {fraction} {run_recipe.activation}: loss {loss:.4f}, threshold {record.threshold:.4g}, "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        print(table.to_string(), flush=True)
        plot_scores(
            scores, None, work / f"demo_{key}.png",
            onset={s: t.onset for s, t in truth.sites.items()}, failure={s: t.failure for s, t in truth.sites.items()},
            title=f"demo, inputs {name}, healthy fraction {fraction:.0%}",
        )
    return "\n".join(lines), tables


def anchor_alarms(features: pd.DataFrame, channels: list[str], n_baseline: int, k: int = 3, n: int = 3) -> dict[str, tuple[int | None, int | None]]:
    """Published simple anchor, per bearing: the mean of its channels' mean|x| above the baseline (first
    ``n_baseline`` files) mean + 3σ. Returns ``bearing → (first exceedance, first k-of-n alarm)`` as 0-based file
    indices after the baseline (None: never)."""
    result: dict[str, tuple[int | None, int | None]] = {}
    for bearing in sorted({ch.split("_")[0] for ch in channels}):
        level = features[[f"{ch}_mean_abs" for ch in channels if ch.split("_")[0] == bearing]].mean(axis=1).to_numpy()
        base = level[:n_baseline]
        over = level > base.mean() + 3 * base.std()
        over[:n_baseline] = False
        alarm = debounce_alarms(pd.DataFrame({"site": "s", "timestamp": features["timestamp"], "is_anomaly": over}), k, n)
        result[bearing] = (_first(over), _first(alarm))
    return result


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def first_persistent(mask: np.ndarray) -> int | None:
    """First index from which ``mask`` stays true to the end (None when the last value is false)."""
    quiet = np.flatnonzero(~mask)
    start = int(quiet[-1]) + 1 if len(quiet) else 0
    return start if start < len(mask) else None


def ims_benchmark(work: Path, recipe: Recipe, threshold_cfg: ThresholdConfig) -> str:
    """Markdown of the IMS 1st-test comparison (ours, trained on two healthy periods, vs the anchor)."""
    dataset = work / "ims_1st"
    result = import_features(SHARED_CSV, dataset, site="1st_test")
    channels = result.channels
    cols = [f"{ch}_mean_abs" for ch in channels]
    features = pd.read_parquet(dataset / FEATURES_FILE).sort_values("timestamp").reset_index(drop=True)
    n_base = int(np.ceil(0.2 * len(features)))
    anchor = anchor_alarms(features, channels, n_base)

    def at(i: int | None, scores: pd.DataFrame | None = None) -> str:
        if i is None:
            return "never"
        text = f"{i} ({features['timestamp'].iloc[i]:%m-%d %H:%M}"
        return text + (f", {scores['top_channel'].iloc[i]})" if scores is not None else ")")

    rows = [
        "| detector | healthy (training) files | alarm rule | first alarm after training (file, time, top channel) | first alarm naming B3 | first alarm naming B4 | alarm events after training, before file 1747 | in alarm for good from |",
        "|---|---|---|---|---|---|---:|---|",
        f"| anchor: bearing mean of mean\\|x\\| > baseline mean + 3σ | 0..{n_base - 1} (baseline) | 3 of 3 | "
        f"{at(min(v for _, v in anchor.values() if v is not None))} | {at(anchor['B3'][1])} | {at(anchor['B4'][1])} | - | - |",
    ]
    relative_dataset, relative = common_mode_free_dataset(dataset, work / "ims_1st_common_mode_free", channels)
    mean_abs_name = "autoencoder on 8 x mean\\|x\\|"
    relative_name = "autoencoder on 8 x (ln mean\\|x\\| − channel mean)"
    runs = [
        (mean_abs_name, dataset, cols, 0.2, ((3, 3), (5, 6))),
        (mean_abs_name, dataset, cols, 0.3, ((3, 3),)),
        (relative_name, relative_dataset, relative, 0.2, ((3, 3), (5, 6))),
        (relative_name + " + level", relative_dataset, relative + [LEVEL_COLUMN], 0.2, ((3, 3), (5, 6))),
        (relative_name, relative_dataset, relative, 0.3, ((3, 3),)),
    ]
    notes = []
    for name, ds, inputs, fraction, rules in runs:
        label = "first 20 %" if fraction == 0.2 else "first 30 % (covers the Nov 1-3 stop and restart)"
        key = f"ims_1st_{int(fraction * 100)}" + ("" if ds == dataset else f"_cmf_{len(inputs)}")
        scores, record, loss = train_and_score(ds, inputs, fraction, recipe, threshold_cfg, work / "models" / key)
        scores = scores.sort_values("timestamp").reset_index(drop=True)
        n_train = int(np.ceil(fraction * len(scores)))
        bearing_of = scores["top_channel"].str.split("_").str[0].to_numpy()
        for k, n in rules:
            alarm = debounce_alarms(scores, k, n) & (np.arange(len(scores)) >= n_train)
            starts = alarm & ~np.r_[False, alarm[:-1]]
            rows.append(
                f"| ours, {name} | {label}: 0..{n_train - 1} | {k} of {n} | {at(_first(alarm), scores)} | "
                f"{at(_first(alarm & (bearing_of == 'B3')), scores)} | {at(_first(alarm & (bearing_of == 'B4')), scores)} | "
                f"{int(starts[:1747].sum())} | {at(first_persistent(alarm))} |"
            )
            print(rows[-1], flush=True)
        notes.append(f"{name.replace(chr(92), '')}, {label}: threshold {record.threshold:.3g} from "
                     f"{record.calibration_size} holdout files, final train loss {loss:.3g}")
        plot_scores(scores, None, work / f"{key}.png", failure=scores["timestamp"].iloc[-1].to_pydatetime(),
                    title=f"IMS 1st test, {len(inputs)} inputs ({name.replace(chr(92), '')}), trained on the {label}")
    return "\n".join(
        [
            "File numbers are 0-based indices in time order (file 0 = 2003-10-22 12:06:24, file 2155 = the last); "
            f"anchor recomputed here (first exceedance B3 {anchor['B3'][0]}, B4 {anchor['B4'][0]}; with 3-of-3 debounce "
            f"B3 {anchor['B3'][1]}, B4 {anchor['B4'][1]}; published: B4 1748, B3 2119).",
            "",
            *rows,
            "",
            "; ".join(notes) + ".",
        ]
    )


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
    ims_md = ims_benchmark(args.work, recipe, threshold_cfg) if SHARED_CSV.is_file() else "(shared IMS table absent: skipped)"
    best_key = f"mean_abs + log10 env_* @ {args.demo_train_fractions[0]:g}"
    best = tables[best_key]
    per_site = ["| site | faulty | bearing / defect | onset | first alarm (channel) | delay after onset, h | lead time, h | false alarm snapshots |",
                "|---|---|---|---|---|---:|---:|---:|"]
    for row in best.itertuples():
        def fmt(v: object) -> str:
            return "-" if v is None or pd.isna(v) else f"{v:.1f}" if isinstance(v, float) else str(v)
        alarm = f"{row.first_alarm:%m-%d %H:%M} ({row.first_alarm_channel})" if row.first_alarm is not None and not pd.isna(row.first_alarm) else "-"
        onset = f"{row.onset:%m-%d %H:%M}" if row.onset is not None and not pd.isna(row.onset) else "-"
        per_site.append(f"| {row.site} | {row.faulty} | {row.bearing} {row.defect} | {onset} | {alarm} | "
                        f"{fmt(row.delay_after_onset_hours)} | {fmt(row.lead_time_hours)} | {row.false_alarm_snapshots} |")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            HEADING,
            "",
            f"Command: `.venv/bin/python -m bench.detection` ({stamp}; Python {platform.python_version()}, CPU).",
            f"Training recipe: autoencoder n → n/2 → n/4 → n/2 → n (at least 4-2-4), {recipe.describe()}; "
            f"threshold {threshold_cfg.describe()} of the holdout reconstruction MSE, alarm = 3 of the last 3 "
            "snapshots of a site over threshold.",
            "",
            "### Demo data (4 sites x 120 files, seed 0; healthy period = each site's earliest fraction of files)",
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
            "- The untuned default recipe (ReLU 4-2-4, lr 1e-3, 10 epochs) does not learn on these few-hundred-row "
            "datasets (final loss ≈ 1 in scaled units: it reconstructs nothing and the score is just the distance to the "
            "mean). On `mean_abs` it alarms 3-4 h after onset instead of 0.3-1.8 h; ELU with lr 1e-2 and 200 epochs fits "
            "(loss 0.01-0.2). Envelope inputs carry the defect so strongly that even the untrained model catches it.",
            "- Envelope band energies (`env_*`, alone or with `mean_abs`) see the demo defects within 2-3 snapshots of "
            "onset (`mean_abs + log10 env_*` also names the right bearing at every site); `mean_abs` alone is later and can "
            "name a neighbouring bearing.",
            "- IMS 1st test: with a healthy period that ends before the test's Nov 1-3 stop, the restart's operating "
            "shift is itself an alarm (it moves bearing 1 against the others, see below); a healthy period that "
            "includes a restart removes it and the first alarm (bearing 4) precedes the anchor's.",
            "- Common-mode-free inputs (ln mean|x| of each channel minus the mean over the 8 channels) do not remove "
            "the restart alarm when training on the first 20 %: the Nov 3 restart is not a common-mode shift. Files "
            "512-559 vs 460-511: the common level moves +0.6 %, bearing 1's two channels +3.9 %, the others -1.4 to "
            "+0.4 %, i.e. a one-bearing change relative to the rest, which is what a defect looks like to these inputs. "
            "Their healthy spread is also tiny (σ 1-2 % for B1-B3), so the model still alarms at file 512 (naming B1) "
            "and raises more alarm events before 1747 (46 vs 19 with 3 of 3); adding the level as a 9th input brings "
            "that to 15 (9 with 5 of 6), first alarm still 512. They do go into alarm for good earlier (1507-1537 vs "
            "1613). Trained on 30 % they give no alarm before 1747, but bearing 4 only at 1880 (anchor 1747), bearing 3 "
            "at 2011 (anchor 2121). 5 of 6 instead of 3 of 3 trims events (19 → 12, 46 → 33, 15 → 9) but never removes "
            "the restart alarm. Not worth an input option on this evidence.",
            "",
        ]
    )
    report = args.report.read_text(encoding="utf-8") if args.report.is_file() else "# Benchmarks\n"
    write_text_atomic(args.report, replace_section(report, HEADING, section))
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
