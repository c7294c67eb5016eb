"""Model registry, one per dataset: atomic publication with a model card, each dataset's 'latest' champion,
champion/challenger promotion within a dataset, the one model resolver, migration of the flat layout."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.models import train_model

import bearing_core.registry as registry
from bearing_core.config import IMS_CHANNELS_4
from bearing_core.fingerprint import sha256_file
from bearing_core.inputs import InputConfig
from bearing_core.model_io import load_model, save_model
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import load_manifest, scheme_dir
from bearing_core.registry import (
    COMPLETE_FILE,
    LATEST,
    MODEL_CARD_FILE,
    PROMOTION_FILE,
    current_champion,
    holdout_data,
    list_versions,
    original_units_mse,
    promote,
    promote_if_better,
    publish_model,
    resolve_model,
)
from bearing_core.threshold import load_threshold
from cli import models_cmd


def _write_dataset(root: Path, rows_per_site: int = 200) -> Path:
    """A tiny processed dataset: two sites, four correlated mean_abs channels (an AE learns it in a few epochs)."""
    rng = np.random.default_rng(3)
    frames = []
    for offset, site in enumerate(("site_1", "site_2")):
        stamps = pd.date_range("2004-02-12 10:32:39", periods=rows_per_site, freq="10min").astype("datetime64[us]")
        frame = pd.DataFrame({"timestamp": stamps, "file": stamps.strftime("%Y.%m.%d.%H.%M.%S"), "site": site})
        frame["path"] = site + "/" + frame["file"]
        latent = rng.normal(size=rows_per_site)
        for j, channel in enumerate(IMS_CHANNELS_4):
            frame[f"{channel}_mean_abs"] = (
                0.1 + 0.01 * offset + 0.01 * (j + 1) * latent + 0.001 * rng.normal(size=rows_per_site)
            )
            frame[f"{channel}_rms"] = 2.0 * frame[f"{channel}_mean_abs"]
        frames.append(frame)
    root.mkdir(parents=True)
    pd.concat(frames).sort_values(["timestamp", "site"]).to_parquet(root / "features.parquet", index=False)
    meta = {
        "name": root.name,
        "channels": list(IMS_CHANNELS_4),
        "expected_samples": 20480,
        "fs_hz": 20000.0,
        "features": ["mean_abs", "rms"],
        "sites": ["site_1", "site_2"],
        "rig": {},
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Partition manifest (iid, 2 clients, 20 % holdout) of the tiny dataset 'plant_a'."""
    dataset = _write_dataset(tmp_path_factory.mktemp("processed") / "plant_a")
    partition_dataset(dataset, "iid", 2, 0, InputConfig(train_fraction=0.5))
    return scheme_dir(dataset, "iid") / "manifest.json"


@pytest.fixture(scope="module")
def rms_manifest(manifest: Path) -> Path:
    """The same dataset 'plant_a' partitioned again (scheme 'natural') with the rms columns as model inputs: a
    model of other inputs than a mean_abs model, for the same dataset."""
    dataset = manifest.parent.parent.parent
    partition_dataset(dataset, "natural", 2, 0, InputConfig(feature="rms", train_fraction=0.5))
    return scheme_dir(dataset, "natural") / "manifest.json"


@pytest.fixture(scope="module")
def other_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another dataset, 'plant_b' (same shape as plant_a): its models live in their own registry."""
    dataset = _write_dataset(tmp_path_factory.mktemp("processed") / "plant_b")
    partition_dataset(dataset, "iid", 2, 0, InputConfig(train_fraction=0.5))
    return scheme_dir(dataset, "iid") / "manifest.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, manifest: Path) -> dict[str, Path]:
    """Training outputs outside any registry: 'good' (10 rounds), 'better' (40), 'untrained' (no training)."""
    root = tmp_path_factory.mktemp("training")
    return {
        "good": train_model(root / "good", manifest, 10, calibrate=True),
        "better": train_model(root / "better", manifest, 40),
        "untrained": train_model(root / "untrained", manifest, 0),
    }


def _expected_mse(model_dir: Path, data: pd.DataFrame) -> float:
    """Reference: reconstruct in scaled space, map back with the model's own scaler, MSE in original units."""
    loaded = load_model(model_dir)
    X = data[loaded.input_columns].to_numpy(np.float64)
    with torch.no_grad():
        recon = loaded.model(torch.from_numpy(loaded.scaler.transform(X))).double().numpy()
    return float(np.mean((loaded.scaler.inverse_transform(recon) - X) ** 2))


def test_publish_writes_a_complete_version_with_card_and_fingerprint(
    tmp_path: Path, manifest: Path, trained: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    info = publish_model(
        trained["good"], manifest, partition_manifest_sha256=sha256_file(manifest), models_root=models, version="v1"
    )
    vdir = models / "plant_a" / "v1"  # in the registry of the dataset the manifest partitions
    assert info.path == vdir and info.version == "v1" and info.dataset == "plant_a" and not info.is_latest
    assert sorted(p.name for p in models.iterdir()) == ["plant_a"]
    names = {p.name for p in vdir.iterdir()}
    assert {
        "weights.pt",
        "config.json",
        "scaler.json",
        "metrics.parquet",
        "threshold.json",
        "fingerprint.json",
        MODEL_CARD_FILE,
        COMPLETE_FILE,
    } <= names
    complete = json.loads((vdir / COMPLETE_FILE).read_text())
    assert complete["version"] == "v1"
    assert complete["files"]["weights.pt"] == sha256_file(trained["good"] / "weights.pt")
    assert all(complete["files"][n] == sha256_file(vdir / n) for n in complete["files"])
    fp = json.loads((vdir / "fingerprint.json").read_text())
    spec = load_manifest(manifest)
    assert fp["partition_manifest_sha256"] == sha256_file(manifest) and fp["dataset"] == "plant_a"
    assert fp["sites"] == ["site_1", "site_2"] and fp["num_clients"] == 2
    assert fp["train_rows"] == sum(c.train_rows for c in spec.clients) == 160
    assert fp["holdout_rows"] == sum(c.holdout_rows for c in spec.clients) == 40
    assert fp["period_start"].startswith("2004-02-12T10:32:39")

    card = (vdir / MODEL_CARD_FILE).read_text()
    for section in (
        "## What it is",
        "## Intended use",
        "## Training data",
        "## Inputs",
        "## Architecture",
        "## Strategy and hyper-parameters",
        "## Final metrics (round 10)",
        "## Federated vs centralized",
        "## Threshold",
        "## Limitations",
    ):
        assert section in card, section
    final_mse = load_model(vdir).extra["final_eval_mse"]
    assert f"| federated (fedavg) | {final_mse:.6g} |" in card
    assert f"| centralized baseline (same rows, same epochs) | {0.9 * final_mse:.6g} |" in card
    assert "Cost of federation (relative MSE gap): +11.1 %" in card
    assert "| train rows | 160 |" in card and "| sites | site_1, site_2 |" in card
    assert (
        fp["holdout_mode"] == "last"
        and "| holdout rows (evaluation, calibration) | 40 (the latest healthy rows in time) |" in card
    )
    threshold = load_threshold(vdir)  # copied with the weights it was calibrated for
    assert f"| threshold | {threshold.threshold:.6g} |" in card and "| calibration_size | 40 |" in card
    assert "| layers | 4 → 4 → 2 → 4 → 4 |" in card and "`B1_mean_abs`" in card
    assert fp["dataset_sha256"] in card


def test_first_model_is_promoted_and_latest_is_a_symlink_to_the_whole_version(
    tmp_path: Path, manifest: Path, trained: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    plant_a = models / "plant_a"
    publish_model(trained["good"], manifest, models_root=models, version="v1")
    decision = promote_if_better(plant_a / "v1", holdout_data(manifest))
    assert decision.promoted and decision.champion is None and "first model" in decision.reason
    assert decision.challenger_mse == pytest.approx(_expected_mse(plant_a / "v1", holdout_data(manifest)), rel=1e-6)
    assert decision.eval_rows == 40
    link = plant_a / LATEST
    assert link.is_symlink() and os.readlink(link) == "v1" and not (models / LATEST).exists()
    assert resolve_model(models, "latest", dataset="plant_a") == (plant_a / "v1").resolve()
    assert load_model(link).input_columns == load_model(plant_a / "v1").input_columns
    saved = json.loads((plant_a / "v1" / PROMOTION_FILE).read_text())
    assert saved["promoted"] is True and saved["challenger"] == "v1"


def test_worse_challenger_is_not_promoted_and_champion_kept(
    tmp_path: Path, manifest: Path, trained: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    plant_a = models / "plant_a"
    publish_model(trained["good"], manifest, models_root=models, version="champ")
    promote_if_better(plant_a / "champ", holdout_data(manifest))
    publish_model(trained["untrained"], manifest, models_root=models, version="chall")
    data = holdout_data(manifest)
    decision = promote_if_better(plant_a / "chall", data)
    assert not decision.promoted and decision.champion == "champ"
    assert decision.challenger_mse == pytest.approx(_expected_mse(plant_a / "chall", data), rel=1e-6)
    assert decision.champion_mse == pytest.approx(_expected_mse(plant_a / "champ", data), rel=1e-6)
    assert decision.challenger_mse > decision.champion_mse
    assert "worse than champion champ" in decision.reason
    assert current_champion(models, "plant_a") == "champ" and os.readlink(plant_a / LATEST) == "champ"
    assert json.loads((plant_a / "chall" / PROMOTION_FILE).read_text())["promoted"] is False


def test_better_or_equal_challenger_is_promoted(tmp_path: Path, manifest: Path, trained: dict[str, Path]) -> None:
    models = tmp_path / "models"
    plant_a = models / "plant_a"
    data = holdout_data(manifest)
    publish_model(trained["good"], manifest, models_root=models, version="a")
    promote_if_better(plant_a / "a", data)
    publish_model(trained["good"], manifest, models_root=models, version="a-again")  # same weights: equal MSE
    equal = promote_if_better(plant_a / "a-again", data)
    assert equal.promoted and equal.challenger_mse == equal.champion_mse and "not worse" in equal.reason
    assert current_champion(models, "plant_a") == "a-again"
    publish_model(trained["better"], manifest, models_root=models, version="b")
    better = promote_if_better(plant_a / "b", data)
    assert better.promoted and better.challenger_mse < better.champion_mse
    assert current_champion(models, "plant_a") == "b"


def test_other_inputs_replace_the_champion_which_cannot_score_the_dataset(
    tmp_path: Path, manifest: Path, rms_manifest: Path, trained: dict[str, Path]
) -> None:
    """Same dataset, other input columns: the champion cannot score the dataset's current inputs, so keeping it
    would stop the scoring (issue 13). The challenger is promoted without comparison and promotion.json says why."""
    models = tmp_path / "models"
    plant_a = models / "plant_a"
    publish_model(trained["good"], manifest, models_root=models, version="mean-abs")
    promote_if_better(plant_a / "mean-abs", holdout_data(manifest))
    publish_model(train_model(tmp_path / "rms", rms_manifest, 5), rms_manifest, models_root=models, version="rms")
    rms_data = holdout_data(rms_manifest)
    decision = promote_if_better(plant_a / "rms", rms_data)
    assert decision.promoted and decision.champion == "mean-abs" and decision.champion_mse is None
    assert decision.challenger_mse == pytest.approx(_expected_mse(plant_a / "rms", rms_data), rel=1e-6)
    assert "other inputs" in decision.reason and "B1_mean_abs" in decision.reason and "B1_rms" in decision.reason
    assert json.loads((plant_a / "rms" / PROMOTION_FILE).read_text())["reason"] == decision.reason
    assert current_champion(models, "plant_a") == "rms"
    assert resolve_model(models, LATEST, dataset="plant_a") == (plant_a / "rms").resolve()
    manual = promote(models, "plant_a", "mean-abs", reason="back to mean_abs")  # an operator going back
    assert manual.promoted and manual.champion == "rms" and current_champion(models, "plant_a") == "mean-abs"
    with pytest.raises(FileNotFoundError, match="published: mean-abs, rms"):
        promote(models, "plant_a", "nope")


def test_a_recorded_layout_change_replaces_the_champion_even_with_the_same_column_names(
    tmp_path: Path, manifest: Path, trained: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    plant_a = models / "plant_a"
    publish_model(trained["good"], manifest, models_root=models, version="v1")
    promote_if_better(plant_a / "v1", holdout_data(manifest))
    loaded = load_model(trained["better"])
    relaid = save_model(
        tmp_path / "relaid",
        loaded.model,
        loaded.model_cfg,
        loaded.scaler,
        loaded.input_columns,
        extra={**loaded.extra, "layout": "per_bearing"},
    )  # same columns, another layout
    shutil.copy2(trained["better"] / "metrics.parquet", relaid / "metrics.parquet")
    publish_model(relaid, manifest, models_root=models, version="v2")
    decision = promote_if_better(plant_a / "v2", holdout_data(manifest))
    assert decision.promoted and "layout None vs per_bearing" in decision.reason
    assert current_champion(models, "plant_a") == "v2"


def test_champion_challenger_stays_within_a_dataset(
    tmp_path: Path, manifest: Path, other_manifest: Path, trained: dict[str, Path]
) -> None:
    """A model of another dataset is neither compared with nor replaces this dataset's champion, and 'latest'
    resolves per dataset (issue 13: one registry-wide champion scored every dataset)."""
    models = tmp_path / "models"
    publish_model(trained["better"], manifest, models_root=models, version="a1")
    promote_if_better(models / "plant_a" / "a1", holdout_data(manifest))
    publish_model(trained["untrained"], other_manifest, models_root=models, version="b1")  # worse weights
    decision = promote_if_better(models / "plant_b" / "b1", holdout_data(other_manifest))
    assert decision.promoted and decision.champion is None and "first model" in decision.reason
    assert current_champion(models, "plant_a") == "a1" and current_champion(models, "plant_b") == "b1"
    assert resolve_model(models, LATEST, dataset="plant_a") == (models / "plant_a" / "a1").resolve()
    assert resolve_model(models, LATEST, dataset="plant_b") == (models / "plant_b" / "b1").resolve()
    assert registry.datasets(models) == ["plant_a", "plant_b"]
    assert [(v.dataset, v.version, v.is_latest) for v in list_versions(models)] == [
        ("plant_a", "a1", True),
        ("plant_b", "b1", True),
    ]
    with pytest.raises(FileNotFoundError, match="belongs to dataset 'plant_b', not 'plant_a'"):
        promote(models, "plant_a", "b1")
    with pytest.raises(FileNotFoundError, match="no champion for dataset 'plant_c'"):
        resolve_model(models, LATEST, dataset="plant_c")
    with pytest.raises(ValueError, match="name the dataset"):
        resolve_model(models, LATEST)


def test_failed_publish_leaves_no_version_and_latest_unchanged(
    tmp_path: Path, manifest: Path, trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    plant_a = models / "plant_a"
    publish_model(trained["good"], manifest, models_root=models, version="v1")
    promote_if_better(plant_a / "v1", holdout_data(manifest))
    # training wrote straight into the dataset's registry (as train_flow does): not a version until published
    raw = train_model(plant_a / "v2", manifest, 3)
    assert [v.version for v in list_versions(models)] == ["v1"]

    def crash(*args: object, **kwargs: object) -> str:
        raise OSError("disk full while writing the model card")

    monkeypatch.setattr(registry, "render_model_card", crash)
    with pytest.raises(OSError, match="disk full"):
        publish_model(raw, manifest, models_root=models)
    assert not (plant_a / "v2" / COMPLETE_FILE).exists()
    assert sorted(p.name for p in plant_a.iterdir()) == [LATEST, "v1", "v2"]  # no staging left, raw dir untouched
    assert [v.version for v in list_versions(models)] == ["v1"]
    assert current_champion(models, "plant_a") == "v1"
    with pytest.raises(ValueError, match="not a published version"):
        promote_if_better(plant_a / "v2", holdout_data(manifest))

    monkeypatch.undo()
    info = publish_model(raw, manifest, models_root=models)  # in place: same path, now complete
    assert info.version == "v2" and (plant_a / "v2" / MODEL_CARD_FILE).is_file()
    assert [v.version for v in list_versions(models)] == ["v1", "v2"]


def test_publish_is_idempotent_and_checks_the_manifest_hash(
    tmp_path: Path, manifest: Path, trained: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    first = publish_model(trained["good"], manifest, models_root=models, version="v1")
    again = publish_model(trained["good"], manifest, models_root=models, version="v1")
    assert again == first
    with pytest.raises(FileExistsError, match="different weights"):
        publish_model(trained["better"], manifest, models_root=models, version="v1")
    with pytest.raises(ValueError, match="partitioning was rewritten"):
        publish_model(trained["better"], manifest, partition_manifest_sha256="0" * 64, models_root=models)
    with pytest.raises(ValueError, match="invalid version name"):
        publish_model(trained["better"], manifest, models_root=models, version=LATEST)
    stale = tmp_path / "stale"
    shutil.copytree(trained["better"], stale)
    shutil.copy2(trained["good"] / "threshold.json", stale / "threshold.json")  # calibrated for other weights
    with pytest.raises(ValueError, match="calibrated for other weights"):
        publish_model(stale, manifest, models_root=models)
    assert not (models / "plant_a" / "stale").exists()


def test_list_versions_and_resolve_model(tmp_path: Path, manifest: Path, trained: dict[str, Path]) -> None:
    models = tmp_path / "models"
    plant_a = models / "plant_a"
    assert list_versions(models) == []
    with pytest.raises(FileNotFoundError, match="nothing has been promoted"):
        resolve_model(models, "latest", dataset="plant_a")
    publish_model(trained["good"], manifest, models_root=models, version="20260101T000000Z-aaaa")
    publish_model(trained["better"], manifest, models_root=models, version="20260102T000000Z-bbbb")
    promote(models, "plant_a", "20260101T000000Z-aaaa")
    infos = list_versions(models)
    assert [i.version for i in infos] == ["20260101T000000Z-aaaa", "20260102T000000Z-bbbb"]
    assert [i.is_latest for i in infos] == [True, False]
    assert [i.threshold for i in infos] == [load_threshold(trained["good"]).threshold, None]
    assert all(i.dataset == "plant_a" and i.strategy == "fedavg" for i in infos)
    assert infos[1].eval_mse == pytest.approx(load_model(plant_a / infos[1].version).extra["final_eval_mse"])
    assert infos[1].eval_mse < infos[0].eval_mse
    assert resolve_model(models, "latest", dataset="plant_a") == (plant_a / "20260101T000000Z-aaaa").resolve()
    for dataset in ("plant_a", None):  # a version name: found in the dataset's registry, or in any
        assert resolve_model(models, "20260102T000000Z-bbbb", dataset) == (plant_a / "20260102T000000Z-bbbb").resolve()
    assert resolve_model(models, plant_a / LATEST) == (plant_a / "20260101T000000Z-aaaa").resolve()  # by path
    assert resolve_model(models, trained["good"]) == trained["good"].resolve()  # an explicit model directory
    with pytest.raises(FileNotFoundError, match="published: plant_a: 20260101T000000Z-aaaa, 20260102T000000Z-bbbb"):
        resolve_model(models, "20990101T000000Z-none", dataset="plant_a")
    with pytest.raises(FileNotFoundError, match="weights.pt"):
        resolve_model(models, tmp_path)
    with pytest.raises(FileNotFoundError, match="the champion is per dataset"):
        resolve_model(models, models / LATEST)  # the flat layout's champion is gone


def test_names_resolve_to_published_versions_only_never_to_a_directory_with_weights(
    tmp_path: Path, manifest: Path, trained: dict[str, Path]
) -> None:
    """The resolver scoring used before fell back to "the newest directory holding weights.pt" when there was no
    latest: an unpublished training output (or another dataset's) could score. Now names resolve to published
    versions only; a model directory is used only when given as a path."""
    models = tmp_path / "models"
    plant_a = models / "plant_a"
    raw = train_model(plant_a / "20260103T000000Z-cccc", manifest, 1)  # trained, not published
    with pytest.raises(FileNotFoundError, match="no champion for dataset 'plant_a'"):
        resolve_model(models, LATEST, dataset="plant_a")
    with pytest.raises(FileNotFoundError, match="not a published version"):
        resolve_model(models, raw.name, dataset="plant_a")
    assert resolve_model(models, raw) == raw.resolve()  # explicitly, by its path
    staging = plant_a / ".20260104T000000Z-dddd.staging-abc123"  # a killed publisher's half-written version
    shutil.copytree(raw, staging)
    with pytest.raises(FileNotFoundError, match="registry work directory"):
        resolve_model(models, staging)


def test_publish_sweeps_old_debris_of_killed_writers_and_keeps_recent_work(
    tmp_path: Path, manifest: Path, trained: dict[str, Path]
) -> None:
    models = tmp_path / "models"
    old, recent = 2 * registry.STALE_AFTER_S, 60.0
    debris = {
        models / "plant_a" / ".v0.staging-abc123": old,  # a publish or a training save killed a day ago
        models / "plant_a" / ".v0.old-def456": old,  # a version swap killed between its two renames
        models / "plant_a" / "v9" / ".promotion.json.x1y2.tmp": old,  # a promotion record killed mid-write
        models / ".v7.staging-flat": old,  # left in the models root by a publisher of the flat layout
        models / "plant_a" / ".v8.staging-running": recent,  # another training writing right now
    }
    for path, age in debris.items():
        if path.suffix == ".tmp":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("half")
        else:
            path.mkdir(parents=True)
            (path / "weights.pt").write_bytes(b"partial")
        os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
    publish_model(
        trained["good"], manifest, partition_manifest_sha256=sha256_file(manifest), models_root=models, version="v1"
    )
    assert [p.name for p in debris if p.exists()] == [".v8.staging-running"]
    assert registry.is_complete(models / "plant_a" / "v1")


def test_latest_falls_back_to_a_text_file_without_symlinks(
    tmp_path: Path, manifest: Path, trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    plant_a = models / "plant_a"
    publish_model(trained["good"], manifest, models_root=models, version="v1")

    def no_symlinks(*args: object, **kwargs: object) -> None:
        raise OSError("symbolic links are not supported on this filesystem")

    monkeypatch.setattr(registry.os, "symlink", no_symlinks)
    promote(models, "plant_a", "v1")
    assert not (plant_a / LATEST).is_symlink() and (plant_a / LATEST).read_text() == "v1\n"
    assert current_champion(models, "plant_a") == "v1"
    assert resolve_model(models, "latest", dataset="plant_a") == (plant_a / "v1").resolve()
    assert [i.is_latest for i in list_versions(models)] == [True]
    monkeypatch.undo()
    publish_model(trained["better"], manifest, models_root=models, version="v2")
    promote(models, "plant_a", "v2")
    assert os.readlink(plant_a / LATEST) == "v2"


def test_original_units_mse_is_independent_of_the_scaler(trained: dict[str, Path], manifest: Path) -> None:
    """The same model behind a rescaled input space reports the same original-units MSE."""
    loaded = load_model(trained["good"])
    data = holdout_data(manifest)
    mse, rows = original_units_mse(loaded, data)
    assert rows == len(data) and mse == pytest.approx(_expected_mse(trained["good"], data), rel=1e-6)
    with pytest.raises(
        ValueError,
        match=r"inputs \['B1_mean_abs', .*'B4_mean_abs'\] are not all among the "
        r"validation rows' columns \['B2_mean_abs', .*\(missing: \['B1_mean_abs'\]",
    ):
        original_units_mse(loaded, data.drop(columns=["B1_mean_abs"]))


def _bearing_models(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bearing")
    models_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["models", *argv])
    return int(args.func(args))


def test_models_command_groups_versions_by_dataset_marks_champions_and_promotes(
    tmp_path: Path,
    manifest: Path,
    other_manifest: Path,
    trained: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    models = tmp_path / "models"
    assert _bearing_models("--models-root", str(models)) == 0
    assert "no published model versions" in capsys.readouterr().out
    publish_model(trained["good"], manifest, models_root=models, version="v1")
    publish_model(trained["better"], manifest, models_root=models, version="v2")
    publish_model(trained["better"], other_manifest, models_root=models, version="w1")
    promote(models, "plant_a", "v1")
    assert _bearing_models("--models-root", str(models)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"dataset plant_a: champion v1 ({models / 'plant_a' / LATEST})"
    assert lines[1].split() == ["version", "created", "(UTC)", "strategy", "eval", "MSE", "threshold"]
    v1, v2 = (line.split() for line in lines[2:4])
    assert v1[:2] == ["*", "v1"] and v1[-1] == f"{load_threshold(trained['good']).threshold:.6g}"
    assert v2[0] == "v2" and v2[-1] == "-" and v2[-2] == f"{list_versions(models)[1].eval_mse:.6g}"
    assert lines[4:7] == ["", "dataset plant_b: no champion promoted yet", lines[1]]
    assert lines[7].split()[0] == "w1" and len(lines) == 8
    assert _bearing_models("promote", "plant_a", "v2", "--models-root", str(models)) == 0
    assert f"{models / 'plant_a' / LATEST} -> v2 (was v1)" in capsys.readouterr().out
    assert current_champion(models, "plant_a") == "v2" and current_champion(models, "plant_b") is None
    assert _bearing_models("promote", "plant_a", "v9", "--models-root", str(models)) == 2
    assert "no published version 'v9' of dataset 'plant_a'" in capsys.readouterr().err
    assert _bearing_models("promote", "plant_a", "w1", "--models-root", str(models)) == 2
    assert "belongs to dataset 'plant_b'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the dataset is required
        _bearing_models("promote", "v2", "--models-root", str(models))
    assert "the following arguments are required: VERSION" in capsys.readouterr().err


def _flatten(models: Path, dataset: str) -> list[str]:
    """Rewrite a per-dataset registry as the earlier flat layout: versions and latest at the top."""
    champion = current_champion(models, dataset)
    names = []
    for version in sorted(p for p in (models / dataset).iterdir() if p.name != LATEST):
        version.rename(models / version.name)
        names.append(version.name)
    (models / dataset / LATEST).unlink(missing_ok=True)
    (models / dataset).rmdir()
    if champion is not None:
        os.symlink(champion, models / LATEST)
    return names


def test_a_flat_registry_is_migrated_once_with_one_line_per_move(
    tmp_path: Path,
    manifest: Path,
    other_manifest: Path,
    trained: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    models = tmp_path / "models"
    publish_model(trained["good"], manifest, models_root=models, version="a1")
    publish_model(trained["better"], manifest, models_root=models, version="a2")
    promote(models, "plant_a", "a2")
    publish_model(trained["good"], other_manifest, models_root=models, version="b1")
    train_model(models / "plant_b" / "b2", other_manifest, 1)  # a training output, never published
    assert _flatten(models, "plant_a") == ["a1", "a2"] and _flatten(models, "plant_b") == ["b1", "b2"]
    capsys.readouterr()
    assert os.readlink(models / LATEST) == "a2" and (models / "b2" / "weights.pt").is_file()

    # the first reader of the registry (here the resolver of `bearing score --model latest`) migrates it
    assert resolve_model(models, LATEST, dataset="plant_a") == (models / "plant_a" / "a2").resolve()
    assert capsys.readouterr().out.splitlines() == [
        f"registry: moved {models / 'a1'} -> {models / 'plant_a' / 'a1'} (one registry per dataset)",
        f"registry: moved {models / 'a2'} -> {models / 'plant_a' / 'a2'} (one registry per dataset)",
        f"registry: moved {models / 'b1'} -> {models / 'plant_b' / 'b1'} (one registry per dataset)",
        f"registry: {models / 'plant_a' / LATEST} -> a2 (was {models / LATEST})",
    ]
    assert sorted(p.name for p in models.iterdir()) == ["b2", "plant_a", "plant_b"]  # unpublished: left alone
    assert not (models / LATEST).exists() and not (models / LATEST).is_symlink()
    assert current_champion(models, "plant_b") is None  # the flat champion was plant_a's
    assert [(v.dataset, v.version, v.is_latest) for v in list_versions(models)] == [
        ("plant_a", "a1", False),
        ("plant_a", "a2", True),
        ("plant_b", "b1", False),
    ]
    for version in list_versions(models):  # moved whole: every file still matches COMPLETE
        files = json.loads((version.path / COMPLETE_FILE).read_text())["files"]
        assert {name: sha256_file(version.path / name) for name in files} == files
    assert registry.migrate_flat_registry(models) == [] and capsys.readouterr().out == ""  # once
    assert (models / "b2" / "weights.pt").is_file()


def test_training_never_writes_over_a_registry_or_a_published_version(
    tmp_path: Path,
    manifest: Path,
    trained: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model directory is written by replacing it whole: `bearing train --out data/models/<dataset>` (the
    README's recipes wrote to that path before the registry became per dataset) would delete the published
    versions."""
    from cli.main import main

    models = tmp_path / "models"
    publish_model(trained["good"], manifest, models_root=models, version="v1")
    for target in (models / "plant_a", models / "plant_a" / "v1"):
        with pytest.raises(ValueError, match="training would replace it"):
            registry.check_training_output(target)
    assert registry.check_training_output(models / "plant_a" / "recipe") == models / "plant_a" / "recipe"
    monkeypatch.chdir(tmp_path)
    dataset = manifest.parent.parent.parent
    argv = ["train", str(dataset), "--partition", "dirichlet", "--clients", "2", "--rounds", "1"]
    assert main([*argv, "--out", str(models / "plant_a")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"bearing train: error: {models / 'plant_a'} is a dataset's model registry (published versions inside): "
        f"training would replace it; write into {models / 'plant_a' / '<name>'} instead"
    )
    assert registry.is_complete(models / "plant_a" / "v1")


def test_bearing_score_latest_is_the_champion_of_the_dataset_scored(
    tmp_path: Path,
    manifest: Path,
    other_manifest: Path,
    trained: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`bearing score DATASET_DIR` (--model latest) scores with DATASET_DIR's own champion, never with another
    dataset's (issue 13: the one registry-wide champion scored every dataset, or failed to)."""
    from cli.main import main

    monkeypatch.chdir(tmp_path)  # data/models is the default registry
    models = Path("data/models")
    plant_a, plant_b = manifest.parent.parent.parent, other_manifest.parent.parent.parent
    publish_model(trained["good"], other_manifest, models_root=models, version="b1")
    promote(models, "plant_b", "b1")
    out = tmp_path / "scores.parquet"
    assert main(["score", str(plant_a), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bearing score: error: no champion for dataset 'plant_a' in data/models/plant_a") and (
        "published: plant_b: b1" in err
    )
    publish_model(trained["good"], manifest, models_root=models, version="a1")
    promote(models, "plant_a", "a1")
    assert main(["score", str(plant_a), "--out", str(out)]) == 0
    assert f"model {(models / 'plant_a' / 'a1').resolve()}: scored 400 new snapshots" in capsys.readouterr().out
    assert len(pd.read_parquet(out)) == 400
    assert main(["score", str(plant_b), "--model", "b1", "--out", str(tmp_path / "b.parquet")]) == 0
    assert f"model {(models / 'plant_b' / 'b1').resolve()}: scored 400 new snapshots" in capsys.readouterr().out


def test_score_calibrate_refuses_to_rewrite_a_published_version(
    tmp_path: Path,
    manifest: Path,
    trained: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`bearing score --calibrate` used to rewrite a published champion's threshold.json in place (stale hashes in its
    fingerprint and model card, no registry lock): a published version is refused, untouched (issue 14)."""
    from cli.main import main

    monkeypatch.chdir(tmp_path)
    models = Path("data/models")
    publish_model(trained["good"], manifest, models_root=models, version="a1")
    promote(models, "plant_a", "a1")
    threshold = models / "plant_a" / "a1" / "threshold.json"
    before = threshold.read_bytes()
    plant_a = manifest.parent.parent.parent
    assert main(["score", str(plant_a), "--calibrate", str(manifest.parent), "--out", str(tmp_path / "s.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would rewrite the published version a1 in place" in err[0]
    assert threshold.read_bytes() == before and not (tmp_path / "s.parquet").exists()


def test_version_names_match_whole(tmp_path: Path, manifest: Path, trained: dict[str, Path]) -> None:
    """A name with a trailing newline is not a version name (``$`` matches before a final newline)."""
    with pytest.raises(ValueError, match="version"):
        publish_model(trained["good"], manifest, models_root=tmp_path / "models", version="a1\n")
    assert not (tmp_path / "models" / "plant_a").exists() or not any((tmp_path / "models" / "plant_a").iterdir())
