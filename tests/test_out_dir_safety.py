"""``--out`` never deletes or overwrites what a command did not write itself, and dataset writers take the lock.

A model directory (``bearing train/federate --out``) or a features-only dataset (``bearing per-bearing``,
``bearing import-features``) may only replace an absent or empty directory, or the same command's earlier output,
recognised by its marker file (:data:`bearing_core.io.OUTPUT_MARKER`). Anything else is refused with one line and
exit code 2, before any work, and left byte for byte as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.ims_files import write_ims_file

from bearing_core.config import IngestConfig
from bearing_core.features_import import import_features
from bearing_core.ingest import ingest_directory
from bearing_core.io import OUTPUT_MARKER, OutputDirRefused
from bearing_core.locking import PIPELINE_LOCK_FILE, exclusive_lock
from bearing_core.model_io import load_model, save_model
from bearing_core.per_bearing import OUTPUT_KIND as PER_BEARING_KIND
from cli.main import main

CHANNELS = ("B1_a", "B1_b", "B2_a", "B2_b")


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256), to prove a directory was left exactly as it was."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _project_like(tmp_path: Path) -> Path:
    """A user's folder: what ``--out "$PWD"`` would point at."""
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    (folder / "src" / "notes.md").write_text("six months of work\n")
    return folder


def _features_table(tmp_path: Path, n_files: int = 12) -> Path:
    rng = np.random.default_rng(0)
    times = pd.date_range("2003-10-22 12:00:00", periods=n_files, freq="10min").strftime("%Y.%m.%d.%H.%M.%S")
    table = pd.DataFrame(0.1 + 0.01 * rng.standard_normal((n_files, len(CHANNELS))), columns=list(CHANNELS))
    path = tmp_path / "rig_mean_abs.csv"
    table.assign(file=times)[["file", *CHANNELS]].to_csv(path, index=False)
    return path


def _ingested(tmp_path: Path) -> Path:
    """A small ingested dataset (samples/, features, quarantine, manifest, dataset.json)."""
    raw, out = tmp_path / "raw", tmp_path / "processed"
    rng = np.random.default_rng(1)
    for k in range(3):
        write_ims_file(raw / "site_1" / f"2004.02.12.10.{32 + k}.39", np.round(rng.normal(0, 0.2, (64, 4)), 3))
    ingest_directory(IngestConfig(raw_dir=raw, out_dir=out, expected_samples=64, workers=1))
    return out


def _tiny_model() -> tuple:
    from bearing_core.autoencoder import Autoencoder, ModelConfig
    from bearing_core.scaling import Scaler

    cfg = ModelConfig(n_inputs=2, hidden=(2,))
    scaler = Scaler(mean=np.zeros(2), std=np.ones(2))
    return Autoencoder(cfg), cfg, scaler, ["x_mean_abs", "y_mean_abs"]


# ------------------------------------------------------------------------------------------- model directories


def test_save_model_refuses_a_foreign_directory_and_replaces_its_own_model(tmp_path: Path) -> None:
    model, cfg, scaler, columns = _tiny_model()
    project = _project_like(tmp_path)
    before = _tree(project)
    with pytest.raises(OutputDirRefused, match="not empty and has no .bearing-output marker"):
        save_model(project, model, cfg, scaler, columns)
    assert _tree(project) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no staging directory left behind

    empty = tmp_path / "empty"
    empty.mkdir()
    save_model(empty, model, cfg, scaler, columns)
    assert (empty / OUTPUT_MARKER).read_text() == "model\n"
    save_model(empty, model, cfg, scaler, columns, extra={"again": True})  # its own earlier output: replaced
    assert load_model(empty).extra == {"again": True}


def test_save_model_refuses_another_commands_output(tmp_path: Path) -> None:
    model, cfg, scaler, columns = _tiny_model()
    dataset = import_features(_features_table(tmp_path), tmp_path / "dataset").out_dir
    before = _tree(dataset)
    with pytest.raises(OutputDirRefused, match="holds a features-only dataset, not a model"):
        save_model(dataset, model, cfg, scaler, columns)
    assert _tree(dataset) == before


def test_train_out_on_a_foreign_directory_exits_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bearing_core.federated.simulation as simulation

    monkeypatch.setattr(simulation, "run_federated", lambda *a, **k: pytest.fail("training started"))
    dataset = import_features(_features_table(tmp_path), tmp_path / "dataset").out_dir
    project = _project_like(tmp_path)
    before = _tree(project)
    assert main(["train", str(dataset), "--clients", "2", "--rounds", "1", "--out", str(project)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"bearing train: error: {project} is not empty and has no {OUTPUT_MARKER} marker, not a model "
        "written by bearing: refusing to overwrite it (choose a new or empty directory, or remove it "
        "yourself)"
    ]
    assert _tree(project) == before
    assert not (dataset / "clients").exists()  # refused before partitioning


def test_federate_out_on_a_foreign_directory_exits_2_before_the_superlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bearing_core.federated.deployment as deployment

    monkeypatch.setattr(deployment, "start", lambda *a, **k: pytest.fail("SuperLink started"))
    monkeypatch.setattr(deployment, "write_connection", lambda *a, **k: pytest.fail("connection written"))
    project = _project_like(tmp_path)
    before = _tree(project)
    assert main(["federate", "--clients", "2", "--insecure", "--out", str(project)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bearing federate: error: {project} is not empty")
    assert _tree(project) == before


# ------------------------------------------------------------------------------------ features-only datasets


def test_per_bearing_out_on_its_own_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = import_features(_features_table(tmp_path), tmp_path / "dataset").out_dir
    before = _tree(source)
    assert main(["per-bearing", str(source), "--out", str(source), "--train-fraction", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"bearing per-bearing: error: {source} holds a features-only dataset, not a per-bearing dataset "
        "written by bearing: refusing to overwrite it (choose a new or empty directory, or remove it "
        "yourself)"
    ]
    assert _tree(source) == before


def test_per_bearing_rewrites_its_own_output_but_never_an_ingested_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = import_features(_features_table(tmp_path), tmp_path / "dataset").out_dir
    out = tmp_path / "pb"
    args = ["per-bearing", str(source), "--out", str(out), "--train-fraction", "0.5"]
    assert main(args) == 0 and main([*args, "--log"]) == 0  # its own earlier output: rewritten
    assert (out / OUTPUT_MARKER).read_text() == f"{PER_BEARING_KIND}\n"
    capsys.readouterr()

    ingested = _ingested(tmp_path)
    before = _tree(ingested)
    assert main(["per-bearing", str(source), "--out", str(ingested), "--train-fraction", "0.5"]) == 2
    assert "has no .bearing-output marker, not a per-bearing dataset" in capsys.readouterr().err
    assert _tree(ingested) == before


def test_per_bearing_waits_for_the_dataset_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = import_features(_features_table(tmp_path), tmp_path / "dataset").out_dir
    out = tmp_path / "pb"
    args = ["per-bearing", str(source), "--out", str(out), "--train-fraction", "0.5"]
    assert main(args) == 0
    before = _tree(out)
    with exclusive_lock(out / PIPELINE_LOCK_FILE):  # a pipeline run on the per-bearing dataset
        assert main([*args, "--log", "--lock-timeout", "0"]) == 3
    assert f"{out / PIPELINE_LOCK_FILE} is still held by another run" in capsys.readouterr().err
    assert _tree(out) == before


def test_import_features_never_overwrites_an_ingested_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _features_table(tmp_path)
    ingested = _ingested(tmp_path)
    before = _tree(ingested)
    for extra in ([], ["--per-bearing", "--train-fraction", "0.5"]):
        assert main(["import-features", str(table), "--out", str(ingested), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has no .bearing-output marker" in err[0] and "refusing to overwrite" in err[0]
    assert _tree(ingested) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw", "rig_mean_abs.csv"]  # nothing left


def test_import_features_rewrites_its_own_output_under_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table, out = _features_table(tmp_path), tmp_path / "imported"
    assert main(["import-features", str(table), "--out", str(out)]) == 0
    assert main(["import-features", str(table), "--out", str(out), "--site", "other"]) == 0
    assert pd.read_parquet(out / "features.parquet")["site"].unique().tolist() == ["other"]
    before = _tree(out)
    with exclusive_lock(out / PIPELINE_LOCK_FILE):
        assert main(["import-features", str(table), "--out", str(out), "--lock-timeout", "0"]) == 3
    assert "is still held by another run" in capsys.readouterr().err
    assert _tree(out) == before
    # a per-bearing layout is another kind of output: not written over a plain import
    assert main(["import-features", str(table), "--out", str(out), "--per-bearing", "--train-fraction", "0.5"]) == 2
    assert "holds a features-only dataset, not a per-bearing dataset" in capsys.readouterr().err
    assert _tree(out) == before
