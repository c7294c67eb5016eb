"""The experiments report: sections, finite numbers, self-contained HTML, readable non-empty plots, computed text.

One real grid (centralized + FedAvg on the notebook's quantity skew, 2 rounds, a Flower simulation) on synthetic
raw samples is shared by the tests; rendering is also checked on hand-made blocks.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.splits import samples_split

from bearing_core.experiments import CENTRALIZED, SUMMARY_COLUMNS, run_grid, seed_grid
from bearing_core.report import (
    PLOTS,
    findings,
    render_html,
    render_markdown,
    write_report,
)

SECTIONS = (
    "# Experiments report: seed preset",
    "## Summary",
    "## Ours vs the notebook",
    "## What this shows",
    "## Loss and RMSE per round",
    "## Per-client final MSE",
    "## Reconstruction quality",
    "## Reconstruction errors and threshold",
    "## Error timeline and alarms",
    "## Definitions",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    from bearing_core.env import configure_environment

    configure_environment()
    out = tmp_path_factory.mktemp("report")
    grid = seed_grid(rounds=2).model_copy(update={"batch_size": 64}).select([CENTRALIZED, "fedavg-quantity"])
    split = samples_split(n_rows=3000)
    results = run_grid(grid, split, out)
    return out, write_report(out, results, split, grid), results, grid, split


def test_summary_csv_has_one_finite_row_per_experiment(report) -> None:
    out, _, results, _, _ = report
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == list(SUMMARY_COLUMNS)  # no ground truth: no detection columns
    assert list(summary["experiment"]) == [CENTRALIZED, "fedavg-quantity"]
    values = summary.drop(columns="experiment").to_numpy(dtype=np.float64)
    assert np.isfinite(values).all() and (values > 0).all()
    assert summary["rounds_to_5pct"].between(1, 2).all()
    for result, row in zip(results, summary.itertuples()):
        assert row.final_eval_mse == pytest.approx(float(np.mean(result.eval_errors)))
        assert row.threshold == pytest.approx(np.quantile(result.eval_errors, 0.95), rel=0.012)
    clients = pd.read_csv(out / "clients.csv")
    skew = clients[clients["experiment"] == "fedavg-quantity"]
    # the notebook's ratios of T's 2,400 rows, and the same shares of E's 600
    assert list(skew["train_rows"]) == [720, 120, 288, 240, 216, 192, 192, 168, 240, 24]
    assert list(skew["eval_rows"]) == [180, 30, 72, 60, 54, 48, 48, 42, 60, 6]


def test_markdown_has_every_section_and_the_notebook_comparison(report) -> None:
    out = report[0]
    markdown = (out / "report.md").read_text()
    positions = [markdown.find(heading + "\n") for heading in SECTIONS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
    for name in PLOTS.values():
        assert f"]({name})" in markdown and (out / name).is_file()
    # the notebook's row for the experiment that ran (quantity skew), none for FedAvg IID which did not
    assert "≈ 0.0027–0.0037" in markdown and "≈ 0.0040" not in markdown
    table = markdown.split("## Summary\n", 1)[1].split("\n## ", 1)[0]
    numbers = [float(x) for x in re.findall(r"\| ([0-9.]+(?:e-?\d+)?) ", table)]
    assert numbers and all(np.isfinite(numbers))


def test_html_is_self_contained_with_every_plot_embedded(report) -> None:
    out = report[0]
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert not re.search(r"<(script|link)\b", page, re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page, re.IGNORECASE)
    assert "<table>" in page and "What this shows" in page


def test_plots_are_real_images(report) -> None:
    import matplotlib.image as mpimg

    paths = report[1]
    for key, path in paths.plots.items():
        assert path.stat().st_size > 15_000, key
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400, key
        assert float(image[..., :3].std()) > 0.02, key  # not a blank canvas


def test_findings_are_computed_from_the_numbers(report) -> None:
    _, paths, results, grid, split = report
    by = {r.spec.name: r for r in results}
    text = " ".join(paths.findings)
    best = min(results, key=lambda r: r.final_eval_mse)
    assert f"Lowest final eval MSE: {best.spec.label} ({best.final_eval_mse:.4g})" in text
    smallest = by["fedavg-quantity"].clients.sort_values("train_rows").iloc[0]
    assert f"the smallest client (client {int(smallest['client'])}, {int(smallest['train_rows']):,} train rows)" in text
    assert f"ours {by['fedavg-quantity'].final_eval_mse:.4f} vs the notebook's ≈ 0.0027–0.0037" in text
    naive = np.mean((split.X_eval() - split.X_train().mean(axis=0)) ** 2)  # unscaled seed recipe
    assert f"predicting every input's mean over T gives an eval MSE of {naive:.4g}" in text
    # other numbers, other sentences: nothing canned
    worse = [dataclasses.replace(results[0], eval_errors=results[0].eval_errors * 100), *results[1:]]
    changed = findings(worse, grid, split)
    assert changed != paths.findings and any("FedAvg quantity skew (" in line for line in changed[:1])


def test_rendering_escapes_text_and_embeds_images(tmp_path: Path) -> None:
    from bearing_core.plotting import pyplot
    from bearing_core.report import _save

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    _save(fig, tmp_path / "p.png")
    blocks = [
        ("h1", "T <1>"),
        ("p", "**bold** and `code` & more"),
        ("ul", ["a|b"]),
        ("table", pd.DataFrame({"x": [1.23456789, float("nan")], "y": ["a|b", "c"]})),
        ("img", ("p.png", "alt")),
    ]
    markdown = render_markdown(blocks)
    assert "# T <1>" in markdown and "| 1.235 | a\\|b |" in markdown and "| – | c |" in markdown
    assert "![alt](p.png)" in markdown
    page = render_html(blocks, tmp_path, "t")
    assert "<h1>T &lt;1&gt;</h1>" in page and "<strong>bold</strong>" in page and "<code>code</code>" in page
    assert "&amp; more" in page and 'src="data:image/png;base64,iVBORw0KGgo' in page
    with pytest.raises(ValueError, match="unknown report block"):
        render_markdown([("video", "x")])
