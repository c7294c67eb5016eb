"""Federated training benchmark: wall time per round vs number of clients, and what federation costs in MSE.

Run: ``.venv/bin/python -m bench.federated``. Data: the real IMS 1st test (``../shared/ims/features/
1st_test_mean_abs.csv``, 2,156 snapshots x 8 channels, mean |x|) turned into a processed dataset under
``.bench/federated/`` (git-ignored); healthy period = the first half of the test. When the shared file is absent a
synthetic dataset of the same shape is used instead (and the report says so).

1. **Round time vs clients**: IID partitions into 2, 10 and 100 clients, FedAvg, ``--scale-rounds`` rounds each
   in one Flower simulation (in-process runtime, 2 worker threads). Reported: simulation wall time (federated
   scaling and calibration included), mean wall time of rounds 2.. (round 1 also pays torch's one-off lazy
   imports of the first optimizer step), and round 1.
2. **Federated vs centralized**: 10 clients, IID and quantity skew (the reference notebook's ratios), FedAvg,
   ``--rounds`` rounds; final holdout MSE (global, example-weighted) vs the centralized baseline trained on the
   same rows for the same epochs.

Writes the ``## Federated training`` section of ``BENCHMARKS.md``.

3. **Scaling to 1,000 clients** (``--scale-memory 10 100 1000``, run on its own): one subprocess per client count,
   so each peak resident memory (``ru_maxrss``) is that size's alone; the IMS rows tiled 10 times (21,560
   snapshots, healthy first half = 10,780 rows: ~8 training rows a client at 1,000 clients), IID, FedAvg,
   ``--scale-rounds`` rounds, no centralized baseline. Reported: seconds per round (rounds 2..), round 1, the
   server's steps (``timings.json``), resident memory after the imports and at its peak. Writes the
   ``### Scaling to 1,000 clients`` subsection of the ``## Federated training`` section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from bearing_core.config import IMS_CHANNELS_8
from bearing_core.io import write_json_atomic, write_parquet_atomic, write_text_atomic
from bench.ingest import replace_section

REPO = Path(__file__).resolve().parents[1]
SHARED_CSV = next(  # the shared data next to the main checkout (../shared), or seen from a worktree (../../shared)
    (
        p
        for p in (root / "shared" / "ims" / "features" / "1st_test_mean_abs.csv" for root in REPO.parents[:2])
        if p.is_file()
    ),
    REPO.parent / "shared" / "ims" / "features" / "1st_test_mean_abs.csv",
)
HEADING = "## Federated training"


def build_dataset(out: Path) -> tuple[Path, str]:
    """A processed dataset (features.parquet + dataset.json) of the IMS 1st test's mean |x| per channel."""
    if SHARED_CSV.is_file():
        raw = pd.read_csv(SHARED_CSV)
        source = f"real IMS 1st test ({SHARED_CSV.name}, {len(raw)} snapshots)"
    else:
        rng = np.random.default_rng(0)
        stamps = pd.date_range("2003-10-22 12:06:24", periods=2156, freq="10min")
        latent = rng.normal(size=(2156, 1))
        values = 0.1 + 0.005 * latent + 0.002 * rng.normal(size=(2156, 8))
        raw = pd.DataFrame(values, columns=list(IMS_CHANNELS_8))
        raw.insert(0, "file", stamps.strftime("%Y.%m.%d.%H.%M.%S"))
        source = "synthetic stand-in (shared IMS features not found), 2156 rows"
    features = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(raw["file"], format="%Y.%m.%d.%H.%M.%S").astype("datetime64[us]"),
            "file": raw["file"].astype(str),
            "site": "1st_test",
        }
    )
    features["path"] = "1st_test/" + features["file"]
    for channel in IMS_CHANNELS_8:
        features[f"{channel}_mean_abs"] = raw[channel].astype(np.float64)
    write_parquet_atomic(out / "features.parquet", features)
    write_json_atomic(
        out / "dataset.json",
        {
            "name": out.name,
            "channels": list(IMS_CHANNELS_8),
            "expected_samples": 20480,
            "fs_hz": 20000.0,
            "features": ["mean_abs"],
            "sites": ["1st_test"],
            "rig": {},
        },
    )
    return out, source


SCALE_HEADING = "### Scaling to 1,000 clients"
SCALE_TILES = 10


def tiled_dataset(source: Path, out: Path, tiles: int) -> Path:
    """``source``'s rows repeated ``tiles`` times, each copy shifted past the previous one in time (same site)."""
    from bearing_core.io import write_parquet_atomic

    features = pd.read_parquet(source / "features.parquet")
    span = features["timestamp"].max() - features["timestamp"].min() + pd.Timedelta(minutes=10)
    copies = []
    for k in range(tiles):
        copy = features.assign(timestamp=features["timestamp"] + k * span)
        copy["file"] = copy["timestamp"].dt.strftime("%Y.%m.%d.%H.%M.%S")
        copy["path"] = "1st_test/" + copy["file"]
        copies.append(copy)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(out / "features.parquet", pd.concat(copies, ignore_index=True))
    meta = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    write_json_atomic(out / "dataset.json", {**meta, "name": out.name})
    return out


def _rss_mb() -> float:
    """This process's resident memory now (MB, /proc/self/status VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scale_case(dataset: Path, clients: int, rounds: int, out: Path, lr: float) -> dict[str, float]:
    """In this (fresh) process: partition + one simulation without the centralized baseline; time and memory."""
    import resource

    import flwr.serverapp  # noqa: F401
    import torch  # noqa: F401 - the imports' memory counts as the base, not as the run's

    from bearing_core.federated.config import FederatedConfig
    from bearing_core.federated.simulation import partition_params, run_federated
    from bearing_core.inputs import InputConfig
    from bearing_core.model_io import GLOBAL_CLIENT
    from bearing_core.partition.build import partition_dataset

    base_mb = _rss_mb()
    manifest = partition_dataset(
        dataset, "iid", clients, 0, InputConfig(train_fraction=0.5), partition_params("iid", clients)
    )
    cfg = FederatedConfig(rounds=rounds, lr=lr, batch_size=32, local_epochs=1, seed=0)
    result = run_federated(dataset, cfg, out, scheme="iid", baseline=False)
    glob = result.metrics[result.metrics["client"] == GLOBAL_CLIENT].sort_values("round")
    return {
        "clients": clients,
        "min_client_rows": int(min(c.train_rows for c in manifest.clients)),
        "max_client_rows": int(max(c.train_rows for c in manifest.clients)),
        "simulation_s": result.wall_s,
        "round1_s": float(glob["wall_s"].iloc[0]),
        "round_s": float(glob["wall_s"].iloc[1:].mean()) if len(glob) > 1 else float(glob["wall_s"].iloc[0]),
        **{k: float(v) for k, v in result.timings.items()},
        "fl_mse": float(glob["eval_mse"].iloc[-1]),
        "failures": len(result.failures),
        "base_rss_mb": base_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KB on Linux
    }


def scale_memory(args: argparse.Namespace) -> None:
    """Part 3: one subprocess per client count; writes the subsection into the report."""
    import subprocess
    import sys

    dataset, source = build_dataset(args.work / "ims1")
    tiled = tiled_dataset(dataset, args.work / "ims1x10", SCALE_TILES)
    load_before = os.getloadavg()
    rows = []
    for clients in args.scale_memory:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.federated",
                "_scale",
                str(tiled),
                str(clients),
                str(args.scale_rounds),
                str(args.work / f"model-mem-{clients}"),
                str(args.lr),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{clients} clients failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{clients:>5} clients: {row['round_s']:.2f} s/round (round 1 {row['round1_s']:.2f} s), simulation "
            f"{row['simulation_s']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB (base {row['base_rss_mb']:.0f})",
            flush=True,
        )
    load_after = os.getloadavg()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = scale_section(rows, source, args.scale_memory, args.scale_rounds, stamp, load_before[0], load_after[0])
    document = args.report.read_text(encoding="utf-8")
    write_text_atomic(args.report, replace_subsection(document, HEADING, SCALE_HEADING, lines))
    write_json_atomic(args.work / "scale-memory.json", {"rows": rows, "source": source})
    print(f"wrote the '{SCALE_HEADING}' subsection of {args.report}")


def scale_section(
    rows: list[dict[str, float]],
    source: str,
    sizes: list[int],
    rounds: int,
    stamp: str,
    load_before: float,
    load_after: float,
) -> str:
    """The ``### Scaling to 1,000 clients`` subsection from part 3's rows."""
    from bearing_core.federated.config import SimulationResources

    workers = SimulationResources().workers
    steps = [
        f"{a['clients']:,} -> {b['clients']:,} clients (x{b['clients'] / a['clients']:g}): s/round "
        f"x{b['round_s'] / a['round_s']:.1f}, ms per client message in a round "
        f"{1000 * a['round_s'] / (2 * a['clients']):.0f} -> {1000 * b['round_s'] / (2 * b['clients']):.0f} ms, "
        f"peak memory {b['peak_rss_mb'] - a['peak_rss_mb']:+.0f} MB"
        for a, b in zip(rows, rows[1:])
    ]
    return "\n".join(
        [
            SCALE_HEADING,
            "",
            f"Command: `.venv/bin/python -m bench.federated --scale-memory {' '.join(map(str, sizes))} "
            f"--scale-rounds {rounds}` ({stamp}; {os.cpu_count()} CPUs shared with other jobs: load average "
            f"{load_before:.1f} before, {load_after:.1f} after). One subprocess per size: peak resident memory "
            '(`ru_maxrss`) is that size\'s alone; "base" = resident memory after importing torch and flwr.',
            f"Data: {source}, tiled {SCALE_TILES} times ({SCALE_TILES * 2156:,} snapshots), healthy first half, the "
            "same total rows split over more clients; IID, FedAvg, 1 local epoch, no centralized baseline; in-process "
            f"runtime, {workers} worker threads. A round = 2 messages a client (train, evaluate).",
            "",
            "| clients | train rows per client | s / round (rounds 2..) | round 1 s | scaler s | calibration s "
            "| whole simulation s | failed replies | base RSS MB | peak RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[
                f"| {r['clients']:,} | {r['min_client_rows']}–{r['max_client_rows']} | {r['round_s']:.2f} | "
                f"{r['round1_s']:.2f} | {r.get('scaler_s', float('nan')):.2f} | "
                f"{r.get('calibration_s', float('nan')):.2f} "
                f"| {r['simulation_s']:.1f} | {r['failures']} | {r['base_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
                for r in rows
            ],
            "",
            *[f"- {step}" for step in steps],
            "",
        ]
    )


def replace_subsection(document: str, section: str, heading: str, text: str) -> str:
    """``document`` with the ``heading`` subsection (``### ``, up to the next heading: a ``#### `` note
    after it is kept) replaced, or appended
    at the end of the ``section`` (``## ``) section."""
    import re

    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^##+ |\Z)", re.MULTILINE | re.DOTALL)
    text = text.rstrip("\n") + "\n\n"
    if pattern.search(document):
        return pattern.sub(lambda _: text, document, count=1)
    end = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL).search(document)
    if end is None:
        return document.rstrip("\n") + "\n\n" + section + "\n\n" + text
    return document[: end.end()].rstrip("\n") + "\n\n" + text + "\n" + document[end.end() :]


def run_case(dataset: Path, scheme: str, clients: int, rounds: int, out: Path, lr: float) -> dict[str, float]:
    """Partition + one simulation; returns timing and final MSEs."""
    from bearing_core.federated.config import FederatedConfig
    from bearing_core.federated.simulation import partition_params, run_federated
    from bearing_core.inputs import InputConfig
    from bearing_core.model_io import CENTRALIZED_CLIENT, GLOBAL_CLIENT
    from bearing_core.partition.build import partition_dataset

    manifest = partition_dataset(
        dataset, scheme, clients, 0, InputConfig(train_fraction=0.5), partition_params(scheme, clients)
    )
    cfg = FederatedConfig(rounds=rounds, lr=lr, batch_size=32, local_epochs=1, seed=0)
    result = run_federated(dataset, cfg, out, scheme=scheme)
    glob = result.metrics[result.metrics["client"] == GLOBAL_CLIENT].sort_values("round")
    central = result.metrics[result.metrics["client"] == CENTRALIZED_CLIENT].sort_values("round")
    return {
        "clients": clients,
        "train_rows": int(sum(c.train_rows for c in manifest.clients)),
        "min_client_rows": int(min(c.train_rows for c in manifest.clients)),
        "max_client_rows": int(max(c.train_rows for c in manifest.clients)),
        "simulation_s": result.wall_s,
        "round1_s": float(glob["wall_s"].iloc[0]),
        "round_s": float(glob["wall_s"].iloc[1:].mean()) if len(glob) > 1 else float(glob["wall_s"].iloc[0]),
        "fl_mse": float(glob["eval_mse"].iloc[-1]),
        "central_mse": float(central["eval_mse"].iloc[-1]),
        "failures": len(result.failures),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.federated", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 10, 100], help="client counts timed")
    parser.add_argument("--scale-rounds", type=int, default=3, help="rounds per timing run")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the FL-vs-centralized runs")
    parser.add_argument("--lr", type=float, default=1e-2, help="client learning rate")
    parser.add_argument("--work", type=Path, default=REPO / ".bench" / "federated", help="scratch directory")
    parser.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md", help="markdown file to update")
    parser.add_argument(
        "--scale-memory",
        type=int,
        nargs="+",
        default=None,
        metavar="CLIENTS",
        help="only part 3: seconds per round and peak memory at these client counts",
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_scale"]:  # part 3's subprocess: dataset clients rounds out lr
        dataset, clients, rounds, out, lr = argv[1:6]
        print(json.dumps(scale_case(Path(dataset), int(clients), int(rounds), Path(out), float(lr))))
        return 0
    args = parser.parse_args(argv)
    if args.scale_memory:
        scale_memory(args)
        return 0

    dataset, source = build_dataset(args.work / "ims1")
    load_before = os.getloadavg()
    scale = []
    for clients in args.clients:
        row = run_case(dataset, "iid", clients, args.scale_rounds, args.work / f"model-scale-{clients}", args.lr)
        scale.append(row)
        print(
            f"iid {clients:>3} clients: {row['round_s']:.2f} s/round (round 1 {row['round1_s']:.2f} s, "
            f"simulation {row['simulation_s']:.1f} s)",
            flush=True,
        )
    quality = []
    for scheme in ("iid", "quantity"):
        row = run_case(dataset, scheme, 10, args.rounds, args.work / f"model-{scheme}", args.lr)
        quality.append({"scheme": scheme, **row})
        print(f"{scheme}: FL MSE {row['fl_mse']:.4f} vs centralized {row['central_mse']:.4f}", flush=True)
    load_after = os.getloadavg()

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    from bearing_core.federated.config import FederatedConfig, SimulationResources

    defaults, workers = FederatedConfig(), SimulationResources().workers
    lines = [
        HEADING,
        "",
        f"Command: `.venv/bin/python -m bench.federated` ({stamp}; {platform.python_version()}, "
        f"{os.cpu_count()} CPUs shared with other jobs: load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after).",
        f"Data: {source}; healthy period = first 50 % of the test; 20 % of each client's rows (the latest) held out.",
        f"Model: autoencoder 8-{'-'.join(map(str, defaults.hidden))}-8 ({defaults.activation.upper()}), Adam lr "
        f"{args.lr:g}, batch 32, 1 local epoch per round, FedAvg. Runtime: in-process, {workers} worker threads.",
        "",
        f"### Wall time per round vs clients (IID, {args.scale_rounds} rounds)",
        "",
        "| clients | train rows per client | s / round (rounds 2..) | round 1 s | whole simulation s |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['clients']} | {r['min_client_rows']}–{r['max_client_rows']} | {r['round_s']:.2f} | "
            f"{r['round1_s']:.2f} | {r['simulation_s']:.1f} |"
            for r in scale
        ],
        "",
        "A round = every client trains, then every client evaluates the new global model on its holdout rows; the",
        f"ClientApps of all clients run on {workers} threads of the training process, so round time grows with the",
        "number of clients (per-message overhead dominates at these data sizes). The simulation time includes",
        "federated scaling and calibration; no Ray, no socket.",
        "",
        f"### Federated vs centralized (10 clients, {args.rounds} rounds = {args.rounds} epochs each)",
        "",
        "| partition | client train rows (min–max) | FL final holdout MSE | centralized final holdout MSE "
        "| FL / central |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {r['scheme']} | {r['min_client_rows']}–{r['max_client_rows']} | {r['fl_mse']:.4f} | "
            f"{r['central_mse']:.4f} | {r['fl_mse'] / r['central_mse']:.2f} |"
            for r in quality
        ],
        "",
        "MSE is on standardised inputs (federated scaler), over the union of the clients' holdout rows for the",
        "centralized model and example-weighted over clients for FL — the same rows in both cases.",
        "",
    ]
    section = "\n".join(lines)
    document = args.report.read_text(encoding="utf-8") if args.report.is_file() else "# Benchmarks\n"
    write_text_atomic(args.report, replace_section(document, HEADING, section))
    write_json_atomic(args.work / "results.json", {"scale": scale, "quality": quality, "source": source})
    print(f"wrote the '{HEADING}' section of {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
