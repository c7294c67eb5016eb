"""The pipeline's steps as a script that can SIGKILL itself at a chosen write: the kill-point tests' subject.

``python pipeline_chain.py chain PROJECT [options]`` runs, with ``PROJECT`` as the working directory (so
``data/processed`` and ``data/models`` resolve there, as in a pipeline run), the library functions the Prefect
flows call, in the flows' order and with their arguments (flows/pipeline.py, flows/{ingest,validate,train,
score}.py, tasks/*.py): ingest -> validate -> partition -> federated training + centralized baseline -> publish
-> promote -> score. Prefect itself is left out: a kill test needs a dozen runs, and the Prefect server and task
orchestration would cost more than the steps. ``python pipeline_chain.py bearing PROJECT [options] -- ARGS`` runs
the real CLI (``bearing ARGS``, e.g. ``run ...``: the Prefect pipeline) under the same kill switch.

Every output of the steps is committed by an ``os.replace`` (atomic files, model and version directories,
``latest``). The script wraps ``os.replace`` and counts the calls whose destination lies in the project's output
directories (``data/``, ``reports/``; not Ray's, Flower's or Prefect's homes), per step:

* ``--trace FILE`` appends one JSON line per counted call: ``{"stage", "call", "target", "file"}`` (``call``
  counts within the step, 1-based; ``target`` is relative to the project; ``file``: whether a file, rather than a
  directory or a symlink, is renamed);
* ``--kill-at STAGE:N`` sends SIGKILL to the process itself at the N-th counted call of step STAGE, *before* the
  rename: the temporary file or directory exists, the target is untouched. ``--kill-target REGEX`` does the same
  at the ``--kill-match``-th counted call whose target matches (for ``bearing``, whose steps are unlabelled);
* ``--mid-write``: the temporary file is first truncated to half its size, the state a kill in the middle of
  writing its bytes leaves.

A re-run after a kill resumes like the Prefect pipeline's re-run, whose steps are cached on the content of their
inputs: ``--from STAGE`` skips the steps before STAGE (the caller checks that their outputs are untouched, which is
what keeps those caches valid) and ``--model-dir`` names the trained model they produced. Training is skipped
while that model is complete by the rule of the pipeline's training cache (:func:`tasks.train._model_complete`)
and runs otherwise, whatever STAGE says (a publication killed half-way may have moved the model aside); a new
model is then published, promoted and scored. ``--snapshot-before STAGE:DIR`` copies ``data/`` to ``DIR`` when
STAGE starts: the state later runs resume from.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bearing_core.alarms import AlarmConfig

RAW_DIR = Path("raw") / "demo"
"""Raw demo data, relative to the project directory."""
SITES = 2
FILES_PER_SITE = 30
DEMO_SEED = 3
SEED = 0
ROUNDS = 2
LOCAL_EPOCHS = 1
TRAIN_FRACTION = 0.5
ALARMS = AlarmConfig(persistence_h=0.5, fraction=1.0, warmup_h=0.0)
THRESHOLD_METHOD = "max"
THRESHOLD_QUANTILE = 0.99
THRESHOLD_MARGIN = 0.5
OUTPUT_DIRS = ("data", "reports")
STAGES = ("ingest", "validate", "partition", "train", "publish", "promote", "score")
PIPELINE_STAGE = "pipeline"
"""The label of every counted call under ``bearing`` (the CLI's steps are not labelled)."""
BEARING_RUN_ARGS = (
    "run",
    "--raw-dir",
    str(RAW_DIR),
    "--rounds",
    str(ROUNDS),
    "--local-epochs",
    str(LOCAL_EPOCHS),
    "--train-fraction",
    str(TRAIN_FRACTION),
    "--seed",
    str(SEED),
    "--layout",
    "snapshot",
    "--activation",
    "elu",
    "--alarm-persistence-h",
    str(ALARMS.persistence_h),
    "--alarm-fraction",
    str(ALARMS.fraction),
    "--alarm-warmup-h",
    str(ALARMS.warmup_h),
    "--workers",
    "1",
    "--threshold-method",
    THRESHOLD_METHOD,
    "--threshold-quantile",
    str(THRESHOLD_QUANTILE),
    "--threshold-margin",
    str(THRESHOLD_MARGIN),
)
"""``bearing`` arguments of the Prefect pipeline run that :func:`run_chain` mirrors step for step."""


class KillSwitch:
    """Wraps ``os.replace``: counts renames into the outputs per stage, traces them, SIGKILLs at the chosen one."""

    def __init__(
        self,
        root: Path,
        kill_at: tuple[str, int] | None = None,
        kill_target: str | None = None,
        kill_match: int = 1,
        mid_write: bool = False,
        trace: Path | None = None,
    ) -> None:
        self.root, self.kill_at, self.kill_match, self.mid_write, self.trace = (
            root,
            kill_at,
            kill_match,
            mid_write,
            trace,
        )
        self.kill_target = re.compile(kill_target) if kill_target is not None else None
        self.outputs = tuple(root / name for name in OUTPUT_DIRS)
        self.stage = PIPELINE_STAGE
        self.calls: Counter[str] = Counter()
        self.matches = 0
        self._replace: Callable[..., None] = os.replace

    def install(self) -> None:
        """Route every ``os.replace`` of this process through :meth:`replace`."""
        os.replace = self.replace  # type: ignore[assignment]

    def replace(self, src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        target = Path(os.path.abspath(dst))
        if any(target.is_relative_to(folder) for folder in self.outputs):
            self.calls[self.stage] += 1
            rel = target.relative_to(self.root).as_posix()
            source = Path(src)
            is_file = source.is_file() and not source.is_symlink()
            if self.trace is not None:
                line = {"stage": self.stage, "call": self.calls[self.stage], "target": rel, "file": is_file}
                with open(self.trace, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(line) + "\n")
            matched = self.kill_target is not None and self.kill_target.fullmatch(rel) is not None
            self.matches += matched
            if self.kill_at == (self.stage, self.calls[self.stage]) or (matched and self.matches == self.kill_match):
                if self.mid_write and is_file:
                    os.truncate(source, source.stat().st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        self._replace(src, dst, *args, **kwargs)


def run_chain(
    switch: KillSwitch, start: str = STAGES[0], model_dir: Path | None = None, snapshot: tuple[str, Path] | None = None
) -> None:
    """The pipeline's steps from ``start`` on (module docstring), with the pipeline's parameters."""
    from bearing_core.config import DataPaths, IngestConfig
    from bearing_core.federated.config import FederatedConfig, SimulationResources
    from bearing_core.federated.simulation import (
        model_version,
        partition_params,
        run_centralized,
        run_federated,
    )
    from bearing_core.fingerprint import sha256_file
    from bearing_core.ingest import ingest_directory
    from bearing_core.inputs import DATASET_FILE, InputConfig
    from bearing_core.locking import REGISTRY_LOCK_FILE, exclusive_lock
    from bearing_core.partition.build import partition_dataset
    from bearing_core.partition.writer import MANIFEST_FILE, scheme_dir
    from bearing_core.registry import (
        LATEST,
        dataset_name,
        holdout_data,
        promote_if_better,
        publish_model,
        resolve_model,
    )
    from bearing_core.scoring import update_scores
    from bearing_core.validation import ValidationConfig, validate_dataset

    paths = DataPaths()
    dataset = IngestConfig(raw_dir=RAW_DIR).resolved_out_dir(paths)
    manifest = scheme_dir(dataset, "natural") / MANIFEST_FILE
    registry = paths.models_root / dataset_name(dataset)  # the dataset's registry, as in flows/train.py
    todo = STAGES[STAGES.index(start) :]

    def begin(stage: str) -> bool:
        """Label the counted calls with ``stage``; take the snapshot due before it; True when it is to run."""
        switch.stage = stage
        if snapshot is not None and snapshot[0] == stage:
            shutil.copytree(paths.processed_root.parent, snapshot[1], symlinks=True)
        return stage in todo

    if begin("ingest"):
        ingest_directory(IngestConfig(raw_dir=RAW_DIR, workers=1))
    if begin("validate"):
        validate_dataset(dataset, ValidationConfig()).raise_for_errors()
    clients = len(json.loads((dataset / DATASET_FILE).read_text(encoding="utf-8"))["sites"])
    if begin("partition"):
        inputs = InputConfig(feature="mean_abs", train_fraction=TRAIN_FRACTION)
        partition_dataset(dataset, "natural", clients, SEED, inputs, partition_params("natural", clients))
    manifest_sha = sha256_file(manifest)
    # as flows/train.py builds it: the threshold is calibrated on the alarm rule's statistic
    fed_cfg = FederatedConfig(
        rounds=ROUNDS,
        local_epochs=LOCAL_EPOCHS,
        seed=SEED,
        num_clients=clients,
        threshold_method=THRESHOLD_METHOD,
        threshold_quantile=THRESHOLD_QUANTILE,
        threshold_margin=THRESHOLD_MARGIN,
        calibrate_persistence_h=ALARMS.persistence_h,
        calibrate_fraction=ALARMS.fraction,
        calibrate_warmup_h=ALARMS.warmup_h,
    )
    begin("train")
    if model_dir is None or not _trained(model_dir):
        model_dir = registry / model_version(manifest_sha, fed_cfg)
        run_federated(manifest.parent, fed_cfg, model_dir, resources=SimulationResources(), baseline=False)
        run_centralized(manifest.parent, fed_cfg, model_dir)
        todo = STAGES  # a new model: publish, promote and score it whatever the first step was
    if begin("publish"):
        with exclusive_lock(paths.models_root / REGISTRY_LOCK_FILE):
            publish_model(model_dir, manifest, partition_manifest_sha256=manifest_sha, models_root=paths.models_root)
    if begin("promote"):
        holdout = holdout_data(manifest)
        with exclusive_lock(paths.models_root / REGISTRY_LOCK_FILE):
            promote_if_better(registry / model_dir.name, holdout)
    if begin("score"):
        update_scores(dataset, resolve_model(paths.models_root, LATEST, dataset.name), None, ALARMS)


def _trained(model_dir: Path) -> bool:
    """True when ``model_dir`` would be served by the pipeline's training cache (weights, config, threshold and
    metrics with the centralized baseline's rows)."""
    from tasks.train import _model_complete

    return _model_complete(str(model_dir), need_centralized=True)


def _stage_and_number(text: str) -> tuple[str, int]:
    stage, _, number = text.rpartition(":")
    if stage not in STAGES or not number.isdigit():
        raise argparse.ArgumentTypeError(f"expected STAGE:N with STAGE in {', '.join(STAGES)}, got {text!r}")
    return stage, int(number)


def _stage_and_dir(text: str) -> tuple[str, Path]:
    stage, _, folder = text.partition(":")
    if stage not in STAGES or not folder:
        raise argparse.ArgumentTypeError(f"expected STAGE:DIR with STAGE in {', '.join(STAGES)}, got {text!r}")
    return stage, Path(folder).resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    chain = commands.add_parser("chain", help="the pipeline's library calls")
    bearing = commands.add_parser("bearing", help="the bearing CLI: ARGS after --")
    for sub in (chain, bearing):
        sub.add_argument("project", type=Path, help="project directory (working directory of the run)")
        sub.add_argument("--kill-target", help="SIGKILL at a counted call whose target matches this regex")
        sub.add_argument("--kill-match", type=int, default=1, help="... at its N-th match (default: the first)")
        sub.add_argument("--mid-write", action="store_true", help="truncate the temporary file to half first")
        sub.add_argument("--trace", type=Path, help="append one JSON line per counted call to this file")
    chain.add_argument("--kill-at", type=_stage_and_number, help="STAGE:N, SIGKILL at the N-th counted call of STAGE")
    chain.add_argument("--from", dest="start", choices=STAGES, default=STAGES[0], help="first step to run")
    chain.add_argument("--model-dir", type=Path, help="the trained model of an earlier run (with --from)")
    chain.add_argument("--snapshot-before", type=_stage_and_dir, help="STAGE:DIR, copy data/ to DIR first")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])

    root = args.project.resolve()
    os.chdir(root)
    from bearing_core.env import configure_environment

    configure_environment(root)
    switch = KillSwitch(
        root,
        kill_at=getattr(args, "kill_at", None),
        kill_target=args.kill_target,
        kill_match=args.kill_match,
        mid_write=args.mid_write,
        trace=args.trace.resolve() if args.trace else None,
    )
    switch.install()
    if args.command == "bearing":
        from cli.main import main as bearing_main

        return bearing_main(argv[cut + 1 :])
    run_chain(switch, args.start, args.model_dir, args.snapshot_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
