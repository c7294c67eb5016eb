"""Nightly-run benchmark: does ``bearing run`` on one more day of data cost the same on a short and a long history?

Run: ``.venv/bin/python -m bench.nightly`` (about 5-10 minutes on 2 cores; needs /work/shared/ims or ``--table``).

Data: the real 1st-test trajectory replayed as raw IMS files (``replay_ims.py TABLE OUT``: 2,156 8-channel files of
~1.3 MB, one site), written once under ``--scratch`` (``/tmp`` by default; ``--keep`` keeps it, else it is deleted
at the end). Two cases, each in its own raw directory (hard links to the replayed files) and dataset:

* **short**: history = the first ``--short`` (200) files, then +1 day = the next 144 files;
* **long**: history = the first 2,156 - 144 files, then +1 day = the last 144 files.

For each case the history is run first (``bearing run``, not measured beyond its total), then the day is added and
``bearing run`` runs again: that run is the measurement. Each run is a fresh process (its own ephemeral Prefect
API) whose working directory is a scratch project (models and reports land there, not in the repository). The
figures: the flow run's own time (Prefect's ``total_run_time``) and the wall time of each task run of it, summed
by task name. The ratio long / short of the +1 day flow time is the history-dependence of a nightly run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bearing_core.io import write_text_atomic
from bench.ingest import replace_section

REPO = Path(__file__).resolve().parents[1]
IMS = Path("/work/shared/ims")
DAY = 144  # files a site per day at one snapshot every 10 minutes
TARGETS = {"ratio": 1.2, "flow_s": 30.0}

# Runs in a child process (cwd = the scratch project): one pipeline flow run, then its task runs from the API.
_CHILD = """
import json, re, sys, time
from bearing_core.env import configure_environment
configure_environment()
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from flows.pipeline import pipeline_flow

params = json.loads(sys.argv[1])
start = time.perf_counter()
state = pipeline_flow(**params, return_state=True)
wall = time.perf_counter() - start
run_id = state.state_details.flow_run_id
with get_client(sync_client=True) as client:
    flow_run = client.read_flow_run(run_id)
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
rows = [{"name": re.sub(r"-[0-9a-f]{3}$", "", t.name.split(" ")[0]),  # "train-federated-6a9" -> "train-federated"
         "state": t.state_name,
         "seconds": (t.end_time - t.start_time).total_seconds() if t.start_time and t.end_time else 0.0}
        for t in tasks]
print(json.dumps({"ok": state.is_completed(), "state": state.name, "wall_s": wall,
                  "flow_s": flow_run.total_run_time.total_seconds(), "tasks": rows}))
"""


def replay(table: Path, out: Path) -> list[Path]:
    """The replayed raw files (written once; reused when complete)."""
    marker = out / ".complete"
    if not marker.is_file():
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([sys.executable, str(IMS / "replay_ims.py"), str(table), str(out)], check=True)
        marker.write_text("done\n")
    return sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith("."))


def link(files: list[Path], raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for f in files:
        target = raw / f.name
        if not target.exists():
            os.link(f, target)


def deployment_parameters(name: str) -> dict:
    """The parameters of the pipeline deployment ``name`` in prefect.yaml (sections given in part)."""
    import yaml

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    (deployment,) = [d for d in spec["deployments"] if d["name"] == name]
    return json.loads(json.dumps(deployment.get("parameters") or {}))


def pipeline_parameters(raw: Path, out: Path, rounds: int, deployment: str) -> dict:
    """``deployment``'s parameters with this case's raw and processed directories and rounds."""
    params = deployment_parameters(deployment)
    params.setdefault("data", {}).update(raw_dir=str(raw), out_dir=str(out))
    params.setdefault("federated", {}).update(rounds=rounds)
    return params


def run_pipeline(project: Path, raw: Path, out: Path, rounds: int, deployment: str = "nightly-retrain") -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BEARING_PROJECT_DIR": str(project)}
    params = pipeline_parameters(raw, out, rounds, deployment)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(params)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"pipeline run on {raw} failed (exit {proc.returncode})")
    result = json.loads(lines[-1])
    if not result["ok"]:
        raise SystemExit(f"pipeline run on {raw} ended {result['state']}")
    return result


def per_task(result: dict) -> dict[str, float]:
    totals: dict[str, float] = {}
    for t in result["tasks"]:
        totals[t["name"]] = totals.get(t["name"], 0.0) + t["seconds"]
    return totals


def bookkeeping_at(rows: int, scratch: Path, new: int = DAY) -> dict[str, float]:
    """CPU/wall seconds of the per-night work that reads or rewrites whole tables, for a history of ``rows``
    snapshots (synthetic: 8 channels, full-entropy feature values, one site per 10,000 rows) and ``new`` new ones:
    the ingest's load of the previous run, its features table and manifest rewrite, and the validation's summary
    cache lookup (cache of ``rows`` snapshots, a stat per samples file; the samples files are empty stand-ins)."""
    from datetime import datetime, timedelta

    import numpy as np
    import pyarrow as pa

    from bearing_core import ingest as ing
    from bearing_core.config import channel_names
    from bearing_core.features import feature_columns
    from bearing_core.io import write_parquet_atomic
    from bearing_core.validation import summary_cache

    rng = np.random.default_rng(0)
    channels = channel_names(8)
    columns = feature_columns(channels)
    rels = [f"site_{i // 10_000:02d}/{i:08d}" for i in range(rows)]
    t0 = np.datetime64("2004-01-01T00:00:00", "us")
    features = pa.table({
        "timestamp": t0 + np.arange(rows) * np.timedelta64(600, "s"),
        "file": [r.split("/")[1] for r in rels], "site": [r.split("/")[0] for r in rels], "path": rels,
        **{c: np.abs(rng.normal(size=rows)) for c in columns},
    })  # fmt: skip
    out = scratch / f"bookkeeping_{rows}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    write_parquet_atomic(out / ing.FEATURES_FILE, features)
    sha = [f"{i:064x}" for i in range(rows)]
    manifest = pa.table({"path": rels, "size": np.full(rows, 1_300_000), "mtime_ns": np.arange(rows), "sha256": sha,
                         "status": ["ok"] * rows, "reason": pa.nulls(rows, pa.string()),
                         "target": pa.nulls(rows, pa.string())})  # fmt: skip
    write_parquet_atomic(out / ing.MANIFEST_FILE, manifest)
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        return value

    previous = timed("ingest: load previous run (manifest, features)", lambda: ing._PreviousRun.load(out))
    kept = [ing._Result(r, r.split("/")[0], 1_300_000, i, sha[i], "ok", parsed=False) for i, r in enumerate(rels)]
    fresh = [ing._Result(f"site_new/{i:08d}", "site_new", 1_300_000, i, f"{i:064x}", "ok", parsed=True,
                         timestamp=datetime(2030, 1, 1) + timedelta(minutes=10 * i),
                         features=rng.normal(size=len(columns))) for i in range(new)]  # fmt: skip
    table = timed(
        "ingest: features table (previous rows + new)", lambda: ing._features_table(kept + fresh, previous, channels)
    )
    timed("ingest: features.parquet write (fsync)", lambda: write_parquet_atomic(out / ing.FEATURES_FILE, table))
    timed(
        "ingest: manifest build + write",
        lambda: write_parquet_atomic(out / ing.MANIFEST_FILE, ing._manifest_table(kept + fresh)),
    )
    # validation's cache lookup: a cache holding every old snapshot, current keys from the manifest and samples stat
    for r in rels[:: max(1, rows // 100)]:  # stand-in samples files (stat only): a few; the rest stat as missing
        (out / "samples" / f"{r}.parquet").parent.mkdir(parents=True, exist_ok=True)
    sites = [r.split("/")[0] for r in rels]
    keys = summary_cache.current_keys(out, rels, sites, channels)
    stats = {
        f.name: pa.array([[0.0] * 8] * rows, pa.list_(f.type.value_type))
        for f in summary_cache.CACHE_SCHEMA
        if pa.types.is_list(f.type) and f.name != "channel"
    }
    cache = pa.table(
        {
            **{k: keys[k] for k in keys.column_names},
            "n_rows": np.full(rows, 20_480),
            "columns": pa.array([""] * rows),
            "types": pa.array([""] * rows),
            "read_error": pa.array([""] * rows),
            "channel": pa.array([list(channels)] * rows),
            **stats,
        }
    )
    write_parquet_atomic(
        summary_cache.cache_dir(out) / "part-00000001.parquet",
        cache.select(summary_cache.CACHE_SCHEMA.names).cast(summary_cache.CACHE_SCHEMA),
    )
    loaded = timed("validation: load summary cache", lambda: summary_cache.load_cache(out))
    keys = timed(
        "validation: current keys (manifest + stat of every samples file)",
        lambda: summary_cache.current_keys(out, rels, sites, channels),
    )
    timed("validation: match keys to cache", lambda: summary_cache._matching_rows(keys, loaded))
    timed("validation: summary tables of every snapshot", lambda: summary_cache._split(loaded))
    shutil.rmtree(out, ignore_errors=True)
    return timings


def _bookkeeping_section(rows: int, scratch: Path) -> str:
    small = bookkeeping_at(2_000, scratch)
    large = bookkeeping_at(rows, scratch)
    lines = "\n".join(f"| {name} | {small[name]:.2f} | {large[name]:.2f} |" for name in large)
    load = os.getloadavg()[0]
    return f"""### Whole-table work of a night at {rows:,} snapshots

`bookkeeping_at` in bench/nightly.py (synthetic history, 8 channels, +{DAY} new snapshots; wall seconds, 1-minute
load average {load:.1f} at the end):

| step | 2,000 rows | {rows:,} rows |
|---|---:|---:|
{lines}

"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nightly", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--table",
        type=Path,
        default=IMS / "features" / "1st_test_mean_abs.csv",
        help="per-file mean|x| table replayed as raw files (default: %(default)s)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path("/tmp/bearing-nightly-bench"),
        help="replayed files, raw directories, datasets, scratch project (default: %(default)s)",
    )
    parser.add_argument(
        "--replay",
        type=Path,
        default=None,
        help="an existing directory of replayed raw files to use (never deleted) instead of replaying",
    )
    parser.add_argument("--short", type=int, default=200, help="files of the short history (default: 200)")
    parser.add_argument("--rounds", type=int, default=20, help="federated rounds of every run (default: 20)")
    parser.add_argument(
        "--rows", type=int, default=100_000, help="history size of the whole-table bookkeeping measurement (0: skip it)"
    )
    parser.add_argument(
        "--no-runs", action="store_true", help="only the bookkeeping measurement (no replay, no pipeline runs)"
    )
    parser.add_argument(
        "--deployment",
        default="nightly-retrain",
        choices=("nightly-retrain", "manual-pipeline"),
        help="whose parameters (prefect.yaml) every run uses (default: %(default)s, what runs every night)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (else deleted at the end)")
    parser.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md", help="markdown file to update")
    args = parser.parse_args(argv)

    if args.no_runs:
        scratch = args.scratch.resolve()
        scratch.mkdir(parents=True, exist_ok=True)
        section = "## Nightly run (+1 day)\n\n" + _bookkeeping_section(args.rows, scratch)
        print(section)
        return 0
    scratch = args.scratch.resolve()
    if scratch.exists() and not (scratch / ".bench-nightly").is_file():
        raise SystemExit(f"bench.nightly: error: {scratch} exists and was not created by this bench")
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / ".bench-nightly").touch()
    project = scratch / "project"
    project.mkdir(exist_ok=True)
    started = time.perf_counter()
    if args.replay is not None:
        files = sorted(p for p in args.replay.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = replay(args.table, scratch / "replay")
    print(f"{len(files)} replayed files ({time.perf_counter() - started:.0f} s)", flush=True)
    cases = {"short": args.short, "long": len(files) - DAY}
    results: dict[str, dict[str, dict]] = {}
    try:
        for case, n_history in cases.items():
            raw = scratch / "raw" / f"ims1_{case}"
            out = scratch / "processed" / f"ims1_{case}"
            shutil.rmtree(raw, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            link(files[:n_history], raw)
            history = run_pipeline(project, raw, out, args.rounds, args.deployment)
            print(f"{case}: history of {n_history} files: flow {history['flow_s']:.1f} s", flush=True)
            link(files[n_history : n_history + DAY], raw)
            day = run_pipeline(project, raw, out, args.rounds, args.deployment)
            print(
                f"{case}: +1 day ({DAY} files): flow {day['flow_s']:.1f} s, wall {day['wall_s']:.1f} s; "
                + ", ".join(f"{k} {v:.1f}" for k, v in per_task(day).items()),
                flush=True,
            )
            results[case] = {"history": history, "day": day, "n_history": n_history}
    except BaseException:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        raise

    short, long = results["short"]["day"], results["long"]["day"]
    ratio = long["flow_s"] / short["flow_s"]
    checks = {
        f"long / short <= {TARGETS['ratio']}": ratio <= TARGETS["ratio"],
        f"+1 day on the long history <= {TARGETS['flow_s']:.0f} s of flow time": long["flow_s"] <= TARGETS["flow_s"],
    }
    print(
        f"ratio long/short = {ratio:.2f}; " + "; ".join(f"{'PASS' if ok else 'MISS'} {c}" for c, ok in checks.items())
    )
    names = list(dict.fromkeys([*per_task(short), *per_task(long)]))
    short_tasks, long_tasks = per_task(short), per_task(long)
    rows = "\n".join(
        f"| {n} | {short_tasks.get(n, 0.0):.2f} | {long_tasks.get(n, 0.0):.2f} | "
        f"{long_tasks.get(n, 0.0) - short_tasks.get(n, 0.0):+.2f} |"
        for n in names
    )
    training = {"train-federated", "train-centralized"}
    untrained = {
        case: r["day"]["flow_s"] - sum(v for k, v in per_task(r["day"]).items() if k in training)
        for case, r in results.items()
    }
    wall_ratio = long["wall_s"] / short["wall_s"]
    untrained_ratio = untrained["long"] / untrained["short"]
    history = {case: results[case]["history"]["flow_s"] for case in ("short", "long")}
    section = f"""## Nightly run (+1 day)

Command: `.venv/bin/python -m bench.nightly --rounds {args.rounds} --deployment {args.deployment}`
({datetime.now(UTC):%Y-%m-%d %H:%M} UTC; every run with that deployment's parameters from prefect.yaml)

Machine: {os.cpu_count()} CPU cores, Python {platform.python_version()}, shared with other jobs. Data: the 1st-test
replay ({len(files)} raw files, one site). `bearing run` on a history, then on the same history + {DAY} files (one
day); the second run is measured. Short history: {cases["short"]} files; long: {cases["long"]} files.

| | short history | long history | long / short |
|---|---:|---:|---:|
| +1 day: flow time (s) | {short["flow_s"]:.1f} | {long["flow_s"]:.1f} | **{ratio:.2f}** |
| +1 day: process wall time (s) | {short["wall_s"]:.1f} | {long["wall_s"]:.1f} | {wall_ratio:.2f} |
| +1 day: flow time, no training (s) | {untrained["short"]:.1f} | {untrained["long"]:.1f} | {untrained_ratio:.2f} |
| history run: flow time (s) | {history["short"]:.1f} | {history["long"]:.1f} | |

Where the seconds of the +1 day run go (wall time of each task run, summed by task; the rest of the flow time is
the flow's own work: artifacts, task submission, result persistence):

| task | short (s) | long (s) | long - short (s) |
|---|---:|---:|---:|
{rows}

Targets: {"; ".join(f"{'PASS' if ok else 'MISS'} {c}" for c, ok in checks.items())}.

"""
    if args.rows:
        section += _bookkeeping_section(args.rows, scratch)
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    document = args.report.read_text() if args.report.is_file() else "# Benchmarks\n"
    write_text_atomic(args.report, replace_section(document, "## Nightly run (+1 day)", section))
    print(f"wrote the '## Nightly run (+1 day)' section of {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
