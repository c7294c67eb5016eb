"""The alarm rule (bearing_core.alarms): persistence over a duration, whatever the acquisition interval, and the
warm-up after stops. Rows are 10 minutes apart unless said otherwise, so k of the last n rows is the same as a
fraction k/n of a window of n x 10 minutes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from bearing_core.alarms import AlarmConfig, debounce_alarms


def rule(k: int, n: int, warmup_h: float = 0.0) -> AlarmConfig:
    """k of the last n rows 10 minutes apart, as a duration."""
    return AlarmConfig(persistence_h=n * 10 / 60, fraction=k / n, warmup_h=warmup_h)


def _series(flags: dict[str, list[int]]) -> pd.DataFrame:
    """Rows of several sites, 10 minutes apart, interleaved by time; ``is_anomaly`` from 0/1 lists."""
    frames = [
        pd.DataFrame(
            {
                "site": site,
                "is_anomaly": np.array(values, dtype=bool),
                "timestamp": pd.Timestamp("2004-01-01") + pd.to_timedelta(np.arange(len(values)) * 10 + s, "min"),
            }
        )
        for s, (site, values) in enumerate(flags.items())
    ]
    return pd.concat(frames).sort_values("timestamp").reset_index(drop=True)


def test_single_spikes_do_not_alarm_but_a_run_does() -> None:
    df = _series({"a": [0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0], "b": [1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0]})
    alarm = debounce_alarms(df, rule(3, 3))
    by_site = {site: alarm[(df["site"] == site).to_numpy()].astype(int).tolist() for site in ("a", "b")}
    assert by_site["a"] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert by_site["b"] == [0] * 14  # b's anomalies never make 3 in a row: no alarm even while a is alarming


def test_k_of_n_counts_within_each_site_only_and_in_time_order() -> None:
    df = _series({"a": [1, 0, 1, 0, 0, 1, 1], "b": [0, 1, 0, 1, 1, 0, 0]})
    alarm = debounce_alarms(df, rule(2, 3))
    assert alarm[(df["site"] == "a").to_numpy()].astype(int).tolist() == [0, 0, 1, 0, 0, 0, 1]
    assert alarm[(df["site"] == "b").to_numpy()].astype(int).tolist() == [0, 0, 0, 1, 1, 1, 0]
    shuffled = df.sample(frac=1.0, random_state=0)
    assert np.array_equal(
        debounce_alarms(shuffled, rule(2, 3)), alarm[shuffled.index.to_numpy()]
    )  # row order irrelevant
    assert debounce_alarms(df, rule(1, 1)).tolist() == df["is_anomaly"].tolist()
    assert debounce_alarms(df.iloc[:0], rule(3, 3)).size == 0
    with pytest.raises(ValidationError, match="fraction"):
        AlarmConfig(fraction=1.5)


def _with_stops(values: list[int], stops: dict[int, float]) -> pd.DataFrame:
    """One site, 10 min apart, with a stop of ``stops[i]`` hours before row ``i``."""
    minutes = np.arange(len(values)) * 10.0
    for i, hours in stops.items():
        minutes[i:] += hours * 60
    return pd.DataFrame(
        {
            "site": "s",
            "is_anomaly": np.array(values, dtype=bool),
            "timestamp": pd.Timestamp("2003-11-03") + pd.to_timedelta(minutes, "min"),
        }
    )


def test_warmup_after_a_long_stop_does_not_alarm_but_a_lasting_excursion_still_does() -> None:
    # Rows 6.. follow a 34 h stop. 1 h warm-up = rows 6..11 (6 rows, 10 min apart; row 12 is at 1 h).
    transient = _with_stops([0] * 6 + [1] * 6 + [0] * 4, {6: 34})
    assert debounce_alarms(transient, rule(3, 3)).astype(int).tolist()[6:12] == [0, 0, 1, 1, 1, 1]  # without warm-up
    assert not debounce_alarms(transient, rule(3, 3, 1.0)).any()
    assert not transient.equals(transient.assign(is_anomaly=False))  # the flags themselves are untouched
    lasting = _with_stops([0] * 6 + [1] * 10, {6: 34})
    assert debounce_alarms(lasting, rule(3, 3, 1.0)).astype(int).tolist() == [0] * 12 + [0, 0, 1, 1]
    # a stop shorter than the warm-up is not a restart: nothing inhibited
    short = _with_stops([0] * 6 + [1] * 6 + [0] * 4, {6: 0.5})
    assert np.array_equal(debounce_alarms(short, rule(3, 3, 1.0)), debounce_alarms(short, rule(3, 3)))
    with pytest.raises(ValidationError, match="warmup_h"):
        AlarmConfig(warmup_h=-1.0)


def test_a_site_in_alarm_before_a_stop_stays_in_alarm_through_the_warmup() -> None:
    # in alarm at rows 3..5, stop, still anomalous: the restart does not clear the alarm
    df = _with_stops([0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], {6: 12})
    assert debounce_alarms(df, rule(3, 3, 1.0)).astype(int).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    # a second stop entered in alarm thanks to the first latch is latched too (fixed point), other sites unaffected
    two = _with_stops([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], {4: 12, 8: 12})
    other = _with_stops([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0], {4: 12, 8: 12}).assign(site="t")
    both = pd.concat([two, other], ignore_index=True)
    alarm = debounce_alarms(both, rule(3, 3, 1.0))
    assert alarm[:12].astype(int).tolist() == [0, 0] + [1] * 10
    assert not alarm[12:].any()


def test_persistence_is_a_duration_not_a_count() -> None:
    # two sites with the same 1 h excursion, one recording every 5 minutes, the other every 20
    def site(name: str, every_min: int) -> pd.DataFrame:
        minutes = np.arange(0, 6 * 60, every_min)
        excursion = (minutes >= 120) & (minutes < 180)
        return pd.DataFrame(
            {
                "site": name,
                "is_anomaly": excursion,
                "timestamp": pd.Timestamp("2004-02-12") + pd.to_timedelta(minutes, "min"),
            }
        )

    df = pd.concat([site("fast", 5), site("slow", 20)], ignore_index=True)
    for hours, expected in ((0.5, True), (1.0, True), (1.5, False)):
        alarm = debounce_alarms(df, AlarmConfig(persistence_h=hours, fraction=1.0, warmup_h=0))
        for name in ("fast", "slow"):
            assert bool(alarm[(df["site"] == name).to_numpy()].any()) is expected, (name, hours)
    # the first alarm comes once the excursion has lasted the persistence, at both sites
    alarm = debounce_alarms(df, AlarmConfig(persistence_h=1.0, fraction=1.0, warmup_h=0))
    first = {name: df["timestamp"][alarm & (df["site"] == name).to_numpy()].min() for name in ("fast", "slow")}
    assert first["fast"] == pd.Timestamp("2004-02-12 02:55")  # 12 snapshots 02:00 .. 02:55
    assert first["slow"] == pd.Timestamp("2004-02-12 02:40")  # 3 snapshots 02:00 .. 02:40


def test_a_gap_in_the_data_does_not_shorten_the_evidence_needed() -> None:
    # 10-minute rows, an hour missing, then two anomalous rows: a 30-minute rule needs three rows over threshold
    minutes = np.r_[np.arange(0, 60, 10), np.arange(120, 140, 10)]
    df = pd.DataFrame(
        {
            "site": "s",
            "is_anomaly": [False] * 6 + [True, True],
            "timestamp": pd.Timestamp("2004-02-12") + pd.to_timedelta(minutes, "min"),
        }
    )
    assert not debounce_alarms(df, rule(3, 3)).any()
    assert debounce_alarms(df, rule(2, 3)).tolist() == [False] * 7 + [True]
