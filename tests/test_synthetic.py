"""bearing_core.synthetic and `bearing demo-data`: IMS format, determinism, ground truth, visible faults."""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from bearing_core.config import IMS_CHANNELS_4, IMS_CHANNELS_8, RigConfig
from bearing_core.features import FEATURES, compute_features
from bearing_core.synthetic import (
    GROUND_TRUTH_FILE,
    DemoConfig,
    GroundTruth,
    format_ims,
    generate_demo,
    load_ground_truth,
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
        assert all((b - a).total_seconds() == 600 for a, b in zip(stamps, stamps[1:]))
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


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValidationError, match="channels"):
        DemoConfig(channels=5)
    with pytest.raises(ValidationError, match="naive"):
        DemoConfig(start=datetime(2004, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(ValidationError, match="files_per_site"):
        DemoConfig(files_per_site=1)


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
