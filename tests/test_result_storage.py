"""Task cache records (tasks/results.py): plain JSON inside the project's .prefect, never unpickled.

The end-to-end test runs the real ingest task three times in a fresh Python process, as ``bearing run`` would (the
project directory as cwd, no PREFECT_* variables, its own HOME, Prefect's temporary local server): first run, then
every record file tampered with a payload that creates a marker directory when unpickled, then twice more.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.ims_files import write_ims_file

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import base64, json, os, pickle, sys
from pathlib import Path

from prefect import flow
from bearing_core.fingerprint import tree_fingerprint
from tasks.ingest import ingest_task

project, home, marker = Path.cwd(), Path(os.environ["HOME"]), sys.argv[1]


class Payload:
    def __reduce__(self):
        return (os.mkdir, (marker,))


@flow
def run() -> str:
    state = ingest_task("raw", "processed", tree_fingerprint("raw"), workers=1, return_state=True)
    state.result()
    return state.name


def record_files() -> list[Path]:
    roots = [project / ".prefect", home / ".prefect"]
    return sorted(p for root in roots if root.is_dir() for p in (root / "storage").rglob("*") if p.is_file())


def tamper(mode: str) -> None:
    pickled = base64.b64encode(pickle.dumps(Payload())).decode()
    for path in record_files():
        if mode == "raw":  # a bare pickle where the record was
            path.write_bytes(pickle.dumps(Payload()))
            continue
        text = path.read_text()
        record = json.loads(text)
        metadata = record.get("metadata", record)
        metadata["serializer"] = {"type": "pickle", "picklelib": "pickle"}
        if "result" in record:  # the whole record in one file
            record["result"] = pickled
        path.write_text(json.dumps(record))
        if "storage_key" in metadata and "result" not in record and Path(metadata["storage_key"]).is_file():
            Path(metadata["storage_key"]).write_text(pickled)


report = {"states": [run()]}
report["files"] = [str(p) for p in record_files()]
report["contents"] = {str(p): p.read_text(errors="replace") for p in record_files()}
for mode in ("record", "raw"):
    tamper(mode)
    report["states"].append(run())
    report[f"marker_after_{mode}"] = os.path.exists(marker)
report["states"].append(run())
report["final_contents"] = {str(p): p.read_text(errors="replace") for p in record_files()}
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three runs of the ingest task in a fresh process (first, after tampering twice, cached): what it saw."""
    import numpy as np

    root = tmp_path_factory.mktemp("project")
    home = tmp_path_factory.mktemp("home")
    rng = np.random.default_rng(0)
    for name in ("2004.02.12.10.32.39", "2004.02.12.10.42.39"):
        write_ims_file(root / "raw" / name, rng.normal(size=(20480, 4)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BEARING_"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    marker = root / "pwned"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(marker)], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return {"root": root.resolve(), "home": home, "marker": marker, **json.loads(lines[-1][len("REPORT ") :])}


@pytest.mark.integration
def test_records_are_plain_json_in_the_projects_prefect_storage(runs: dict[str, Any]) -> None:
    storage = runs["root"] / ".prefect" / "storage"
    assert runs["files"], "the cached task wrote no record"
    assert all(Path(f).is_relative_to(storage) for f in runs["files"]), runs["files"]
    assert not (runs["home"] / ".prefect" / "storage").exists()  # nothing in the user's home
    for path, text in runs["contents"].items():
        document = json.loads(text)  # every file is JSON, none is a pickle
        if "serializer" in document:  # the record's metadata
            assert document["serializer"]["type"] == "json" and document["serializer"]["object_decoder"] is None
        else:  # the result: what ingest_task returned
            assert document["out_dir"].endswith("processed") and len(document["features_sha256"]) == 64, path


@pytest.mark.integration
def test_a_tampered_record_is_never_unpickled_and_the_task_recomputes(runs: dict[str, Any]) -> None:
    assert runs["marker_after_record"] is False  # a record naming the pickle serializer
    assert runs["marker_after_raw"] is False  # a bare pickle in place of the record
    assert not runs["marker"].exists()
    first, after_record, after_raw, last = runs["states"]
    assert (first, after_record, after_raw) == ("Completed", "Completed", "Completed")  # recomputed, not served
    assert last == "Cached"  # the rewritten records are served again
    assert all(json.loads(text) for text in runs["final_contents"].values())


# ---- the checks themselves, without a server -------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture()
def store(tmp_path: Path) -> Any:
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    from tasks.results import RESULT_SERIALIZER, JsonRecordMetadata

    return ResultStore(
        result_storage=LocalFileSystem(basepath=str(tmp_path / "results")),
        metadata_storage=JsonRecordMetadata(basepath=str(tmp_path / "metadata")),
        serializer=RESULT_SERIALIZER,
    )


def test_a_json_record_round_trips(store: Any, tmp_path: Path) -> None:
    store.write({"path": "x", "sha256": "ab", "sizes": [1, 2], "mse": 0.25, "none": None}, key="k")
    assert store.exists("k")
    assert store.read("k").result == {"path": "x", "sha256": "ab", "sizes": [1, 2], "mse": 0.25, "none": None}
    assert json.loads((tmp_path / "results" / "k").read_text())["sizes"] == [1, 2]


@pytest.mark.parametrize(
    "serializer",
    [
        {"type": "pickle", "picklelib": "pickle"},
        {
            "type": "json",
            "jsonlib": "json",
            "object_encoder": None,
            "object_decoder": "subprocess.run",
            "dumps_kwargs": {},
            "loads_kwargs": {},
        },
        {
            "type": "json",
            "jsonlib": "pickle",
            "object_encoder": None,
            "object_decoder": None,
            "dumps_kwargs": {},
            "loads_kwargs": {},
        },
        {"type": "json"},  # Prefect's default JSON serializer: object hooks that import the class a record names
    ],
)
def test_metadata_naming_another_serializer_is_refused(store: Any, tmp_path: Path, serializer: dict) -> None:
    from tasks.results import RefusedRecord, check_metadata

    marker = tmp_path / "pwned"
    store.write({"a": 1}, key="k")
    meta_path = tmp_path / "metadata" / "k"
    metadata = json.loads(meta_path.read_text())
    metadata["serializer"] = serializer
    meta_path.write_text(json.dumps(metadata))
    (tmp_path / "results" / "k").write_bytes(base64.encodebytes(pickle.dumps(_Payload(marker))))
    assert not store.exists("k")  # Prefect then runs the task and writes a good record over it
    with pytest.raises(RefusedRecord, match="not plain JSON"):
        check_metadata(meta_path.read_bytes(), "k")
    assert not marker.exists()


def test_a_pickle_in_place_of_the_metadata_or_the_result_is_refused(store: Any, tmp_path: Path) -> None:
    from tasks.results import RefusedRecord, check_metadata

    marker = tmp_path / "pwned"
    store.write({"a": 1}, key="k")
    good = (tmp_path / "metadata" / "k").read_bytes()
    (tmp_path / "results" / "k").write_bytes(pickle.dumps(_Payload(marker)))
    assert not store.exists("k")
    with pytest.raises(RefusedRecord, match="cache result .* is not JSON"):
        check_metadata(good, "k")
    (tmp_path / "metadata" / "k").write_bytes(pickle.dumps(_Payload(marker)))
    assert not store.exists("k")
    assert not marker.exists()


def test_every_cached_task_persists_plain_json_through_the_checked_metadata_storage() -> None:
    import importlib
    import pkgutil

    from prefect import Task
    from prefect.cache_policies import NO_CACHE

    import tasks
    from tasks.results import RESULT_SERIALIZER, JsonRecordMetadata

    found = {}
    for info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{info.name}")
        found.update({obj.name: obj for obj in vars(module).values() if isinstance(obj, Task)})
    assert {
        "ingest",
        "validate",
        "partition",
        "train-federated",
        "train-centralized",
        "publish-model",
        "promote-if-better",
        "score",
        "report",
        "experiment",
    } <= set(found)
    for name, task in found.items():
        if task.persist_result is False:  # a live action (tasks.results.UNCACHED): nothing stored, nothing read
            assert task.cache_policy is NO_CACHE, name
            continue
        assert task.persist_result is True, name
        assert task.result_serializer == RESULT_SERIALIZER, name
        assert isinstance(task.cache_policy.key_storage, JsonRecordMetadata), name


def test_a_result_that_is_not_json_fails_instead_of_being_pickled() -> None:
    from pydantic import BaseModel

    from tasks.results import RESULT_SERIALIZER

    class Report(BaseModel):
        rows: int = 1

    with pytest.raises(TypeError, match="not JSON serializable"):
        RESULT_SERIALIZER.dumps(Report())
    assert json.loads(RESULT_SERIALIZER.dumps(Report().model_dump(mode="json"))) == {"rows": 1}
