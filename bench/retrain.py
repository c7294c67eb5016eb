"""The nightly retrain on the demo: warm start and early stopping, and where a nightly run's seconds go.

Follows the rule in BENCHMARKS.md ("Nightly retrain: warm start and early stopping"). In a scratch project:

1. ``bearing demo-data`` (``--sites`` x ``--files``), the last ``--new`` files of each site moved aside;
2. the *history run*: the pipeline with the nightly deployment's parameters (healthy rolling, patience 3, no
   centralized baseline) makes the champion; the project is saved;
3. the held-back files come back and the *nightly run* (the second run) is run from the saved project state, at the
   same absolute path (so every cache behaves as in production), once per variant and repetition, alternating
   (ABC CBA ...). Variants: ``scratch-20`` (patience 0), ``scratch-p3`` (patience 3), ``warm-p3`` (patience 3 +
   warm start from the champion).

Each run is a real pipeline flow run (``flows.pipeline.pipeline_flow``, the parameters of the nightly deployment,
in a subprocess with the project's own Prefect home); the CLI has no flags for these parameters yet. Per nightly
run: federated holdout MSE, rounds run, ``timings.json`` of the trained model, detection of the trained model on
every snapshot (:func:`bench.pipeline_detection.evaluate_demo`), and the Prefect task runs' durations.

    .venv/bin/python -m bench.retrain --work /tmp/bearing-retrain [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NIGHTLY = {"healthy": "rolling", "patience": 3, "centralized_baseline": False}
VARIANTS = {
    "scratch-20": {**NIGHTLY, "patience": 0},
    "scratch-p3": NIGHTLY,
    "warm-p3": {**NIGHTLY, "warm_start": True},
    "scratch-20-central": {**NIGHTLY, "patience": 0, "centralized_baseline": True},
}
"""``scratch-20-central``: the training before the nightly deployment's settings (every round, centralized
baseline), for the time breakdown only."""


def _env(project: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BEARING_PROJECT_DIR": str(project)}
    for key in ("PREFECT_HOME", "FLWR_HOME", "RAY_TMPDIR", "PREFECT_API_URL"):
        env.pop(key, None)
    return env


def flow_run(project: Path, params: dict[str, Any]) -> dict[str, Any]:
    """One pipeline flow run in ``project`` (subprocess, cwd = project); its outputs, task durations, wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.retrain", "_flow", json.dumps(params)],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "process_s": wall}


def _flow(params_json: str) -> None:
    """In the scratch project: run the pipeline, then print its outputs and task-run durations as one JSON line."""
    from bearing_core.env import configure_environment

    configure_environment()
    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline_flow

    params = json.loads(params_json)
    state = pipeline_flow(**params, return_state=True)
    outputs = state.result()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow = client.read_flow_run(run_id)
        tasks = client.read_task_runs()
    durations: dict[str, float] = {}
    for run in tasks:
        if run.start_time is None or run.start_time < flow.start_time:
            continue
        name = run.name.rsplit("-", 1)[0]  # task runs are named <task>-<suffix>
        durations[name] = durations.get(name, 0.0) + run.total_run_time.total_seconds()
    print(
        json.dumps(
            {"outputs": outputs, "tasks_s": durations, "flow_s": flow.total_run_time.total_seconds()}, default=str
        )
    )


def nightly_figures(project: Path, run: dict[str, Any], truth: Path) -> dict[str, Any]:
    """Holdout MSE, rounds, timings and detection of the model the nightly run trained."""
    from bearing_core.alarms import AlarmConfig
    from bearing_core.inputs import PER_BEARING_DIR
    from bearing_core.model_io import load_model
    from bearing_core.scoring import score_dataset
    from bench.pipeline_detection import evaluate_demo

    out = run["outputs"]
    model = project / out["trained model"]
    dataset = project / out["dataset"]
    extra = load_model(model).extra
    rule = AlarmConfig()
    scores = score_dataset(dataset / PER_BEARING_DIR, model, rule)
    detection = evaluate_demo(scores, truth, scores["threshold"].to_numpy(), rule)
    return {
        "federated_mse": float(out["federated holdout MSE"]),
        "rounds_run": int(extra["training_stop"]["rounds_run"]),
        "stop": extra["training_stop"].get("reason", ""),
        "warm_start": (extra.get("warm_start") or {}).get("detail", "off"),
        "timings": json.loads((model / "timings.json").read_text(encoding="utf-8")),
        "tasks_s": run["tasks_s"],
        "flow_s": run["flow_s"],
        "process_s": run["process_s"],
        **detection,
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "_flow":
        _flow(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.retrain", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--work",
        type=Path,
        required=True,
        help="scratch directory (created; or an earlier run's, whose saved history is reused)",
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS)[:3])
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--files", type=int, default=150, help="demo files per site")
    parser.add_argument("--new", type=int, default=40, help="files per site held back for the nightly run")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of each variant (alternating)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    work = args.work.resolve()
    raw, aside, project, base = work / "raw", work / "aside", work / "project", work / "project.base"
    common = {"raw_dir": str(raw), "seed": args.seed}
    load = [os.getloadavg()[0]]
    history: dict[str, Any] = {}
    if base.is_dir():
        print(f"reusing the history run saved in {base}", flush=True)
    else:
        work.mkdir(parents=True)
        project.mkdir()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "demo-data",
                "--out",
                str(raw),
                "--sites",
                str(args.sites),
                "--files",
                str(args.files),
                "--seed",
                str(args.seed),
            ],
            cwd=project,
            env=_env(project),
            check=True,
            capture_output=True,
        )
        moved: list[tuple[Path, Path]] = []
        for site in sorted(p for p in raw.iterdir() if p.is_dir()):
            (aside / site.name).mkdir(parents=True)
            for path in sorted(site.iterdir())[-args.new :]:
                moved.append((path, aside / site.name / path.name))
        for src, dst in moved:
            src.rename(dst)
        history = flow_run(project, {**common, **NIGHTLY})
        print(f"history run: {history['process_s']:.0f} s; {history['outputs']['training']}", flush=True)
        for src, dst in moved:
            dst.rename(src)
        shutil.copytree(project, base, symlinks=True)

    order = list(args.variants)
    sequence = [name for rep in range(args.reps) for name in (order if rep % 2 == 0 else order[::-1])]
    results: list[dict[str, Any]] = []
    for i, name in enumerate(sequence):
        shutil.rmtree(project, ignore_errors=True)
        shutil.copytree(base, project, symlinks=True)
        load.append(os.getloadavg()[0])
        run = flow_run(project, {**common, **VARIANTS[name]})
        row = {"variant": name, "rep": i, **nightly_figures(project, run, raw / "ground_truth.json")}
        results.append(row)
        print(
            f"{name}: flow {row['flow_s']:.0f} s, federation {row['timings'].get('federation_s', 0):.1f} s, "
            f"{row['rounds_run']} rounds, MSE {row['federated_mse']:.4g}, detected "
            f"{row['defects'] - row['missed']}/{row['defects']}, false events {row['false_events']}, "
            f"delay {row['mean_delay_h']:.1f} h (load {load[-1]:.1f})",
            flush=True,
        )
    load.append(os.getloadavg()[0])
    (work / f"results-{'-'.join(args.variants)}.json").write_text(
        json.dumps({"history": history, "nightly": results, "load": load}, default=str, indent=1), encoding="utf-8"
    )
    print(f"wrote the results in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
