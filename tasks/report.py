"""Prefect task: evaluate detection (when the ground truth is known), plot, and write the run report.

Cached on the content of what it reads (scores, metrics, threshold hashes passed in as inputs) + its source; the
flow publishes the returned markdown as an artifact on every run, cached or not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from bearing_core.evaluation import evaluate_against_ground_truth, plot_scores
from bearing_core.io import write_text_atomic
from bearing_core.per_bearing import source_site_scores
from bearing_core.registry import MODEL_CARD_FILE
from bearing_core.run_report import (
    METRICS_PNG,
    SCORES_PNG,
    plot_round_metrics,
    relative,
    render_run_report,
    write_run_report,
)
from bearing_core.scoring import alarm_summary, read_scores
from bearing_core.synthetic import load_ground_truth
from bearing_core.threshold import load_threshold
from tasks.results import persisted
from tasks.retry import transient_io_error


@task(
    name="report",
    task_run_name="report",  # the same name on every run (no -xyz suffix)
    **persisted(INPUTS + TASK_SOURCE),
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=transient_io_error,
)
def report_task(
    dataset_dir: str,
    report_dir: str,
    scores_path: str,
    scores_sha256: str,
    model_dir: str,
    weights_sha256: str,
    metrics_path: str,
    ground_truth: str | None,
    ingest_summary: str,
    validation_headline: str,
    validation_warnings: list[str],
    training: dict[str, Any],
    promotion: dict[str, Any] | None,
    alarm_rule: str = "",
    per_bearing_dir: str | None = None,
) -> dict[str, Any]:
    """Write ``report_dir/report.md`` (+ PNGs, detection.csv); return the markdown (``markdown`` as written,
    ``artifact``
    with the plots embedded for the Prefect UI) and the tables.

    With ``per_bearing_dir`` the scores are per bearing (the per-bearing layout): the alarm table names each bearing,
    and detection is evaluated on the scores folded back to one row per snapshot of the source sites."""
    logger = get_run_logger()
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = json.loads((Path(dataset_dir) / "dataset.json").read_text())
    scores = read_scores(scores_path)
    alarms = alarm_summary(scores)  # per site, or per bearing in the per-bearing layout
    if per_bearing_dir is not None:
        scores = source_site_scores(scores, per_bearing_dir)
    metrics = pd.read_parquet(metrics_path)
    record = load_threshold(model_dir)

    detection = None
    onset = failure = None
    if ground_truth and Path(ground_truth).is_file():
        truth = load_ground_truth(ground_truth)
        detection = evaluate_against_ground_truth(scores, truth)
        write_text_atomic(out / "detection.csv", detection.to_csv(index=False))
        onset = {s: t.onset for s, t in truth.sites.items()}
        failure = {s: t.failure for s, t in truth.sites.items()}
    plot_scores(
        scores,
        None,
        out / SCORES_PNG,
        onset=onset,
        failure=failure,
        title=f"Anomaly score per site: {dataset.get('name', '')} (model {Path(model_dir).name})",
    )
    plot_round_metrics(metrics, out / METRICS_PNG, f"Federated ({training.get('strategy')}) vs centralized")
    links = {
        "dataset": relative(dataset_dir),
        "model": relative(model_dir),
        "scores": relative(scores_path),
        "validation report (Data Docs)": relative(Path(dataset_dir) / "validation" / "index.html"),
        "model card": relative(Path(model_dir) / MODEL_CARD_FILE),
        "this report": relative(out / "report.md"),
    }
    if detection is not None:
        links["detection table"] = relative(out / "detection.csv")
    report_args: dict[str, Any] = dict(
        dataset=dataset,
        ingest_summary=ingest_summary,
        validation_headline=validation_headline,
        validation_warnings=validation_warnings,
        metrics=metrics,
        training=training,
        threshold={
            "threshold": record.threshold,
            "method": record.config.describe(),
            "calibration_size": record.calibration_size,
        },
        alarms=alarms,
        detection=detection,
        promotion=promotion,
        links=links,
        alarm_rule=alarm_rule,
    )
    # report.md links the PNGs beside it; the artifact embeds them (the UI cannot load a file beside the report)
    markdown = render_run_report(plots={"metrics": METRICS_PNG, "scores": SCORES_PNG}, **report_args)
    artifact = render_run_report(
        plots={"metrics": out / METRICS_PNG, "scores": out / SCORES_PNG}, embed_plots=True, **report_args
    )
    summary = {
        "threshold": record.threshold,
        "alarm_snapshots": int(scores["alarm"].sum()),
        "detected": None if detection is None else int(detection[detection["faulty"]]["detected_after_onset"].sum()),
        "faulty_sites": None if detection is None else int(detection["faulty"].sum()),
        "false_alarm_events": None if detection is None else int(detection["false_alarm_events"].sum()),
    }
    path = write_run_report(out, markdown, summary)
    logger.info("report: %s", relative(path))
    return {
        "report": str(path),
        "markdown": markdown,
        "artifact": artifact,
        "summary": summary,
        "alarms": json.loads(alarms.to_json(orient="records", date_format="iso")),
        "detection": None if detection is None else json.loads(detection.to_json(orient="records", date_format="iso")),
    }
