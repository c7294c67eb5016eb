"""Helpers for the pipeline flow tests: the final state of every task run of a flow run and of its sub-flows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

NIGHTLY_OVERRIDES = {"data": {"healthy": "rolling"}, "federated": {"centralized_baseline": False}}
"""What prefect.yaml's nightly deployment sets differently from `bearing run` (issue 17): a healthy period a retrain
cannot poison, and no centralized baseline every night. Every other parameter is the flow's default."""


@contextmanager
def project_under_harness(root: Path) -> Iterator[Path]:
    """``root`` as the working directory (data/, reports/ go there) under a Prefect test harness whose task results
    are stored in ``root/.prefect-results``; the previous working directory is restored on exit."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    previous = os.getcwd()
    os.chdir(root)
    try:
        with (
            temporary_settings({PREFECT_LOCAL_STORAGE_PATH: root / ".prefect-results"}),
            prefect_test_harness(server_startup_timeout=120),
        ):
            yield root
    finally:
        os.chdir(previous)


def task_run_states(flow_run_id: UUID) -> dict[str, list[str]]:
    """Task name (run name without Prefect's ``-xyz`` suffix) -> state names of its runs in creation order, over
    ``flow_run_id`` and all its sub-flow runs (read through the Prefect API). A retried flow run lists the runs
    of every attempt, the latest last.

    Sub-flow runs appear among their parent's task runs as placeholder task runs; those are left out.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    runs: list[tuple[object, str, str]] = []  # (created, task name, state name)
    with get_client(sync_client=True) as client:
        pending = [flow_run_id]
        while pending:
            current = pending.pop()
            subflows = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[current]))
            )
            pending += [run.id for run in subflows]
            subflow_tasks = {run.parent_task_run_id for run in subflows}
            for run in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[current]))):
                if run.id in subflow_tasks:
                    continue
                runs.append((run.created, task_name(run.name), run.state.name if run.state else "?"))
    states: dict[str, list[str]] = {}
    for _, name, state in sorted(runs, key=lambda r: r[0]):
        states.setdefault(name, []).append(state)
    return states


def task_name(run_name: str) -> str:
    """``train-federated-fb5`` -> ``train-federated``; ``ingest raw/demo`` -> ``ingest``; ``validate /x`` ->
    ``validate``."""
    head = run_name.split(" ", 1)[0]
    base, _, suffix = head.rpartition("-")
    return base if base and len(suffix) == 3 and all(c in "0123456789abcdef" for c in suffix) else head
