"""The coordinator's night in the cross-site mode (see README "Running across sites"); it holds no site data.

1. start the SuperLink, or reuse the one an earlier night started (it is detached from the flow run); admit the
   sites' public keys (SuperNode authentication);
2. decide last nights' challengers on the sites' reported holdout MSE (:func:`bearing_core.fleet.decide_champion`);
3. wait for the sites' SuperNodes (every site, or ``quorum`` of them after ``wait_for_sites_s``);
4. run the bearing ServerApp (federated scaling, ``rounds`` rounds, federated calibration) with the sites that are
   up; a site that fails or stalls in a round is left out of it (``min_fit_fraction``, ``round_timeout_s``); a
   re-run of a failed flow run re-attaches to the night's Flower run instead of asking the sites again;
5. publish the model in the fleet registry ``models_root/<fleet>/<version>`` (fingerprint from the sites' reports),
   make it the champion when there is none yet; the sites fetch ``<fleet>/latest`` (registry path: the same
   directory on one machine, a synced read-only copy at each site of a real fleet);
6. a markdown artifact: who was online, who took part in every round, failures, bytes a site sends per round.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from bearing_core.federated.config import FederatedConfig
from bearing_core.federated.simulation import model_version
from bearing_core.fleet import decide_champion, fleet_fingerprint
from bearing_core.io import write_json_atomic
from bearing_core.model_io import GLOBAL_CLIENT, METRICS_FILE, load_model
from bearing_core.registry import current_champion, promote, publish_model, registry_dir
from tasks.fleet import (
    federated_round_task,
    fleet_versions,
    read_site_reports,
    superlink_task,
    wait_for_sites_task,
)


@flow(name="coordinator", log_prints=True)
def coordinator_flow(
    sites: list[str],
    fleet: str = "fleet",
    models_root: str = "data/models",
    state_dir: str = "data/fleet",
    public_keys_dir: str | None = None,
    ssl_ca_certfile: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    host: str = "127.0.0.1",
    port: int = 9093,
    control_port: int = 9095,
    quorum: float = 0.5,
    wait_for_sites_s: float = 600.0,
    round_timeout_s: float = 600.0,
    min_fit_fraction: float = 0.5,
    run_timeout_s: float = 6 * 3600.0,
    rounds: int = 20,
    local_epochs: int = 10,
    lr: float = 1e-2,
    batch_size: int = 32,
    hidden: tuple[int, ...] = (4, 1, 4),
    activation: Literal["tanh", "elu", "relu"] = "tanh",
    threshold_method: Literal["max", "quantile", "mean_kstd"] = "max",
    tolerance: float = 0.0,
    seed: int = 0,
    night: str | None = None,
) -> dict[str, Any]:
    """The coordinator's night (see the module doc).

    Args:
        sites: the fleet's site names; a site's index here is its ``partition_id``.
        fleet: registry name of the fleet's models (``models_root/<fleet>/``).
        state_dir: the coordinator's state: SuperLink pid/ports/admitted nodes, one record per night's run.
        public_keys_dir: holds ``<site>.pub`` for every site (SuperNode authentication); None = no authentication.
        ssl_ca_certfile, ssl_certfile, ssl_keyfile: TLS of the Fleet API; all None = plain HTTP (loopback tests).
        host, port: the Fleet API (the only address the sites dial); control_port: Control API, 127.0.0.1 only.
        quorum: fraction of ``sites`` that must be online (and, through the ServerApp, connected) to train.
        wait_for_sites_s: how long to wait for every site before going on with the quorum.
        round_timeout_s: how long the ServerApp waits for replies in each step (a slower site is left out).
        min_fit_fraction: fraction of a round's sampled sites whose replies must arrive for the round to count.
        run_timeout_s: give up on the Flower run after this long.
        rounds, local_epochs, lr, batch_size, hidden, activation, threshold_method, seed: the training.
        tolerance: relative tolerance of champion/challenger.
        night: key of this night's run record (default: today's UTC date); a re-run with the same key resumes.
    """
    started = time.monotonic()
    timings: dict[str, float] = {}
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    tls = None
    if ssl_ca_certfile:
        tls = {"ca": ssl_ca_certfile, "cert": ssl_certfile or "", "key": ssl_keyfile or ""}
    keys = {} if public_keys_dir is None else {s: str(Path(public_keys_dir) / f"{s}.pub") for s in sites}
    link = superlink_task(str(state), host, port, control_port, tls, keys)
    timings["superlink"] = time.monotonic() - started
    needed = max(1, math.ceil(quorum * len(sites)))

    # last nights' challengers, on the sites' latest reports (each evaluated champion and challenger on its rows)
    reports = read_site_reports(sites)
    decisions = _decide_pending(models_root, fleet, list(reports.values()), needed, tolerance)

    online = wait_for_sites_task(link["nodes"], needed, wait_for_sites_s) if keys else {}
    timings["wait for sites"] = time.monotonic() - started - sum(timings.values())
    cfg = FederatedConfig(
        rounds=rounds,
        local_epochs=local_epochs,
        lr=lr,
        batch_size=batch_size,
        hidden=tuple(hidden),
        activation=activation,
        threshold_method=threshold_method,
        seed=seed,
        num_clients=len(sites),
        min_available_fraction=needed / len(sites),
        min_fit_fraction=min_fit_fraction,
        round_timeout_s=round_timeout_s,
    )
    night = night or datetime.now(UTC).strftime("%Y-%m-%d")
    version = model_version(night + ",".join(sites), cfg)
    registry = registry_dir(models_root, fleet)
    run = federated_round_task(
        str(state / "runs" / f"{night}.json"), str(registry / version), cfg.to_run_config(), run_timeout_s
    )
    timings["federated run"] = time.monotonic() - started - sum(timings.values())
    model_dir = Path(run["model_dir"])

    metrics = pd.read_parquet(model_dir / METRICS_FILE)
    model = load_model(model_dir)
    took_part = sorted({int(c) for c in metrics["client"].unique() if str(c).isdigit()})
    by_round = {int(r): sorted(int(c) for c in g["client"] if str(c).isdigit()) for r, g in metrics.groupby("round")}
    reports = read_site_reports(sites)  # tonight's (each site reports its rows before its training window)
    record = {
        "night": night,
        "run_id": run["run_id"],
        "status": run["status"],
        "resumed": run["resumed"],
        "sites": {
            s: {
                "partition_id": k,
                "online_at_start": online.get(s, "n/a"),
                "took_part": k in took_part,
                "validation_passed": reports[s].validation_passed if s in reports else None,
            }
            for k, s in enumerate(sites)
        },
        "rounds": {str(r): [sites[k] for k in ks if k < len(sites)] for r, ks in by_round.items()},
        "failures": model.extra.get("failures", []),
    }
    record_path = state / "runs" / f"{night}-{model_dir.name}.json"
    write_json_atomic(record_path, record)
    participants = [reports[sites[k]] for k in took_part if k < len(sites) and sites[k] in reports]
    published = publish_model(
        model_dir, fleet_fingerprint(fleet, participants, record_path), models_root=models_root, version=model_dir.name
    )
    decision = decide_champion(participants, published.version, current_champion(models_root, fleet), needed, tolerance)
    if decision["promoted"]:
        promote(models_root, fleet, published.version, decision["reason"])
    else:
        decision = {
            **decision,
            "promoted": None,
            "reason": "waits for the sites' holdout MSE of both models (decided on a later night)",
        }
    decisions.append(decision)
    timings["publish"] = time.monotonic() - started - sum(timings.values())

    sizes = _message_bytes(model)
    markdown = _markdown(
        fleet, record, published.version, current_champion(models_root, fleet), decisions, metrics, sizes, timings
    )
    create_markdown_artifact(
        key=f"fleet-{_key(fleet)}-night", markdown=markdown, description=f"Fleet {fleet}: tonight's round"
    )
    print(markdown)
    return {
        "version": published.version,
        "champion": current_champion(models_root, fleet),
        "record": record,
        "decisions": decisions,
        "bytes": sizes,
        "timings": timings,
        "path": str(registry / published.version),
    }


def _key(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "fleet"


def _decide_pending(models_root: str, fleet: str, reports: list[Any], quorum: int, tolerance: float) -> list[dict]:
    """Promote the newest earlier challenger the sites' reports favour; every decision made is returned."""
    champion = current_champion(models_root, fleet)
    if champion is None:
        return []
    decisions = []
    for version in reversed([v for v in fleet_versions(models_root, fleet) if v > champion]):
        decision = decide_champion(reports, version, champion, quorum, tolerance)
        decisions.append(decision)
        if decision["promoted"]:
            promote(models_root, fleet, version, decision["reason"])
            break
    return decisions


def _message_bytes(model: Any) -> dict[str, int]:
    """What one site sends per round, from the array sizes: its model update (every weight array as sent) and,
    once a run, its scaler moments and its error sketch; metrics are a handful of scalars (a few hundred bytes)."""
    weights = [p.detach().cpu().numpy() for p in model.model.state_dict().values()]
    n_inputs = len(model.input_columns)
    return {
        "parameters": int(sum(np.asarray(w).nbytes for w in weights)),
        "scaler_moments": int(3 * n_inputs * 8 + 8),
        "n_parameters": int(sum(np.asarray(w).size for w in weights)),
    }


def _markdown(
    fleet: str,
    record: dict,
    version: str,
    champion: str | None,
    decisions: list[dict],
    metrics: pd.DataFrame,
    sizes: dict[str, int],
    timings: dict[str, float],
) -> str:
    lines = [
        f"# Fleet {fleet}: night {record['night']}",
        "",
        (
            f"Flower run {record['run_id']} ({record['status']}{', resumed' if record['resumed'] else ''}); "
            f"published `{version}`; champion `{champion}`."
        ),
        "",
        "| site | online at start | took part | validation |",
        "|---|---|---|---|",
    ]
    for site, info in record["sites"].items():
        valid = {True: "passed", False: "FAILED", None: "no report"}[info["validation_passed"]]
        lines.append(f"| {site} | {info['online_at_start']} | {'yes' if info['took_part'] else 'LEFT OUT'} | {valid} |")
    lines += ["", "| round | sites that replied |", "|---|---|"]
    lines += [f"| {r} | {', '.join(s) or '-'} |" for r, s in record["rounds"].items()]
    if record["failures"]:
        lines += [
            "",
            "Failures:",
            *[f"- round {f.get('round')}, {f.get('step')}: {f.get('reason')}" for f in record["failures"]],
        ]
    final = metrics[metrics["client"] == GLOBAL_CLIENT].tail(1)
    if len(final):
        lines += ["", f"Final federated holdout MSE: {float(final['eval_mse'].iloc[0]):.5g}"]
    lines += ["", "Champion/challenger:", *[f"- {d['challenger']}: {d['reason']}" for d in decisions]]
    lines += [
        "",
        (
            f"A site sends per round: model update {sizes['parameters']} bytes ({sizes['n_parameters']} "
            f"float32 parameters) + metrics; once a run: scaler moments {sizes['scaler_moments']} bytes and "
            "an error sketch."
        ),
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
    ]
    return "\n".join(lines) + "\n"
