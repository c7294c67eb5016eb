"""A fleet of real sites: what a site reports to the coordinator, and how the coordinator decides with it.

In the cross-site mode (``flows/site.py`` at each site, ``flows/coordinator.py`` on the coordinator) raw data and
processed rows never leave a site. Two things do: the Flower messages of a round (model weights, row counts, scaler
moments, error sketches; see :mod:`bearing_core.federated`) and, once a night, a :class:`SiteReport`: aggregate
numbers only (row counts, content hashes, validation outcome, holdout MSE per model version, alarm counts). The
site publishes it as a Prefect artifact (key :func:`report_key`) on the Prefect server both sides already talk to;
the coordinator reads the latest one of each site.

This module is plain library code (no Prefect):

* :func:`stage_training_file`: the site's own partition as ``client_<k>.parquet``, ``k`` its fleet index, the one
  file its SuperNode reads (the ServerApp keys rows, caps and metrics by that index, so it must be unique per site);
* :func:`fleet_fingerprint`: the registry fingerprint of a model trained across sites, made of the sites' reports
  (the coordinator has no data to hash);
* :func:`decide_champion`: champion/challenger on the sites' reported holdout MSE of both models;
* :func:`resume_action`: what a re-run of the coordinator does with the Flower run an earlier attempt left.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.io import write_parquet_atomic
from bearing_core.model_card import DataFingerprint
from bearing_core.partition.writer import load_manifest

SCHEME = "sites"
"""Partition scheme name of a model trained across sites (one client per site)."""


class SiteReport(BaseModel):
    """What one site tells the coordinator about one night: aggregates only, never rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field(..., description="Site name (its deployment's name in the fleet)")
    partition_id: int = Field(..., ge=0, description="The site's index in the fleet (its Flower partition id)")
    created: datetime = Field(..., description="When the site flow wrote this report (UTC)")
    validation_passed: bool = Field(..., description="Whether tonight's data passed validation")
    validation: str = Field("", description="Validation headline")
    joined: bool = Field(False, description="Whether the site ran its SuperNode in tonight's training window")
    dataset_sha256: str = Field("", description="Content hash of the site's processed dataset (no content)")
    input_columns: list[str] = Field(default_factory=list)
    train_rows: int = Field(0, ge=0)
    holdout_rows: int = Field(0, ge=0)
    period_start: datetime | None = None
    period_end: datetime | None = None
    scored_with: str | None = Field(None, description="Model version the site scored with tonight")
    scored_rows: int = Field(0, ge=0)
    alarm_snapshots: int = Field(0, ge=0)
    holdout_mse: dict[str, float] = Field(
        default_factory=dict, description="Version -> reconstruction MSE on this site's holdout rows (original units)"
    )


def report_key(site: str) -> str:
    """Prefect artifact key of a site's nightly report (lowercase letters, digits and dashes)."""
    name = "".join(c if c.isalnum() else "-" for c in site.lower()).strip("-")
    if not name:
        raise ValueError(f"site name {site!r} has no letter or digit")
    return f"fleet-site-{name}"


def stage_training_file(
    manifest_path: str | os.PathLike[str], partition_id: int, out_dir: str | os.PathLike[str]
) -> Path:
    """Write the site's one-client partition (``manifest_path``: a partitioning of its own data into exactly one
    client) as ``out_dir/client_<partition_id>.parquet``; stale ``client_*.parquet`` files there are removed."""
    manifest_path = Path(manifest_path)
    scheme_path = manifest_path if manifest_path.is_dir() else manifest_path.parent
    manifest = load_manifest(scheme_path)
    if manifest.num_clients != 1:
        raise ValueError(f"{scheme_path}: a site trains as one client, this partitioning has {manifest.num_clients}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"client_{int(partition_id)}.parquet"
    write_parquet_atomic(target, pq.read_table(scheme_path / manifest.clients[0].file))
    for stale in out.glob("client_*.parquet"):
        if stale != target:
            stale.unlink()
    return target


def fleet_fingerprint(fleet: str, reports: list[SiteReport], run_record: str | os.PathLike[str]) -> DataFingerprint:
    """The registry fingerprint of a model trained with the sites of ``reports`` (those in the round).

    ``dataset`` is the fleet name (the registry's dataset), ``dataset_sha256`` a hash over the sites' reported
    dataset hashes, ``partition_manifest`` the coordinator's record of the round (``run_record``, a JSON file)."""
    if not reports:
        raise ValueError("no site took part: nothing to fingerprint")
    ordered = sorted(reports, key=lambda r: r.partition_id)
    combined = hashlib.sha256("".join(f"{r.site}\0{r.dataset_sha256}\n" for r in ordered).encode()).hexdigest()
    starts = [r.period_start for r in ordered if r.period_start is not None]
    ends = [r.period_end for r in ordered if r.period_end is not None]
    record = Path(run_record)
    return DataFingerprint(
        dataset=fleet,
        dataset_dir=f"fleet:{fleet}",
        dataset_sha256=combined,
        partition_manifest=str(record),
        partition_manifest_sha256=hashlib.sha256(record.read_bytes()).hexdigest(),
        partition_scheme=SCHEME,
        num_clients=len(ordered),
        sites=[r.site for r in ordered],
        period_start=min(starts) if starts else None,
        period_end=max(ends) if ends else None,
        train_rows=sum(r.train_rows for r in ordered),
        holdout_rows=sum(r.holdout_rows for r in ordered),
    )


def pooled_mse(reports: list[SiteReport], version: str) -> tuple[float, int, list[str]]:
    """Holdout-row-weighted MSE of ``version`` over the sites that reported it: (mse, rows, sites)."""
    rows = [
        (r.holdout_mse[version], r.holdout_rows, r.site)
        for r in reports
        if version in r.holdout_mse and r.holdout_rows > 0 and np.isfinite(r.holdout_mse[version])
    ]
    if not rows:
        return float("nan"), 0, []
    weights = np.array([n for _, n, _ in rows], dtype=np.float64)
    values = np.array([m for m, _, _ in rows], dtype=np.float64)
    return float(np.sum(values * weights) / np.sum(weights)), int(weights.sum()), [s for _, _, s in rows]


def decide_champion(
    reports: list[SiteReport], challenger: str, champion: str | None, quorum: int, tolerance: float = 0.0
) -> dict[str, Any]:
    """Champion/challenger on the sites' reported holdout MSE (each site evaluates both versions on the same rows).

    Only sites that reported BOTH versions count; at least ``quorum`` of them are needed, else the decision is
    deferred (``promoted`` None: the challenger waits for the sites' next reports). No champion yet: promoted."""
    base: dict[str, Any] = {"challenger": challenger, "champion": champion, "tolerance": tolerance}
    if champion is None:
        return {**base, "promoted": True, "reason": "first model of the fleet: there is no champion yet"}
    if champion == challenger:
        return {**base, "promoted": True, "reason": "the challenger already is the champion"}
    both = [r for r in reports if challenger in r.holdout_mse and champion in r.holdout_mse and r.holdout_rows > 0]
    if len(both) < quorum:
        return {
            **base,
            "promoted": None,
            "reason": (
                f"deferred: {len(both)} site(s) reported holdout MSE of both {challenger} and {champion}, "
                f"{quorum} needed"
            ),
        }
    challenger_mse, rows, sites = pooled_mse(both, challenger)
    champion_mse, _, _ = pooled_mse(both, champion)
    promoted = challenger_mse <= champion_mse * (1.0 + tolerance)
    verdict = "not worse than" if promoted else "worse than"
    return {
        **base,
        "promoted": promoted,
        "challenger_mse": challenger_mse,
        "champion_mse": champion_mse,
        "eval_rows": rows,
        "sites": sites,
        "reason": (
            f"challenger holdout MSE {challenger_mse:.6g} is {verdict} champion {champion}'s {champion_mse:.6g} "
            f"(tolerance {tolerance:.3g}) on {rows} holdout rows of {len(sites)} sites, original units"
        ),
    }


def resume_action(previous_status: str | None, model_complete: bool) -> str:
    """What a coordinator (re-)run does with the night's Flower run an earlier attempt submitted.

    A Flower run lives on the SuperLink whatever happens to the process that submitted it, so a re-run can find it
    (``flwr ls``): ``"reuse"`` its model when it finished with a complete model, ``"attach"`` (wait for it, the
    sites are not asked again) while it is still pending or running, ``"submit"`` a new run otherwise (none yet,
    failed, stopped, unknown to this SuperLink: Flower has no round checkpoints, a failed run cannot continue).
    """
    if previous_status is None:
        return "submit"
    if previous_status == "finished:completed":
        return "reuse" if model_complete else "submit"
    if previous_status.startswith("finished") or previous_status == "unknown":
        return "submit"
    return "attach"
