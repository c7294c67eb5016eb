"""The whole pipeline flow on small demo data: outputs, content caching, incremental re-runs, overlapping runs,
retry of a failed flow run, validation failures and artifacts.

One Prefect test harness (and one result store) for the module; the tests share one project directory and run in
file order, each starting from the state the previous one left (as successive pipeline runs would).
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers.ims_files import write_ims_file
from helpers.locks import lock_held_elsewhere
from helpers.prefect_runs import NIGHTLY_OVERRIDES, project_under_harness, task_run_states

from bearing_core.locking import LockTimeout, exclusive_lock
from bearing_core.synthetic import generate_demo, load_ground_truth

pytestmark = pytest.mark.e2e  # runs the pipeline flow (Prefect test server), several times per test

REPO = Path(__file__).resolve().parents[1]
PARAMS: dict[str, Any] = {
    "raw_dir": "raw/demo",
    "layout": "snapshot",  # these tests are about orchestration; the per-bearing default: the alternating-runs test
    "rounds": 2,
    "local_epochs": 2,
    "train_fraction": 0.3,
    "workers": 1,
}
STEPS = (
    "ingest",
    "validate",
    "partition",
    "train-federated",
    "train-centralized",
    "publish-model",
    "promote-if-better",
    "score",
    "report",
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project directory (the cwd: data/, reports/ go there) with 2 demo sites x 30 files, under a harness."""
    root = tmp_path_factory.mktemp("project")
    generate_demo(root / "raw" / "demo", sites=2, files_per_site=30, seed=1, workers=1)
    with project_under_harness(root):
        yield root


def run_pipeline(**overrides: Any) -> tuple[Any, dict[str, list[str]], float]:
    """Run the pipeline flow with these settings (flat names, as the flags: ``rounds=3``); return its final state,
    the task-run states of the run, and its wall time."""
    from bearing_core.params import nested
    from flows.pipeline import pipeline_flow

    start = time.perf_counter()
    state = pipeline_flow(**nested({**PARAMS, **overrides}), return_state=True)
    wall = time.perf_counter() - start
    return state, task_run_states(state.state_details.flow_run_id), wall


def last_states(states: dict[str, list[str]]) -> dict[str, str]:
    """Each task's final state name (its latest run)."""
    return {name: runs[-1] for name, runs in states.items()}


@pytest.fixture(scope="module")
def overlapping(project: Path) -> list[tuple[Any, dict[str, list[str]], float]]:
    """Two pipeline runs on the same raw data started at the same moment (nightly + manual run)."""
    results: list[Any] = [None, None]
    barrier = threading.Barrier(2)
    # Threads do not inherit context variables: give each a copy of this one (the harness's API URL and the
    # module's result storage live in Prefect's settings context).
    contexts = [contextvars.copy_context() for _ in range(2)]

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = contexts[i].run(run_pipeline)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    return results


def test_overlapping_runs_are_serialised_and_the_later_one_is_served_from_cache(overlapping, project) -> None:
    from bearing_core.config import IngestConfig
    from bearing_core.ingest import ingest_directory

    for result in overlapping:
        assert not isinstance(result, BaseException), result
        assert result[0].is_completed(), result[0]
    cold, warm = sorted(overlapping, key=lambda r: sum(s == "Cached" for runs in r[1].values() for s in runs))
    # The run that got the dataset lock first did every step; the other waited for it and then found all cached.
    assert last_states(cold[1]) == {step: "Completed" for step in STEPS}
    assert last_states(warm[1]) == {step: "Cached" for step in STEPS}
    assert cold[0].result() == warm[0].result()

    # Outputs are consistent: the features are those of a single ingest of the same files.
    single = ingest_directory(IngestConfig(raw_dir="raw/demo", out_dir=str(project / "single"), workers=1))
    assert single.ingested == 60
    pd.testing.assert_frame_equal(
        pd.read_parquet("data/processed/demo/features.parquet"), pd.read_parquet(project / "single/features.parquet")
    )
    latest = Path("data/models/demo/latest")  # the demo dataset's champion, in its own registry
    assert latest.is_symlink() and (latest.resolve() / "COMPLETE").is_file()
    assert len(pd.read_parquet("data/processed/demo/scores.parquet")) == 60
    assert not list(Path("data/models").glob("**/.*staging*"))  # no half-published version left behind


def test_end_to_end_outputs_report_and_artifacts(overlapping, project: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    out = overlapping[0][0].result()
    dataset = Path("data/processed/demo")
    for name in ("features.parquet", "quarantine.parquet", "dataset.json", "validation/index.html", "scores.parquet"):
        assert (dataset / name).is_file(), name
    version = Path("data/models/demo/latest").resolve()
    assert out["champion (latest)"] == f"data/models/demo/{version.name}"
    for name in ("COMPLETE", "MODEL_CARD.md", "threshold.json", "weights.pt", "metrics.parquet"):
        assert (version / name).is_file(), name
    threshold = json.loads((version / "threshold.json").read_text())["threshold"]
    assert math.isfinite(threshold) and threshold > 0
    assert float(out["threshold"]) == pytest.approx(threshold, rel=1e-5)

    report_dir = Path("reports/demo") / version.name
    for name in ("report.md", "summary.json", "scores.png", "metrics.png", "detection.csv"):
        assert (report_dir / name).is_file(), name
    markdown = (report_dir / "report.md").read_text()
    assert "scores.png" in markdown and "metrics.png" in markdown
    assert str(project) not in markdown and "/tmp/" not in markdown  # relative links only
    detection = pd.read_csv(report_dir / "detection.csv")
    assert set(detection["site"]) == {"site_1", "site_2"}
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["threshold"] == pytest.approx(threshold)
    faulty = sum(t.faulty for t in load_ground_truth("raw/demo/ground_truth.json").sites.values())
    assert faulty == 1  # the demo's last site stays healthy
    assert summary["faulty_sites"] == faulty and 0 <= summary["detected"] <= faulty
    assert summary["false_alarm_events"] >= 0
    assert out["detection"] == (
        f"{summary['detected']} of {faulty} injected defects alarmed after onset, "
        f"{summary['false_alarm_events']} false alarm events"
    )

    keys = {
        "report-demo",
        "detection-demo",
        "alarms-demo",
        "validation-demo",
        "validation-demo-checks",
        "train-demo-natural-fedavg-metrics",
        "train-demo-natural-fedavg-summary",
    }
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=sorted(keys))))
    assert {a.key for a in artifacts} == keys
    report = next(a for a in artifacts if a.key == "report-demo")
    # the demo stops for hours between runs, like the real IMS tests: at most the timeline-gap warning
    assert report.type == "markdown" and re.search(
        r"Validation PASSED( with warnings)?: data/processed/demo", report.data
    )
    for artifact in artifacts:  # no absolute machine paths in what the UI shows
        assert str(project) not in f"{artifact.data} {artifact.description}", artifact.key
    alarms = next(a for a in artifacts if a.key == "alarms-demo")
    assert {row["site"] for row in json.loads(alarms.data)} == {"site_1", "site_2"}


def test_second_run_with_nothing_changed_skips_every_step(overlapping) -> None:
    state, states, wall = run_pipeline()
    assert state.is_completed()
    assert last_states(states) == {step: "Cached" for step in STEPS}
    assert state.result() == overlapping[0][0].result()
    cold = min(overlapping, key=lambda r: sum(s == "Cached" for runs in r[1].values() for s in runs))[2]  # did all
    print(f"\npipeline on 2 sites x 30 files: cold {cold:.1f} s, cached {wall:.1f} s ({100 * wall / cold:.0f} %)")


def test_changing_rounds_retrains_without_reingesting(overlapping) -> None:
    state, states, _ = run_pipeline(rounds=3)
    assert state.is_completed()
    final = last_states(states)
    assert {step: final[step] for step in ("ingest", "validate", "partition")} == dict.fromkeys(
        ("ingest", "validate", "partition"), "Cached"
    )
    assert final["train-federated"] == final["train-centralized"] == final["publish-model"] == "Completed"
    assert state.result()["trained model"] != overlapping[0][0].result()["trained model"]


def test_one_new_raw_file_is_the_only_file_parsed_and_dependants_rerun(overlapping, project: Path) -> None:
    # `overlapping` (module-scoped) has run the pipeline over the 60 demo files: this run sees them unchanged
    site = project / "raw/demo/site_2"
    newest = max(site.iterdir())
    shutil.copyfile(newest, site / "2004.02.13.12.00.00")  # a snapshot after the last one
    state, states, _ = run_pipeline()
    assert state.is_completed()
    assert state.result()["ingest"] == "ingested 1, unchanged 60, quarantined 0"
    # the long gap before the new snapshot is a validation warning, listed in the run report
    assert "timeline.gaps" in Path(state.result()["report"]).read_text()
    final = last_states(states)
    for step in ("ingest", "validate", "partition", "score", "report"):
        assert final[step] == "Completed", (step, final)
    assert len(pd.read_parquet("data/processed/demo/features.parquet")) == 61
    assert len(pd.read_parquet("data/processed/demo/scores.parquet")) == 61


def test_failed_training_then_retry_of_the_same_flow_run_reruns_only_from_the_failed_step(
    overlapping, project: Path
) -> None:
    # `overlapping` has run the pipeline on this data before: ingest, validate and partition are served from cache
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH

    # The cause: the models root is not writable (a file where the directory should be).
    models, aside = Path("data/models"), Path("data/models-aside")
    models.rename(aside)
    models.write_text("not a directory\n")
    state, states, _ = run_pipeline(rounds=4)  # new training parameters: training has to run
    assert state.is_failed()
    with pytest.raises(NotADirectoryError, match="cannot write the model: data/models/demo is not a directory"):
        state.result()
    final = last_states(states)
    assert {step: final[step] for step in ("ingest", "validate", "partition")} == dict.fromkeys(
        ("ingest", "validate", "partition"), "Cached"
    )
    assert states["train-federated"] == ["Failed"]  # a set-up error is not retried
    assert not {"publish-model", "score", "report"} & set(states)

    # Fix the cause, then retry the failed flow run exactly as a user would (`prefect flow-run retry`).
    models.unlink()
    aside.rename(models)
    flow_run_id = state.state_details.flow_run_id
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value()),
    }
    retry = subprocess.run(
        [
            str(Path(sys.executable).parent / "prefect"),
            "flow-run",
            "retry",
            str(flow_run_id),
            "--entrypoint",
            f"{REPO}/flows/pipeline.py:pipeline_flow",
        ],
        check=False,
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert retry.returncode == 0, retry.stdout[-3000:] + retry.stderr[-3000:]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run_id).state.is_completed()
    final = last_states(task_run_states(flow_run_id))
    assert {step: final[step] for step in ("ingest", "validate", "partition")} == dict.fromkeys(
        ("ingest", "validate", "partition"), "Cached"
    )
    assert final["train-federated"] == final["train-centralized"] == final["publish-model"] == "Completed"
    assert final["report"] == "Completed"


def test_validation_error_stops_the_pipeline_and_fixed_data_proceeds(project: Path) -> None:
    from bearing_core.validation import ValidationFailed

    site = project / "raw/demo/site_1"
    files = sorted(site.iterdir())[:14]  # 14 of the 60 or 61 snapshots (> 20 %) far outside the sensor range
    backup = project / "raw-backup"
    backup.mkdir()
    rng = np.random.default_rng(0)
    for f in files:
        shutil.copyfile(f, backup / f.name)
        write_ims_file(f, rng.normal(0.0, 500.0, size=(20_480, 8)))
    state, states, _ = run_pipeline()
    assert state.is_failed()
    with pytest.raises(ValidationFailed, match="features.enough_snapshots"):
        state.result()
    assert last_states(states)["validate"] == "Completed"
    assert not {"partition", "train-federated", "publish-model", "score", "report"} & set(states)

    for f in files:  # fix the data (new copies: new mtimes) and run again
        shutil.copyfile(backup / f.name, f)
    state, states, _ = run_pipeline()
    assert state.is_completed()
    final = last_states(states)
    assert final["ingest"] == final["validate"] == "Completed"
    assert set(final) == set(STEPS)
    quarantine = pd.read_parquet("data/processed/demo/quarantine.parquet")
    assert quarantine.empty


def test_dataset_lock_waits_for_the_holder_and_times_out_with_the_lock_named(tmp_path: Path) -> None:
    lock = tmp_path / "dataset" / ".pipeline.lock"
    held, release, order = threading.Event(), threading.Event(), []

    def holder() -> None:
        with exclusive_lock(lock):
            held.set()
            release.wait(10)
            order.append("holder done")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    with (
        pytest.raises(LockTimeout, match=r"\.pipeline\.lock is still held by another run after 0\.2 s"),
        exclusive_lock(lock, timeout_s=0.2, poll_s=0.05),
    ):
        pass
    waited: list[Path] = []
    threading.Timer(0.3, release.set).start()
    with exclusive_lock(lock, timeout_s=10, poll_s=0.05, on_wait=waited.append):
        order.append("waiter in")
    thread.join()
    assert order == ["holder done", "waiter in"] and waited == [lock]


def test_bearing_run_exits_3_when_the_dataset_stays_locked(project, capsys: pytest.CaptureFixture[str]) -> None:
    """Like ingest, validate and score: a lock wait that times out is one line and exit 3 (issue 16.4)."""
    from cli.main import main

    lock = Path("data/processed/demo/.pipeline.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock_held_elsewhere(lock):
        code = main(["run", "--raw-dir", "raw/demo", "--lock-timeout-s", "0.2"])
    assert code == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bearing run")]
    assert len(errors) == 1 and re.match(
        r"bearing run: error: dataset data/processed/demo is locked by another run \(pid \d+ on .+\): "
        r"\.pipeline\.lock is still held by another run after 0\.2 s",
        errors[0],
    ), errors


def test_deployment_parameters_equal_the_flow_defaults() -> None:
    """prefect.yaml's parameters are the pipeline's own defaults: the nightly run trains what `bearing run` trains,
    but for the nightly overrides (exactly these, in the nightly deployment only)."""
    import inspect

    import yaml

    from bearing_core.params import PipelineParams
    from flows.pipeline import pipeline_flow

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    defaults = {name: p.default for name, p in inspect.signature(pipeline_flow.fn).parameters.items()}
    assert PipelineParams.model_validate(defaults) == PipelineParams()  # the flow's defaults are the model's
    pipelines = [d for d in spec["deployments"] if d["entrypoint"] == "flows/pipeline.py:pipeline_flow"]
    assert len(pipelines) == 2  # nightly-retrain, manual-pipeline (the fleet's deployments run other flows)
    for deployment in pipelines:
        assert set(deployment["parameters"]) <= set(defaults), deployment["name"]
        overrides = NIGHTLY_OVERRIDES if deployment["name"] == "nightly-retrain" else {}
        expected = PipelineParams.model_validate(overrides) if overrides else PipelineParams()
        assert PipelineParams.model_validate(deployment["parameters"]) == expected, deployment["name"]


def test_each_dataset_has_its_own_champion_across_alternating_runs(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: the demo (8 channels), then a 4-channel IMS run, then the demo again, in one project. Each run
    completes and each dataset is scored by its own champion (one registry per dataset): before, the 4-channel
    model was never promoted over the demo's (other inputs), and the demo's champion scored the 4-channel data."""
    monkeypatch.chdir(tmp_path)  # a fresh project under the module's Prefect harness
    generate_demo(tmp_path / "raw" / "demo", sites=2, files_per_site=30, seed=1, workers=1)
    generate_demo(tmp_path / "raw" / "ims4", sites=2, files_per_site=30, seed=2, channels=4, workers=1)
    outputs = []
    for raw in ("raw/demo", "raw/ims4", "raw/demo"):
        state, _, _ = run_pipeline(raw_dir=raw, layout="per_bearing")
        assert state.is_completed(), (raw, state)
        outputs.append(state.result())
    champions = {}
    for dataset, channels in (("demo", 2), ("ims4", 1)):  # per bearing: axes a, b / one accelerometer x
        latest = Path("data/models") / dataset / "latest"
        assert latest.is_symlink() and (latest.resolve() / "COMPLETE").is_file(), dataset
        champions[dataset] = latest.resolve()
        fingerprint = json.loads((latest.resolve() / "fingerprint.json").read_text())
        assert fingerprint["dataset"] == dataset
        inputs = json.loads((latest.resolve() / "config.json").read_text())["input_columns"]
        assert len(inputs) == channels
        scores = pd.read_parquet(f"data/processed/{dataset}/per_bearing/scores.parquet")
        assert set(scores["model_version"]) == {latest.resolve().name} and len(scores) == 60 * 4  # x 4 bearings
    assert champions["demo"] != champions["ims4"]
    assert not Path("data/models/latest").exists()  # no registry-wide champion any more
    assert [o["champion (latest)"] for o in outputs] == [
        f"data/models/demo/{champions['demo'].name}",
        f"data/models/ims4/{champions['ims4'].name}",
        f"data/models/demo/{champions['demo'].name}",
    ]
    assert outputs[1]["promotion"].startswith("promoted to latest: first model")  # not compared with the demo's
    assert outputs[2] == outputs[0]  # the demo's third run: same champion, same results (served from the cache)
