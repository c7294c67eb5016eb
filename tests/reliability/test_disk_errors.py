"""Issue #8: disk errors. A write that fails fails its step with a message naming the file and the cause, leaves
no temporary file behind, and leaves every earlier output byte for byte as it was.

Faults (root ignores file modes and CI runs as root, so a chmod-ed directory proves nothing):

* **disk full** (:class:`DiskFull`, portable): every write into one directory fails the way the kernel reports a
  full disk: ``os.write``, ``os.sendfile`` and ``os.fsync`` of a file there raise ``ENOSPC`` *without* a file
  name (as they do), ``os.replace`` / ``os.symlink`` onto it raise ``ENOSPC`` naming their paths. Writers that
  do not go through these calls (torch, pyarrow, matplotlib writing to a path) hit it at the ``fsync`` that
  precedes every rename; Great Expectations' Data Docs writes are failed in its store backend.
* **read-only directory**: ``chattr +i`` (immutable: not even root can create a file there); skipped where the
  filesystem or the container does not support it.

The earlier state is a whole small project (ingested, validated, partitioned, trained, published, promoted,
scored, reported); each test copies it, fails one step and compares every file (hidden ones included) with the
state before.

| fault | where | outcome |
|---|---|---|
| disk full | ingest (a new snapshot's samples) | OSError ENOSPC naming the file; earlier outputs intact, no temp |
| disk full | validate: the report directory / quarantine rows | same; previous report and quarantine intact |
| disk full | validate: a Data Docs page (GX logs and swallows the error) | DataDocsError naming the page; previous report intact |
| disk full | partition: client files | same; previous partition intact |
| disk full | training output: model directory, metrics (centralized rows), threshold | same; previous files intact |
| disk full | registry: publish (staging files, the version swap), promote (promotion.json, ``latest``) | same; training output and ``latest`` intact |
| disk full | scoring: scores.parquet | same; previous scores intact |
| disk full | run report: report.md, plots | same; previous report intact |
| disk full / read-only | ``bearing ingest``, ``bearing score`` | exit code 1, one line ``bearing CMD: error: [Errno 28] No space left on device: '<file>'`` |
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers.models import train_model as _train

from bearing_core.alarms import AlarmConfig
from bearing_core.config import IngestConfig
from bearing_core.ingest import ingest_directory
from bearing_core.inputs import InputConfig
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import MANIFEST_FILE, scheme_dir
from bearing_core.registry import (
    LATEST,
    current_champion,
    holdout_data,
    promote_if_better,
    publish_model,
    set_latest,
)
from bearing_core.synthetic import generate_demo

NEW_FILE = "2004.12.31.23.59.59"
NO_SPACE = os.strerror(errno.ENOSPC)


class DiskFull:
    """Makes every write into ``folder`` (and below) fail with ENOSPC, as on a full disk (module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()

    def _inside(self, path: Any) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(self.folder)

    def _fd_inside(self, fd: int) -> bool:
        try:
            return self._inside(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Wrap the os calls that write data or directory entries."""

        def by_fd(real: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(fd: int, *args: Any, **kwargs: Any) -> Any:
                if self._fd_inside(fd):
                    raise OSError(errno.ENOSPC, NO_SPACE)
                return real(fd, *args, **kwargs)

            return wrapper

        def by_destination(real: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                if self._inside(dst):
                    raise OSError(errno.ENOSPC, NO_SPACE, str(src), None, str(dst))
                return real(src, dst, *args, **kwargs)

            return wrapper

        for name in ("write", "fsync", "sendfile"):
            monkeypatch.setattr(os, name, by_fd(getattr(os, name)))
        for name in ("replace", "symlink"):
            monkeypatch.setattr(os, name, by_destination(getattr(os, name)))


def files_state(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones included): file -> SHA-256, directory -> 'dir', symlink -> target.
    Lock files are left out (they persist by design, empty)."""
    from bearing_core.fingerprint import sha256_file

    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if name.endswith(".lock"):
                continue
            rel = path.relative_to(root).as_posix()
            state[rel] = (
                f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir() else sha256_file(path)
            )
    return state


def new_snapshot(project: Path) -> Path:
    """A raw file that the dataset does not hold yet (a copy of site_1's last one, at a later time)."""
    return Path(shutil.copy(max((project / "raw" / "site_1").iterdir()), project / "raw" / "site_1" / NEW_FILE))


def assert_no_space_named(exc: pytest.ExceptionInfo[BaseException], path: Path) -> None:
    """The error says the disk is full and names ``path`` (the output or its temporary sibling in that folder)."""
    message = str(exc.value)
    assert isinstance(exc.value, OSError) and exc.value.errno == errno.ENOSPC, message
    assert NO_SPACE in message, message
    assert str(path.parent.resolve()) in message and path.name in message, message


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project in the state every step leaves: raw/, dataset/ (ingested, validated, partitioned, scored),
    models/dataset/ (v1 published and promoted: the registry of the dataset 'dataset'), reports/v1 (report +
    plot)."""
    from bearing_core.run_report import plot_round_metrics, write_run_report
    from bearing_core.scoring import update_scores
    from bearing_core.validation import validate_dataset

    root = tmp_path_factory.mktemp("built")
    generate_demo(root / "raw", sites=2, files_per_site=12, seed=1)  # IMS-sized: what `bearing ingest` expects
    dataset, models = root / "dataset", root / "models"
    ingest_directory(IngestConfig(raw_dir=root / "raw", out_dir=dataset, workers=1))
    validate_dataset(dataset)
    partition_dataset(dataset, "natural", 2, 0, InputConfig(train_fraction=0.5))
    manifest = scheme_dir(dataset, "natural") / MANIFEST_FILE
    registry = models / dataset.name  # the dataset's registry: training writes into it, as the train flow does
    _train(registry / "v1", manifest, rounds=2, calibrate=True)
    publish_model(registry / "v1", manifest, models_root=models)
    promote_if_better(registry / "v1", holdout_data(manifest))
    update_scores(dataset, registry / LATEST)
    metrics = pd.read_parquet(registry / "v1" / "metrics.parquet")
    plot_round_metrics(metrics, root / "reports" / "v1" / "metrics.png", "rounds")
    write_run_report(root / "reports" / "v1", "# run report\n", {"threshold": 1.0})
    return root


@pytest.fixture
def project(built: Path, tmp_path: Path) -> Path:
    """A copy of :func:`built` to break; its state before the fault is compared with the state after."""
    return Path(shutil.copytree(built, tmp_path / "project", symlinks=True))


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """``disk_full(folder)``: from now on, in this test, every write into ``folder`` fails with ENOSPC."""
    return lambda folder: DiskFull(folder).install(monkeypatch)


@pytest.fixture
def rename_fails(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """``rename_fails(target)``: the next rename onto ``target`` fails with ENOSPC (its directory entry cannot be
    rewritten); later ones succeed, e.g. a writer putting the previous ``target`` back."""

    def fail(target: Path) -> None:
        target = Path(os.path.abspath(target))
        real = os.replace
        armed = [True]

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if armed[0] and Path(os.path.abspath(dst)) == target:
                armed[0] = False
                raise OSError(errno.ENOSPC, NO_SPACE, str(src), None, str(dst))
            real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)

    return fail


# -------------------------------------------------------------------------------------------------- the steps


def test_ingest_fails_on_a_full_disk_and_leaves_the_dataset_as_it_was(project: Path, disk_full) -> None:
    new_snapshot(project)
    before = files_state(project / "dataset")
    disk_full(project / "dataset")
    with pytest.raises(OSError) as exc:
        ingest_directory(IngestConfig(raw_dir=project / "raw", out_dir=project / "dataset", workers=1))
    assert_no_space_named(exc, project / "dataset" / "samples" / "site_1" / f"{NEW_FILE}.parquet")
    assert files_state(project / "dataset") == before


@pytest.mark.parametrize("full", ["dataset", "quarantine"])
def test_validation_fails_on_a_full_disk_and_keeps_the_previous_report_and_quarantine(
    project: Path, disk_full, rename_fails, full: str
) -> None:
    from bearing_core.validation import validate_dataset

    dataset = project / "dataset"
    before = files_state(dataset)
    if full == "dataset":  # the first write: the tables validated, copied into the new report directory
        disk_full(dataset)
        expected = dataset
    else:  # only quarantine.parquet's directory entry cannot grow: the rename of its rewrite fails
        rename_fails(dataset / "quarantine.parquet")
        expected = dataset / "quarantine.parquet"
    with pytest.raises(OSError) as exc:
        validate_dataset(dataset)
    assert NO_SPACE in str(exc.value) and str(expected) in str(exc.value), str(exc.value)
    assert files_state(dataset) == before


def test_validation_fails_when_a_data_docs_page_cannot_be_written(project: Path, monkeypatch) -> None:
    """Great Expectations logs and swallows an exception while writing a validation page: the report directory
    must not be swapped in as complete without its pages."""
    from great_expectations.data_context.store.tuple_store_backend import (
        TupleFilesystemStoreBackend,
    )

    from bearing_core.validation import validate_dataset
    from bearing_core.validation.runner import DataDocsError

    real_set = TupleFilesystemStoreBackend._set
    pages: list[str] = []

    def full_for_pages(self: Any, key: Any, value: Any, **kwargs: Any) -> Any:
        path = os.path.join(self.full_base_directory, self._convert_key_to_filepath(key))
        if "/validations/" in path:
            pages.append(path)
            raise OSError(errno.ENOSPC, NO_SPACE, path)
        return real_set(self, key, value, **kwargs)

    monkeypatch.setattr(TupleFilesystemStoreBackend, "_set", full_for_pages)
    dataset = project / "dataset"
    before = files_state(dataset)
    with pytest.raises(DataDocsError) as exc:
        validate_dataset(dataset)
    assert NO_SPACE in str(exc.value) and pages[0] in str(exc.value), str(exc.value)
    assert files_state(dataset) == before


def test_partition_fails_on_a_full_disk_and_keeps_the_previous_partition(project: Path, disk_full) -> None:
    dataset = project / "dataset"
    before = files_state(dataset)
    disk_full(scheme_dir(dataset, "natural"))
    with pytest.raises(OSError) as exc:
        partition_dataset(dataset, "natural", 2, 1, InputConfig(train_fraction=0.5))  # other seed: new contents
    assert_no_space_named(exc, scheme_dir(dataset, "natural") / "client_0.parquet")
    assert files_state(dataset) == before


def test_training_outputs_fail_on_a_full_disk_and_keep_the_previous_files(project: Path, disk_full) -> None:
    from bearing_core.federated.config import FederatedConfig
    from bearing_core.federated.simulation import run_centralized
    from bearing_core.model_io import load_model, save_model
    from bearing_core.threshold import calibrate_from_clients

    models = project / "models"
    registry = models / "dataset"
    clients = scheme_dir(project / "dataset", "natural")
    before = files_state(models)
    disk_full(models)
    loaded = load_model(registry / "v1")
    with pytest.raises(OSError) as exc:  # the model directory (weights written by torch to a path, then fsynced)
        save_model(registry / "v2", loaded.model, loaded.model_cfg, loaded.scaler, loaded.input_columns)
    assert_no_space_named(exc, registry / ".v2.staging")
    with pytest.raises(OSError) as exc:  # the centralized baseline's rows appended to metrics.parquet
        run_centralized(clients, FederatedConfig(rounds=1, local_epochs=1), registry / "v1")
    assert_no_space_named(exc, registry / "v1" / "metrics.parquet")
    with pytest.raises(OSError) as exc:  # the calibrated threshold
        calibrate_from_clients(registry / "v1", clients)
    assert_no_space_named(exc, registry / "v1" / "threshold.json")
    assert files_state(models) == before


@pytest.mark.parametrize("where", ["staging", "swap"])
def test_publish_fails_on_a_full_disk_and_leaves_the_training_output_and_registry(
    project: Path, disk_full, rename_fails, where: str
) -> None:
    models = project / "models"
    registry = models / "dataset"
    manifest = scheme_dir(project / "dataset", "natural") / MANIFEST_FILE
    _train(registry / "v2", manifest, rounds=1, calibrate=True)  # a new training output beside the champion
    before = files_state(models)
    if where == "staging":  # the registry's own files (fingerprint, card, COMPLETE) cannot be written
        disk_full(models)
        expected = registry / ".v2.staging"
    else:  # everything is staged, but renaming the version into place fails
        rename_fails(registry / "v2")
        expected = registry / "v2"
    with pytest.raises(OSError) as exc:
        publish_model(registry / "v2", manifest, models_root=models)
    assert NO_SPACE in str(exc.value) and str(expected) in str(exc.value), str(exc.value)
    assert files_state(models) == before
    assert current_champion(models, "dataset") == "v1"


@pytest.mark.parametrize("where", ["promotion.json", LATEST])
def test_promotion_fails_on_a_full_disk_and_keeps_the_champion(
    project: Path, disk_full, rename_fails, where: str
) -> None:
    models = project / "models"
    registry = models / "dataset"
    manifest = scheme_dir(project / "dataset", "natural") / MANIFEST_FILE
    publish_model(_train(registry / "v2", manifest, rounds=1, calibrate=True), manifest, models_root=models)
    before = files_state(models)
    if where == LATEST:
        rename_fails(registry / LATEST)
        with pytest.raises(OSError) as exc:
            set_latest(models, "dataset", "v2")
    else:
        disk_full(registry / "v2")
        with pytest.raises(OSError) as exc:
            promote_if_better(registry / "v2", holdout_data(manifest), tolerance=100.0)
    assert_no_space_named(exc, registry / where if where == LATEST else registry / "v2" / where)
    assert files_state(models) == before
    assert current_champion(models, "dataset") == "v1"


def test_scoring_fails_on_a_full_disk_and_keeps_the_previous_scores(project: Path, disk_full) -> None:
    from bearing_core.scoring import update_scores

    dataset = project / "dataset"
    (dataset / "scores.parquet").rename(dataset / "old.parquet")  # force a rewrite: nothing to reuse
    before = files_state(dataset)
    disk_full(dataset)
    with pytest.raises(OSError) as exc:
        update_scores(
            dataset, project / "models" / "dataset" / LATEST, dataset / "old.parquet", AlarmConfig(fraction=0.5)
        )
    assert_no_space_named(exc, dataset / "old.parquet")
    assert files_state(dataset) == before


def test_run_report_fails_on_a_full_disk_and_keeps_the_previous_report(project: Path, disk_full) -> None:
    from bearing_core.run_report import plot_round_metrics, write_run_report

    report = project / "reports" / "v1"
    before = files_state(report)
    disk_full(report)
    with pytest.raises(OSError) as exc:
        write_run_report(report, "# another report\n", {"threshold": 2.0})
    assert_no_space_named(exc, report / "summary.json")
    with pytest.raises(OSError) as exc:
        metrics = pd.read_parquet(project / "models" / "dataset" / "v1" / "metrics.parquet")
        plot_round_metrics(metrics, report / "metrics.png", "x")
    assert_no_space_named(exc, report / "metrics.png")
    assert files_state(report) == before


# ------------------------------------------------------------------------------------------------ the CLI


def _immutable(folder: Path) -> bool:
    """``chattr -R +i folder`` (the folder, its sub-folders and files); False where unsupported (no chattr, no
    CAP_LINUX_IMMUTABLE, a filesystem without the attribute)."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "-R", "+i", str(folder)], check=False, capture_output=True).returncode == 0


@pytest.fixture
def read_only(project: Path) -> Iterator[Callable[[Path], None]]:
    """``read_only(folder)``: make ``folder`` and all below it immutable for this test (skipped where unsupported);
    undone after."""
    made: list[Path] = []

    def make(folder: Path) -> None:
        if not _immutable(folder):
            pytest.skip("chattr +i is not supported here")
        made.append(folder)

    yield make
    for folder in made:
        subprocess.run(["chattr", "-R", "-i", str(folder)], check=True)


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
@pytest.mark.parametrize("command", ["ingest", "score"])
def test_cli_exits_non_zero_with_one_clear_line(
    project: Path, disk_full, read_only, fault: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    dataset = project / "dataset"
    if command == "ingest":
        new_snapshot(project)
        argv = ["ingest", str(project / "raw"), "--out", str(dataset), "--workers", "1"]
    else:
        (dataset / "scores.parquet").unlink()
        argv = ["score", str(dataset), "--model", str(project / "models" / "dataset" / LATEST)]
    before = files_state(dataset)
    (disk_full if fault == "disk full" else read_only)(dataset)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()  # ingest's progress bar comes first
    assert code != 0
    errors = [line for line in err if "error" in line.lower() or "Traceback" in line]
    assert errors == err[-1:] and err[-1].startswith(f"bearing {command}: error: "), err
    assert (NO_SPACE if fault == "disk full" else os.strerror(errno.EPERM)) in err[-1]
    assert str(dataset) in err[-1]
    assert files_state(dataset) == before
