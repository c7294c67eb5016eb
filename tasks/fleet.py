"""Prefect tasks of the cross-site mode (flows/site.py, flows/coordinator.py): thin wrappers over
:mod:`bearing_core.fleet`, :mod:`bearing_core.federated.deployment` and :mod:`bearing_core.registry`.

Site side: :func:`supernode_window_task` (the site's SuperNode for the training window), :func:`holdout_mse_task`
(the site's holdout MSE of the models it holds), :func:`publish_site_report` / :func:`read_site_reports` (the
nightly :class:`~bearing_core.fleet.SiteReport` as a Prefect artifact). Coordinator side: :func:`superlink_task`
(start or reuse the SuperLink, admit the sites' keys), :func:`wait_for_sites_task` (quorum) and
:func:`federated_round_task` (submit the ServerApp run, or re-attach to the one a failed flow run left).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import Artifact, create_table_artifact

from bearing_core.federated.deployment import (
    LOOPBACK,
    TlsFiles,
    flower_env,
    group_alive,
    register_supernode,
    run_status,
    start,
    start_detached,
    submit_run,
    superlink_command,
    supernode_command,
    supernode_status,
    write_connection,
)
from bearing_core.fleet import SiteReport, report_key, resume_action
from bearing_core.io import write_json_atomic
from bearing_core.model_io import METRICS_FILE, load_model
from bearing_core.registry import (
    _version_dirs,
    current_champion,
    holdout_data,
    original_units_mse,
    registry_dir,
)
from bearing_core.threshold import THRESHOLD_FILE
from tasks.results import UNCACHED

SUPERLINK_STATE = "superlink.json"


# ------------------------------------------------------------------------------------------------------ site side


def fleet_versions(models_root: str, fleet: str) -> list[str]:
    """Published versions of the fleet's registry, oldest first (version names start with a UTC timestamp)."""
    return sorted(p.name for p in _version_dirs(registry_dir(models_root, fleet)))


@task(name="supernode-window", **UNCACHED)
def supernode_window_task(
    superlink: str,
    clients_dir: str,
    partition_id: int,
    runtime_port: int,
    root_certificates: str | None,
    auth_private_key: str | None,
    window_s: float,
    models_root: str,
    fleet: str,
    log_path: str,
) -> dict[str, Any]:
    """Run the site's SuperNode (its training file only) until the fleet registry holds a version it did not hold
    when the window opened (tonight's round is done) or ``window_s`` has passed; then stop it."""
    logger = get_run_logger()
    before = set(fleet_versions(models_root, fleet))
    cmd = supernode_command(
        superlink,
        clients_dir,
        partition_id,
        runtime_port,
        Path(root_certificates) if root_certificates else None,
        Path(auth_private_key) if auth_private_key else None,
    )
    node = start("supernode", cmd, Path(log_path), flower_env())
    started, connected, new = time.monotonic(), False, []
    try:
        deadline = started + window_s
        while time.monotonic() < deadline and node.alive():
            connected = connected or "SuperNode ID" in node.log_path.read_text(errors="replace")
            new = sorted(set(fleet_versions(models_root, fleet)) - before)
            if new:
                break
            time.sleep(1.0)
    finally:
        alive = node.alive()
        node.stop()
    outcome = "new model published" if new else ("SuperNode exited" if not alive else "training window closed")
    logger.info(
        "SuperNode %s to %s for %.0f s: %s",
        "connected" if connected else "did not connect",
        superlink,
        time.monotonic() - started,
        outcome,
    )
    return {"connected": connected, "new_versions": new, "outcome": outcome, "seconds": time.monotonic() - started}


@task(name="holdout-mse", **UNCACHED)
def holdout_mse_task(manifest: str, models_root: str, fleet: str) -> dict[str, float]:
    """This site's holdout MSE (original units) of the fleet's champion and of every newer version (the
    challengers the coordinator has not decided on yet). Only these numbers leave the site."""
    champion = current_champion(models_root, fleet)
    versions = fleet_versions(models_root, fleet)
    if champion is not None:
        versions = [v for v in versions if v >= champion]
    data = holdout_data(manifest)
    registry = registry_dir(models_root, fleet)
    return {version: original_units_mse(load_model(registry / version), data)[0] for version in versions}


def publish_site_report(report: SiteReport) -> None:
    """The site's report as a one-row table artifact (the coordinator reads the latest with
    :func:`read_site_reports`)."""
    create_table_artifact(
        key=report_key(report.site),
        table=[report.model_dump(mode="json")],
        description=f"Fleet report of site {report.site}: aggregates only",
    )


def read_site_reports(sites: list[str]) -> dict[str, SiteReport]:
    """The latest report of each site that has published one."""
    reports = {}
    for site in sites:
        artifact = Artifact.get(report_key(site))
        if artifact is None or not artifact.data:
            continue
        rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        reports[site] = SiteReport.model_validate(rows[0])
    return reports


# ----------------------------------------------------------------------------------------------- coordinator side


@task(name="superlink", **UNCACHED)
def superlink_task(
    state_dir: str,
    host: str,
    port: int,
    control_port: int,
    tls: dict[str, str] | None,
    public_keys: dict[str, str],
) -> dict[str, Any]:
    """Start the SuperLink (detached: it outlives this flow run) or reuse the one a previous run started with the
    same ports; admit every site's public key (``--enable-supernode-auth`` whenever keys are given). Returns the
    state: pid, ports, ``nodes`` (site -> node id)."""
    logger = get_run_logger()
    state_path = Path(state_dir) / SUPERLINK_STATE
    env = flower_env()
    write_connection(f"{LOOPBACK}:{control_port}")
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    same = state.get("port") == port and state.get("control_port") == control_port and state.get("host") == host
    if same and group_alive(int(state["pid"])):
        logger.info("reusing the SuperLink (pid %s) on %s:%s", state["pid"], host, port)
    else:
        from bearing_core.federated.launch import READY

        files = None if tls is None else TlsFiles(Path(tls["ca"]), Path(tls["cert"]), Path(tls["key"]))
        cmd = superlink_command(host, port, files, enable_supernode_auth=bool(public_keys), control_port=control_port)
        log = Path(state_dir) / "logs" / f"superlink-{time.strftime('%Y%m%dT%H%M%S')}.log"
        pid = start_detached("superlink", cmd, log, env)
        deadline = time.monotonic() + 120
        while READY not in log.read_text(errors="replace"):
            if not group_alive(pid) or time.monotonic() > deadline:
                raise RuntimeError(f"the SuperLink did not start; see {log}")
            time.sleep(0.3)
        state = {"pid": pid, "host": host, "port": port, "control_port": control_port, "log": str(log), "nodes": {}}
        logger.info(
            "started the SuperLink (pid %s): Fleet API %s:%s, Control API %s:%s (this host only)",
            pid,
            host,
            port,
            LOOPBACK,
            control_port,
        )
    for site, key in public_keys.items():
        if site not in state["nodes"]:
            state["nodes"][site] = register_supernode(Path(key), site, env=env)
            logger.info("admitted site %s (node %s)", site, state["nodes"][site])
    write_json_atomic(state_path, state)
    return state


@task(name="wait-for-sites", **UNCACHED)
def wait_for_sites_task(nodes: dict[str, int], quorum: int, wait_s: float) -> dict[str, str]:
    """Wait until every site's SuperNode is online or ``wait_s`` has passed; site -> status. ``RuntimeError`` when
    fewer than ``quorum`` are online by then."""
    logger = get_run_logger()
    deadline = time.monotonic() + wait_s
    while True:
        status = supernode_status()
        by_site = {site: status.get(node, "unknown") for site, node in nodes.items()}
        online = [s for s, v in by_site.items() if v == "online"]
        if len(online) == len(nodes) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    missing = {s: v for s, v in by_site.items() if v != "online"}
    if missing:
        logger.warning("sites not online after %.0f s, left out of the round: %s", wait_s, missing)
    if len(online) < quorum:
        raise RuntimeError(f"only {len(online)} site(s) online ({', '.join(online) or 'none'}), quorum is {quorum}")
    return by_site


def model_complete(model_dir: Path) -> bool:
    """A finished ServerApp output: the model, its metrics and its calibrated threshold."""
    return all((model_dir / name).is_file() for name in ("weights.pt", "config.json", METRICS_FILE, THRESHOLD_FILE))


@task(name="federated-round", **UNCACHED)
def federated_round_task(
    record_path: str, model_dir: str, run_config: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """Run tonight's ServerApp on the SuperLink and wait for it; resume instead of starting over when a previous
    attempt of the same night (``record_path``) left a run that is still running or finished with its model.

    Flower keeps a run on the SuperLink whatever happens to the process that submitted it: a re-run finds it
    (``flwr ls``) and waits for it instead of asking the sites again. A run that failed cannot be continued
    (Flower has no round checkpoints): a new one starts from round 1."""
    logger = get_run_logger()
    record = Path(record_path)
    target = Path(model_dir)
    previous = json.loads(record.read_text()) if record.is_file() else None
    run_id = None
    status = None if previous is None else run_status(int(previous["run_id"]))
    action = resume_action(status, previous is not None and model_complete(Path(previous["model_dir"])))
    if previous is not None and action == "reuse":
        logger.info("run %s of this night already finished: reusing %s", previous["run_id"], previous["model_dir"])
        return {**previous, "status": status, "resumed": True}
    if previous is not None and action == "attach":
        run_id, target = int(previous["run_id"]), Path(previous["model_dir"])
        logger.info("re-attaching to run %s (%s) left by an earlier attempt", run_id, status)
    elif previous is not None:
        logger.info("run %s of an earlier attempt ended %s: submitting a new run", previous["run_id"], status)
    started = time.monotonic()
    if run_id is None:
        run_id = submit_run({**run_config, "out-dir": str(target.resolve())})
        write_json_atomic(record, {"run_id": run_id, "model_dir": str(target.resolve())})
        logger.info("submitted run %s: %s rounds", run_id, run_config.get("rounds"))
    deadline = started + timeout_s
    status = run_status(run_id)
    while not status.startswith("finished"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} not finished within {timeout_s:g}s")
        time.sleep(2.0)
        status = run_status(run_id)
    if status != "finished:completed" or not model_complete(target):
        raise RuntimeError(f"run {run_id} ended {status} without a complete model in {target}")
    return {
        "run_id": run_id,
        "model_dir": str(target.resolve()),
        "status": status,
        "resumed": previous is not None,
        "seconds": time.monotonic() - started,
    }
