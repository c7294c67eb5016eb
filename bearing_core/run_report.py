"""The report of one pipeline run: what was ingested and validated, how training went, the threshold, the alarms
and (when the ground truth is known) the detection lead times. Markdown + PNG plots, written atomically.

Paths written into the report are relative to the report directory or the project directory: no absolute machine
path ends up in a report or a Prefect artifact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bearing_core import markdown as md
from bearing_core.io import write_text_atomic
from bearing_core.model_io import CENTRALIZED_CLIENT, GLOBAL_CLIENT

REPORT_FILE = "report.md"
METRICS_PNG = "metrics.png"
SCORES_PNG = "scores.png"


def relative(path: str | os.PathLike[str], start: str | os.PathLike[str] | None = None) -> str:
    """``path`` relative to ``start`` (default: the current directory) when it lies below it, else its name."""
    p = Path(path).resolve()
    base = Path(start or os.getcwd()).resolve()
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.name


def plot_round_metrics(metrics: pd.DataFrame, out_png: str | os.PathLike[str], title: str) -> Path:
    """Train loss and holdout MSE per round: federated (weighted global), each client, centralized baseline."""
    from bearing_core.plotting import pyplot, save_png

    fig, (ax_loss, ax_eval) = pyplot().subplots(1, 2, figsize=(11, 3.8))
    clients = sorted(
        {c for c in metrics["client"].astype(str)} - {GLOBAL_CLIENT, CENTRALIZED_CLIENT}, key=_client_order
    )
    for client in clients:
        part = metrics[metrics["client"].astype(str) == client].sort_values("round")
        ax_eval.plot(part["round"], part["eval_mse"], lw=0.8, alpha=0.45, label=f"client {client}")
    for name, style in (
        (GLOBAL_CLIENT, dict(color="tab:blue", lw=2.0)),
        (CENTRALIZED_CLIENT, dict(color="black", lw=2.0, ls="--")),
    ):
        part = metrics[metrics["client"].astype(str) == name].sort_values("round")
        if part.empty:
            continue
        label = "federated (weighted)" if name == GLOBAL_CLIENT else "centralized baseline"
        ax_loss.plot(part["round"], part["train_loss"], label=label, **style)
        ax_eval.plot(part["round"], part["eval_mse"], label=label, **style)
    for ax, what in ((ax_loss, "train loss (MSE, scaled units)"), (ax_eval, "holdout MSE (scaled units)")):
        ax.set_xlabel("round")
        ax.set_ylabel(what)
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, out_png)


def _client_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def _privacy_line(privacy: dict[str, Any] | None) -> str:
    """One line on differential privacy: what the model's weights guarantee (the model card has the details)."""
    if not privacy:
        return "- differential privacy: off (only aggregates leave the sites; see the model card)"
    return (
        f"- differential privacy: noise multiplier {privacy['noise_multiplier']:g}, clipping norm "
        f"{privacy['clipping_norm']:g}, {privacy['rounds']} rounds: epsilon {privacy['epsilon']:g} at delta "
        f"{privacy['delta']:g} (one site's whole contribution; weights only)"
    )


def _md_table(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub markdown table (no tabulate dependency); every cell escaped (:func:`bearing_core.markdown.cell`)."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
            return "–"
        if isinstance(value, bool | np.bool_):
            return "yes" if value else "no"
        if isinstance(value, float | np.floating):
            return format(float(value), floatfmt)
        if isinstance(value, pd.Timestamp):
            return value.strftime("%Y-%m-%d %H:%M")
        return md.cell(value)

    return md.table(
        [md.cell(c) for c in frame.columns], ([cell(v) for v in row] for row in frame.itertuples(index=False))
    )


ALARM_COLUMNS = {
    "site": "site",
    "snapshots": "snapshots",
    "anomalies": "anomalies",
    "alarm_snapshots": "alarms",
    "first_alarm": "first alarm",
    "top_channel": "top channel",
}
"""Alarm table: the columns shown (short labels, so the table fits the Prefect UI), the rest is in scores.parquet."""
TRUTH_COLUMNS = {
    "site": "site",
    "faulty": "faulty",
    "bearing": "bearing",
    "defect": "defect",
    "onset": "onset",
    "failure": "failure",
}
DETECTION_COLUMNS = {
    "site": "site",
    "first_alarm": "first alarm",
    "first_alarm_channel": "channel",
    "delay_after_onset_hours": "delay after onset (h)",
    "lead_time_hours": "lead time (h)",
    "false_alarm_events": "false alarms",
}
"""The ground-truth comparison as two narrow tables (one wide table is cut off in the UI): what was injected, and
what the alarms did; detection.csv beside the report has every column."""


def _narrow(frame: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    return frame[[c for c in columns if c in frame.columns]].rename(columns=dict(columns))


def render_run_report(
    *,
    dataset: Mapping[str, Any],
    ingest_summary: str,
    validation_headline: str,
    validation_warnings: Sequence[str],
    metrics: pd.DataFrame,
    training: Mapping[str, Any],
    threshold: Mapping[str, Any],
    alarms: pd.DataFrame,
    detection: pd.DataFrame | None,
    promotion: Mapping[str, Any] | None,
    plots: Mapping[str, str | os.PathLike[str]],
    links: Mapping[str, str],
    alarm_rule: str = "",
    embed_plots: bool = False,
) -> str:
    """The run report as markdown (every number comes from the arguments: nothing canned).

    ``plots`` maps "metrics" / "scores" to PNG files. ``embed_plots`` False (report.md on disk): they are linked by
    ``plots``' paths as given (relative to the report); True (the Prefect artifact, which cannot load a file beside
    the report): they are embedded as data URIs. Free text is escaped, so ``<channel>`` or ``a_b`` read as written.
    """

    def plot(alt: str, key: str) -> list[str]:
        if key not in plots:
            return []
        return [md.image(alt, plots[key]) if embed_plots else f"![{md.text(alt)}]({Path(plots[key]).as_posix()})", ""]

    t = md.text
    sites = [str(s) for s in dataset.get("sites", [])]
    out = [f"# bearing-fl run report: {t(dataset.get('name', ''))}", ""]
    out += [
        "## Data",
        "",
        f"- {t(ingest_summary)}",
        f"- channels: {t(', '.join(dataset.get('channels', [])))}",
        f"- sites: {len(sites)} ({t(', '.join(sites))})",
        "",
    ]
    out += ["## Validation", "", f"- {t(validation_headline)}"]
    out += [f"- warning: {t(w)}" for w in validation_warnings] + [""]
    glob = metrics[metrics["client"].astype(str) == GLOBAL_CLIENT].sort_values("round")
    central = metrics[metrics["client"].astype(str) == CENTRALIZED_CLIENT].sort_values("round")
    per_round = glob[["round", "train_loss", "eval_mse", "eval_rmse"]].rename(
        columns={"train_loss": "FL train loss", "eval_mse": "FL holdout MSE", "eval_rmse": "FL holdout RMSE"}
    )
    if not central.empty:
        per_round = per_round.merge(
            central[["round", "eval_mse"]].rename(columns={"eval_mse": "centralized holdout MSE"}),
            on="round",
            how="left",
        )
    out += [
        "## Training",
        "",
        f"- strategy: {t(training.get('strategy'))}, partition: {t(training.get('partition'))} "
        f"({training.get('clients')} clients), {training.get('rounds')} rounds x {training.get('local_epochs')} "
        f"local epochs, layout: {t(training.get('layout', 'snapshot'))}",
        f"- final holdout MSE: federated {training.get('federated_eval_mse', float('nan')):.4g}, "
        + (
            f"centralized {training['centralized_eval_mse']:.4g}"
            if training.get("centralized_eval_mse") is not None
            else "centralized baseline skipped (centralized_baseline off)"
        ),
        *(
            [f"- rounds run: {training['rounds_run']} ({training.get('stop_reason', '')})"]
            if "rounds_run" in training
            else []
        ),
        *([f"- initial weights: {training['warm_start']}"] if training.get("warm_start") else []),
        *([f"- healthy period: {training['healthy']}"] if training.get("healthy") else []),
        f"- failed client replies: {training.get('failures', 0)}",
        _privacy_line(training.get("privacy")),
        "",
        _md_table(per_round),
        "",
    ]
    out += plot("metrics per round", "metrics")
    out += [
        "## Threshold",
        "",
        f"- {threshold.get('threshold', float('nan')):.6g} ({t(threshold.get('method'))}) "
        f"from {threshold.get('calibration_size')} healthy holdout snapshots, merged from the clients' error "
        "sketches",
        "",
    ]
    if promotion:
        verdict = "promoted to latest" if promotion.get("promoted") else "not promoted (champion kept)"
        out += [
            "## Model",
            "",
            f"- version {md.code(promotion.get('version', ''))}: {verdict}: {t(promotion.get('reason', ''))}",
            "",
        ]
    out += ["## Alarms", ""] + ([f"Rule: {t(alarm_rule)}.", ""] if alarm_rule else [])
    if alarms.empty or int(alarms["alarm_snapshots"].sum()) == 0:
        out += ["No alarm.", ""]
    out += [_md_table(_narrow(alarms, ALARM_COLUMNS)), ""]
    if detection is not None and not detection.empty:
        faulty = detection[detection["faulty"]]
        caught = int(faulty["detected_after_onset"].sum()) if len(faulty) else 0
        false_events = int(detection["false_alarm_events"].sum())
        out += [
            "## Detection against the ground truth",
            "",
            f"- {caught} of {len(faulty)} injected defects alarmed after their onset; "
            f"{false_events} false alarm events (before an onset or on a healthy site)",
            "",
            "Injected:",
            "",
            _md_table(_narrow(detection, TRUTH_COLUMNS)),
            "",
            "Alarms against it:",
            "",
            _md_table(_narrow(detection, DETECTION_COLUMNS)),
            "",
        ]
    out += plot("anomaly score per site", "scores")
    out += ["## Outputs", "", "Paths relative to the project directory:", ""]
    out += [f"- {t(k)}: {md.code(v)}" for k, v in links.items()] + [""]
    return "\n".join(out)


def write_run_report(report_dir: str | os.PathLike[str], markdown: str, summary: Mapping[str, Any]) -> Path:
    """``report.md`` + ``summary.json`` in ``report_dir`` (atomic)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(report_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return write_text_atomic(report_dir / REPORT_FILE, markdown)
