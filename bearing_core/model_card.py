"""The model card of a published model version (``MODEL_CARD.md``): what the model is, what it was trained on,
how well it did and what it must not be used for, written for the engineer who has to trust (or reject) it.

:class:`DataFingerprint` is the machine-readable part of "what it was trained on" (also saved as
``fingerprint.json`` by :mod:`bearing_core.registry`); :func:`render_model_card` turns a version's files into
Markdown. Every number in the card is read from those files, none is typed by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from bearing_core.model_io import CENTRALIZED_CLIENT, GLOBAL_CLIENT, LoadedModel


class DataFingerprint(BaseModel):
    """Exactly which data a model was trained on: content hashes plus a human summary of the rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(..., description="Dataset name (the processed dataset directory's name)")
    dataset_dir: str = Field(..., description="Processed dataset directory at training time")
    dataset_sha256: str = Field(
        ..., description="SHA-256 over features.parquet, quarantine.parquet and dataset.json (the model's inputs)"
    )
    partition_manifest: str = Field(..., description="Path of the partition manifest the clients were built from")
    partition_manifest_sha256: str = Field(..., description="SHA-256 of that manifest (pins every client file)")
    partition_scheme: str = Field(..., description="Partitioning scheme (iid, quantity, dirichlet, natural, ...)")
    num_clients: int = Field(..., ge=1, description="Federated clients")
    sites: list[str] = Field(..., description="Sites whose rows reached the clients")
    period_start: datetime | None = Field(None, description="Earliest timestamp among the clients' rows (UTC)")
    period_end: datetime | None = Field(None, description="Latest timestamp among the clients' rows (UTC)")
    train_rows: int = Field(..., ge=0, description="Rows trained on (all clients)")
    holdout_rows: int = Field(..., ge=0, description="Rows held out for evaluation and calibration (all clients)")
    holdout_mode: Literal["last", "interleaved"] = Field(
        "last", description="Which healthy rows were held out: the latest in time, or spread evenly over time"
    )


_HOLDOUT = {"last": "the latest healthy rows in time", "interleaved": "healthy rows spread evenly over time"}


def _fmt(value: Any) -> str:
    """Numbers with 6 significant digits, NaN as 'n/a', everything else as text."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _final_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The last round's row of every client (global and centralized first, then clients by numeric id)."""
    last = metrics.sort_values("round").groupby("client", sort=False).tail(1).copy()
    order = {GLOBAL_CLIENT: 0, CENTRALIZED_CLIENT: 1}
    last["_order"] = last["client"].map(lambda c: order.get(str(c), 2))
    last["_id"] = pd.to_numeric(last["client"].astype(str), errors="coerce")
    return last.sort_values(["_order", "_id", "client"]).drop(columns=["_order", "_id"])


def _final_mse(metrics: pd.DataFrame, client: str) -> float:
    rows = metrics[metrics["client"] == client].sort_values("round")
    return float(rows["eval_mse"].iloc[-1]) if len(rows) else float("nan")


def render_model_card(
    version: str,
    created: datetime,
    model: LoadedModel,
    fingerprint: DataFingerprint,
    metrics: pd.DataFrame,
    threshold: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown model card of ``version``.

        ``model`` is the loaded model (architecture, scaler, input columns, training metadata in ``extra``),
        ``metrics`` its ``metrics.parquet`` (per round and client, plus the global and centralized rows),
        ``threshold`` the parsed ``threshold.json`` when the version has one (every field is shown:
    threshold, calibration size, method, error statistics, per-site thresholds).
    """
    extra = model.extra
    fed_cfg: dict[str, Any] = dict(extra.get("federated_config", {}))
    strategy = str(extra.get("strategy", fed_cfg.get("strategy", "unknown")))
    trained_by = str(extra.get("trained_by", "unknown"))
    period = (
        f"{fingerprint.period_start:%Y-%m-%d %H:%M:%S} → {fingerprint.period_end:%Y-%m-%d %H:%M:%S} UTC"
        if fingerprint.period_start and fingerprint.period_end
        else "unknown"
    )
    fed_mse, cen_mse = _final_mse(metrics, GLOBAL_CLIENT), _final_mse(metrics, CENTRALIZED_CLIENT)
    gap = (
        f"{100.0 * (fed_mse - cen_mse) / cen_mse:+.1f} %"
        if cen_mse > 0 and not math.isnan(fed_mse) and not math.isnan(cen_mse)
        else "n/a"
    )
    rounds = int(metrics["round"].max()) if len(metrics) else 0
    hyper = {k: v for k, v in fed_cfg.items() if k not in ("fault",)}
    hyper.update({f"strategy.{k}": v for k, v in dict(extra.get("strategy_params", {})).items()})
    failures = list(extra.get("failures", []))
    screening = list(extra.get("screening", []))
    privacy: dict[str, Any] | None = extra.get("privacy")
    stop: dict[str, Any] = dict(extra.get("training_stop") or {})
    warm: dict[str, Any] | None = extra.get("warm_start")
    final = _final_rows(metrics) if len(metrics) else metrics

    sections = [
        f"# Model card: bearing-fl autoencoder `{version}`",
        "## What it is\n\n"
        f"A dense autoencoder that reconstructs one row of bearing vibration features; rows it reconstructs badly "
        f"(high reconstruction error) are flagged as anomalous. Trained {trained_by} with **{strategy}** over "
        f"{fingerprint.num_clients} client(s) for {rounds} round(s). Published {created:%Y-%m-%d %H:%M:%S} UTC.",
        "## Intended use\n\n"
        "Early warning of rolling-element bearing degradation on the rig and sites it was trained on: score new "
        "snapshots of the same feature columns, compare each row's reconstruction MSE with the calibrated threshold, "
        "and have a person inspect the bearings behind sustained alarms. It is a screening signal, not a diagnosis.",
        "## Training data\n\n"
        + _table(
            ("field", "value"),
            [
                ("dataset", fingerprint.dataset),
                ("sites", ", ".join(fingerprint.sites) or "none"),
                ("period (clients' rows)", period),
                ("train rows", fingerprint.train_rows),
                (
                    "holdout rows (evaluation, calibration)",
                    f"{fingerprint.holdout_rows} ({_HOLDOUT[fingerprint.holdout_mode]})",
                ),
                ("partitioning", f"{fingerprint.partition_scheme}, {fingerprint.num_clients} client(s)"),
                ("dataset sha256", f"`{fingerprint.dataset_sha256}`"),
                ("partition manifest sha256", f"`{fingerprint.partition_manifest_sha256}`"),
            ],
        ),
        "## Inputs\n\n"
        f"{len(model.input_columns)} columns, standardised with the federated mean/std (clients shared only "
        "count, sum and sum of squared deviations of their train rows):\n\n"
        + _table(
            ("column", "mean", "std"),
            [(f"`{c}`", m, s) for c, m, s in zip(model.input_columns, model.scaler.mean, model.scaler.std)],
        ),
        "## Architecture\n\n"
        + _table(
            ("field", "value"),
            [
                (
                    "layers",
                    " → ".join(
                        str(w) for w in (model.model_cfg.n_inputs, *model.model_cfg.hidden, model.model_cfg.n_inputs)
                    ),
                ),
                ("hidden activation", model.model_cfg.activation),
                ("output layer", "linear"),
                ("parameters", sum(int(p.numel()) for p in model.model.parameters())),
            ],
        ),
        "## Strategy and hyper-parameters\n\n"
        + _table(
            ("parameter", "value"),
            [(k, json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in sorted(hyper.items())],
        )
        + (
            f"\n\n{len(failures)} client repl{'y' if len(failures) == 1 else 'ies'} failed or "
            f"{'was' if len(failures) == 1 else 'were'} rejected by the server's screening, and "
            f"{'was' if len(failures) == 1 else 'were'} left out of their round(s)."
            if failures
            else "\n\nNo client failed during training."
        )
        + (
            "\n\nKept with bounded influence by the server's screening:\n\n"
            + "\n".join(f"- round {a['round']} {a['step']}, client {a['client']}: {a['reason']}" for a in screening)
            if screening
            else ""
        ),
        "## Training length\n\n"
        + (
            _table(
                ("field", "value"),
                [
                    ("rounds run", f"{stop.get('rounds_run')} of at most {stop.get('max_rounds')}"),
                    ("why it stopped", stop.get("reason", "unknown")),
                    ("best holdout MSE", f"{_fmt(stop.get('best_eval_mse'))} (round {stop.get('best_round')})"),
                    ("initial weights", warm["detail"] if warm else "from scratch (seeded), no warm start asked"),
                ],
            )
            if stop
            else f"{rounds} round(s); trained before early stopping was recorded."
        ),
        "## Privacy\n\n"
        + (
            _table(("field", "value"), [(k, "not computed" if v is None else v) for k, v in privacy.items()])
            if privacy
            else "No differential privacy: only aggregates leave the sites (weights, counts, moments, error "
            "histograms), but the server sees each site's update as sent."
        ),
        f"## Final metrics (round {rounds})\n\n"
        + _table(
            ("client", "train loss", "eval MSE", "eval RMSE", "train rows", "eval rows"),
            [
                (r.client, r.train_loss, r.eval_mse, r.eval_rmse, r.num_train_examples, r.num_eval_examples)
                for r in final.itertuples()
            ],
        )
        + f"\n\nMSE is in standardised units, on each client's holdout rows ({_HOLDOUT[fingerprint.holdout_mode]}).",
        "## Federated vs centralized\n\n"
        + (
            _table(
                ("model", "final eval MSE"),
                [(f"federated ({strategy})", fed_mse), ("centralized baseline (same rows, same epochs)", cen_mse)],
            )
            + f"\n\nCost of federation (relative MSE gap): {gap}."
            if (metrics["client"] == CENTRALIZED_CLIENT).any()
            else "Skipped for this run (centralized_baseline off, e.g. the nightly deployment): no centralized "
            "model was trained, so the cost of federation is not measured here."
        ),
        "## Threshold\n\n"
        + (
            _table(
                ("field", "value"),
                [
                    (k, json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
                    for k, v in threshold.items()
                ],
            )
            if threshold
            else "Not calibrated: this version has no `threshold.json`; it cannot raise alarms until calibrated."
        ),
        "## Limitations\n\n"
        "- Trained on the healthy period only: it knows what normal looked like on these sites, nothing about "
        "fault types; a high error means 'unlike training data', which also happens after a sensor, mounting, "
        "load or speed change.\n"
        "- Valid for the input columns above, computed by this project's feature extraction at the dataset's "
        "sampling rate; other rigs, speeds or sensor positions need retraining.\n"
        "- The healthy period is assumed, not labelled (earliest rows of each site); a bearing already degraded "
        "then raises the threshold.\n"
        "- Small models on few rows: the threshold's false-alarm rate is estimated on the holdout rows only.",
    ]
    return "\n\n".join(sections) + "\n"
