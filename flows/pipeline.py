"""The whole chain as one flow: ingest -> validate -> partition + federated training (with federated threshold
calibration) -> publish + champion/challenger -> score -> evaluate -> report.

Each step is a task (the step flows' tasks, run inside this one flow run) cached on the *content* of its inputs,
so re-running on unchanged data skips the work that is already done, a new raw file re-does only what depends on it, and a run that failed can be retried
from the Prefect UI (or ``prefect flow-run retry <id> --entrypoint flows/pipeline.py:pipeline_flow``): completed
steps come back as Cached.

Overlapping runs on one dataset (the nightly run and a manual ``bearing run``) are serialised by a dataset-level
lock (``<dataset>/.pipeline.lock``): the later run waits for the earlier one, then finds its work cached. The model
registry has its own lock (tasks.registry), since several datasets share it.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bearing_core.alarms import AlarmConfig
from bearing_core.config import DataPaths, IngestConfig
from bearing_core.fingerprint import sha256_file
from bearing_core.healthy import HealthyPolicy
from bearing_core.locking import PIPELINE_LOCK_FILE, exclusive_lock
from bearing_core.inputs import PER_BEARING_DIR, InputConfig
from bearing_core.model_io import WEIGHTS_FILE
from bearing_core.per_bearing import LAYOUT_NAME as PER_BEARING, PerBearingConfig
from bearing_core.run_report import relative
from flows.ingest import ingest_flow
from flows.score import score_flow
from flows.train import train_flow
from flows.validate import portable, validate_flow
from tasks.per_bearing import healthy_task, per_bearing_task
from tasks.registry import promote_task, publish_task
from tasks.report import report_task

GROUND_TRUTH_FILE = "ground_truth.json"
_ALARMS = AlarmConfig()  # the alarm defaults live in AlarmConfig
DEFAULT_HIDDEN = {"per_bearing": (4, 1, 4), "snapshot": (4, 2, 4)}
"""Autoencoder widths when ``hidden`` is not given: 1-4 inputs a bearing, or every channel of a snapshot."""


def _key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "dataset"


@flow(name="pipeline", log_prints=True)
def pipeline_flow(
    raw_dir: str = "data/raw/demo",
    out_dir: str | None = None,
    layout: Literal["per_bearing", "snapshot"] = "per_bearing",
    relative_inputs: Literal["off", "add", "only"] = "off",
    min_level_std: float = 0.1,
    partition: Literal["natural", "iid", "quantity", "dirichlet"] = "natural",
    clients: int = 4,
    rounds: int = 20,
    strategy: Literal["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum"] = "fedavg",
    local_epochs: int = 10,
    lr: float = 1e-2,
    batch_size: int = 32,
    hidden: tuple[int, ...] | None = None,
    activation: Literal["tanh", "elu", "relu"] = "tanh",
    mu: float = 0.01,
    alpha: float = 0.5,
    feature: str = "mean_abs",
    train_fraction: float | None = 0.2,
    train_until: datetime | None = None,
    threshold_method: Literal["max", "quantile", "mean_kstd"] = "max",
    threshold_quantile: float = 0.99,
    threshold_k: float = 3.0,
    persistence_h: float = _ALARMS.persistence_h,
    alarm_fraction: float = _ALARMS.fraction,
    warmup_h: float = _ALARMS.warmup_h,
    holdout: Literal["last", "interleaved"] = "last",
    seed: int = 0,
    workers: int | None = None,
    follow_symlinks: bool = False,
    lock_timeout_s: float = 3600.0,
    healthy: Literal["first-fraction", "until", "rolling"] | None = None,
    healthy_guard_h: float = 24.0,
    healthy_window_days: float = 30.0,
    patience: int = 0,
    min_improvement: float = 0.01,
    warm_start: bool = False,
    centralized_baseline: bool = True,
) -> dict[str, Any]:
    """Raw IMS files -> validated dataset -> federated model + threshold -> champion -> scores, alarms, report.

    Args:
        raw_dir: raw IMS directory (one sub-folder per site, or files at its top). A ground_truth.json in it (the
            demo data's) turns on detection evaluation.
        out_dir: processed dataset directory; default data/processed/(name of raw_dir).
        layout: 'per_bearing' (default): one model row per snapshot and bearing, each bearing's inputs standardised
            by its own healthy rows at its own site (ln levels); alarms name the bearing. 'snapshot': one row per
            snapshot with every channel of the rig.
        relative_inputs: per_bearing only: add ('add') or use only ('only') each bearing's level relative to the median of
            the rig's other bearings (needs 3 or more bearings a site).
        min_level_std: per_bearing only: floor of a bearing's healthy std of ln level, so deviations are measured in
            units of at least this relative change (a few hours of healthy data understate how much a healthy
            bearing moves over weeks).
        partition: how the healthy period is split into clients; 'natural' = one client per site (clients ignored).
        clients: number of clients for iid / quantity / dirichlet.
        rounds: federated rounds.
        strategy: Flower aggregation strategy.
        local_epochs: epochs per client per round.
        lr: Adam learning rate of the clients.
        batch_size: mini-batch size.
        hidden: autoencoder hidden layer widths (default 4,1,4 per bearing; 4,2,4 per snapshot).
        activation: hidden activation; tanh (default) bounds the code, so the model cannot reconstruct levels far
            outside the healthy range.
        mu: FedProx proximal term (fedprox only).
        alpha: Dirichlet concentration (dirichlet only; smaller = more skewed).
        feature: per-channel feature used as model input.
        train_fraction: fraction of each site's earliest data treated as healthy training data.
        train_until: alternatively, the end of the healthy period (overrides train_fraction).
        threshold_method: 'max' (default): the largest value of the alarm statistic over the healthy period, so the
            pipeline never alarms on the data it calls healthy; or 'quantile' / 'mean_kstd' of it (federated sketches).
        threshold_quantile: quantile for 'quantile'.
        threshold_k: k for 'mean_kstd' (mean + k std).
        persistence_h: an alarm needs the score over the threshold for this many hours.
        alarm_fraction: share of the snapshots in the persistence window that must be over the threshold.
        warmup_h: hours after a stop (a gap of at least as long) during which snapshots do not count towards an
            alarm, unless the site was already in alarm; 0 = off.
        holdout: which healthy rows of each client are held back for calibration: 'last' (the latest in time) or
            'interleaved' (spread evenly over the healthy period).
        seed: seed for partitioning and training.
        workers: ingest worker processes (default: all cores).
        follow_symlinks: follow symbolic links in raw_dir (e.g. a DVC-managed folder); each link is resolved once and
            its target recorded in the manifest. Off: links are quarantined.
        lock_timeout_s: how long to wait for another run on the same dataset to finish before failing.
        healthy: healthy-period policy (bearing_core.healthy): 'first-fraction' (train_fraction), 'until'
            (train_until) or 'rolling': each bearing's rows the champion scored normal, in the last
            healthy_window_days, healthy_guard_h older than its first uncleared alarm and than the data end (the
            nightly deployment's; no champion yet: first-fraction, logged). Default: 'until' when train_until is
            given, else 'first-fraction'.
        healthy_guard_h: rolling: guard band (hours) before an alarm and before the latest data.
        healthy_window_days: rolling: only rows of the last this many days of data.
        patience: early stopping: stop when the federated holdout MSE has not improved by min_improvement for this
            many rounds (rounds is then a maximum); 0 = always run every round.
        min_improvement: relative improvement of the holdout MSE that resets the patience.
        warm_start: start training from the champion's weights when its inputs and architecture match.
        centralized_baseline: also train the centralized baseline (the cost of federation); off for the nightly
            deployment, the report then says it was skipped.
    """
    dataset_out = IngestConfig(raw_dir=raw_dir, out_dir=out_dir).resolved_out_dir(DataPaths())
    alarms = AlarmConfig(persistence_h=persistence_h, fraction=alarm_fraction, warmup_h=warmup_h)
    input_cfg = InputConfig(
        feature=feature, train_until=train_until, train_fraction=None if train_until is not None else train_fraction,
        holdout_mode=holdout,
    )
    healthy = healthy or ("until" if train_until is not None else "first-fraction")
    if (healthy == "until") != (train_until is not None):
        raise ValueError(f"healthy={healthy!r} with train_until={train_until}: 'until' needs train_until, "
                         "the other policies take none")
    logger = get_run_logger()
    with exclusive_lock(
        Path(dataset_out) / PIPELINE_LOCK_FILE,
        timeout_s=lock_timeout_s,
        on_wait=lambda lock: logger.info("another pipeline run is writing %s: waiting for it (%s)",
                                         relative(dataset_out), lock.name),
    ):
        return _run_pipeline(
            raw_dir=raw_dir, out_dir=out_dir, layout=layout, relative_inputs=relative_inputs, min_level_std=min_level_std,
            partition=partition,
            clients=clients, rounds=rounds, strategy=strategy, local_epochs=local_epochs, lr=lr,
            batch_size=batch_size, hidden=tuple(hidden) if hidden else DEFAULT_HIDDEN[layout], activation=activation,
            mu=mu, alpha=alpha, input_cfg=input_cfg, threshold_method=threshold_method,
            threshold_quantile=threshold_quantile, threshold_k=threshold_k, alarms=alarms, seed=seed, workers=workers,
            follow_symlinks=follow_symlinks,
            healthy=HealthyPolicy(policy=healthy, guard_h=healthy_guard_h, window_days=healthy_window_days),
            patience=patience, min_improvement=min_improvement, warm_start=warm_start,
            centralized_baseline=centralized_baseline,
        )


def _run_pipeline(
    *,
    raw_dir: str,
    out_dir: str | None,
    layout: str,
    relative_inputs: str,
    min_level_std: float,
    partition: str,
    clients: int,
    rounds: int,
    strategy: str,
    local_epochs: int,
    lr: float,
    batch_size: int,
    hidden: tuple[int, ...],
    activation: str,
    mu: float,
    alpha: float,
    input_cfg: InputConfig,
    threshold_method: str,
    threshold_quantile: float,
    threshold_k: float,
    alarms: AlarmConfig,
    seed: int,
    workers: int | None,
    follow_symlinks: bool,
    healthy: HealthyPolicy = HealthyPolicy(),
    patience: int = 0,
    min_improvement: float = 0.01,
    warm_start: bool = False,
    centralized_baseline: bool = True,
) -> dict[str, Any]:
    """The pipeline's steps (see :func:`pipeline_flow`), run while the dataset lock is held.

    The step flows run through ``.fn``: their tasks and artifacts belong to this flow run instead of four sub-flow
    runs. A sub-flow run costs about 1 s even when all its tasks are cached (flow-run bookkeeping and the heartbeat
    thread's shutdown), which was most of a cached pipeline run; the standalone flows are unchanged.
    """
    ingested = ingest_flow.fn(raw_dir=raw_dir, out_dir=out_dir, workers=workers, follow_symlinks=follow_symlinks)
    dataset_dir = ingested["out_dir"]
    report = validate_flow.fn(dataset_dir=dataset_dir)
    headline = portable(report).headline()  # no absolute machine paths in reports and artifacts
    model_dataset = dataset_dir  # what the model's rows come from
    scored_dir = str(Path(dataset_dir) / PER_BEARING_DIR) if layout == PER_BEARING else dataset_dir
    selection = (healthy_task(dataset_dir, scored_dir, healthy.model_dump()) if healthy.policy == "rolling"
                 else {"path": None, "detail": healthy.policy})
    if layout == PER_BEARING:
        derived = per_bearing_task(
            dataset_dir, str(Path(dataset_dir) / PER_BEARING_DIR), input_cfg.model_dump(mode="json"),
            PerBearingConfig(features=(input_cfg.feature,), log=True, relative=relative_inputs,
                             min_std=min_level_std).model_dump(mode="json"),
            healthy_file=selection["path"],
        )
        model_dataset = derived["out_dir"]
    trained = train_flow.fn(
        dataset_dir=model_dataset,
        partition=partition,
        clients=clients,
        rounds=rounds,
        strategy=strategy,
        local_epochs=local_epochs,
        lr=lr,
        batch_size=batch_size,
        hidden=hidden,
        activation=activation,
        threshold_method=threshold_method,
        threshold_quantile=threshold_quantile,
        threshold_k=threshold_k,
        mu=mu,
        alpha=alpha,
        seed=seed,
        feature=input_cfg.feature,
        train_fraction=input_cfg.train_fraction,
        train_until=input_cfg.train_until,
        holdout=input_cfg.holdout_mode,
        alarms=alarms,
        patience=patience,
        min_improvement=min_improvement,
        warm_start=warm_start,
        centralized_baseline=centralized_baseline,
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
        training={"strategy": strategy, "partition": partition, "clients": trained["clients"], "rounds": rounds,
                  "local_epochs": local_epochs, "layout": layout, "federated_eval_mse": trained["federated_eval_mse"],
                  "centralized_eval_mse": trained["centralized_eval_mse"], "failures": trained["failures"],
                  "rounds_run": trained["rounds_run"], "stop_reason": trained["stop_reason"],
                  "warm_start": trained["warm_start"], "healthy": selection["detail"],
                  "sites_left_out": trained["sites_left_out"]},
        promotion=decision,
        alarm_rule=alarms.describe(),
        per_bearing_dir=model_dataset if layout == PER_BEARING else None,
    )
    key = _key(Path(dataset_dir).name)
    create_markdown_artifact(key=f"report-{key}", markdown=reported["markdown"], description="Pipeline run report")
    if reported["detection"]:
        create_table_artifact(key=f"detection-{key}", table=reported["detection"],
                              description="Detection against the ground truth, per site")
    outputs = {
        "dataset": relative(dataset_dir),
        "ingest": ingested["summary"],
        "validation": headline,
        "validation report": relative(Path(dataset_dir) / "validation" / "index.html"),
        "layout": layout + (f" ({len(derived['sites'])} bearings, inputs {', '.join(derived['input_columns'])})"
                            if layout == PER_BEARING else ""),
        "trained model": relative(trained["model_dir"]),
        "promotion": ("promoted to latest: " if decision["promoted"] else "champion kept: ") + decision["reason"],
        "champion (latest)": relative(champion),
        "threshold": f"{reported['summary']['threshold']:.6g}",
        "federated holdout MSE": f"{trained['federated_eval_mse']:.5g}",
        "centralized holdout MSE": (f"{trained['centralized_eval_mse']:.5g}" if trained["centralized_eval_mse"] is not None
                                    else "skipped (centralized_baseline off)"),
        "training": f"{trained['rounds_run']} of at most {rounds} rounds: {trained['stop_reason']}",
        "healthy period": selection["detail"],
        "scores": relative(scored["path"]),
        "alarm rule": alarms.describe(),
        "alarms": ", ".join(f"{a['site']}: {a['alarm_snapshots']} from {a['first_alarm'] or '-'} ({a['top_channel']})"
                            for a in reported["alarms"] if a["alarm_snapshots"]) or "none",
        "report": relative(reported["report"]),
    }
    if reported["summary"]["detected"] is not None:
        outputs["detection"] = (f"{reported['summary']['detected']} of {reported['summary']['faulty_sites']} "
                                f"injected defects alarmed after onset, {reported['summary']['false_alarm_events']} "
                                "false alarm events")
    return outputs
