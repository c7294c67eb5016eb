"""Detection of the pipeline as users run it: `bearing run` on demo seeds and on the IMS 1st-test replay.

Two parts, following the rule in BENCHMARKS.md ("Pipeline detection defaults"):

``tune``  for each demo seed and each ``--min-level-std`` (with one ``--relative`` choice), one real ``bearing run``
          (defaults otherwise) in a scratch project; then, on its per-bearing scores, every threshold quantile and alarm
          rule of the grid (thresholds from the alarm statistic on the model's holdout errors; no retraining). Prints
          one row per
          setting and the setting the rule selects.
``replay`` the 1st test replayed into raw files (``../shared/ims/replay_ims.py``), one ``bearing run`` with the
          defaults and ``--train-until`` at 20 % of the files; first alarm per bearing against the anchor (3σ on the
          bearing's mean|x|, 3 of 3 snapshots), alarm events before the first true one, federated vs centralized MSE.

    .venv/bin/python -m bench.pipeline_detection tune --seeds 0 1 2 --work /tmp/bearing-tune
    .venv/bin/python -m bench.pipeline_detection replay --work /tmp/bearing-replay [--every 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bearing_core.alarms import AlarmConfig, debounce_alarms
from bearing_core.inputs import PER_BEARING_DIR
from bearing_core.scoring import read_scores
from bearing_core.synthetic import load_ground_truth

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMS = ROOT.parent / "shared" / "ims"
PERSISTENCE_H = (1.0, 2.0, 3.0)
FRACTIONS = (0.8, 1.0)
WARMUP_H = (0.0, 2.0, 4.0)
RELATIVE = ("off", "add", "only")
MIN_LEVEL_STD = (0.02, 0.05, 0.1)
QUANTILES = (0.99, 1.0)
ANCHOR_B4_FILE, ANCHOR_B3_FILE = 1748, 2119
TRAIN_UNTIL_1ST = "2003-11-01T10:31:44"  # the first 20 % of the 1st test's files (432 of 2,156)


def bearing_cli(project: Path, *args: str) -> tuple[str, float]:
    """Run ``bearing ARGS`` in ``project`` (its own data/, .prefect/ ...); stdout and wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BEARING_PROJECT_DIR": str(project)}
    for key in ("PREFECT_HOME", "FLWR_HOME", "RAY_TMPDIR", "PREFECT_API_URL"):
        env.pop(key, None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=project, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"bearing {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, wall


def _output(stdout: str, key: str) -> str:
    match = re.search(rf"^\s+{re.escape(key)}\s+(.*)$", stdout, re.MULTILINE)
    return match.group(1).strip() if match else ""


@dataclass
class Run:
    """One `bearing run`: where its per-bearing scores and champion are, and its printed figures."""

    dataset: Path
    model: Path
    federated_mse: float
    centralized_mse: float
    wall_s: float

    @property
    def per_bearing(self) -> Path:
        return self.dataset / PER_BEARING_DIR


def pipeline_run(project: Path, raw: Path, *extra: str) -> Run:
    stdout, wall = bearing_cli(project, "run", "--raw-dir", str(raw), *extra)
    return Run(
        dataset=project / _output(stdout, "dataset"),
        model=project / _output(stdout, "champion (latest)"),
        federated_mse=float(_output(stdout, "federated holdout MSE")),
        centralized_mse=float(_output(stdout, "centralized holdout MSE")),
        wall_s=wall,
    )


def holdout_errors(run: Run) -> pd.DataFrame:
    """The champion's reconstruction errors on every client's holdout rows (site, timestamp, error)."""
    from bearing_core.model_io import load_model
    from bearing_core.partition.writer import SPLIT_HOLDOUT, load_manifest, read_client
    from bearing_core.threshold import snapshot_errors

    loaded = load_model(run.model)
    clients = run.per_bearing / "clients" / "natural"
    manifest = load_manifest(clients)
    rows = pd.concat([read_client(clients, c.client_id, split=SPLIT_HOLDOUT) for c in manifest.clients])
    rows["error"] = snapshot_errors(loaded, rows[loaded.input_columns].to_numpy(np.float64))[0]
    return rows[["site", "timestamp", "error"]].reset_index(drop=True)


def threshold_at(holdout: pd.DataFrame, q: float, rule: AlarmConfig) -> float:
    """The threshold the pipeline's calibration gives: the q-quantile of the alarm rule's statistic on the holdout."""
    from bearing_core.alarms import window_statistic
    from bearing_core.threshold import ErrorSketch

    stat = window_statistic(holdout, holdout["error"].to_numpy(), rule)
    return ErrorSketch.from_errors(stat[np.isfinite(stat)]).quantile(min(q, 1 - 1e-12))


def alarm_events(alarm: np.ndarray) -> np.ndarray:
    """Indices where an alarm starts (rising edges)."""
    return np.flatnonzero(alarm & ~np.r_[False, alarm[:-1]])


def evaluate_demo(scores: pd.DataFrame, truth_path: Path, threshold: float, rule: AlarmConfig) -> dict[str, float]:
    """False alarm events (every alarm event at a healthy site; at a site with a defect, every alarm event before the
    defective bearing's first alarm after onset) and, per defect, that first alarm's delay after onset (hours)."""
    truth = load_ground_truth(truth_path)
    scored = scores.assign(is_anomaly=scores["score"].to_numpy() > threshold)
    scored = scored.assign(alarm=debounce_alarms(scored, rule))
    scored["source"] = scored["site"].astype(str).str.rpartition("/")[0]
    scored["bearing"] = scored["site"].astype(str).str.rpartition("/")[2]
    false_events, delays, missed, defects = 0, [], 0, 0
    for source, part in scored.groupby("source", sort=True):
        starts = []
        for bearing, rows in part.groupby("bearing", sort=True):
            rows = rows.sort_values("timestamp")
            times = rows["timestamp"].to_numpy()
            starts += [(t, str(bearing)) for t in times[alarm_events(rows["alarm"].to_numpy(bool))]]
        site_truth = truth.sites.get(str(source))
        if site_truth is None or not site_truth.faulty:
            false_events += len(starts)
            continue
        defects += 1
        mine = part[
            (part["bearing"] == site_truth.bearing)
            & part["alarm"]
            & (part["timestamp"] >= pd.Timestamp(site_truth.onset))
        ]
        if mine.empty:
            missed += 1
            false_events += len(starts)
            continue
        first = mine["timestamp"].min()
        delays.append((first - pd.Timestamp(site_truth.onset)).total_seconds() / 3600)
        false_events += sum(1 for t, _ in starts if t < np.datetime64(first))
    return {
        "false_events": false_events,
        "missed": missed,
        "defects": defects,
        "mean_delay_h": float(np.mean(delays)) if delays else float("nan"),
    }


def tune(args: argparse.Namespace) -> None:
    work = Path(args.work).resolve()
    runs: dict[tuple[int, str], Run] = {}
    for seed in args.seeds:
        raw = work / "raw" / f"demo{seed}"
        if not (raw / "ground_truth.json").is_file():
            raw.parent.mkdir(parents=True, exist_ok=True)
            bearing_cli(work, "demo-data", "--out", str(raw), "--seed", str(seed))
        for relative in args.min_level_std:  # one scratch project each: its own registry and champion
            project = (
                work / f"seed{seed}-{relative}"
                if args.relative == "off"
                else work / f"seed{seed}-{relative}-{args.relative}"
            )
            project.mkdir(parents=True, exist_ok=True)
            runs[seed, relative] = run = pipeline_run(
                project, raw, "--min-level-std", str(relative), "--seed", str(seed), "--relative-inputs", args.relative
            )
            print(
                f"seed {seed} min-level-std {relative}: run {run.wall_s:.0f} s, federated MSE {run.federated_mse:.4g} "
                f"vs centralized {run.centralized_mse:.4g} ({run.federated_mse / run.centralized_mse:.2f}x)",
                flush=True,
            )
    rows = []
    for relative in args.min_level_std:
        per_seed = {
            seed: (
                read_scores(runs[seed, relative].per_bearing / "scores.parquet"),
                holdout_errors(runs[seed, relative]),
            )
            for seed in args.seeds
        }
        for q, p, f, w in itertools.product(QUANTILES, PERSISTENCE_H, FRACTIONS, WARMUP_H):
            rule = AlarmConfig(persistence_h=p, fraction=f, warmup_h=w)
            results = [
                evaluate_demo(
                    scores, work / "raw" / f"demo{seed}" / "ground_truth.json", threshold_at(errors, q, rule), rule
                )
                for seed, (scores, errors) in per_seed.items()
            ]
            rows.append(
                {
                    "relative": args.relative,
                    "min_level_std": relative,
                    "q": q,
                    "persistence_h": p,
                    "fraction": f,
                    "warmup_h": w,
                    "false_events": sum(r["false_events"] for r in results),
                    "missed": sum(r["missed"] for r in results),
                    "defects": sum(r["defects"] for r in results),
                    "mean_delay_h": float(np.nanmean([r["mean_delay_h"] for r in results])),
                }
            )
    table = pd.DataFrame(rows)
    table.to_csv(work / f"tune-{args.relative}.csv", index=False)
    ok = table[(table["false_events"] == 0) & (table["missed"] == 0)].copy()
    print(f"\n{len(ok)} of {len(table)} settings: no false alarm event and every defect alarmed after onset")
    if ok.empty:
        print(table.sort_values(["false_events", "missed", "mean_delay_h"]).head(20).to_string(index=False))
        return
    ok = ok.sort_values(
        ["mean_delay_h", "persistence_h", "warmup_h", "q", "min_level_std"],
        ascending=[True, False, False, False, False],
    )
    print(ok.head(15).to_string(index=False))
    print(f"\nselected: {ok.iloc[0].to_dict()}")
    fed = [(s, r, runs[s, r].federated_mse / runs[s, r].centralized_mse) for (s, r) in runs]
    print("federated / centralized holdout MSE:", ", ".join(f"seed {s} {r}: {x:.2f}x" for s, r, x in fed))


def margin(args: argparse.Namespace) -> None:
    """Amendment 3 of the rule: the threshold margin m (threshold = (sqrt(max) + m)^2) on the demo seeds, every other
    setting at the pipeline's defaults; one `bearing run` a seed, margins applied to its champion's threshold."""
    work = Path(args.work).resolve()
    from bearing_core.threshold import load_threshold, with_margin

    rule = AlarmConfig()
    per_seed = {}
    for seed in args.seeds:
        raw = work / "raw" / f"demo{seed}"
        if not (raw / "ground_truth.json").is_file():
            raw.parent.mkdir(parents=True, exist_ok=True)
            bearing_cli(work, "demo-data", "--out", str(raw), "--seed", str(seed))
        project = work / f"seed{seed}"
        project.mkdir(parents=True, exist_ok=True)
        run = pipeline_run(project, raw, "--seed", str(seed), "--threshold-margin", "0", *args.extra)
        print(
            f"seed {seed}: run {run.wall_s:.0f} s, federated MSE {run.federated_mse:.4g} vs centralized "
            f"{run.centralized_mse:.4g} ({run.federated_mse / run.centralized_mse:.2f}x)",
            flush=True,
        )
        per_seed[seed] = (read_scores(run.per_bearing / "scores.parquet"), load_threshold(run.model).threshold, raw)
    rows = []
    for m in args.margins:
        results = [
            evaluate_demo(scores, raw / "ground_truth.json", with_margin(threshold, m), rule)
            for scores, threshold, raw in per_seed.values()
        ]
        rows.append(
            {
                "margin": m,
                "false_events": sum(r["false_events"] for r in results),
                "per_seed_false": [r["false_events"] for r in results],
                "missed": sum(r["missed"] for r in results),
                "defects": sum(r["defects"] for r in results),
                "mean_delay_h": float(np.nanmean([r["mean_delay_h"] for r in results])),
                "per_seed_delay_h": [round(r["mean_delay_h"], 1) for r in results],
            }
        )
    table = pd.DataFrame(rows)
    table.to_csv(work / "margin.csv", index=False)
    print(table.to_string(index=False))
    ok = table[(table["false_events"] == 0) & (table["missed"] == 0)]
    pick = (
        ok.sort_values(["mean_delay_h", "margin"], ascending=[True, False])
        if not ok.empty
        else table.sort_values(
            ["false_events", "missed", "mean_delay_h", "margin"], ascending=[True, True, True, False]
        )
    ).iloc[0]
    print(f"selected margin: {pick['margin']:g}")


def anchor_first_alarms(features: pd.DataFrame, n_train: int) -> dict[str, int | None]:
    """The published anchor: a bearing's mean|x| (mean of its channels) over its training mean + 3σ in 3 snapshots
    in a row (file index of the first such alarm)."""
    out: dict[str, int | None] = {}
    channels = [c for c in features.columns if c.endswith("_mean_abs")]
    for bearing in sorted({c.split("_")[0] for c in channels}):
        level = features[[c for c in channels if c.startswith(bearing + "_")]].mean(axis=1).to_numpy()
        base = level[:n_train]
        over = (level > base.mean() + 3 * base.std()) & (np.arange(len(level)) >= n_train)
        run3 = over & np.r_[False, over[:-1]] & np.r_[False, False, over[:-2]]
        out[bearing] = int(np.flatnonzero(run3)[0]) if run3.any() else None
    return out


def replay(args: argparse.Namespace) -> None:
    work = Path(args.work).resolve()
    project = work / "project"
    raw = project / "data" / "raw" / "ims1"
    if not raw.is_dir():
        raw.mkdir(parents=True)
        subprocess.run(
            [
                sys.executable,
                str(SHARED_IMS / "replay_ims.py"),
                str(SHARED_IMS / "features" / "1st_test_mean_abs.csv"),
                str(raw),
                "--every",
                str(args.every),
            ],
            check=True,
        )
    extra = ["--train-until", TRAIN_UNTIL_1ST, *args.extra]
    run = pipeline_run(project, raw, *extra)
    files = sorted(p.name for p in raw.iterdir() if p.is_file())
    index = {name: i * args.every for i, name in enumerate(files)}
    scores = read_scores(run.per_bearing / "scores.parquet")
    scores["bearing"] = scores["site"].astype(str).str.rpartition("/")[2]
    scores["index"] = scores["file"].map(index)
    first: dict[str, int | None] = {}
    events: list[tuple[int, str]] = []
    for bearing, part in scores.groupby("bearing", sort=True):
        part = part.sort_values("timestamp")
        alarm = part["alarm"].to_numpy(bool)
        idx = part["index"].to_numpy()
        first[bearing] = int(idx[alarm][0]) if alarm.any() else None
        events += [(int(idx[i]), bearing) for i in alarm_events(alarm)]
    features = pd.read_parquet(run.dataset / "features.parquet").sort_values("timestamp")
    anchor = anchor_first_alarms(features.reset_index(drop=True), n_train=(432 + args.every - 1) // args.every)
    anchor = {b: None if v is None else v * args.every for b, v in anchor.items()}
    first_true = min((i for i, b in events if b in ("B3", "B4")), default=None)
    before = [e for e in sorted(events) if first_true is None or e[0] < first_true]
    print(
        f"1st-test replay (every {args.every}): bearing run {run.wall_s:.0f} s; federated MSE {run.federated_mse:.4g}"
        f" vs centralized {run.centralized_mse:.4g} ({run.federated_mse / run.centralized_mse:.2f}x)"
    )
    print("| bearing | first alarm (file) | anchor (file) | alarm events |")
    print("|---|---:|---:|---:|")
    for bearing in sorted(first):
        print(f"| {bearing} | {first[bearing]} | {anchor.get(bearing)} | {sum(1 for _, b in events if b == bearing)} |")
    print(f"alarm events before the first B3/B4 alarm: {len(before)} {before[:10]}")
    print(f"published anchor: B4 {ANCHOR_B4_FILE}, B3 {ANCHOR_B3_FILE}")
    (work / "replay.json").write_text(
        json.dumps(
            {
                "first": first,
                "anchor": anchor,
                "events": events,
                "wall_s": run.wall_s,
                "federated_mse": run.federated_mse,
                "centralized_mse": run.centralized_mse,
            },
            indent=1,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True)
    m = sub.add_parser("margin")
    m.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    m.add_argument("--margins", type=float, nargs="+", default=[0, 0.5, 1, 1.5, 2, 3])
    m.add_argument("--work", default="/tmp/bearing-margin")
    m.add_argument("extra", nargs="*", help="extra `bearing run` arguments (after --), e.g. differential privacy")
    m.set_defaults(func=margin)
    t = sub.add_parser("tune")
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--min-level-std", nargs="+", type=float, default=list(MIN_LEVEL_STD))
    t.add_argument("--relative", default="off", choices=RELATIVE)
    t.add_argument("--work", default="/tmp/bearing-tune")
    t.set_defaults(func=tune)
    r = sub.add_parser("replay")
    r.add_argument("--work", default="/tmp/bearing-replay")
    r.add_argument("--every", type=int, default=1)
    r.add_argument("extra", nargs="*", help="extra `bearing run` arguments (after --)")
    r.set_defaults(func=replay)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
