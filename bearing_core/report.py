"""The experiments report: ``report.md`` with PNGs beside it, a self-contained ``report.html`` (the same content,
plots embedded as base64 PNG, inline CSS, no external resource) and ``summary.csv``.

The report is built once as a list of blocks (heading, paragraph, list, table, image) and rendered twice, so the
markdown and the HTML never disagree. Every sentence of "What this shows" is computed from the results
(:func:`findings`); a comparison is only written when both of its experiments are in the grid.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bearing_core import markdown as md
from bearing_core.experiments import (
    CENTRALIZED,
    NOTEBOOK_RESULTS,
    EvaluationSplit,
    ExperimentResult,
    GridConfig,
    summary_table,
    write_results,
)
from bearing_core.io import write_text_atomic
from bearing_core.plotting import pyplot, save_png

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS = {
    "rounds": "rounds.png",
    "clients": "clients.png",
    "reconstruction": "reconstruction.png",
    "errors": "errors.png",
    "timeline": "timeline.png",
}
"""Plot key → file name (beside report.md)."""
HEADLINE_PREFERENCE = ("fedavg-natural", "fedavg-iid")
_DPI = 110

Block = tuple[str, Any]


@dataclass
class ReportPaths:
    """What :func:`write_report` wrote."""

    markdown: Path
    html: Path
    summary_csv: Path
    plots: dict[str, Path]
    summary: pd.DataFrame
    findings: list[str]


# ------------------------------------------------------------------------------------------ helpers


def _save(fig: Any, out_png: Path) -> Path:
    return save_png(fig, out_png, dpi=_DPI)


def _colors(results: Sequence[ExperimentResult]) -> dict[str, Any]:
    """One stable colour per experiment (black for the centralized baseline)."""
    plt = pyplot()
    cycle = plt.get_cmap("tab10").colors
    federated = [r.spec.name for r in results if r.spec.kind == "federated"]
    colors: dict[str, Any] = {name: cycle[i % len(cycle)] for i, name in enumerate(federated)}
    colors[CENTRALIZED] = "black"
    return colors


def _spans_decades(values: np.ndarray, decades: float = 1.0) -> bool:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    return values.size > 1 and math.log10(values.max() / values.min()) >= decades


def headline(results: Sequence[ExperimentResult]) -> ExperimentResult:
    """The experiment whose model illustrates reconstruction and alarms: natural FedAvg, else FedAvg IID, else the
    first federated one, else the first."""
    by_name = {r.spec.name: r for r in results}
    for name in HEADLINE_PREFERENCE:
        if name in by_name:
            return by_name[name]
    return next((r for r in results if r.spec.kind == "federated"), results[0])


def _reconstruct(model_dir: Path, X: np.ndarray) -> np.ndarray:
    """The model's reconstruction of raw input rows ``X``, back in input units."""
    import torch

    from bearing_core.model_io import load_model

    loaded = load_model(model_dir)
    with torch.no_grad():
        out = loaded.model(torch.from_numpy(loaded.scaler.transform(X))).numpy()
    return loaded.scaler.inverse_transform(out)


# ------------------------------------------------------------------------------------------ plots


def plot_rounds(results: Sequence[ExperimentResult], out_png: str | os.PathLike[str], title: str) -> Path:
    """Training loss and evaluation RMSE on E per round, every experiment on the same two panels."""
    plt = pyplot()
    colors = _colors(results)
    fig, (ax_loss, ax_rmse) = plt.subplots(1, 2, figsize=(12, 4.4))
    for r in results:
        curve = r.curve
        style = {
            "color": colors[r.spec.name],
            "lw": 2.2 if r.spec.kind == "centralized" else 1.4,
            "ls": "--" if r.spec.kind == "centralized" else "-",
            "marker": "o",
            "ms": 2.5,
        }
        ax_loss.plot(curve["round"], curve["train_loss"], label=r.spec.label, **style)
        ax_rmse.plot(curve["round"], curve["eval_rmse"], label=r.spec.label, **style)
    units = "g" if _unscaled(results) else "standardised units"
    ax_loss.set_ylabel(f"training loss, MSE ({units}²)")
    ax_rmse.set_ylabel(f"RMSE on the evaluation set E ({units})")
    ax_loss.set_title("local training loss (example-weighted over clients)", fontsize=10)
    ax_rmse.set_title("global model after each round, on E", fontsize=10)
    for ax in (ax_loss, ax_rmse):
        ax.set_xlabel("round")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    ax_rmse.legend(fontsize=8, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, Path(out_png))


def _unscaled(results: Sequence[ExperimentResult]) -> bool:
    from bearing_core.model_io import load_model

    scaler = load_model(results[0].model_dir).scaler
    return bool(np.all(scaler.mean == 0) and np.all(scaler.std == 1))


def plot_client_mse(results: Sequence[ExperimentResult], out_png: str | os.PathLike[str]) -> Path:
    """Per federated experiment: the final global model's MSE on each client's own train rows (bars, labelled with
    the client's row count), against the experiment's MSE on E (dashed)."""
    plt = pyplot()
    federated = [r for r in results if r.spec.kind == "federated"]
    if not federated:
        raise ValueError("no federated experiment: nothing to plot per client")
    colors = _colors(results)
    cols = min(3, len(federated))
    rows = math.ceil(len(federated) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    units = "g²" if _unscaled(results) else "standardised units²"
    for ax, r in zip(axes.ravel(), federated):
        table = r.clients
        x = np.arange(len(table))
        ax.bar(x, table["final_mse"], color=colors[r.spec.name], alpha=0.85, label="client's own train rows")
        ax.axhline(r.final_eval_mse, color="black", ls="--", lw=1.0, label=f"E: {r.final_eval_mse:.3g}")
        ax.set_xticks(x, [f"{c}\n{n:,}" for c, n in zip(table["client"], table["train_rows"])], fontsize=7)
        ax.set_title(r.spec.label, fontsize=10)
        ax.set_xlabel("client (train rows)")
        ax.set_ylabel(f"final MSE ({units})")
        if _spans_decades(table["final_mse"].to_numpy()):  # else linear from 0: bar heights compare directly
            ax.set_yscale("log")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(federated) :]:
        ax.set_visible(False)
    fig.suptitle("Final global model's MSE on each client's own data (who the imbalance hurts)")
    fig.tight_layout()
    return _save(fig, Path(out_png))


def plot_reconstruction(
    results: Sequence[ExperimentResult], split: EvaluationSplit, grid: GridConfig, out_png: str | os.PathLike[str]
) -> Path:
    """Input vs reconstruction per channel, for the centralized and the headline model.

    Samples mode: a window of consecutive healthy samples of E, one panel per channel (time on x). Features mode:
    healthy snapshots of E and faulty snapshots (ground truth), one panel per snapshot (channels on x).
    """
    plt = pyplot()
    colors = _colors(results)
    models = [r for r in results if r.spec.kind == "centralized"][:1]
    main = headline(results)
    if main not in models:
        models.append(main)
    channels = split.columns
    if grid.mode == "samples":
        window = min(200, len(split.eval))
        X = split.X_eval()[:window]
        cols = 2
        rows = math.ceil(len(channels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(12, 1.9 * rows + 0.8), sharex=True, squeeze=False)
        recon = {r.spec.name: _reconstruct(r.model_dir, X) for r in models}
        t_ms = np.arange(window) / 20.0  # 20 kHz: 20 samples per ms
        for j, (ax, channel) in enumerate(zip(axes.ravel(), channels)):
            ax.plot(t_ms, X[:, j], color="0.6", lw=2.0, label="input")
            for r in models:
                ax.plot(t_ms, recon[r.spec.name][:, j], color=colors[r.spec.name], lw=1.0, label=r.spec.label)
            ax.set_title(channel, fontsize=9, loc="left")
            ax.set_ylabel("acceleration (g)")
            ax.grid(True, alpha=0.3)
        for ax in axes[-1]:
            ax.set_xlabel("time from the window start (ms)")
        axes[0, 0].legend(fontsize=7, loc="upper right")
        fig.suptitle(f"Reconstruction of {window} consecutive healthy samples of E (the seed data has no faulty file)")
    else:
        examples = [("healthy (E)", split.eval.iloc[i]) for i in (0, len(split.eval) - 1)]
        if split.faulty is not None and len(split.faulty):
            last = split.faulty.sort_values("timestamp").groupby("site", observed=True).tail(1)
            examples += [("faulty", row) for _, row in last.head(2).iterrows()]
        X = np.vstack([np.asarray(row[channels], dtype=np.float64) for _, row in examples])
        recon = {r.spec.name: _reconstruct(r.model_dir, X) for r in models}
        fig, axes = plt.subplots(1, len(examples), figsize=(4.2 * len(examples), 3.8), squeeze=False)
        x = np.arange(len(channels))
        for i, (ax, (kind, row)) in enumerate(zip(axes[0], examples)):
            ax.plot(x, X[i], "o", color="0.35", ms=7, label="input")
            for r in models:
                ax.plot(x, recon[r.spec.name][i], "x-", color=colors[r.spec.name], lw=1.0, ms=6, label=r.spec.label)
            ax.set_xticks(x, [c.removesuffix(f"_{grid.feature}") for c in channels], rotation=45, fontsize=7)
            ax.set_title(f"{kind}: {row['site']} {pd.Timestamp(row['timestamp']):%m-%d %H:%M}", fontsize=9)
            ax.set_xlabel("channel")
            ax.set_ylabel(f"{grid.feature} (g)")
            ax.grid(True, alpha=0.3)
        axes[0, 0].legend(fontsize=7)
        fig.suptitle("Input vs reconstruction per channel, healthy and faulty snapshots")
    fig.tight_layout()
    return _save(fig, Path(out_png))


def plot_error_distribution(
    results: Sequence[ExperimentResult], split: EvaluationSplit, out_png: str | os.PathLike[str]
) -> Path:
    """Histogram (log-spaced bins) of every model's per-row MSE on E, with each model's threshold; with ground
    truth, the headline model's errors on the faulty snapshots too."""
    plt = pyplot()
    colors = _colors(results)
    main = headline(results)
    faulty_errors = None
    if split.faulty is not None and len(split.faulty):
        from bearing_core.model_io import load_model
        from bearing_core.threshold import snapshot_errors

        faulty_errors = snapshot_errors(load_model(main.model_dir), split.faulty[split.columns].to_numpy(np.float64))[0]
    pooled = np.concatenate([r.eval_errors for r in results] + ([faulty_errors] if faulty_errors is not None else []))
    pooled = pooled[pooled > 0]
    edges = np.logspace(np.log10(pooled.min()), np.log10(pooled.max()), 60)
    fig, ax = plt.subplots(figsize=(11, 4.4))
    for r in results:
        ax.hist(
            np.maximum(r.eval_errors, edges[0]),
            bins=edges,
            histtype="step",
            lw=1.3,
            color=colors[r.spec.name],
            label=f"{r.spec.label} (E)",
        )
        ax.axvline(r.threshold, color=colors[r.spec.name], ls=":", lw=1.3)
    if faulty_errors is not None:
        ax.hist(
            np.maximum(faulty_errors, edges[0]),
            bins=edges,
            color="tab:red",
            alpha=0.3,
            label=f"faulty snapshots, {main.spec.label}",
        )
    ax.set_xscale("log")
    units = "g²" if _unscaled(results) else "standardised units²"
    ax.set_xlabel(f"per-row reconstruction MSE, {units} (dotted lines: each model's alarm threshold)")
    ax.set_ylabel("rows")
    ax.set_title("Reconstruction-error distribution on the evaluation set E")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, Path(out_png))


def plot_error_timeline(
    results: Sequence[ExperimentResult], split: EvaluationSplit, out_png: str | os.PathLike[str]
) -> Path:
    """The headline model's error over time with its threshold and alarms.

    With a scored dataset (demo): one panel per site (:func:`bearing_core.evaluation.plot_scores`: score, threshold,
    debounced alarms, onset and failure). Otherwise (seed): the per-row error of every healthy sample in time order,
    T and E marked, rows over the threshold in red.
    """
    main = headline(results)
    if main.scores is not None:
        from bearing_core.evaluation import plot_scores
        from bearing_core.synthetic import load_ground_truth

        onset = failure = None
        if split.ground_truth is not None:
            truth = load_ground_truth(split.ground_truth)
            onset = {s: t.onset for s, t in truth.sites.items()}
            failure = {s: t.failure for s, t in truth.sites.items()}
        return plot_scores(
            main.scores,
            None,
            out_png,
            onset=onset,
            failure=failure,
            title=f"Anomaly score per site over time, {main.spec.label} (alarm = 3 of 3 over threshold)",
        )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 4.0))
    for positions, errors, label, color in (
        (split.train_position, main.train_errors, "T (trained on)", "tab:blue"),
        (split.eval_position, main.eval_errors, "E (evaluation)", "tab:green"),
    ):
        ax.scatter(positions / 20_000.0, np.maximum(errors, 1e-12), s=1, color=color, label=label, rasterized=True)
    positions = np.concatenate([split.train_position, split.eval_position])
    errors = np.concatenate([main.train_errors, main.eval_errors])
    over = errors > main.threshold
    ax.scatter(
        positions[over] / 20_000.0,
        errors[over],
        s=3,
        color="tab:red",
        label=f"over threshold ({over.mean():.1%} of rows)",
        rasterized=True,
    )
    ax.axhline(main.threshold, color="black", ls="--", lw=1.0, label=f"threshold {main.threshold:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("time from the first sample (s, 20 kHz; the two files are 5 min apart, shown back to back)")
    ax.set_ylabel("per-sample reconstruction MSE (g²)")
    ax.set_title(f"Per-sample error timeline, {main.spec.label}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, markerscale=4, loc="upper right")
    fig.tight_layout()
    return _save(fig, Path(out_png))


# ------------------------------------------------------------------------------------------ findings


def _pct(value: float, reference: float) -> str:
    return f"{(value - reference) / reference * 100:+.1f} %"


def _rows(n: int) -> str:
    return f"{n:,} train row" + ("" if n == 1 else "s")


def _notebook_range(text: str) -> tuple[float, float]:
    numbers = [float(n) for n in re.findall(r"\d+\.\d+", text)]
    return min(numbers), max(numbers)


def findings(results: Sequence[ExperimentResult], grid: GridConfig, split: EvaluationSplit) -> list[str]:
    """Sentences computed from the results (each comparison only when both experiments ran)."""
    from bearing_core.model_io import load_model

    by = {r.spec.name: r for r in results}
    summary = summary_table(results).set_index("experiment")
    out: list[str] = []
    ordered = summary["final_eval_mse"].sort_values()
    best, worst = ordered.index[0], ordered.index[-1]
    out.append(
        f"Lowest final eval MSE: {by[best].spec.label} ({ordered.iloc[0]:.4g}); highest: {by[worst].spec.label} "
        f"({ordered.iloc[-1]:.4g}, {ordered.iloc[-1] / ordered.iloc[0]:.2f}× the lowest)."
    )
    scaler = load_model(results[0].model_dir).scaler
    mean_of_t = scaler.transform(split.X_train()).mean(axis=0)
    naive = float(np.mean((scaler.transform(split.X_eval()) - mean_of_t) ** 2))
    out.append(
        f"For scale: predicting every input's mean over T gives an eval MSE of {naive:.4g}; the best model reaches "
        f"{ordered.iloc[0] / naive:.1%} of that, the worst {ordered.iloc[-1] / naive:.1%}."
    )

    def mse(name: str) -> float:
        return float(summary.loc[name, "final_eval_mse"])

    if CENTRALIZED in by and "fedavg-iid" in by:
        out.append(
            f"FedAvg IID ends at {mse('fedavg-iid'):.4g}, {_pct(mse('fedavg-iid'), mse(CENTRALIZED))} vs the "
            f"centralized baseline ({mse(CENTRALIZED):.4g}) trained on the same rows for the same epochs."
        )
    for skew, what in (
        ("quantity", "the quantity-skewed split"),
        ("dirichlet", "the Dirichlet(0.3) split"),
        ("natural", "the natural split (one client per site)"),
    ):
        name = f"fedavg-{skew}"
        if name in by and "fedavg-iid" in by:
            out.append(f"FedAvg on {what} ends at {mse(name):.4g}, {_pct(mse(name), mse('fedavg-iid'))} vs IID.")
    for skew in ("quantity", "dirichlet"):
        base = f"fedavg-{skew}"
        for strategy, label, param in (
            ("fedprox", "FedProx", f"mu = {grid.proximal_mu:g}"),
            ("fedadam", "FedAdam", f"server lr = {grid.server_lr:g}"),
        ):
            name = f"{strategy}-{skew}"
            if name in by and base in by:
                text = (
                    f"{label} ({param}) on the {skew} split: {mse(name):.4g}, {_pct(mse(name), mse(base))} vs "
                    f"FedAvg on the same split"
                )
                base_loss = float(summary.loc[base, "final_train_mse"])
                if strategy == "fedprox" and mse(name) > mse(base) and grid.proximal_mu > base_loss:
                    text += (
                        f" (mu is {grid.proximal_mu / base_loss:.0f}× FedAvg's final train MSE "
                        f"{base_loss:.3g}: the proximal term outweighs the loss it regularises)"
                    )
                out.append(text + ".")
    skewed = next((by[n] for n in ("fedavg-quantity", "fedavg-dirichlet") if n in by), None)
    if skewed is not None and len(skewed.clients) > 1:
        c = skewed.clients.sort_values("final_mse", ascending=False).reset_index(drop=True)
        smallest = skewed.clients.loc[skewed.clients["train_rows"].idxmin()]
        largest = skewed.clients.loc[skewed.clients["train_rows"].idxmax()]
        rank = int(np.flatnonzero(c["client"].to_numpy() == smallest["client"])[0]) + 1
        top = c.iloc[0]
        who = f"the smallest client (client {int(smallest['client'])}, {_rows(int(smallest['train_rows']))})"
        if rank == 1:
            out.append(
                f"{skewed.spec.label}: {who} has the highest final MSE on its own data, {smallest['final_mse']:.4g}, "
                f"{smallest['final_mse'] / largest['final_mse']:.2f}× the largest client's "
                f"({_rows(int(largest['train_rows']))}, {largest['final_mse']:.4g})."
            )
        else:
            out.append(
                f"{skewed.spec.label}: {who} has final MSE {smallest['final_mse']:.4g} on its own data, rank {rank} of "
                f"{len(c)} from the top; the highest is client {int(top['client'])} "
                f"({_rows(int(top['train_rows']))}, {top['final_mse']:.4g}); the largest client "
                f"({_rows(int(largest['train_rows']))}) has {largest['final_mse']:.4g}."
            )
    rounds = summary["rounds_to_5pct"]
    out.append(
        f"Rounds to settle within 5 % of the final eval MSE: {int(rounds.min())}–{int(rounds.max())} of "
        f"{grid.rounds} (fastest {by[rounds.idxmin()].spec.label}, slowest {by[rounds.idxmax()].spec.label})."
    )
    federated = [r for r in results if r.spec.kind == "federated"]
    if federated:
        walls = [r.wall_s for r in federated]
        text = f"Each Flower simulation took {min(walls):.0f}–{max(walls):.0f} s (Ray start-up included)"
        if CENTRALIZED in by:
            text += f"; the centralized baseline {by[CENTRALIZED].wall_s:.1f} s"
        out.append(text + ".")
    out.append(
        f"Alarm thresholds ({grid.threshold_quantile:.1%} quantile of E's errors) range from "
        f"{summary['threshold'].min():.4g} to {summary['threshold'].max():.4g}."
    )
    if "detected" in summary.columns:
        complete = summary[summary["detected"] == summary["faulty_sites"]]
        leads = summary["lead_time_hours"].dropna()
        text = (
            f"Detection: {len(complete)} of {len(summary)} experiments alarm on every faulty site "
            f"({int(summary['faulty_sites'].iloc[0])}) after its onset"
        )
        if len(leads):
            text += (
                f"; mean lead time before failure {leads.min():.1f}–{leads.max():.1f} h (best "
                f"{by[leads.idxmax()].spec.label})"
            )
        text += (
            f"; false alarm events per experiment {int(summary['false_alarm_events'].min())}–"
            f"{int(summary['false_alarm_events'].max())}."
        )
        out.append(text)
    if grid.preset == "seed":
        for name, reported in NOTEBOOK_RESULTS.items():
            if name not in by:
                continue
            low, high = _notebook_range(reported["eval_mse"])
            ours = mse(name)
            where = "inside" if low * 0.995 <= ours <= high * 1.005 else "below" if ours < low else "above"
            out.append(
                f"{by[name].spec.label}: ours {ours:.4f} vs the notebook's {reported['eval_mse']} ({where} its "
                f"{'value' if low == high else 'range'}, ratio {ours / ((low + high) / 2):.2f} to its middle)."
            )
    return out


# ------------------------------------------------------------------------------------------ rendering


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}" if abs(int(value)) >= 10_000 else str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def render_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as GitHub markdown (images referenced by file name)."""
    out: list[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + content, ""]
        elif kind == "p":
            out += [content, ""]
        elif kind == "ul":
            out += [f"- {item}" for item in content] + [""]
        elif kind == "table":
            frame: pd.DataFrame = content
            out += [
                md.table(
                    [md.cell(c) for c in frame.columns],
                    ([md.cell(_cell(v)) for v in row] for row in frame.itertuples(index=False)),
                ),
                "",
            ]
        elif kind == "img":
            name, alt = content
            out += [f"![{alt}]({name})", ""]
        else:
            raise ValueError(f"unknown report block {kind!r}")
    return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape, then render the two inline markdown forms the report uses: **bold** and `code`."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#1f2328;line-height:1.5}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid
#d0d7de;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #d0d7de;padding:.3em
.6em;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}tr:nth-child(even) td{background:#fafbfc}
img{max-width:100%;border:1px solid #eaeef2;margin:.5em 0}code{background:#f6f8fa;padding:.1em .3em;border-radius:3px}
""".strip()


def render_html(blocks: Sequence[Block], image_dir: Path, title: str) -> str:
    """The blocks as one self-contained HTML page: inline CSS, images embedded as ``data:image/png;base64``."""
    body: list[str] = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline_html(content)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(content)}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in content) + "</ul>")
        elif kind == "table":
            frame = content
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                for row in frame.itertuples(index=False)
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            name, alt = content
            data = base64.b64encode((image_dir / name).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"></figure>')
        else:
            raise ValueError(f"unknown report block {kind!r}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# ------------------------------------------------------------------------------------------ the report


def _display_summary(summary: pd.DataFrame, results: Sequence[ExperimentResult]) -> pd.DataFrame:
    labels = {r.spec.name: r.spec.label for r in results}
    table = summary.copy()
    table.insert(1, "what", table["experiment"].map(labels))
    table["wall_s"] = table["wall_s"].round(1)
    return table


def _notebook_table(summary: pd.DataFrame, results: Sequence[ExperimentResult]) -> pd.DataFrame:
    labels = {r.spec.name: r.spec.label for r in results}
    rows = []
    for name, reported in NOTEBOOK_RESULTS.items():
        if name not in set(summary["experiment"]):
            continue
        row = summary.set_index("experiment").loc[name]
        rows.append(
            {
                "experiment": labels[name],
                "eval MSE, ours": float(row["final_eval_mse"]),
                "eval MSE, notebook": reported["eval_mse"],
                "train MSE, ours": float(row["final_train_mse"]),
                "train MSE, notebook": reported["train_mse"],
            }
        )
    return pd.DataFrame(rows)


def _detection_table(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """Per experiment and faulty site: first alarm delay after onset and lead time; false alarms per experiment."""
    rows = []
    for r in results:
        if r.detection is None:
            continue
        row: dict[str, Any] = {"experiment": r.spec.label}
        for det in r.detection.itertuples():
            if det.faulty:
                lead = det.lead_time_hours if det.detected_after_onset else float("nan")
                row[f"{det.site} lead h"] = lead
                row[f"{det.site} delay h"] = det.delay_after_onset_hours if det.detected_after_onset else float("nan")
        row["false alarm events"] = int(r.detection["false_alarm_events"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _recipe_line(grid: GridConfig, split: EvaluationSplit) -> str:
    widths = "→".join(str(w) for w in (len(split.columns), *grid.hidden, len(split.columns)))
    return (
        f"Recipe shared by every experiment: autoencoder {widths} ({grid.activation}), Adam lr {grid.lr:g}, batch "
        f"{grid.batch_size}, {grid.rounds} rounds × {grid.local_epochs} local epoch(s) = "
        f"{grid.rounds * grid.local_epochs}"
        f" epochs (the centralized baseline trains the same number of epochs on all of T), seed {grid.seed}, "
        f"{grid.num_clients} clients (natural: one per site), FedAvg weighted by train rows, FedProx mu "
        f"{grid.proximal_mu:g}, FedAdam server lr {grid.server_lr:g}, inputs "
        f"{'standardised with the federated mean/std of T' if grid.scale else 'unscaled'}."
    )


def _definitions(grid: GridConfig, split: EvaluationSplit) -> list[str]:
    """What every number of the summary means, with this grid's values."""
    units = "g²" if not grid.scale else "standardised units²"
    evaluation_set = split.description.split(";", 1)[-1].strip()
    return [
        (
            f"**E, the evaluation set**: {evaluation_set}. It is cut before any partitioning, never trained on, and "
            "identical for every experiment."
        ),
        (
            f"**eval MSE** (`final_eval_mse`): mean over all rows of E and all {len(split.columns)} inputs of the "
            f"squared reconstruction error of the experiment's final model ({units}); `final_eval_rmse` is its square "
            "root. Per round (plots), the same quantity for that round's global model: in the Flower runs E is dealt "
            "out to the clients as their holdout split, so the example-weighted global eval MSE is the MSE over E."
        ),
        (
            "**train MSE** (`final_train_mse`): the same for the final model on all of T (every client's train rows). "
            "The per-round training loss in the plot is the clients' own loss during local training (weighted)."
        ),
        "**rounds_to_5pct**: the first round from which the eval MSE stays within 5 % of its final value.",
        (
            f"**threshold**: the {grid.threshold_quantile:.1%} quantile of the final model's per-row MSE on E, from "
            "the clients' merged error sketches (federated calibration; within 1.2 % of the exact quantile)."
        ),
        (
            "**wall_s**: the Flower simulation's wall time (Ray start-up, federated scaling and calibration "
            "included); for the centralized baseline, its training time."
        ),
    ]


def build_blocks(
    results: Sequence[ExperimentResult],
    split: EvaluationSplit,
    grid: GridConfig,
    summary: pd.DataFrame,
    found: list[str],
) -> list[Block]:
    """The report's content, in order."""
    title = f"Experiments report: {grid.preset} preset"
    blocks: list[Block] = [
        ("h1", title),
        ("p", f"**Data.** {split.description}."),
        ("p", _recipe_line(grid, split)),
        ("h2", "Summary"),
        ("table", _display_summary(summary, results)),
    ]
    if grid.preset == "seed":
        blocks += [
            ("h2", "Ours vs the notebook"),
            (
                "p",
                (
                    "The reference notebook's reported final MSEs beside ours (same files, recipe and clients; "
                    "ours evaluated on the common evaluation set E, which for IID blocks is exactly the "
                    "notebook's per-client test split)."
                ),
            ),
            ("table", _notebook_table(summary, results)),
        ]
    blocks += [
        ("h2", "What this shows"),
        ("ul", found),
        ("h2", "Loss and RMSE per round"),
        ("img", (PLOTS["rounds"], "training loss and evaluation RMSE per round, all experiments")),
        ("h2", "Per-client final MSE"),
        (
            "p",
            (
                "Bars: the final global model's MSE on each client's own train rows (the client's row count under "
                "its number); dashed: the same model on E."
            ),
        ),
        ("img", (PLOTS["clients"], "per-client final MSE")),
        ("h2", "Reconstruction quality"),
        ("img", (PLOTS["reconstruction"], "input vs reconstruction per channel")),
        ("h2", "Reconstruction errors and threshold"),
        ("img", (PLOTS["errors"], "error distribution on E with thresholds")),
        ("h2", "Error timeline and alarms"),
        ("img", (PLOTS["timeline"], "error timeline with threshold and alarms")),
    ]
    detection = _detection_table(results)
    if len(detection):
        blocks += [
            ("h2", "Detection against the ground truth"),
            (
                "p",
                (
                    "Every experiment's final model scores every valid snapshot with its own threshold; an "
                    "alarm is 3 of the last 3 snapshots of a site over it. Lead time = failure − first alarm "
                    "after onset; delay = first alarm − onset; false alarm events = alarm runs starting before "
                    "an onset or on a healthy site."
                ),
            ),
            ("table", detection),
        ]
    blocks += [
        ("h2", "Definitions"),
        ("ul", _definitions(grid, split)),
        ("h2", "Files"),
        (
            "ul",
            [
                (
                    "`summary.csv` (this summary), `metrics.csv` (per round and client), `clients.csv` (per client), "
                    "`grid.json` (the configuration), `models/<experiment>/` (weights, scaler, threshold, metrics), "
                    "`clients/<experiment>/` (client files), `report.html` (this report, self-contained)."
                )
            ],
        ),
    ]
    return blocks


def write_report(
    out_dir: str | os.PathLike[str], results: Sequence[ExperimentResult], split: EvaluationSplit, grid: GridConfig
) -> ReportPaths:
    """Plots, ``summary.csv`` (+ metrics/clients CSVs, grid.json), ``report.md`` and ``report.html`` in ``out_dir``."""
    if not results:
        raise ValueError("no experiment results to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_csv = write_results(out_dir, grid, results)
    summary = summary_table(results)
    title = f"Experiments report: {grid.preset} preset"
    plots = {
        "rounds": plot_rounds(results, out_dir / PLOTS["rounds"], f"{grid.preset} preset: per round, all experiments"),
        "clients": plot_client_mse(results, out_dir / PLOTS["clients"]),
        "reconstruction": plot_reconstruction(results, split, grid, out_dir / PLOTS["reconstruction"]),
        "errors": plot_error_distribution(results, split, out_dir / PLOTS["errors"]),
        "timeline": plot_error_timeline(results, split, out_dir / PLOTS["timeline"]),
    }
    found = findings(results, grid, split)
    blocks = build_blocks(results, split, grid, summary, found)
    markdown = write_text_atomic(out_dir / REPORT_MD, render_markdown(blocks))
    page = write_text_atomic(out_dir / REPORT_HTML, render_html(blocks, out_dir, title))
    return ReportPaths(
        markdown=markdown, html=page, summary_csv=summary_csv, plots=plots, summary=summary, findings=found
    )


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary table alone, as markdown (for the Prefect artifact)."""
    return render_markdown([("table", summary)])
