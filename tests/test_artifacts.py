"""What the Prefect UI and the console show: escaped artifact text, embedded report plots, narrow tables, quiet
logs (validation, Flower), plain task run names and a lock wait that names the dataset and its holder."""

from __future__ import annotations

import io
import logging
import os
import re
from contextlib import redirect_stderr
from pathlib import Path

import pandas as pd
import pytest
from helpers.locks import lock_held_elsewhere

from bearing_core import markdown as md
from bearing_core.locking import LockTimeout, exclusive_lock
from bearing_core.run_report import render_run_report
from bearing_core.validation.report import ExpectationOutcome, ValidationReport


def test_text_reads_literally_in_markdown() -> None:
    assert md.text("one <channel>_<feature> per column") == "one &lt;channel&gt;\\_&lt;feature&gt; per column"
    assert md.text("a*b [x] | c & d") == "a\\*b \\[x\\] \\| c &amp; d"
    assert md.cell("two\nlines | here") == "two lines \\| here"
    assert md.code("data/processed/<name>") == "`data/processed/<name>`"
    assert md.code("a `tick`") == "`` a `tick` ``"


def _png(path: Path) -> Path:
    from bearing_core.plotting import pyplot, save_png

    fig = pyplot().figure(figsize=(1, 1))
    return save_png(fig, path, dpi=20)


def _report(tmp_path: Path, embed: bool) -> str:
    metrics = pd.DataFrame(
        {
            "round": [1, 1, 2, 2],
            "client": ["global", "centralized"] * 2,
            "train_loss": [1.0, 0.9, 0.5, 0.4],
            "eval_mse": [1.1, 1.0, 0.6, 0.5],
            "eval_rmse": [1.05, 1.0, 0.77, 0.7],
        }
    )
    alarms = pd.DataFrame(
        {
            "site": ["site_1"],
            "snapshots": [40],
            "anomalies": [3],
            "alarm_snapshots": [2],
            "first_alarm": [pd.Timestamp("2004-02-13 05:00")],
            "first_alarm_file": ["site_1/x"],
            "top_channel": ["B1_a"],
        }
    )
    detection = pd.DataFrame(
        {
            "site": ["site_1"],
            "faulty": [True],
            "bearing": ["B2"],
            "defect": ["bpfi"],
            "onset": [pd.Timestamp("2004-02-13 04:00")],
            "failure": [pd.Timestamp("2004-02-13 08:00")],
            "first_alarm": [pd.Timestamp("2004-02-13 05:00")],
            "first_alarm_channel": ["B2_a"],
            "delay_after_onset_hours": [1.0],
            "lead_time_hours": [3.0],
            "false_alarm_events": [0],
            "detected_after_onset": [True],
        }
    )
    plots = {"metrics": _png(tmp_path / "metrics.png"), "scores": _png(tmp_path / "scores.png")}
    return render_run_report(
        dataset={"name": "demo", "channels": ["B1_a"], "sites": ["site_1"]},
        ingest_summary="ingested 40",
        validation_headline="Validation PASSED",
        validation_warnings=["features.<channel>_rms.range: 1 of 40 rows fail"],
        metrics=metrics,
        training={
            "strategy": "fedavg",
            "partition": "natural",
            "clients": 1,
            "rounds": 2,
            "local_epochs": 1,
            "federated_eval_mse": 0.6,
            "centralized_eval_mse": 0.5,
        },
        threshold={"threshold": 0.1, "method": "max", "calibration_size": 10},
        alarms=alarms,
        detection=detection,
        promotion=None,
        plots=plots if embed else {k: v.name for k, v in plots.items()},
        links={"report": "reports/demo/v1/report.md"},
        embed_plots=embed,
    )


def test_run_report_artifact_embeds_its_plots_and_report_md_links_the_files(tmp_path: Path) -> None:
    artifact = _report(tmp_path, embed=True)
    assert len(re.findall(r"!\[[^\]]*\]\(data:image/png;base64,[A-Za-z0-9+/=]+\)", artifact)) == 2
    assert "metrics.png" not in artifact and "scores.png" not in artifact
    on_disk = _report(tmp_path, embed=False)
    assert "](metrics.png)" in on_disk and "](scores.png)" in on_disk and "data:image" not in on_disk
    assert "features.&lt;channel&gt;\\_rms.range" in artifact  # not an HTML tag the UI drops


def test_run_report_tables_are_narrow_enough_for_the_ui(tmp_path: Path) -> None:
    markdown = _report(tmp_path, embed=False)
    widths = [line.count(" | ") + 1 for line in markdown.splitlines() if line.startswith("| ")]
    assert widths and max(widths) <= 6
    assert "| site | first alarm | channel | delay after onset (h) | lead time (h) | false alarms |" in markdown
    assert "| site\\_1 | 2004-02-13 05:00 | B2\\_a | 1 | 3 | 0 |" in markdown


def test_validation_markdown_escapes_and_the_log_leaves_passed_checks_out(tmp_path: Path) -> None:
    def outcome(check: str, success: bool, description: str = "") -> ExpectationOutcome:
        return ExpectationOutcome(
            check=check,
            family=check,
            suite="features",
            description=description,
            expectation_type="expect_column_values_to_not_be_null",
            severity="warning",
            success=success,
            unexpected_count=0 if success else 2,
            element_count=80,
        )

    report = ValidationReport(
        target=tmp_path,
        n_rows=80,
        n_valid=80,
        outcomes=[
            outcome("features.<channel>_<feature>.not_null", True, "one <channel>_<feature> column per channel"),
            outcome("timeline.gaps", False),
        ],
    )
    markdown = report.to_markdown()
    assert "one &lt;channel&gt;\\_&lt;feature&gt; column per channel" in markdown
    assert "- **PASS** `features.<channel>_<feature>.not_null` (warning): one &lt;channel&gt;" in markdown
    log = report.summary_text(passed=False)
    assert "  PASS  " not in log and "WARN  timeline.gaps" in log and log.splitlines()[0] == report.headline()
    assert "  PASS  features" in report.summary_text()


def test_lock_timeout_names_the_dataset_and_its_holder_and_is_no_timeout_error(tmp_path: Path) -> None:
    lock = tmp_path / "demo" / ".pipeline.lock"
    with (
        lock_held_elsewhere(lock),
        pytest.raises(LockTimeout) as info,
        exclusive_lock(lock, timeout_s=0.1, poll_s=0.05, label="dataset data/processed/demo"),
    ):
        pass
    message = str(info.value)
    assert not isinstance(info.value, TimeoutError)  # Prefect would end the flow run as TimedOut
    assert re.match(
        rf"dataset data/processed/demo is locked by another run \(pid {os.getpid()} on .+, since "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\): \.pipeline\.lock is still held",
        message,
    ), message
    assert str(tmp_path) not in message  # no machine path in the UI


def test_flower_log_is_one_plain_line_a_round(capsys: pytest.CaptureFixture[str]) -> None:
    from flwr.app import MetricRecord
    from flwr.supercore.logger import log as flower_log

    from bearing_core.federated.config import FederatedConfig
    from bearing_core.federated.logs import flower_log_to
    from bearing_core.federated.strategies import RoundLedger

    lines: list[tuple[int, str]] = []
    stderr = io.StringIO()
    with redirect_stderr(stderr), flower_log_to(lambda level, message: lines.append((level, message))):
        flower_log(logging.INFO, "\t├── Number of rounds: 3")  # Flower's own chatter: dropped
        ledger = RoundLedger(cfg=FederatedConfig(rounds=3))
        ledger.close_round(1, MetricRecord({"train_loss": 0.5}), MetricRecord({"eval_mse": 0.25, "eval_rmse": 0.5}))
        flower_log(logging.WARNING, "client 2 failed")
    assert [m for _, m in lines][0].startswith("round 1/3: train loss 0.5, holdout MSE 0.25")
    assert lines[1] == (logging.WARNING, "client 2 failed") and len(lines) == 2
    assert "\x1b[" not in stderr.getvalue() + capsys.readouterr().err  # no colour codes anywhere
    handlers = logging.getLogger("flwr").handlers
    assert any(type(h).__name__ == "ConsoleHandler" for h in handlers)  # Flower's handler is back after the block


def test_pipeline_task_runs_have_plain_names() -> None:
    from tasks.ingest import ingest_task
    from tasks.partition import partition_task
    from tasks.per_bearing import per_bearing_task
    from tasks.registry import promote_task, publish_task
    from tasks.report import report_task
    from tasks.score import score_task
    from tasks.train import train_centralized_task, train_federated_task
    from tasks.validate import validate_task

    names = {
        t.name: t.task_run_name
        for t in (
            ingest_task,
            validate_task,
            per_bearing_task,
            partition_task,
            train_federated_task,
            train_centralized_task,
            publish_task,
            promote_task,
            score_task,
            report_task,
        )
    }
    assert names == {name: name for name in names}
    assert {"ingest", "validate", "partition", "train-federated"} <= set(names)
