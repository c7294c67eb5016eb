"""Detection metrics on hand-made score series (exact numbers), ground-truth evaluation, the plot and the CLI."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bearing_core.alarms import AlarmConfig, debounce_alarms
from bearing_core.evaluation import evaluate_against_ground_truth, evaluate_detection, plot_scores
from bearing_core.scoring import write_scores
from bearing_core.synthetic import DemoConfig, plan_ground_truth

START = datetime(2004, 1, 1)
HOUR = timedelta(hours=1)


def _scores(anomalous: list[int], site: str = "s1", start: datetime = START, step: timedelta = HOUR) -> pd.DataFrame:
    """Hourly scores: anomalous rows score 2.0, others 0.5, threshold 1.0; 3-of-3 alarms."""
    flags = np.array(anomalous, dtype=bool)
    df = pd.DataFrame(
        {
            "timestamp": pd.to_datetime([start + i * step for i in range(len(flags))]).astype("datetime64[us]"),
            "file": [f"f{i:03d}" for i in range(len(flags))],
            "site": site,
            "path": [f"{site}/f{i:03d}" for i in range(len(flags))],
            "score": np.where(flags, 2.0, 0.5),
            "threshold": 1.0,
            "is_anomaly": flags,
            "top_channel": np.where(flags, "B3_a", "B1_a"),
        }
    )
    three_in_a_row = AlarmConfig(persistence_h=3 * step.total_seconds() / 3600, fraction=1.0, warmup_h=0)
    return df.assign(alarm=debounce_alarms(df, three_in_a_row))


# 49 hourly rows (2 days): a false 3-run at hours 5-7 (alarm at 7), a spike at 20, then a run from hour 40 on
SERIES = [0] * 5 + [1, 1, 1] + [0] * 12 + [1] + [0] * 19 + [1] * 9


def test_lead_time_false_alarms_and_rate_are_exact() -> None:
    df = _scores(SERIES)
    report = evaluate_detection(df, failure_time=START + 48 * HOUR, healthy_until=START + 24 * HOUR)
    assert report.snapshots == 49 and report.healthy_snapshots == 25 and report.healthy_days == 1.0
    assert report.false_alarm_snapshots == 1 and report.false_alarm_events == 1
    assert report.false_alarm_rate_per_day == 1.0
    assert report.false_anomaly_snapshots == 4  # hours 5, 6, 7 and the spike at 20
    assert report.first_anomaly_time == START + 40 * HOUR
    assert report.first_alarm_time == START + 42 * HOUR and report.first_alarm_file == "f042"
    assert report.first_alarm_channel == "B3_a" and report.detected
    assert report.lead_time_hours == 6.0 and report.delay_after_onset_hours is None


def test_onset_defines_the_healthy_period_and_alarms_after_failure_do_not_count() -> None:
    df = _scores(SERIES)
    report = evaluate_detection(df, failure_time=START + 41 * HOUR, onset=START + 30 * HOUR)
    assert report.healthy_snapshots == 30 and report.healthy_days == pytest.approx(29 / 24)
    assert report.false_alarm_events == 1 and report.false_alarm_rate_per_day == pytest.approx(24 / 29)
    assert not report.detected and report.first_alarm_time is None and report.lead_time_hours is None
    assert report.first_anomaly_time == START + 40 * HOUR

    healthy_site = evaluate_detection(_scores([0, 1, 1, 1, 1, 0, 1]), failure_time=None)
    assert healthy_site.healthy_snapshots == 7 and healthy_site.false_alarm_snapshots == 2
    assert healthy_site.false_alarm_events == 1 and not healthy_site.detected


def test_alarm_events_are_counted_per_site() -> None:
    """Two sites alarming at interleaved times are two events, not one long run."""
    a = _scores([1, 1, 1, 1, 0], site="a")
    b = _scores([1, 1, 1, 1, 0], site="b", start=START + timedelta(minutes=30))
    report = evaluate_detection(pd.concat([a, b]), failure_time=None)
    assert report.false_alarm_snapshots == 4 and report.false_alarm_events == 2


def test_evaluate_against_ground_truth_per_site() -> None:
    truth = plan_ground_truth(DemoConfig(sites=2, files_per_site=20, interval_minutes=60, start=START))
    faulty = truth.sites["site_1"]
    assert faulty.faulty and not truth.sites["site_2"].faulty
    onset_i = faulty.onset_index
    site_1 = _scores([0] * onset_i + [1] * (20 - onset_i), "site_1")
    site_2 = _scores([0, 0, 1, 1, 1] + [0] * 15, "site_2")
    for df, site in ((site_1, "site_1"), (site_2, "site_2")):  # the demo's own (irregular) acquisition times
        df["timestamp"] = pd.to_datetime(truth.timestamps(site)).astype("datetime64[us]")
    table = evaluate_against_ground_truth(pd.concat([site_1, site_2]), truth).set_index("site")
    row = table.loc["site_1"]
    alarm = truth.timestamps("site_1")[onset_i + 2]  # 3-of-3 debounce: the third anomalous snapshot
    assert row["detected_after_onset"] and row["false_alarm_snapshots"] == 0
    assert row["first_alarm"] == alarm and faulty.onset == truth.timestamps("site_1")[onset_i]
    assert row["delay_after_onset_hours"] == (alarm - faulty.onset).total_seconds() / 3600
    assert row["lead_time_hours"] == (faulty.failure - alarm).total_seconds() / 3600
    assert row["correct_bearing"] == (faulty.bearing == "B3")
    assert table.loc["site_2", "false_alarm_snapshots"] == 1 and not table.loc["site_2", "detected_after_onset"]


def test_plot_scores_writes_a_png(tmp_path: Path) -> None:
    df = pd.concat([_scores(SERIES, "a"), _scores(SERIES[::-1], "b")])
    out = plot_scores(
        df, None, tmp_path / "plot.png", onset={"a": START + 30 * HOUR}, failure=START + 48 * HOUR, title="test"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="empty"):
        plot_scores(df.iloc[:0], 1.0, tmp_path / "empty.png")


def test_evaluate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.evaluate_cmd import register, run

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    write_scores(_scores(SERIES), tmp_path / "scores.csv")
    args = parser.parse_args(
        [
            "evaluate",
            str(tmp_path / "scores.csv"),
            "--failure-time",
            "2004-01-03T00:00:00",
            "--healthy-until",
            "2004-01-02T00:00:00",
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "lead time before failure: 6.00 h" in out and "1.00 per day" in out
    assert (tmp_path / "p.png").is_file()
    assert run(parser.parse_args(["evaluate", str(tmp_path / "scores.csv")])) == 2
    assert run(parser.parse_args(["evaluate", str(tmp_path / "missing.parquet"), "--failure-time", "2004-01-03"])) == 2
