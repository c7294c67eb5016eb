"""The healthy-period policy: the rolling policy's rules, the alarm clearances, and nightly retrains that must not
learn a developing fault (rolling) where the first-fraction policy does learn it over a long history.

The nightly chain is the pipeline's, on the library functions it calls (per-bearing layout -> natural partition ->
federated training with the 'max' threshold on the alarm rule's statistic -> scores), on a small synthetic rig:
one site, two bearings with two accelerometers each, one snapshot an hour; bearing B2's level triples at onset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bearing_core.alarms import AlarmConfig
from bearing_core.features_import import write_features_only_dataset
from bearing_core.healthy import (
    CLEARANCES_FILE,
    HealthyPolicy,
    clear_alarm,
    cleared_until,
    load_clearances,
    rolling_for_dataset,
    rolling_selection,
    write_selection,
)
from bearing_core.inputs import PER_BEARING_DIR, InputConfig

START = pd.Timestamp("2004-01-01 00:00:00")
CHANNELS = ["B1_a", "B1_b", "B2_a", "B2_b"]
ALARMS = AlarmConfig(persistence_h=3.0, fraction=1.0, warmup_h=0.0)


# ------------------------------------------------------------------------------------------------ the rules


def _scores(rows: list[tuple[str, float, bool]]) -> pd.DataFrame:
    """(site, hours after START, alarm) -> a scores frame."""
    return pd.DataFrame(
        {
            "timestamp": [START + pd.Timedelta(hours=h) for _, h, _ in rows],
            "site": [s for s, _, _ in rows],
            "path": [f"{s}/{h:g}" for s, h, _ in rows],
            "alarm": [a for _, _, a in rows],
        }
    )


def test_rolling_keeps_normal_rows_older_than_the_guard_band_within_the_window() -> None:
    hours = np.arange(0, 100, 1.0)
    rows = [("s/B1", h, False) for h in hours] + [("s/B2", h, h >= 80) for h in hours]
    end = START + pd.Timedelta(hours=99)
    chosen = rolling_selection(_scores(rows), end, guard_h=24, window_days=3)
    got = {
        site: sorted((chosen[chosen["site"] == site]["timestamp"] - START) / pd.Timedelta(hours=1))
        for site in ("s/B1", "s/B2")
    }
    # window: the last 3 days (>= hour 27); guard: 24 h before the data end (B1) and before the first alarm (B2)
    assert got["s/B1"] == list(np.arange(27, 75, 1.0))
    assert got["s/B2"] == list(np.arange(27, 56, 1.0))
    # a clearance forgets the alarms up to its time: B2 then counts like B1 (its alarm rows never: not normal)
    cleared = rolling_selection(_scores(rows), end, {"s/B2": START + pd.Timedelta(hours=99)}, 24, 3)
    b2 = sorted((cleared[cleared["site"] == "s/B2"]["timestamp"] - START) / pd.Timedelta(hours=1))
    assert b2 == list(np.arange(27, 75, 1.0))


def test_clearances_are_written_atomically_with_who_and_when(tmp_path: Path) -> None:
    entry = clear_alarm(tmp_path, "s/B2", "2004-01-05T03:00:00", by="op", note="replaced")
    assert entry["by"] == "op" and entry["until"] == "2004-01-05T03:00:00" and entry["at"]
    clear_alarm(tmp_path, "s/B1", "2004-01-06T00:00:00", by="op2")
    data = json.loads((tmp_path / CLEARANCES_FILE).read_text())
    assert sorted(data) == ["s/B1", "s/B2"] and data["s/B2"]["note"] == "replaced"
    assert cleared_until(load_clearances(tmp_path))["s/B1"] == pd.Timestamp("2004-01-06")
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_alarms_cli_clears_a_scored_site_and_refuses_an_unknown_one(tmp_path: Path, capsys) -> None:
    from cli.main import main

    scores = _scores([("s/B1", 0, False), ("s/B2", 0, True), ("s/B2", 5, True)])
    (tmp_path / PER_BEARING_DIR).mkdir()
    scores.to_parquet(tmp_path / PER_BEARING_DIR / "scores.parquet")
    assert main(["alarms", "clear", "s/B2", "--dataset", str(tmp_path), "--by", "op"]) == 0
    assert load_clearances(tmp_path)["s/B2"]["until"] == "2004-01-01T05:00:00"  # the site's latest scored row
    assert main(["alarms", "clear", "s/B9", "--dataset", str(tmp_path)]) == 2
    assert "no site 's/B9'" in capsys.readouterr().err
    assert main(["alarms", "list", "--dataset", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert "s/B2" in listing and "by op" in listing


def test_without_a_champion_rolling_falls_back_to_first_fraction(tmp_path: Path) -> None:
    chosen, why = rolling_for_dataset(
        tmp_path / "scores.parquet", None, START, tmp_path, HealthyPolicy(policy="rolling")
    )
    assert chosen is None and "no champion" in why and "first-fraction" in why


# ------------------------------------------------------------------------------------------ nightly retrains


def _source(root: Path, days: float, onset_day: float) -> Path:
    """A features-only dataset of ``days`` of hourly snapshots; B2's mean_abs triples from ``onset_day`` on."""
    stamps = pd.date_range(START, periods=int(days * 24), freq="1h").astype("datetime64[us]")
    rng = np.random.default_rng(3)  # same seed: a longer history starts with the same rows
    frame = pd.DataFrame({"timestamp": stamps, "file": stamps.strftime("%Y.%m.%d.%H.%M.%S"), "site": "site_1"})
    frame["path"] = "site_1/" + frame["file"]
    defect = np.where((stamps - START) >= pd.Timedelta(days=onset_day), 3.0, 1.0)
    for j, channel in enumerate(CHANNELS):
        level = 0.1 * (1 + 0.1 * j) * np.exp(0.03 * rng.normal(size=len(stamps)))
        frame[f"{channel}_mean_abs"] = level * (defect if channel.startswith("B2") else 1.0)
    write_features_only_dataset(
        root,
        frame,
        [f"{c}_mean_abs" for c in CHANNELS],
        {"channels": CHANNELS, "features": ["mean_abs"], "sites": ["site_1"], "rig": {}},
    )
    return root


def _night(source: Path, models: Path, night: int, healthy_file: Path | None, champion: Path | None):
    """One nightly retrain + scoring, as the pipeline chains it; returns (model dir, per-bearing scores)."""
    from bearing_core.federated.config import FederatedConfig
    from bearing_core.federated.simulation import run_federated
    from bearing_core.healthy import read_selection
    from bearing_core.partition.build import partition_dataset
    from bearing_core.per_bearing import PerBearingConfig, write_per_bearing_dataset
    from bearing_core.scoring import update_scores

    input_cfg = InputConfig(train_fraction=0.2)
    derived = source / PER_BEARING_DIR
    selection = None if healthy_file is None else read_selection(healthy_file)
    write_per_bearing_dataset(source, derived, input_cfg, PerBearingConfig(log=True), selection)
    partition_dataset(derived, "natural", 1, 0, input_cfg, {"parent": True}, healthy_file)
    cfg = FederatedConfig(
        rounds=4,
        local_epochs=4,
        hidden=(4, 1, 4),
        activation="tanh",
        threshold_method="max",
        calibrate_persistence_h=ALARMS.persistence_h,
        calibrate_fraction=ALARMS.fraction,
        warm_start=str(champion or ""),
    )
    model_dir = models / f"night{night}"
    run_federated(derived, cfg, model_dir, scheme="natural", baseline=False)
    update_scores(derived, model_dir, alarms=ALARMS)
    return model_dir, pd.read_parquet(derived / "scores.parquet")


def _alarming_last_day(scores: pd.DataFrame) -> dict[str, float]:
    """Share of each bearing's snapshots in alarm over the last day of the data."""
    last = scores[scores["timestamp"] > scores["timestamp"].max() - pd.Timedelta(days=1)]
    return last.groupby(last["site"].astype(str))["alarm"].mean().to_dict()


def test_rolling_keeps_alarming_after_three_nights_first_fraction_absorbs_a_long_fault(tmp_path: Path) -> None:
    policy = HealthyPolicy(policy="rolling", guard_h=24, window_days=30)
    source, models = tmp_path / "demo", tmp_path / "models"
    # night 0: 6 days, B2's defect began a day ago; no champion: first-fraction (the first 1.2 days)
    model, scores = _night(_source(source, 6, 5), models, 0, None, None)
    assert _alarming_last_day(scores) == {"site_1/B1": 0.0, "site_1/B2": pytest.approx(1.0, abs=0.15)}
    for night in (1, 2, 3):  # one more day of data each night, rolling policy from the champion's scores
        _source(source, 6 + night, 5)
        chosen, why = rolling_for_dataset(
            source / PER_BEARING_DIR / "scores.parquet",
            model.name,
            pd.Timestamp(START + pd.Timedelta(days=6 + night, hours=-1)),
            source,
            policy,
        )
        assert chosen is not None, why
        b2 = chosen[chosen["site"] == "site_1/B2"]["timestamp"]
        assert b2.max() < START + pd.Timedelta(days=5, hours=-20)  # a guard band before the alarm (onset day 5)
        model, scores = _night(source, models, night, write_selection(source, chosen), model)
        alarming = _alarming_last_day(scores)
        assert alarming["site_1/B1"] < 0.1, night  # healthy: at most a stray snapshot over the max of its noise
        assert alarming["site_1/B2"] > 0.9, night  # still alarming: the fault was not learned as normal

    # first-fraction over a long history: 30 days with the same onset at day 5, the first 20 % (6 days) holds a
    # day of the defect, the 'max' threshold rises over it and the fault no longer alarms
    long_source = _source(tmp_path / "long", 30, 5)
    _, scores = _night(long_source, models, 9, None, None)
    assert _alarming_last_day(scores)["site_1/B2"] == 0.0
