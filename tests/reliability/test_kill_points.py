"""Issue #8: ``kill -9`` the pipeline at >= 10 reproducible points; every re-run completes with the outputs of an
uninterrupted run, and no half-written output is ever readable as complete.

The subject is :mod:`pipeline_chain` (this folder): the library calls the Prefect flows make, with the pipeline's
parameters, in a subprocess that SIGKILLs itself at one ``os.replace`` into ``data/``, i.e. at the commit of one
output (a samples file, features, quarantine, the validation report directory, a client file, the model
directory, metrics, threshold, a registry staging file, the version directory, ``latest``, the scores). Every
output is committed that way, so the commits are the points where a kill can split old from new state.

1. The reference: one uninterrupted run on 2 sites x 30 demo files traces its commits (about 90: 64 ingest,
   8 validate, 3 partition, 7 train, 5 publish, 2 promote, 1 score) and keeps a copy of ``data/`` as it is before
   publishing.
2. The plan (:func:`kill_plan`, ``random.Random(PLAN_SEED)``): one commit drawn in each step plus one more before
   publishing and two more after training: 10 points, in run order; every other file commit is killed
   *mid-write* (the temporary file truncated to half first), the others just before the rename.
3. The points before publishing are killed in sequence on one project: run, killed at point 1; re-run (every
   step again, nothing cached), killed at point 2; ... ; a last re-run completes. Each re-run thus completes the
   step the previous kill interrupted, and the outputs of the steps it completed are compared with the
   reference's right at its own kill. (Separate projects would need a federated training per point: ~20 s each.)
4. Each point after training gets its own project, started from the reference's copy of ``data/``: killed, then
   re-run from the killed step as the Prefect pipeline's re-run does (steps before are served from its cache:
   their outputs are checked to be untouched; training runs again when the model it produced is no longer
   complete, as the training cache decides).
5. The real Prefect pipeline (``bearing run`` in a subprocess, its own PREFECT_HOME) is killed once, in the
   middle of publishing, and re-run; its outputs equal the reference's (which also shows that
   :mod:`pipeline_chain` does what the pipeline does).

After every kill: every visible Parquet and JSON file under ``data/`` reads completely, every model directory
loads (weights checked against their SHA-256), every version with ``COMPLETE`` has all its files with their
recorded hashes, and ``latest`` (when present) resolves to a complete version that loads. After every re-run:
features, quarantine, samples, dataset.json, the validation report, the partition (manifest and client files),
the champion's weights (tensor for tensor, and byte for byte), config, scaler, metrics (but wall times), threshold
(but its creation time and version name), fingerprint and scores (but the version name) equal the reference's:
training is bit-reproducible across processes (seeded clients, replies aggregated in order), no tolerance is
needed for the chain. The real Prefect pipeline's re-run (5.) is held to 1e-4 (relative) on what training produced:
once in about seven CI runs its first layer's weights came out up to 1e-6 off, every other tensor bit-identical
(not reproduced in 20 runs on an idle or loaded machine; cause not found). Leftovers are only hidden temporary entries (``.*.tmp``, ``.*.staging-*``, ``.*.old-*``,
``.validation.build-*``) and training directories that were never published (no ``COMPLETE``): nothing reads
them, nothing deletes them either (only ingest clears ``.*.tmp`` files in its output directory).

The plan with ``PLAN_SEED`` = 8 and the writers as they are (the table the issue asks for):

| fault | where | outcome |
|---|---|---|
| SIGKILL mid-write | ingest #25 (first run): a samples file | 24 whole samples files, no table yet; next run re-ingests all, equal |
| SIGKILL before rename | ingest #30 (its re-run): a samples file | same |
| SIGKILL mid-write | validate #6: report.json in the report build directory | ingest outputs whole, no report (build dir hidden); equal after re-run |
| SIGKILL before rename | partition #2: client_1.parquet | no manifest yet, client_0 readable; equal after re-run |
| SIGKILL mid-write | train #2: scaler.json in the model staging directory | no model visible; re-run trains, equal weights |
| SIGKILL before rename | publish #1: fingerprint.json in the version staging directory | training output intact, no version; equal after re-run |
| SIGKILL mid-write | publish #3: COMPLETE in the staging directory | same |
| SIGKILL before rename | promote #1: promotion.json | version complete, no ``latest``; re-run promotes, equal |
| SIGKILL before rename | promote #2: the ``latest`` swap | ``latest`` absent (never partial); re-run promotes, equal |
| SIGKILL mid-write | score #1: scores.parquet | no scores file (half-written temp hidden); re-run scores, equal |
| SIGKILL (real Prefect pipeline) | ``bearing run``, publish: between the two renames of the version swap | training output set aside, no version, no ``latest``; re-run retrains (training cache sees the model gone), outputs equal |
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pipeline_chain as chain
import pyarrow.parquet as pq
import pytest
import torch

from bearing_core.fingerprint import sha256_file
from bearing_core.io import OUTPUT_MARKER
from bearing_core.model_io import (
    CONFIG_FILE,
    SCALER_FILE,
    WEIGHTS_FILE,
    load_model,
    save_model,
)
from bearing_core.partition.writer import MANIFEST_FILE, load_manifest
from bearing_core.registry import COMPLETE_FILE, LATEST, is_complete, resolve_model
from bearing_core.threshold import THRESHOLD_FILE, load_threshold

REPO = Path(__file__).resolve().parents[2]
CHAIN = Path(chain.__file__).resolve()
PLAN_SEED = 8  # issue #8
DATASET = Path("data") / "processed" / chain.RAW_DIR.name
MODELS = Path("data") / "models"
REGISTRY = MODELS / chain.RAW_DIR.name
"""The registry of the demo dataset's models (one registry per dataset): its versions and its ``latest``."""
BEFORE_PUBLISH = chain.STAGES[: chain.STAGES.index("publish")]
AFTER_TRAIN = chain.STAGES[chain.STAGES.index("publish") :]
EXTRA_BEFORE_PUBLISH, EXTRA_AFTER_TRAIN = 1, 2
LOCK_FILES = {".ingest.lock", ".pipeline.lock", ".registry.lock"}
PERMANENT_HIDDEN = {*LOCK_FILES, OUTPUT_MARKER}
"""Hidden files that belong to a directory (locks, the output marker of a model directory), not leftovers."""
HIDDEN_TEMPORARY = re.compile(r"\..+\.(tmp|staging-\w+|old-\w+|build-\w+)")
"""Names of the temporary entries a killed writer leaves: atomic files, model/version/report directories."""
RANDOM_PARTS = (
    (re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}"), "<version>"),
    (re.compile(r"\.(staging|old|build)-\w+"), r".\1-*"),
)


# ------------------------------------------------------------------------------------------------- the kill plan


@dataclass(frozen=True)
class KillPoint:
    """One commit of the reference run: the ``call``-th counted ``os.replace`` of ``stage``."""

    stage: str
    call: int
    target: str
    mid_write: bool

    def label(self) -> str:
        how = "mid-write" if self.mid_write else "before the rename"
        return f"{self.stage} #{self.call} ({pattern(self.target)}, {how})"


def pattern(target: str) -> str:
    """``target`` with its per-run parts (version names, random suffixes of temporary directories) generalised."""
    for regex, replacement in RANDOM_PARTS:
        target = regex.sub(replacement, target)
    return target


def kill_plan(trace: Sequence[dict[str, Any]], seed: int = PLAN_SEED) -> list[KillPoint]:
    """The kill points (module docstring, 2.): one commit per step plus extras, in run order."""
    rng = random.Random(seed)
    chosen: list[dict[str, Any]] = []
    for group, extra in ((BEFORE_PUBLISH, EXTRA_BEFORE_PUBLISH), (AFTER_TRAIN, EXTRA_AFTER_TRAIN)):
        calls = [c for c in trace if c["stage"] in group]
        picked = [rng.choice([c for c in calls if c["stage"] == stage]) for stage in group]
        picked += rng.sample([c for c in calls if c not in picked], extra)
        chosen += sorted(picked, key=calls.index)
    points, mid_write = [], True
    for c in chosen:
        points.append(KillPoint(c["stage"], c["call"], c["target"], mid_write=mid_write and c["file"]))
        mid_write ^= c["file"]
    return points


# --------------------------------------------------------------------------------------------------- running


def _env() -> dict[str, str]:
    """The subprocess environment: this checkout importable, Prefect settings from the project (none inherited)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # a loaded CI machine starts it slowly
    return env


def run_script(command: str, project: Path, *options: str, killed: bool) -> list[dict[str, Any]]:
    """Run ``pipeline_chain.py COMMAND PROJECT OPTIONS`` (traced); assert it was SIGKILLed, or exited 0; return
    the trace. Whatever the run left running (Ray's processes, Prefect's server) is killed with it.

    The output goes to a log file, not a pipe: a server the run started would hold the pipe open after the kill.
    """
    run = len(list(project.glob("run-*.log")))
    trace, log = project / f"trace-{run}.jsonl", project / f"run-{run}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(CHAIN), command, str(project), "--trace", str(trace), *options],
            cwd=project,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=900)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    expected = -signal.SIGKILL if killed else 0
    tail = log.read_text(errors="replace")[-4000:]
    assert proc.returncode == expected, f"{command} {' '.join(options)}: exit {proc.returncode}\n{tail}"
    return [json.loads(line) for line in trace.read_text().splitlines()] if trace.is_file() else []


def run_chain(project: Path, *options: str, kill: KillPoint | None = None) -> list[dict[str, Any]]:
    """The chain in ``project``, SIGKILLed at ``kill`` (asserting it died at that very commit) or to the end."""
    if kill is None:
        return run_script("chain", project, *options, killed=False)
    kill_options = ["--kill-at", f"{kill.stage}:{kill.call}", *(["--mid-write"] if kill.mid_write else [])]
    trace = run_script("chain", project, *options, *kill_options, killed=True)
    last = trace[-1]
    assert (last["stage"], last["call"], pattern(last["target"])) == (kill.stage, kill.call, pattern(kill.target))
    return trace


def new_project(path: Path, raw: Path) -> Path:
    """A project directory whose ``raw/`` is the reference's raw data (read only: linked, not copied)."""
    path.mkdir(parents=True)
    (path / "raw").symlink_to(raw, target_is_directory=True)
    return path


# ------------------------------------------------------------------------------------------ outputs and checks


def _visible(root: Path) -> Iterator[Path]:
    """Files under ``root`` whose path has no hidden component (temporary entries are hidden); symlinks not
    followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        yield from (Path(dirpath) / f for f in filenames if not f.startswith("."))


def assert_readable_as_complete(project: Path) -> None:
    """No visible output is half-written, every model loads, ``latest`` names a whole version (docstring)."""
    for path in _visible(project / "data"):
        if path.suffix == ".parquet":
            pq.read_table(path)  # a truncated Parquet file has no footer: this raises
        elif path.suffix == ".json" or path.name == COMPLETE_FILE:
            json.loads(path.read_text(encoding="utf-8"))
    models = project / MODELS
    registries = [d for d in models.iterdir() if d.is_dir() and not d.name.startswith(".")] if models.is_dir() else []
    assert [d.name for d in registries] in ([], [REGISTRY.name]), registries  # one dataset, one registry
    for folder in registries[0].iterdir() if registries else ():
        if folder.name.startswith(".") or folder.is_symlink() or not folder.is_dir():
            continue
        if (folder / CONFIG_FILE).is_file():
            load_model(folder)  # weights verified against config.json's SHA-256
        if is_complete(folder):
            files = json.loads((folder / COMPLETE_FILE).read_text(encoding="utf-8"))["files"]
            assert {name: sha256_file(folder / name) for name in files} == files, folder
            load_threshold(folder)
    assert not (models / LATEST).is_symlink() and not (models / LATEST).exists()  # no registry-wide champion
    if (project / REGISTRY / LATEST).is_symlink() or (project / REGISTRY / LATEST).exists():
        champion = resolve_model(models, LATEST, REGISTRY.name)  # raises unless it names a complete version
        load_model(champion)
        load_threshold(champion)
    features = project / DATASET / "features.parquet"
    if features.is_file():
        for rel in pq.read_table(features, columns=["path"]).column("path").to_pylist():
            assert (project / DATASET / "samples" / f"{rel}.parquet").is_file(), rel
    manifest = project / DATASET / "clients" / "natural" / MANIFEST_FILE
    if manifest.is_file():
        for client in load_manifest(manifest).clients:
            assert sha256_file(manifest.parent / client.file) == client.sha256, client.file


def outputs(project: Path, stages: Sequence[str] = chain.STAGES) -> dict[str, Any]:
    """The outputs of ``stages`` in comparable form (module docstring), per-run parts left out."""
    dataset = project / DATASET
    out: dict[str, Any] = {}
    if "ingest" in stages:
        out["samples"] = {p.relative_to(dataset).as_posix(): sha256_file(p) for p in _visible(dataset / "samples")}
        out["features"] = pd.read_parquet(dataset / "features.parquet")
        out["dataset.json"] = json.loads((dataset / "dataset.json").read_text())
    if "validate" in stages:
        out["quarantine"] = pd.read_parquet(dataset / "quarantine.parquet")
        report = json.loads((dataset / "validation" / "report.json").read_text())
        out["validation report"] = {k: v for k, v in report.items() if k not in ("target", "docs_index")}
    if "partition" in stages:
        clients = dataset / "clients" / "natural"
        out["partition manifest"] = json.loads((clients / MANIFEST_FILE).read_text())
        out["client files"] = {p.name: sha256_file(p) for p in sorted(clients.glob("client_*.parquet"))}
    if "score" in stages:
        champion = resolve_model(project / MODELS, LATEST, REGISTRY.name)
        state = torch.load(champion / WEIGHTS_FILE, weights_only=True)
        out["weights"] = {name: (tuple(t.shape), t.numpy().tobytes()) for name, t in state.items()}
        out["weights.pt"] = sha256_file(champion / WEIGHTS_FILE)
        for name in (CONFIG_FILE, SCALER_FILE, "fingerprint.json"):
            out[name] = json.loads((champion / name).read_text())
        threshold = json.loads((champion / THRESHOLD_FILE).read_text())
        assert threshold.pop("model_version") == champion.name
        out["threshold"] = {k: v for k, v in threshold.items() if k != "created"}
        out["metrics"] = pd.read_parquet(champion / "metrics.parquet").drop(columns="wall_s")
        scores = pd.read_parquet(dataset / "scores.parquet")
        assert set(scores.pop("model_version")) == {champion.name}
        out["scores"] = scores
    return out


def assert_same_outputs(
    actual: dict[str, Any], expected: dict[str, Any], context: str, trained_rtol: float = 0.0
) -> None:
    """Outputs equal to the reference's; with ``trained_rtol`` > 0, what training produced (weights, their hash,
    the model's metrics and final figures, threshold, scores) within that relative tolerance, the rest exactly."""
    assert actual.keys() == expected.keys(), context
    for name, value in expected.items():
        if trained_rtol and name in TRAINED_OUTPUTS:
            _assert_close(actual[name], value, trained_rtol, f"{name} ({context})")
        elif isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(actual[name], value, obj=f"{name} ({context})")
        else:
            assert actual[name] == value, f"{name} differs from the uninterrupted run's ({context})"


TRAINED_OUTPUTS = frozenset({"weights", "weights.pt", CONFIG_FILE, "threshold", "metrics", "scores"})
"""The outputs :func:`outputs` reads that carry the trained weights' floating-point values (or their hash)."""


def _assert_close(actual: Any, expected: Any, rtol: float, where: str) -> None:
    """``actual`` equals ``expected`` but for floats (and float tensors) within ``rtol``; SHA-256 digests of the
    weights are not compared (the weights themselves are)."""
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=rtol, atol=rtol * 1e-3, obj=where)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key, value in expected.items():
            if not (key.endswith("sha256") or where.startswith("weights.pt")):
                _assert_close(actual[key], value, rtol, f"{where}[{key}]")
    elif isinstance(expected, tuple) and len(expected) == 2 and isinstance(expected[1], bytes):  # a tensor
        assert actual[0] == expected[0], f"{where}: shape {actual[0]} != {expected[0]}"
        np.testing.assert_allclose(
            np.frombuffer(actual[1], np.float32),
            np.frombuffer(expected[1], np.float32),
            rtol=rtol,
            atol=rtol * 1e-2,
            err_msg=where,
        )
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_close(a, e, rtol, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        assert actual == pytest.approx(expected, rel=rtol, abs=rtol * 1e-3, nan_ok=True), where
    elif not where.startswith("weights.pt"):
        assert actual == expected, where


def assert_only_unused_leftovers(project: Path) -> list[str]:
    """Entries under ``data/`` that a killed run left and that no reader uses: hidden temporaries and
    never-published training directories (no ``COMPLETE``). Asserts that nothing else is there; returns them."""
    found = []
    for dirpath, dirnames, filenames in os.walk(project / "data"):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(project).as_posix()
            if name in PERMANENT_HIDDEN:
                continue
            if name.startswith("."):
                assert HIDDEN_TEMPORARY.fullmatch(name), f"unexpected hidden entry {rel}"
                found.append(rel)
            elif (
                path.parent == project / REGISTRY and path.is_dir() and not path.is_symlink() and not is_complete(path)
            ):
                found.append(rel)  # a training run killed before publishing: never listed, never served
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return found


def snapshot_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every visible file under ``folder``, by relative path."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in _visible(folder)}


# ---------------------------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run: its project, commit trace, outputs, and ``data/`` as it was before publishing."""

    project: Path
    trace: list[dict[str, Any]]
    outputs: dict[str, Any]
    before_publish: Path

    @property
    def model_dir(self) -> str:
        """The trained (not yet published) model in :attr:`before_publish`, relative to a project."""
        registry = self.before_publish / "models" / REGISTRY.name
        (folder,) = [p for p in registry.iterdir() if not p.name.startswith(".")]
        return (REGISTRY / folder.name).as_posix()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    from bearing_core.synthetic import generate_demo

    project = tmp_path_factory.mktemp("reference")
    generate_demo(project / chain.RAW_DIR, sites=chain.SITES, files_per_site=chain.FILES_PER_SITE, seed=chain.DEMO_SEED)
    before_publish = tmp_path_factory.mktemp("before-publish") / "data"
    trace = run_chain(project, "--snapshot-before", f"publish:{before_publish}")
    assert_readable_as_complete(project)
    return Reference(project, trace, outputs(project), before_publish)


# ------------------------------------------------------------------------------------------------------- tests


@pytest.mark.e2e
def test_kill_plan_is_reproducible_and_covers_every_step(reference: Reference) -> None:
    plan = kill_plan(reference.trace)
    assert plan == kill_plan(reference.trace)  # reproducible: the seed alone decides
    assert plan != kill_plan(reference.trace, PLAN_SEED + 1)
    assert len(plan) == len(chain.STAGES) + EXTRA_BEFORE_PUBLISH + EXTRA_AFTER_TRAIN >= 10
    assert {p.stage for p in plan} == set(chain.STAGES)
    assert [chain.STAGES.index(p.stage) for p in plan] == sorted(chain.STAGES.index(p.stage) for p in plan)
    assert any(p.mid_write for p in plan if p.stage in BEFORE_PUBLISH)
    assert any(p.mid_write for p in plan if p.stage in AFTER_TRAIN)
    assert any(not p.mid_write for p in plan)
    # the uninterrupted run committed every output through os.replace, step by step
    assert [c["stage"] for c in reference.trace] == sorted(
        (c["stage"] for c in reference.trace), key=chain.STAGES.index
    )
    assert {pattern(c["target"]) for c in reference.trace if c["stage"] == "promote"} == {
        f"{REGISTRY.as_posix()}/<version>/promotion.json",
        f"{REGISTRY.as_posix()}/latest",
    }


@pytest.mark.e2e
def test_kills_before_publishing_are_each_completed_by_the_next_run(reference: Reference, tmp_path: Path) -> None:
    points = [p for p in kill_plan(reference.trace) if p.stage in BEFORE_PUBLISH]
    project = new_project(tmp_path / "project", reference.project / "raw")
    for point in points:
        run_chain(project, kill=point)
        assert_readable_as_complete(project)
        # the steps this run completed (redoing what the previous kill interrupted) match the reference
        done = chain.STAGES[: chain.STAGES.index(point.stage)]
        assert_same_outputs(outputs(project, done), outputs(reference.project, done), f"killed at {point.label()}")
    run_chain(project)
    assert_readable_as_complete(project)
    assert_same_outputs(outputs(project), reference.outputs, "after the kills " + ", ".join(p.label() for p in points))
    assert_only_unused_leftovers(project)


@pytest.mark.e2e
def test_kills_after_training_are_completed_by_a_rerun_from_the_killed_step(
    reference: Reference, tmp_path: Path
) -> None:
    points = [p for p in kill_plan(reference.trace) if p.stage in AFTER_TRAIN]
    dataset_before = snapshot_files(reference.before_publish / "processed")
    for i, point in enumerate(points):
        project = new_project(tmp_path / f"project-{i}", reference.project / "raw")
        shutil.copytree(reference.before_publish, project / "data", symlinks=True)
        run_chain(project, "--from", "publish", "--model-dir", reference.model_dir, kill=point)
        assert_readable_as_complete(project)
        # what the earlier steps wrote is untouched: the pipeline's re-run serves them from its cache
        after_kill = snapshot_files(project / "data" / "processed")
        assert {k: v for k, v in after_kill.items() if not k.endswith("/scores.parquet")} == dataset_before
        run_chain(project, "--from", point.stage, "--model-dir", reference.model_dir)
        assert_readable_as_complete(project)
        assert_same_outputs(outputs(project), reference.outputs, f"killed at {point.label()}")
        left = assert_only_unused_leftovers(project)
        assert all(Path(p).name.startswith(".") for p in left), f"{point.label()}: {left}"  # no training killed


@pytest.mark.e2e
def test_killed_prefect_pipeline_run_is_completed_by_the_next_run(reference: Reference, tmp_path: Path) -> None:
    project = new_project(tmp_path / "project", reference.project / "raw")
    # publishing set the trained model aside and was killed before renaming the new version into place
    # matched by training's save and publish's swap
    version_dir = rf"{REGISTRY.as_posix()}/\d{{8}}T\d{{6}}Z-[0-9a-f]{{8}}"
    trace = run_script(
        "bearing",
        project,
        "--kill-target",
        version_dir,
        "--kill-match",
        "2",
        "--",
        *chain.BEARING_RUN_ARGS,
        killed=True,
    )
    assert pattern(trace[-2]["target"]).startswith(f"{REGISTRY.as_posix()}/.<version>.old-*/")
    assert_readable_as_complete(project)
    assert not (project / REGISTRY / LATEST).exists()
    set_aside = [p for p in (project / REGISTRY).glob(".*.old-*/*") if (p / WEIGHTS_FILE).is_file()]
    assert len(set_aside) == 1 and not (project / REGISTRY / set_aside[0].name).exists()

    run_script("bearing", project, "--", *chain.BEARING_RUN_ARGS, killed=False)
    assert_readable_as_complete(project)
    # Within 1e-4: one CI run in about seven, this re-run's first-layer weights came out up to 1e-6 (2.6e-5
    # relative) off the reference's, every other tensor bit-identical; not reproduced in 20 runs here, cause not found
    rerun = outputs(project)
    assert_same_outputs(rerun, reference.outputs, "Prefect pipeline killed while publishing, re-run", trained_rtol=1e-4)
    differing = sorted(k for k, v in reference.outputs["weights"].items() if rerun["weights"][k] != v)
    if differing:  # within tolerance, but not bit-identical: leave what a diagnosis needs in the test report
        logs = "".join(p.read_text(errors="replace") for p in sorted(project.glob("run-*.log")))
        notes = [line for line in logs.splitlines() if re.search(r"retr|warning|timed? ?out|late", line, re.I)]
        warnings.warn(
            f"Prefect re-run's weights not bit-identical to the reference's: {differing}; log lines: {notes[-20:]}",
            stacklevel=1,
        )
    champion = resolve_model(project / MODELS, LATEST, REGISTRY.name)
    assert champion.name != set_aside[0].name  # trained again: the training cache saw its model gone
    assert (project / "reports" / chain.RAW_DIR.name / champion.name / "report.md").is_file()


# ------------------------------------------------------------- fixes found by the kill tests (unit tests)


def test_identical_weights_are_saved_byte_for_byte_identical(tmp_path: Path) -> None:
    """torch.save to a path names the archive's inner folder after the (random) temporary file name: the same
    weights got another SHA-256 on every save, so a re-trained model never matched its uninterrupted twin."""
    from bearing_core.autoencoder import ModelConfig, build_model
    from bearing_core.scaling import Scaler

    cfg = ModelConfig(n_inputs=3, hidden=(2,))
    scaler = Scaler(mean=np.zeros(3), std=np.ones(3))
    saved = [save_model(tmp_path / name, build_model(cfg, seed=1), cfg, scaler, ["a", "b", "c"]) for name in "xy"]
    assert (saved[0] / WEIGHTS_FILE).read_bytes() == (saved[1] / WEIGHTS_FILE).read_bytes()
    assert (saved[0] / CONFIG_FILE).read_bytes() == (saved[1] / CONFIG_FILE).read_bytes()
    assert not list(tmp_path.glob(".*"))  # no staging directory left


def test_latest_never_resolves_to_a_hidden_staging_directory(tmp_path: Path) -> None:
    """Scoring's resolver fell back to the newest model directory without ``latest``, and had to skip a killed
    writer's hidden staging directory. The registry's resolver (the only one now) has no fallback: without a
    champion ``latest`` is an error, and a hidden directory named explicitly is refused."""
    from bearing_core.autoencoder import ModelConfig, build_model
    from bearing_core.scaling import Scaler

    cfg = ModelConfig(n_inputs=3, hidden=(2,))
    registry = tmp_path / "demo"
    model = save_model(registry / "v1", build_model(cfg, seed=1), cfg, Scaler(np.zeros(3), np.ones(3)), ["a", "b", "c"])
    staging = registry / ".v2.staging-abc123"
    shutil.copytree(model, staging)  # newer, complete model files, but a staging directory
    with pytest.raises(FileNotFoundError, match="no champion for dataset 'demo'"):
        resolve_model(tmp_path, LATEST, "demo")
    with pytest.raises(FileNotFoundError, match="registry work directory"):
        resolve_model(tmp_path, staging)
