"""End to end on a real trajectory: the IMS 1st test replayed into raw IMS files, through `bearing run` with its
defaults.

``../shared/ims/replay_ims.py`` writes every 4th file of the 1st test (539 raw files, 40 minutes apart, ~0.7 GB):
each channel of each file has the real mean|x| of that file (the real levels, drifts, stops and bursts of the run to
failure); the waveform shape comes from real healthy files. ``bearing run --raw-dir DIR --train-until <end of the
first 20 % of files>`` with every other setting at its default must alarm bearing 4 and bearing 3 before the published
anchor (3σ on the bearing's mean|x|, 3 of 3: B4 at file 1748, B3 at file 2119, 0-based), with no alarm event on any
bearing before the first true one. Skipped when ``../shared`` is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bearing_core.inputs import PER_BEARING_DIR
from bearing_core.scoring import read_scores

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EVERY = 4
TRAIN_UNTIL = "2003-11-01T10:31:44"  # file 431: the first 20 % of the 2,156 files
ANCHOR = {"B4": 1748, "B3": 2119}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def replay_scores(shared_ims: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Per-bearing scores of the pipeline run on the replay, with each row's 0-based file index in the 1st test."""
    project = tmp_path_factory.mktemp("replay-project")
    raw = project / "data" / "raw" / "ims_1st"
    subprocess.run(
        [
            sys.executable,
            str(shared_ims / "replay_ims.py"),
            str(shared_ims / "features" / "1st_test_mean_abs.csv"),
            str(raw),
            "--every",
            str(EVERY),
        ],
        check=True,
        capture_output=True,
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "FLWR_HOME", "RAY_TMPDIR", "PREFECT_API_URL")
    }
    env.update(PYTHONPATH=str(ROOT), BEARING_PROJECT_DIR=str(project))
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", "--raw-dir", str(raw), "--train-until", TRAIN_UNTIL],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "layout                   per_bearing (4 bearings" in run.stdout
    files = sorted(p.name for p in raw.iterdir())
    scores = read_scores(project / "data" / "processed" / "ims_1st" / PER_BEARING_DIR / "scores.parquet")
    scores["bearing"] = scores["site"].str.rpartition("/")[2]
    scores["index"] = scores["file"].map({name: i * EVERY for i, name in enumerate(files)})
    return scores.sort_values(["bearing", "timestamp"]).reset_index(drop=True)


def _events(scores: pd.DataFrame) -> list[tuple[int, str]]:
    """(file index, bearing) of every alarm event (an alarm that starts), in time order."""
    events = []
    for bearing, part in scores.groupby("bearing"):
        alarm = part["alarm"].to_numpy(bool)
        starts = alarm & ~np.r_[False, alarm[:-1]]
        events += [(int(i), str(bearing)) for i in part["index"].to_numpy()[starts]]
    return sorted(events)


def test_the_failing_bearings_alarm_before_the_anchor(replay_scores: pd.DataFrame) -> None:
    """Every 4th file (40 min apart): both hold. On the full replay (every file) bearing 3 is not alarmed at all
    with the margin's default (BENCHMARKS.md, "Pipeline detection defaults"): this subsample is the easier case."""
    first = {
        b: int(part.loc[part["alarm"], "index"].min())
        for b, part in replay_scores.groupby("bearing")
        if part["alarm"].any()
    }
    assert first.get("B4", 10**9) < ANCHOR["B4"], first
    assert first.get("B3", 10**9) < ANCHOR["B3"], first


def test_no_alarm_event_before_the_first_true_one(replay_scores: pd.DataFrame) -> None:
    events = _events(replay_scores)
    assert events, "no alarm at all"
    assert events[0][1] in ("B3", "B4"), f"first alarm event on a healthy bearing: {events[:5]}"
    # the alarms name the bearing: one scores row per snapshot and bearing, sites <site>/<bearing>
    assert set(replay_scores["bearing"]) == {"B1", "B2", "B3", "B4"}
    assert replay_scores.groupby("bearing").size().nunique() == 1
