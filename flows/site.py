"""One site's night in the cross-site mode: its raw data never leaves it (see README "Running across sites").

ingest -> validate -> per-bearing layout (standardised by the site's own healthy moments) -> its one-client
partition -> training window: its SuperNode next to that file, until the coordinator publishes tonight's model (or
the window closes) -> score with the fleet's champion (the newest it has received) -> alarms + report written
locally -> the site's report (aggregates only) published for the coordinator.

What leaves the site: the Flower messages of the round (weights, row counts, scaler moments, error sketches) and
the :class:`~bearing_core.fleet.SiteReport` artifact (row counts, content hashes, validation outcome, holdout MSE
per model version, alarm counts), plus the Prefect run's own metadata (state, logs of aggregate lines). A site
whose data fails validation does not join the round and still scores with the last champion it received.

The champion comes from the fleet registry ``models_root/<fleet>/latest`` (read only here): on one machine the
coordinator's registry directory itself, in a real fleet a read-only copy the coordinator pushes to each site
(rsync / object-store sync of ``data/models/<fleet>/``) or a network mount.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from prefect import flow, get_run_logger

from bearing_core.alarms import AlarmConfig
from bearing_core.fleet import SiteReport, stage_training_file
from bearing_core.inputs import FEATURES_FILE, PER_BEARING_DIR, InputConfig
from bearing_core.io import write_text_atomic
from bearing_core.partition.natural import natural_clients
from bearing_core.partition.writer import load_manifest
from bearing_core.per_bearing import PerBearingConfig
from bearing_core.registry import current_champion, registry_dir
from bearing_core.validation import ValidationConfig
from bearing_core.validation.report import ValidationReport
from flows.ingest import ingest_flow
from tasks.fleet import holdout_mse_task, publish_site_report, supernode_window_task
from tasks.ingest import dataset_fingerprint
from tasks.partition import partition_task
from tasks.per_bearing import per_bearing_task
from tasks.score import score_task
from tasks.validate import validate_task, validation_inputs_fingerprint

TRAINING_DIR = "federation"
"""Sub-directory of the site's dataset holding the one file its SuperNode reads (``client_<partition_id>``)."""


@flow(name="site", log_prints=True)
def site_flow(
    site: str,
    partition_id: int,
    raw_dir: str,
    out_dir: str,
    fleet: str = "fleet",
    models_root: str = "data/models",
    superlink: str = "127.0.0.1:9093",
    root_certificates: str | None = None,
    auth_private_key: str | None = None,
    runtime_port: int = 9094,
    window_s: float = 3600.0,
    feature: str = "mean_abs",
    train_fraction: float = 0.2,
    min_level_std: float = 0.1,
    seed: int = 0,
    workers: int | None = 1,
) -> dict[str, Any]:
    """The site's night (see the module doc).

    Args:
        site: this site's name in the fleet (its report's key).
        partition_id: this site's index in the fleet (the coordinator's ``sites`` order), unique per site.
        raw_dir: this site's raw IMS directory (read here only).
        out_dir: this site's processed dataset directory.
        fleet: the fleet's registry name (``models_root/<fleet>/``).
        models_root: where the fleet registry is readable from this site (a synced copy in a real fleet).
        superlink: the coordinator's Fleet API, HOST:PORT.
        root_certificates: CA certificate verifying the SuperLink (TLS); None = plain HTTP (local tests only).
        auth_private_key: this site's SuperNode authentication key (OpenSSH EC key), registered at the coordinator.
        runtime_port: the SuperNode's local ClientApp port (127.0.0.1 only).
        window_s: longest time the SuperNode stays up; 0 = do not join tonight's round.
        feature, train_fraction, min_level_std, seed: the healthy period and the per-bearing transform.
        workers: ingest worker processes.
    """
    logger = get_run_logger()
    ingested = ingest_flow.fn(raw_dir=raw_dir, out_dir=out_dir, workers=workers)
    dataset = ingested["out_dir"]
    try:
        report = ValidationReport.model_validate(
            validate_task(
                dataset_dir=dataset,
                settings=ValidationConfig().model_dump(mode="json"),
                inputs_fingerprint=validation_inputs_fingerprint(dataset),
            )
        )
        passed = not report.errors
        headline = (
            f"{'passed' if passed else 'FAILED'}: {len(report.errors)} blocking errors, "
            f"{report.n_valid}/{report.n_rows} snapshots valid"
        )
    except ValueError as exc:  # e.g. every snapshot quarantined: nothing to validate
        passed, headline = False, f"FAILED: {exc}"
    per_bearing_dir = Path(dataset) / PER_BEARING_DIR
    manifest: str | None = None
    facts: dict[str, Any] = {}
    if passed:
        input_cfg = InputConfig(feature=feature, train_fraction=train_fraction).model_dump(mode="json")
        derived = per_bearing_task(
            dataset,
            str(per_bearing_dir),
            input_cfg,
            PerBearingConfig(features=(feature,), log=True, min_std=min_level_std).model_dump(mode="json"),
        )
        clients, params, _ = natural_clients(derived["out_dir"])
        parts = partition_task(derived["out_dir"], "natural", clients, seed, input_cfg, params)
        manifest = parts["path"]
        training_file = stage_training_file(manifest, partition_id, per_bearing_dir / TRAINING_DIR)
        facts = _facts(manifest, training_file, derived["out_dir"])
    else:
        logger.warning("validation %s; not joining tonight's round", headline)
    publish_site_report(_report(site, partition_id, passed, headline, passed and window_s > 0, facts))

    window: dict[str, Any] = {"connected": False, "outcome": "not joined"}
    if passed and window_s > 0:
        window = supernode_window_task(
            superlink,
            str(per_bearing_dir / TRAINING_DIR),
            partition_id,
            runtime_port,
            root_certificates,
            auth_private_key,
            window_s,
            models_root,
            fleet,
            str(Path(out_dir) / "logs" / "supernode.log"),
        )

    champion = current_champion(models_root, fleet)
    scored: dict[str, Any] | None = None
    holdout: dict[str, float] = {}
    if champion is None:
        logger.warning("no champion in %s yet: nothing to score with", registry_dir(models_root, fleet))
    elif not (per_bearing_dir / FEATURES_FILE).is_file():
        logger.warning("no processed data has ever passed validation here: nothing to score")
    else:
        model_dir = str(registry_dir(models_root, fleet) / champion)
        scored = score_task(str(per_bearing_dir), model_dir, AlarmConfig().model_dump())
        _write_local_report(Path(out_dir), site, champion, scored)
        if manifest is not None:
            holdout = holdout_mse_task(manifest, models_root, fleet)
    publish_site_report(
        _report(site, partition_id, passed, headline, window["connected"], facts, champion, scored, holdout)
    )
    return {
        "site": site,
        "validation_passed": passed,
        "window": window,
        "champion": champion,
        "scores": scored["path"] if scored else None,
        "holdout_mse": holdout,
    }


def _facts(manifest: str, training_file: Path, per_bearing_dir: str) -> dict[str, Any]:
    """Row counts, period and input columns of the site's partition, and its dataset's content hash."""
    entry = load_manifest(manifest)
    stamps = pq.read_table(training_file, columns=["timestamp"]).column("timestamp")
    return {
        "dataset_sha256": dataset_fingerprint(per_bearing_dir),
        "input_columns": entry.input_columns,
        "train_rows": entry.clients[0].train_rows,
        "holdout_rows": entry.clients[0].holdout_rows,
        "period_start": stamps[0].as_py() if len(stamps) else None,
        "period_end": stamps[len(stamps) - 1].as_py() if len(stamps) else None,
    }


def _report(
    site: str,
    partition_id: int,
    passed: bool,
    headline: str,
    joined: bool,
    facts: dict[str, Any],
    champion: str | None = None,
    scored: dict[str, Any] | None = None,
    holdout: dict[str, float] | None = None,
) -> SiteReport:
    return SiteReport(
        site=site,
        partition_id=partition_id,
        created=datetime.now(UTC),
        validation_passed=passed,
        validation=headline,
        joined=joined,
        scored_with=champion if scored else None,
        scored_rows=scored["rows"] if scored else 0,
        alarm_snapshots=scored["alarm_snapshots"] if scored else 0,
        holdout_mse=holdout or {},
        **facts,
    )


def _write_local_report(out_dir: Path, site: str, champion: str, scored: dict[str, Any]) -> Path:
    """The site's alarms as markdown next to its data (local only)."""
    lines = [
        f"# Site {site}: alarms",
        "",
        (
            f"Scored with fleet champion `{champion}`: {scored['rows']} rows, "
            f"{scored['alarm_snapshots']} alarm snapshots. Scores: `{scored['path']}`."
        ),
        "",
        "| bearing | snapshots | alarm snapshots | first alarm |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {a['site']} | {a['snapshots']} | {a['alarm_snapshots']} | {a['first_alarm'] or '-'} |"
        for a in scored["alarms"]
    ]
    return write_text_atomic(out_dir / "alarms.md", "\n".join(lines) + "\n")
