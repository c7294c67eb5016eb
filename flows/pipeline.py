"""The whole chain as one flow: ingest -> validate -> partition + federated training (with federated threshold
calibration) -> publish + champion/challenger -> score -> evaluate -> report.

Each step is a task (the step flows' tasks, run inside this one flow run) cached on the *content* of its inputs,
so re-running on unchanged data skips the work that is already done, a new raw file re-does only what depends on it,
and a run that failed can be retried
from the Prefect UI (or ``prefect flow-run retry <id> --entrypoint flows/pipeline.py:pipeline_flow``): completed
steps come back as Cached.

Overlapping runs on one dataset (the nightly run and a manual ``bearing run``) are serialised by a dataset-level
lock (``<dataset>/.pipeline.lock``): the later run waits for the earlier one, then finds its work cached. The model
registry has its own lock (tasks.registry), since several datasets share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State

from bearing_core.alarms import AlarmConfig
from bearing_core.config import DataPaths, IngestConfig
from bearing_core.fingerprint import sha256_file
from bearing_core.inputs import PER_BEARING_DIR
from bearing_core.locking import PIPELINE_LOCK_FILE, exclusive_lock, lock_holder
from bearing_core.model_io import WEIGHTS_FILE
from bearing_core.params import (
    DataParams,
    FederatedParams,
    ParameterError,
    PipelineParams,
    ThresholdParams,
    check_params,
    form_title,
)
from bearing_core.per_bearing import LAYOUT_NAME as PER_BEARING
from bearing_core.run_report import relative
from flows.ingest import ingest_flow
from flows.score import score_flow
from flows.train import train_flow
from flows.validate import portable, validate_flow
from tasks.per_bearing import healthy_task, per_bearing_task
from tasks.registry import promote_task, publish_task
from tasks.report import report_task

GROUND_TRUTH_FILE = "ground_truth.json"
DEFAULTS = PipelineParams()
"""The flow's parameter defaults: those of :class:`bearing_core.params.PipelineParams` (frozen models)."""


def _key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "dataset"


@flow(name="pipeline", log_prints=True, validate_parameters=False)  # checked below: one line, before any step
def pipeline_flow(
    data: Annotated[DataParams, form_title("data")] = DEFAULTS.data,
    federated: Annotated[FederatedParams, form_title("federated")] = DEFAULTS.federated,
    threshold: Annotated[ThresholdParams, form_title("threshold")] = DEFAULTS.threshold,
    alarms: Annotated[AlarmConfig, form_title("alarms")] = DEFAULTS.alarms,
    lock_timeout_s: Annotated[float, form_title("lock_timeout_s")] = DEFAULTS.lock_timeout_s,
) -> dict[str, Any] | State:
    """Raw IMS files -> validated dataset -> federated model + threshold -> champion -> scores, alarms, report.

    The parameters are the sections of :class:`bearing_core.params.PipelineParams` (one group each in the Prefect
    form, where every setting has its description, bounds and choices). A section may be given in part (a mapping,
    e.g. ``{"raw_dir": "data/raw/x"}`` in prefect.yaml): the other settings keep their defaults. Every setting and
    the raw directory are checked before the first step: a bad one fails the run with one line naming it.

    Args:
        data: Raw and processed data, model input feature, healthy period and model rows.
        federated: Partition into clients and federated training.
        threshold: Calibration of the alarm threshold on the healthy period.
        alarms: The alarm rule: persistence, fraction over the threshold, warm-up after stops.
        lock_timeout_s: How long to wait for another run on the same dataset to finish before failing.
    """
    logger = get_run_logger()
    try:
        params = check_params(
            {
                "data": data,
                "federated": federated,
                "threshold": threshold,
                "alarms": alarms,
                "lock_timeout_s": lock_timeout_s,
            }
        )
    except ParameterError as exc:  # the run's state message: one line, no traceback, nothing started
        logger.error("%s", exc)
        return Failed(message=str(exc))
    dataset_out = IngestConfig(raw_dir=params.data.raw_dir, out_dir=params.data.out_dir or None).resolved_out_dir(
        DataPaths()
    )
    with exclusive_lock(
        Path(dataset_out) / PIPELINE_LOCK_FILE,
        timeout_s=params.lock_timeout_s,
        on_wait=lambda lock: logger.info(
            "dataset %s is locked by another run (%s): waiting for it", relative(dataset_out), lock_holder(lock)
        ),
        label=f"dataset {relative(dataset_out)}",
    ):
        return _run_pipeline(params)


def _run_pipeline(params: PipelineParams) -> dict[str, Any]:
    """The pipeline's steps (see :func:`pipeline_flow`), run while the dataset lock is held.

    The step flows run through ``.fn``: their tasks and artifacts belong to this flow run instead of four sub-flow
    runs. A sub-flow run costs about 1 s even when all its tasks are cached (flow-run bookkeeping and the heartbeat
    thread's shutdown), which was most of a cached pipeline run; the standalone flows are unchanged.
    """
    data, fed, alarms = params.data, params.federated, params.alarms
    input_cfg = data.input_config()
    raw_dir, layout = data.raw_dir, data.layout
    ingested = ingest_flow.fn(
        raw_dir=raw_dir,
        out_dir=data.out_dir or None,
        workers=data.workers or None,
        follow_symlinks=data.follow_symlinks,
    )
    dataset_dir = ingested["out_dir"]
    report = validate_flow.fn(dataset_dir=dataset_dir)
    headline = portable(report).headline()  # no absolute machine paths in reports and artifacts
    model_dataset = dataset_dir  # what the model's rows come from
    healthy = data.healthy_policy()
    scored_dir = str(Path(dataset_dir) / PER_BEARING_DIR) if layout == PER_BEARING else dataset_dir
    selection = (
        healthy_task(dataset_dir, scored_dir, healthy.model_dump())
        if healthy.policy == "rolling"
        else {"path": None, "detail": healthy.policy}
    )
    if layout == PER_BEARING:
        derived = per_bearing_task(
            dataset_dir,
            str(Path(dataset_dir) / PER_BEARING_DIR),
            input_cfg.model_dump(mode="json"),
            data.per_bearing_config().model_dump(mode="json"),
            healthy_file=selection["path"],
        )
        model_dataset = derived["out_dir"]
    trained = train_flow.fn(
        dataset_dir=model_dataset,
        config=params.federated_config(),
        inputs=input_cfg,
        partition=fed.partition,
        alpha=fed.alpha,
        alarms=alarms,
        warm_start=fed.warm_start,
        centralized_baseline=fed.centralized_baseline,
        healthy_file=selection["path"],
    )
    published = publish_task(trained["model_dir"], trained["manifest"], trained["manifest_sha256"])
    decision = promote_task(published["path"], trained["manifest"])
    decision["version"] = published["version"]

    scored = score_flow.fn(dataset_dir=model_dataset, model="latest", alarms=alarms)
    champion = str(Path(scored["model_dir"]).resolve())  # `latest` -> the version it names
    ground_truth = Path(raw_dir) / GROUND_TRUTH_FILE
    report_dir = DataPaths().reports_root / Path(dataset_dir).name / Path(champion).resolve().name
    reported = report_task(
        dataset_dir=dataset_dir,
        report_dir=str(report_dir),
        scores_path=scored["path"],
        scores_sha256=scored["sha256"],
        model_dir=champion,
        weights_sha256=sha256_file(Path(champion) / WEIGHTS_FILE),
        metrics_path=str(Path(champion) / "metrics.parquet"),
        ground_truth=str(ground_truth) if ground_truth.is_file() else None,
        ingest_summary=ingested["summary"],
        validation_headline=headline,
        validation_warnings=[f"{w.check}: {w.detail()}" for w in report.warnings],
        training={
            "strategy": fed.strategy,
            "partition": fed.partition,
            "clients": trained["clients"],
            "rounds": fed.rounds,
            "local_epochs": fed.local_epochs,
            "layout": layout,
            "federated_eval_mse": trained["federated_eval_mse"],
            "centralized_eval_mse": trained["centralized_eval_mse"],
            "failures": trained["failures"],
            "rounds_run": trained["rounds_run"],
            "stop_reason": trained["stop_reason"],
            "warm_start": trained["warm_start"],
            "healthy": selection["detail"],
            "sites_left_out": trained["sites_left_out"],
            "privacy": trained.get("privacy"),
        },
        promotion=decision,
        alarm_rule=alarms.describe(),
        per_bearing_dir=model_dataset if layout == PER_BEARING else None,
    )
    key = _key(Path(dataset_dir).name)
    create_markdown_artifact(key=f"report-{key}", markdown=reported["artifact"], description="Pipeline run report")
    if reported["detection"]:
        create_table_artifact(
            key=f"detection-{key}",
            table=reported["detection"],
            description="Detection against the ground truth, per site",
        )
    outputs = {
        "dataset": relative(dataset_dir),
        "ingest": ingested["summary"],
        "validation": headline,
        "validation report": relative(Path(dataset_dir) / "validation" / "index.html"),
        "layout": layout
        + (
            f" ({len(derived['sites'])} bearings, inputs {', '.join(derived['input_columns'])})"
            if layout == PER_BEARING
            else ""
        ),
        "trained model": relative(trained["model_dir"]),
        "promotion": ("promoted to latest: " if decision["promoted"] else "champion kept: ") + decision["reason"],
        "champion (latest)": relative(champion),
        "threshold": f"{reported['summary']['threshold']:.6g}",
        "federated holdout MSE": f"{trained['federated_eval_mse']:.5g}",
        "centralized holdout MSE": (
            f"{trained['centralized_eval_mse']:.5g}"
            if trained["centralized_eval_mse"] is not None
            else "skipped (centralized_baseline off)"
        ),
        "training": f"{trained['rounds_run']} of at most {fed.rounds} rounds: {trained['stop_reason']}",
        "healthy period": selection["detail"],
        "scores": relative(scored["path"]),
        "alarm rule": alarms.describe(),
        "alarms": ", ".join(
            f"{a['site']}: {a['alarm_snapshots']} from {a['first_alarm'] or '-'} ({a['top_channel']})"
            for a in reported["alarms"]
            if a["alarm_snapshots"]
        )
        or "none",
        "report": relative(reported["report"]),
    }
    if reported["summary"]["detected"] is not None:
        outputs["detection"] = (
            f"{reported['summary']['detected']} of {reported['summary']['faulty_sites']} "
            f"injected defects alarmed after onset, {reported['summary']['false_alarm_events']} "
            "false alarm events"
        )
    return outputs
