"""bearing_core.synthetic and `bearing demo-data`: IMS format, determinism, ground truth, visible faults, and the
nuisances of real IMS runs (days with stops, interval change, run-in, cold restarts, bursts, site gains) measured in
the per-file mean|x| that the project's own reader and features compute from the written files."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from bearing_core.config import IMS_CHANNELS_4, IMS_CHANNELS_8, RigConfig
from bearing_core.features import FEATURES, compute_features, compute_features_batch
from bearing_core.ims_reader import read_ims_file
from bearing_core.synthetic import (
    GROUND_TRUTH_FILE,
    DemoConfig,
    GroundTruth,
    format_ims,
    generate_demo,
    load_ground_truth,
    nuisance_factors,
    plan_ground_truth,
    synthesize_snapshots,
)
from cli import demo_data_cmd

RIG = RigConfig()
IDX = {name: i for i, name in enumerate(FEATURES)}
VALUE = re.compile(rb"-?\d\.\d{3}")
N_FILES = 12


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    """2 full-size sites x 12 files: site_1 runs to failure, site_2 stays healthy."""
    out = tmp_path_factory.mktemp("demo")
    return out, generate_demo(out, sites=2, files_per_site=N_FILES, seed=11)


@pytest.fixture(scope="module")
def features(demo: tuple[Path, GroundTruth]) -> dict[str, np.ndarray]:
    """Per site: compute_features of every file read with np.loadtxt, (files, channels, features)."""
    out, truth = demo
    return {
        site: np.stack([compute_features(np.loadtxt(p), RIG) for p in sorted((out / site).iterdir())])
        for site in truth.sites
    }


def all_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_files_have_ims_format(demo: tuple[Path, GroundTruth]) -> None:
    out, _ = demo
    files = sorted(out.glob("site_*/*"))
    assert len(files) == 2 * N_FILES
    data = files[-1].read_bytes()
    lines = data.split(b"\n")
    assert lines[-1] == b"" and b"\r" not in data  # '\n' endings, final newline
    assert len(lines) - 1 == 20_480
    fields = [line.split(b"\t") for line in lines[:-1]]
    assert {len(f) for f in fields} == {8}
    assert all(VALUE.fullmatch(v) for f in fields for v in f)
    x = np.loadtxt(files[-1])
    assert x.shape == (20_480, 8)
    assert np.abs(x).max() < 9.0


def test_format_ims_writes_three_decimals_and_clips() -> None:
    values = np.array([[0.1234, -0.0004, -1.5], [12.3, -0.0996, 0.0]])
    assert format_ims(values) == b"0.123\t0.000\t-1.500\n9.999\t-0.100\t0.000\n"


def test_text_is_the_rounded_signal(demo: tuple[Path, GroundTruth]) -> None:
    out, truth = demo
    config = DemoConfig(sites=2, files_per_site=N_FILES, seed=11)
    signal = synthesize_snapshots(config, truth, "site_1", [N_FILES - 1])[0]
    on_disk = np.loadtxt(out / "site_1" / truth.timestamps("site_1")[-1].strftime("%Y.%m.%d.%H.%M.%S"))
    np.testing.assert_allclose(on_disk, np.round(signal, 3), atol=1e-9)


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path: Path) -> None:
    kwargs = dict(sites=2, files_per_site=4, n_samples=2048)
    generate_demo(tmp_path / "a", seed=5, **kwargs)
    generate_demo(tmp_path / "b", seed=5, workers=2, **kwargs)
    generate_demo(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (all_files(tmp_path / name) for name in "abc")
    assert len(a) == 2 * 4 + 1
    assert a == b
    assert a["site_1/2004.02.12.10.32.39"] != c["site_1/2004.02.12.10.32.39"]


def test_ground_truth_matches_files(demo: tuple[Path, GroundTruth]) -> None:
    out, truth = demo
    assert load_ground_truth(out) == truth == load_ground_truth(out / GROUND_TRUTH_FILE)
    raw = json.loads((out / GROUND_TRUTH_FILE).read_text())
    assert raw["seed"] == 11 and raw["fs_hz"] == RIG.fs_hz and raw["interval_minutes"] == 10.0
    assert set(raw["sites"]) == {"site_1", "site_2"}
    for site, site_truth in truth.sites.items():
        names = sorted(p.name for p in (out / site).iterdir())
        stamps = [datetime.strptime(n, "%Y.%m.%d.%H.%M.%S") for n in names]
        assert stamps == truth.timestamps(site)
        assert sum(run.files for run in site_truth.acquisition) == N_FILES == site_truth.n_files
        assert stamps[0] == site_truth.first_file == site_truth.acquisition[0].start
        assert {kind for kind in (e.kind for e in site_truth.nuisances)} >= {"run_in"}
        if site_truth.faulty:
            assert site_truth.onset == stamps[site_truth.onset_index]
            assert site_truth.failure == stamps[-1]
            assert 0 < site_truth.onset_index < N_FILES - 1
            assert site_truth.defect in ("bpfo", "bpfi")
            assert site_truth.channels == [f"{site_truth.bearing}_a", f"{site_truth.bearing}_b"]
            assert raw["sites"][site]["onset"] == stamps[site_truth.onset_index].isoformat()
        else:
            assert raw["sites"][site]["failure"] is None and site_truth.channels == []
    assert truth.sites["site_1"].faulty and not truth.sites["site_2"].faulty
    assert truth.sites["site_1"].profile != truth.sites["site_2"].profile
    # site_1 follows the IMS 1st test: every 5 minutes for its first files, then every 10
    steps = np.diff([t.timestamp() for t in truth.timestamps("site_1")])
    assert steps[0] == 300 and steps[-1] == 600


def test_old_ground_truth_files_still_load() -> None:
    """A ground_truth.json written before acquisition runs, nuisances and the new profile fields existed."""
    truth = plan_ground_truth(DemoConfig(sites=2, files_per_site=10))
    raw = truth.model_dump(mode="json")
    for site in raw["sites"].values():
        del site["acquisition"], site["nuisances"], site["profile"]["level_jitter"]
        del site["profile"]["defect_initial_fraction"]
    old = GroundTruth.model_validate(raw)
    first = old.sites["site_1"].first_file
    assert old.timestamps("site_1") == [first + timedelta(minutes=10) * i for i in range(10)]
    assert old.running_hours("site_1")[-1] == pytest.approx(1.5)


def test_at_least_one_site_stays_healthy_and_defects_alternate() -> None:
    for sites in (1, 2, 4, 9):
        truth = plan_ground_truth(DemoConfig(sites=sites, files_per_site=10))
        faulty = [s for s in truth.sites.values() if s.faulty]
        assert len(faulty) == sites - max(1, sites // 4)
    defects = [s.defect for s in plan_ground_truth(DemoConfig(sites=4)).sites.values()]
    assert defects == ["bpfi", "bpfo", "bpfi", None]


def test_envelope_feature_rises_after_onset_and_healthy_site_stays_flat(
    demo: tuple[Path, GroundTruth], features: dict[str, np.ndarray]
) -> None:
    _, truth = demo
    faulty = truth.sites["site_1"]
    env = IDX[f"env_{faulty.defect}"]
    channels = [IMS_CHANNELS_8.index(c) for c in faulty.channels]
    late = slice(int(0.8 * N_FILES), None)
    before = features["site_1"][: faulty.onset_index][:, channels, env]
    after = features["site_1"][late][:, channels, env]
    assert np.all(np.median(after, axis=0) > 3 * np.median(before, axis=0))
    # the defect grows: last file above the onset file, strongly above healthy
    assert np.all(features["site_1"][-1, channels, env] > features["site_1"][faulty.onset_index, channels, env])
    # a few times the healthy vibration level in mean_abs at failure, realistic healthy level before
    mean_abs = features["site_1"][:, channels, IDX["mean_abs"]]
    assert np.all(mean_abs[-1] > 2 * np.median(mean_abs[: faulty.onset_index], axis=0))
    healthy = features["site_2"]
    assert np.all((healthy[:, :, IDX["mean_abs"]] > 0.03) & (healthy[:, :, IDX["mean_abs"]] < 0.2))
    for name in ("env_bpfo", "env_bpfi", "mean_abs"):
        values = healthy[:, :, IDX[name]]
        assert np.all(np.median(values[late], axis=0) < 1.5 * np.median(values[: faulty.onset_index], axis=0))


def test_four_channel_files(tmp_path: Path) -> None:
    truth = generate_demo(tmp_path, sites=2, files_per_site=3, channels=4, n_samples=1024)
    assert truth.channels == list(IMS_CHANNELS_4)
    assert truth.sites["site_1"].channels == [truth.sites["site_1"].bearing]
    first = sorted((tmp_path / "site_1").iterdir())[0]
    assert np.loadtxt(first).shape == (1024, 4)
    snapshot = read_ims_file(first, expected_samples=1024)  # the reader names the columns as the ground truth
    assert list(snapshot.channels) == truth.channels == ["B1", "B2", "B3", "B4"]
    assert all(c in truth.channels for t in truth.sites.values() for e in t.nuisances for c in e.channels)


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValidationError, match="channels"):
        DemoConfig(channels=5)
    with pytest.raises(ValidationError, match="naive"):
        DemoConfig(start=datetime(2004, 1, 1, tzinfo=UTC))
    with pytest.raises(ValidationError, match="files_per_site"):
        DemoConfig(files_per_site=1)


# ------------------------------------------------------------------ what real IMS runs show: the nuisances

REAL_FILES, REAL_SAMPLES = 150, 8192  # the default files per site; shorter snapshots keep this fast
QUIET = 0.01  # a file is "quiet" on a channel when the planned nuisance factors are within 1 % of 1


@dataclass
class Measured:
    """One site of the realistic demo, as the project's reader and features see it."""

    stamps: list[datetime]
    mean_abs: np.ndarray  # (files, channels), mean|x| of each written file
    level: np.ndarray  # mean_abs / the channel's undisturbed healthy level
    planned: np.ndarray  # nuisance_factors (ground truth), (files, channels)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[GroundTruth, dict[str, Measured]]:
    """The default demo (4 sites x 150 files, seed 3) with 8,192-sample snapshots, read back file by file."""
    out = tmp_path_factory.mktemp("real")
    truth = generate_demo(out, files_per_site=REAL_FILES, seed=3, n_samples=REAL_SAMPLES)
    measured = {}
    for site, site_truth in truth.sites.items():
        snapshots = [read_ims_file(p, expected_samples=REAL_SAMPLES) for p in sorted((out / site).iterdir())]
        mean_abs = np.concatenate(
            [
                compute_features_batch(np.stack([s.data for s in snapshots[i : i + 32]]), RIG)[:, :, IDX["mean_abs"]]
                for i in range(0, len(snapshots), 32)
            ]
        )
        planned = nuisance_factors(truth, site, range(len(snapshots)))
        healthy = slice(site_truth.onset_index)  # before the defect (None: every file)
        base = np.median(mean_abs[healthy] / planned[healthy], axis=0)  # the undisturbed level, fitted
        measured[site] = Measured([s.timestamp for s in snapshots], mean_abs, mean_abs / base, planned)
    return truth, measured


def test_several_days_per_site_with_stops_and_interval_changes(
    real: tuple[GroundTruth, dict[str, Measured]],
) -> None:
    truth, measured = real
    intervals = set()
    for site, site_truth in truth.sites.items():
        stamps = measured[site].stamps  # parsed from the file names by the reader
        assert stamps == truth.timestamps(site) and len(stamps) == REAL_FILES
        assert 3.0 <= (stamps[-1] - stamps[0]).total_seconds() / 86400 <= 5.0
        steps = np.diff([t.timestamp() for t in stamps]) / 60
        gaps = np.flatnonzero(steps >= 60)  # stops: an hour or more without a file
        restarts = sorted({e.start for e in site_truth.nuisances if e.kind == "restart"})
        assert len(gaps) >= 2 and [stamps[i + 1] for i in gaps] == restarts
        assert all(
            e.stopped_at == stamps[stamps.index(e.start) - 1] for e in site_truth.nuisances if e.kind == "restart"
        )
        regular = steps[steps < 60]
        intervals |= set(np.unique(regular))
        if site == "site_1":  # the IMS 1st test: every 5 minutes for the first hours, then every 10
            change = int(np.argmax(regular != 5))
            assert set(regular[:change]) == {5} and set(regular[change:]) == {10} and change >= 20
    assert len(intervals) >= 3  # the other sites take files at other intervals


def healthy_files(truth: GroundTruth, site: str) -> np.ndarray:
    """Indices of ``site``'s files before its defect onset (all files on a healthy site)."""
    return np.arange(truth.sites[site].onset_index or truth.sites[site].n_files)


def test_run_in_drift_is_several_percent_and_settles(real: tuple[GroundTruth, dict[str, Measured]]) -> None:
    truth, measured = real
    signs = set()
    for site, site_truth in truth.sites.items():
        m = measured[site]
        hours = truth.running_hours(site)[healthy_files(truth, site)]
        for event in (e for e in site_truth.nuisances if e.kind == "run_in"):
            columns = [truth.channels.index(c) for c in event.channels]
            assert 0.03 <= abs(event.factor - 1) <= 0.09 and event.start == m.stamps[0]
            np.testing.assert_allclose(m.planned[0, columns], event.factor)  # no other nuisance at the start
            start = m.level[:4, columns].mean()  # the first four files
            assert start == pytest.approx(m.planned[:4, columns].mean(), abs=0.02)
            quiet = np.all(np.abs(m.planned[: len(hours), columns] - 1) < QUIET, axis=1)
            settled = np.median(m.level[: len(hours)][(hours > 3 * event.settle_hours) & quiet][:, columns])
            assert settled == pytest.approx(1.0, abs=0.012)  # settled (no file at all would give NaN)
            assert abs(start - settled) >= 0.01 and np.sign(start - settled) == np.sign(event.factor - 1)
            signs.add(np.sign(event.factor - 1))
    assert signs == {-1.0, 1.0}  # some bearings run in louder, others quieter


def test_restart_after_a_stop_is_louder_for_hours_then_settles(real: tuple[GroundTruth, dict[str, Measured]]) -> None:
    """At the first file after a stop the bearing is louder by the ground truth's factor (measured against what
    the other nuisances planned), a few per cent; 4 settle times later that excess is gone."""
    truth, measured = real
    shifts, later, one_bearing = [], [], 0
    for site, site_truth in truth.sites.items():
        m = measured[site]
        healthy = len(healthy_files(truth, site))
        hours = truth.running_hours(site)
        restarts = [e for e in site_truth.nuisances if e.kind == "restart"]
        for start in sorted({e.start for e in restarts}):
            events = [e for e in restarts if e.start == start]
            i = m.stamps.index(start)
            assert (start - m.stamps[i - 1]).total_seconds() >= 3600 and events[0].stopped_at == m.stamps[i - 1]
            if i >= healthy:
                continue  # the defect changes the level too
            one_bearing += len(events) == 1
            for event in events:
                columns = [truth.channels.index(c) for c in event.channels]
                assert 1.01 <= event.factor <= 1.07 and 1 <= event.settle_hours <= 4
                excess = 1 + (event.factor - 1) * np.exp(-(hours - hours[i]) / event.settle_hours)  # this event
                others = m.planned[:, columns] / excess[:, np.newaxis]
                shift = (m.level[i, columns] / others[i]).mean() - 1
                assert shift == pytest.approx(event.factor - 1, abs=0.025)
                shifts.append(shift)
                after = np.flatnonzero((hours >= hours[i] + 4 * event.settle_hours) & (np.arange(len(hours)) > i))
                if len(after) and after[0] < healthy:
                    later.append((m.level[after[0], columns] / others[after[0]]).mean() - 1)
            if len(events) == 1:  # the other bearings are not louder
                rest = [c for c in range(len(truth.channels)) if truth.channels[c] not in events[0].channels]
                np.testing.assert_allclose(m.level[i, rest], m.planned[i, rest], atol=0.04)
    assert len(shifts) >= 8 and one_bearing >= 1
    assert np.mean(shifts) >= 0.025  # a few per cent louder at the restart ...
    assert len(later) >= 4 and abs(np.mean(later)) < 0.01  # ... gone a few hours later


def test_bursts_hit_one_healthy_bearing_or_channel_at_a_time(real: tuple[GroundTruth, dict[str, Measured]]) -> None:
    truth, measured = real
    n_bursts = 0
    for site, site_truth in truth.sites.items():
        m = measured[site]
        healthy = len(healthy_files(truth, site))
        bursts = sorted((e for e in site_truth.nuisances if e.kind == "burst"), key=lambda e: e.start)
        assert len(bursts) >= 2
        for event, following in zip(bursts, [*bursts[1:], None]):
            assert event.end is not None and 3 <= (event.end - event.start).total_seconds() / 60 <= 60
            assert following is None or following.start > event.end  # one at a time
            assert len({c.split("_")[0] for c in event.channels}) == 1  # one bearing (or one of its sensors)
            assert event.channels[0].split("_")[0] != site_truth.bearing  # a healthy bearing
            files = [i for i, t in enumerate(m.stamps) if event.start <= t < event.end]
            assert files  # each burst is seen by at least one file
            columns = [truth.channels.index(c) for c in event.channels]
            assert 2.0 <= event.factor <= 5.0
            others = m.planned[np.ix_(files, columns)] / event.factor  # run-in, restart still there
            ratio = m.level[np.ix_(files, columns)] / others
            np.testing.assert_allclose(ratio[np.array(files) < healthy], event.factor, rtol=0.06)
            assert np.all(ratio > 0.94 * event.factor)  # after the onset, a neighbour's defect can add to it
            rest = [c for c in range(len(truth.channels)) if c not in columns]
            before_onset = [i for i in files if i < healthy]
            assert np.all(m.level[np.ix_(before_onset, rest)] < 1.2)  # nothing else bursts at the same time
            n_bursts += 1
    assert n_bursts >= 8


def test_sites_differ_in_gain_and_noise(real: tuple[GroundTruth, dict[str, Measured]]) -> None:
    truth, measured = real
    levels = {site: np.median(m.mean_abs / m.planned, axis=0).mean() for site, m in measured.items()}
    assert max(levels.values()) / min(levels.values()) > 1.25  # what the sites' sensors read differs
    for seed in range(5):  # every demo spreads gains over 0.7-1.5 and noise over 0.06-0.11 g, one part a site
        sites = plan_ground_truth(DemoConfig(seed=seed)).sites.values()
        gains = sorted(t.profile.gain for t in sites)
        noises = sorted(t.profile.noise_g for t in sites)
        assert all(0.7 + 0.2 * k <= g <= 0.7 + 0.2 * (k + 1) for k, g in enumerate(gains)), gains
        assert all(0.06 + 0.0125 * k <= v <= 0.06 + 0.0125 * (k + 1) for k, v in enumerate(noises)), noises


def test_defect_grows_slowly_then_fast_to_several_fold(real: tuple[GroundTruth, dict[str, Measured]]) -> None:
    truth, measured = real
    faulty = {site: t for site, t in truth.sites.items() if t.faulty}
    assert len(faulty) == 3 and not truth.sites["site_4"].faulty
    for site, site_truth in faulty.items():
        m = measured[site]
        columns = [truth.channels.index(c) for c in site_truth.channels]
        level = (m.level / m.planned)[:, columns[0]]  # the faulty bearing's first sensor, nuisances divided out
        hours = truth.running_hours(site)
        onset = site_truth.onset_index
        assert site_truth.failure == m.stamps[-1] and site_truth.onset == m.stamps[onset]
        middle = onset + int(np.searchsorted(hours[onset:], (hours[onset] + hours[-1]) / 2))
        first_half, second_half = level[middle] - level[onset], level[-1] - level[middle]
        assert level[-1] >= 2.5  # several-fold at failure
        assert 0 <= first_half < 0.3 * second_half  # slowly at first, then faster
    subtle = [s for s, t in faulty.items() if t.profile.defect_initial_fraction < 0.05]
    assert len(subtle) == 1  # one in three defects is barely visible at onset: mean|x| within a few per cent
    for site in subtle:
        onset = faulty[site].onset_index
        column = truth.channels.index(faulty[site].channels[0])
        assert measured[site].level[onset : onset + 3, column].mean() / measured[site].planned[onset, column] < 1.05


def test_other_seeds_move_every_event() -> None:
    a, b = (plan_ground_truth(DemoConfig(seed=seed)) for seed in (0, 1))
    for site in a.sites:
        times = [{(e.kind, e.start) for e in t.sites[site].nuisances if e.kind != "run_in"} for t in (a, b)]
        assert times[0] and times[1] and not times[0] & times[1]
        assert a.timestamps(site) != b.timestamps(site)
    assert [t.onset for t in a.sites.values()] != [t.onset for t in b.sites.values()]
    assert plan_ground_truth(DemoConfig(seed=0)) == a  # and the same seed gives the same plan


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bearing")
    demo_data_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["demo-data", *argv])
    return args.func(args)


def test_cli_refuses_non_empty_dir_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert run_cli("--out", str(out), "--sites", "2", "--files", "3", "--workers", "1") == 0
    printed = capsys.readouterr().out
    assert "wrote 2 sites x 3 files" in printed and str(out / GROUND_TRUTH_FILE) in printed
    assert "site_1: 3 files over 0.0 days, every 5 then 10 min, 0 stops, 0 bursts; bpfi defect on B" in printed
    assert len(list(out.glob("site_*/*"))) == 6

    assert run_cli("--out", str(out), "--sites", "3", "--files", "2", "--workers", "1") == 2
    assert "--force" in capsys.readouterr().err
    assert len(list(out.glob("site_*/*"))) == 6

    (out / "notes.md").write_text("keep me")
    assert run_cli("--out", str(out), "--sites", "1", "--files", "2", "--channels", "4", "--force") == 0
    assert sorted(p.name for p in out.iterdir()) == [GROUND_TRUTH_FILE, "notes.md", "site_1"]
    assert len(list(out.glob("site_*/*"))) == 2
    assert load_ground_truth(out).channels == list(IMS_CHANNELS_4)

    assert run_cli("--out", str(tmp_path / "bad"), "--files", "1") == 2
    assert "--files" in capsys.readouterr().err
