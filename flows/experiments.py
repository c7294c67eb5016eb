"""Prefect flow: the experiments grid (centralized, FedAvg IID / non-IID, FedProx, FedAdam, ...) on one dataset,
then the report (markdown + self-contained HTML + summary.csv) and a markdown artifact with the summary table.

The work itself is :mod:`bearing_core.experiments` (data, splits, runs) and :mod:`bearing_core.report`; the flow
resolves the data for the preset, writes the evaluation split once, runs each experiment as a content-cached task
(:mod:`tasks.experiments`: a re-run of an unchanged grid on unchanged data is served from the cache, a changed
experiment re-runs alone), logs one line per experiment and publishes the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from bearing_core import markdown as md
from bearing_core.config import DataPaths
from bearing_core.experiments import (
    ExperimentResult,
    GridConfig,
    demo_grid,
    demo_split,
    prepare_demo_dataset,
    seed_grid,
    seed_split,
)
from bearing_core.fingerprint import sha256_file
from bearing_core.report import summary_markdown, write_report
from bearing_core.run_report import relative
from tasks.experiments import experiment_task, load_experiment_result, write_split

DEFAULT_SEED_RAW_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "ims" / "raw" / "1st_test"
"""``../shared/ims/raw/1st_test`` relative to the repository: the real IMS files of the seed preset."""


@flow(name="experiments", log_prints=True)
def experiments_flow(
    preset: Literal["seed", "demo"] = "demo",
    raw_dir: str | None = None,
    out: str | None = None,
    rounds: int | None = None,
    experiments: list[str] | None = None,
    clients: int = 10,
    demo_sites: int = 4,
    demo_files: int = 60,
    demo_samples: int | None = None,
) -> dict[str, Any]:
    """Run the preset's grid on one dataset and write ``out/report.md``, ``report.html`` and ``summary.csv``.

    Args:
        preset: 'seed' = the reference notebook (real IMS files, raw samples, its recipe); 'demo' = the synthetic
            multi-site data with detection against its ground truth.
        raw_dir: seed: directory holding the two notebook files (default ../shared/ims/raw/1st_test); demo: a raw
            demo directory (default: generate one into out/data/raw/demo).
        out: report directory (also holds models/, clients/ and, for the demo, data/); default
            reports/experiments/ followed by the preset name.
        rounds: federated rounds (default 20); the centralized baseline trains the same number of epochs.
        experiments: run only these experiments of the grid (names as in summary.csv); default all.
        clients: clients of the demo's iid / quantity / dirichlet partitions (the seed preset uses the notebook's 10).
        demo_sites: sites of generated demo data.
        demo_files: snapshot files per site of generated demo data.
        demo_samples: samples per generated snapshot (default 20,480, the IMS size).
    """
    out_dir = Path(out) if out else DataPaths().reports_root / "experiments" / preset
    if preset == "seed":
        grid = seed_grid(rounds).select(experiments)
        split = seed_split(raw_dir or DEFAULT_SEED_RAW_DIR, grid)
    else:
        grid = demo_grid(rounds, num_clients=clients).select(experiments)
        dataset_dir, truth = prepare_demo_dataset(out_dir, raw_dir, demo_sites, demo_files, grid.seed, demo_samples)
        split = demo_split(dataset_dir, grid, truth)
    print(f"{preset} preset: {split.description}")
    print(f"grid: {', '.join(e.name for e in grid.experiments)}; {grid.rounds} rounds x {grid.local_epochs} epochs")

    manifest = write_split(split, out_dir / "split")
    manifest_sha256 = sha256_file(manifest)
    results = []
    for spec in grid.experiments:
        result = run_cached_experiment(grid, spec.name, manifest, manifest_sha256, out_dir)
        print(
            f"{result.spec.name}: final eval MSE {result.final_eval_mse:.6g}, train MSE "
            f"{result.final_train_mse:.6g}, threshold {result.threshold:.6g}, {result.wall_s:.1f} s"
        )
        results.append(result)
    paths = write_report(out_dir, results, split, grid)
    markdown = (
        f"# Experiments: {preset} preset\n\n{md.text(split.description)}.\n\n{summary_markdown(paths.summary)}\n\n"
        + "\n".join(f"- {line}" for line in paths.findings)
        + f"\n\nReport: {md.code(relative(paths.html))} (self-contained) and {md.code(relative(paths.markdown))}.\n"
    )
    create_markdown_artifact(
        key=f"experiments-{preset}", markdown=markdown, description=f"Experiments grid summary ({preset} preset)"
    )
    print(f"report: {paths.html}")
    return {
        "report_md": str(paths.markdown),
        "report_html": str(paths.html),
        "summary_csv": str(paths.summary_csv),
        "summary": paths.summary.to_dict(orient="records"),
        "findings": paths.findings,
    }


def run_cached_experiment(
    grid: GridConfig, name: str, manifest: Path, manifest_sha256: str, out_dir: Path
) -> ExperimentResult:
    """Experiment ``name`` of ``grid`` on the split ``manifest``: run, or served from the cache, then read back.

    A cached record whose result files were changed or deleted since is run again with a refreshed cache.
    """
    cfg = {"grid": grid.select([name]).model_dump(mode="json"), "work_dir": str(out_dir.resolve())}
    record = experiment_task(name, str(manifest), manifest_sha256, cfg)
    try:
        return load_experiment_result(record["record"], record["record_sha256"])
    except (FileNotFoundError, ValueError) as exc:
        get_run_logger().warning("%s: cached result unusable (%s): running it again", name, exc)
    record = experiment_task.with_options(refresh_cache=True)(name, str(manifest), manifest_sha256, cfg)
    return load_experiment_result(record["record"], record["record_sha256"])
