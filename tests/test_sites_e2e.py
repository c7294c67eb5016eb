"""Cross-site mode end to end on one machine (127.0.0.1): a Prefect server, a coordinator worker and three site
workers as separate processes, each site with its own raw directory; one night through the deployments of
prefect.yaml (fleet-coordinator, site-a/b/c), over TLS with SuperNode authentication.

Checks: a model is published and is the fleet's champion; every site that took part wrote its scores; site c,
killed in round 2, is left out of the later rounds and the run still completes with the quorum; site c's next
run (no training window) scores with the champion; no process but a site's own opened that site's files (an audit
hook in a sitecustomize on every process's PYTHONPATH records every open under the sites' directories).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SITES = ["site-a", "site-b", "site-c"]
ROUNDS = 2

AUDIT_HOOK = """
import os, sys
_roots = [r for r in os.environ.get("BEARING_AUDIT_ROOTS", "").split(os.pathsep) if r]
_log = os.environ.get("BEARING_AUDIT_LOG")
_role = os.environ.get("BEARING_AUDIT_ROLE", "?")
if _roots and _log:
    def _hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            try:
                path = os.path.abspath(os.fsdecode(args[0]))
            except Exception:
                return
            if any(path.startswith(r) for r in _roots):
                with open(_log + "." + str(os.getpid()), "a") as f:  # under no audited root
                    f.write(_role + "\\t" + path + "\\n")
    sys.addaudithook(_hook)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


@pytest.mark.e2e
def test_one_night_across_three_sites(tmp_path: Path) -> None:
    from bearing_core.synthetic import generate_demo
    from scripts.fleet_pki import write_fleet_pki

    t0 = time.monotonic()
    timings: dict[str, float] = {}
    sites_root, coord = tmp_path / "sites", tmp_path / "coordinator"
    pki = write_fleet_pki(tmp_path / "pki", ["127.0.0.1"], SITES)
    keys = coord / "keys"
    keys.mkdir(parents=True)
    for site in SITES:  # the public key goes to the coordinator, the private key stays at the site
        shutil.copy(tmp_path / "pki" / f"{site}.pub", keys / f"{site}.pub")
    demo = tmp_path / "demo"
    generate_demo(demo, sites=3, files_per_site=24, seed=3)
    for k, site in enumerate(SITES):
        (sites_root / site / "raw").mkdir(parents=True)
        shutil.move(str(demo / f"site_{k + 1}"), sites_root / site / "raw" / f"site_{k + 1}")
        (sites_root / site).chmod(0o700)
    shutil.rmtree(demo)
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT_HOOK)

    api_port, fleet_port, control_port = _free_port(), _free_port(), _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLWR_", "BEARING_"))}
    base.update(
        {
            "PREFECT_API_URL": f"http://127.0.0.1:{api_port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_RESULTS_DEFAULT_SERIALIZER": "json",
            "BEARING_PROJECT_DIR": str(ROOT),
            "BEARING_TZ": "UTC",
            "OMP_NUM_THREADS": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # pick a scheduled run up within 2 s (default 10)
            "BEARING_AUDIT_ROOTS": os.pathsep.join(str(sites_root / s) + os.sep for s in SITES),
            "BEARING_AUDIT_LOG": str(audit / "opens"),
        }
    )

    def env_for(role: str) -> dict[str, str]:
        home = tmp_path / "homes" / role
        (home / ".prefect").mkdir(parents=True, exist_ok=True)
        return {
            **base,
            "PREFECT_HOME": str(home / ".prefect"),
            "FLWR_HOME": str(home / ".flwr"),
            "PREFECT_LOCAL_STORAGE_PATH": str(home / ".prefect" / "storage"),
            "BEARING_AUDIT_ROLE": role,
            "PYTHONPATH": os.pathsep.join([str(audit), str(ROOT)]),
        }

    prefect = [sys.executable, "-m", "prefect"]
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
            )
        processes.append(proc)
        return proc

    server_env = {**env_for("server"), "PREFECT_SERVER_API_HOST": "127.0.0.1"}
    superlink_pid = None
    try:
        server = spawn(
            "server", [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(api_port)], server_env
        )
        import urllib.request

        def healthy() -> bool:
            assert server.poll() is None, (logs / "server.log").read_text()[-2000:]
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/health", timeout=2).status == 200
            except OSError:
                return False

        _wait(healthy, 120, "the Prefect server")
        cli_env = env_for("cli")
        for pool in ["bearing-coordinator", *(f"bearing-{s}" for s in SITES)]:
            subprocess.run(
                [*prefect, "work-pool", "create", pool, "--type", "process"],
                env=cli_env,
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
        deploy = subprocess.run(
            [
                *prefect,
                "--no-prompt",
                "deploy",
                "--prefect-file",
                str(ROOT / "prefect.yaml"),
                "-n",
                "fleet-coordinator",
                *(x for s in SITES for x in ("-n", s)),
            ],
            env=cli_env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        spawn(
            "worker-coordinator", [*prefect, "worker", "start", "--pool", "bearing-coordinator"], env_for("coordinator")
        )
        for site in SITES:
            spawn(f"worker-{site}", [*prefect, "worker", "start", "--pool", f"bearing-{site}"], env_for(site))
        timings["server + workers up"] = time.monotonic() - t0

        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        api = temporary_settings({PREFECT_API_URL: base["PREFECT_API_URL"]})  # settings were read at import
        api.__enter__()

        def submit(deployment: str, role: str, parameters: dict) -> str:
            env = env_for(role)
            run = run_deployment(
                deployment,
                parameters=parameters,
                timeout=0,
                job_variables={
                    "env": {
                        k: env[k]
                        for k in (
                            "PYTHONPATH",
                            "PREFECT_HOME",
                            "FLWR_HOME",
                            "PREFECT_LOCAL_STORAGE_PATH",
                            "BEARING_AUDIT_ROLE",
                        )
                    }
                },
            )
            return str(run.id)

        state_dir, models = coord / "state", coord / "models"
        coordinator_run = submit(
            "coordinator/fleet-coordinator",
            "coordinator",
            {
                "sites": SITES,
                "fleet": "fleet",
                "models_root": str(models),
                "state_dir": str(state_dir),
                "public_keys_dir": str(keys),
                "ssl_ca_certfile": str(pki["ca"]),
                "ssl_certfile": str(pki["cert"]),
                "ssl_keyfile": str(pki["key"]),
                "port": fleet_port,
                "control_port": control_port,
                "quorum": 0.6,
                "wait_for_sites_s": 400.0,
                "round_timeout_s": 90.0,
                "min_fit_fraction": 0.5,
                "run_timeout_s": 900.0,
                "rounds": ROUNDS,
                "local_epochs": 1,
                "batch_size": 16,
                "night": "test-night",
            },
        )
        link_state = state_dir / "superlink.json"
        _wait(
            lambda: link_state.is_file() and len(json.loads(link_state.read_text())["nodes"]) == 3,
            150,
            "the SuperLink with the three sites admitted",
        )
        superlink_pid = int(json.loads(link_state.read_text())["pid"])
        # the sites' address serves the Fleet API only (TLS): the Control API (flwr run/ls) is not there
        import ssl
        import urllib.error

        tls_context = ssl.create_default_context(cafile=str(pki["ca"]))

        def fleet_address_status(route: str) -> int:
            request = urllib.request.Request(f"https://127.0.0.1:{fleet_port}{route}", data=b"", method="POST")
            try:
                return urllib.request.urlopen(request, context=tls_context, timeout=30).status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert fleet_address_status("/v1/control/list-runs") == 404
        assert fleet_address_status("/v1/fleet/get-run") not in (200, 404)  # there, refusing an empty body

        def site_parameters(k: int, site: str, window_s: float) -> dict:
            return {
                "site": site,
                "partition_id": k,
                "raw_dir": str(sites_root / site / "raw"),
                "out_dir": str(sites_root / site / "processed"),
                "fleet": "fleet",
                "models_root": str(models),
                "superlink": f"127.0.0.1:{fleet_port}",
                "root_certificates": str(pki["ca"]),
                "auth_private_key": str(pki[site]),
                "runtime_port": _free_port(),
                "window_s": window_s,
                "train_fraction": 0.5,
            }

        site_runs = {
            site: submit(f"site/{site}", site, site_parameters(k, site, 900.0)) for k, site in enumerate(SITES)
        }

        # kill site c's SuperNode (and its ClientApp) once it has answered round 1 and received round 2
        node_log = sites_root / "site-c" / "processed" / "logs" / "supernode.log"

        def in_round_two() -> bool:
            text = node_log.read_text(errors="replace") if node_log.is_file() else ""
            first = text.find("Sending: train message")
            return first >= 0 and text.find("Receiving: train message", first) >= 0

        _wait(in_round_two, 500, "site c in round 2")
        timings["until site c killed"] = time.monotonic() - t0
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "launch supernode" in cmdline and "site-c" in cmdline:
                os.killpg(os.getpgid(pid), signal.SIGKILL)

        from prefect import get_client
        from prefect.client.schemas.objects import StateType

        def final_state(run_id: str):
            import asyncio

            async def read():
                async with get_client() as client:
                    return (await client.read_flow_run(run_id)).state

            state = asyncio.run(read())
            return state if state is not None and state.is_final() else None

        state = _wait(lambda: final_state(coordinator_run), 900, "the coordinator run", poll_s=2)
        timings["coordinator run done"] = time.monotonic() - t0
        assert state.type == StateType.COMPLETED, (logs / "worker-coordinator.log").read_text()[-4000:]
        for site in SITES:
            state = _wait(lambda s=site: final_state(site_runs[s]), 120, f"{site}'s run", poll_s=2)
            assert state.type == StateType.COMPLETED, (logs / f"worker-{site}.log").read_text()[-4000:]
        timings["site runs done"] = time.monotonic() - t0

        # site c missed the end of the round: its next run (no training window) scores with the champion
        rerun = submit("site/site-c", "site-c", site_parameters(2, "site-c", 0.0))
        state = _wait(lambda: final_state(rerun), 120, "site c's re-run", poll_s=2)
        assert state.type == StateType.COMPLETED, (logs / "worker-site-c.log").read_text()[-4000:]
        timings["site c re-run done"] = time.monotonic() - t0
    finally:
        api.__exit__(None, None, None) if "api" in locals() else None
        for proc in reversed(processes):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in processes:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if superlink_pid is not None:
            from bearing_core.federated.deployment import stop_group

            stop_group(superlink_pid)

    # a model was published and is the fleet's champion
    from bearing_core.registry import current_champion, is_complete

    champion = current_champion(models, "fleet")
    assert champion is not None and is_complete(models / "fleet" / champion)
    metrics = pd.read_parquet(models / "fleet" / champion / "metrics.parquet")
    rounds = metrics[metrics["client"] == "global"]
    assert list(rounds["round"]) == list(range(1, ROUNDS + 1)) and rounds["eval_mse"].notna().all()
    record = json.loads(next((state_dir / "runs").glob("test-night-*.json")).read_text())
    assert record["status"] == "finished:completed"
    assert all(info["online_at_start"] == "online" for info in record["sites"].values())
    assert "site-c" in record["rounds"]["1"] and "site-c" not in record["rounds"][str(ROUNDS)]
    assert record["rounds"][str(ROUNDS)] == ["site-a", "site-b"]
    assert record["failures"]  # site c's missing replies are on record

    # every site's scores, with the champion
    for site in SITES:
        scores = sites_root / site / "processed" / "per_bearing" / "scores.parquet"
        assert scores.is_file(), site
        assert len(pd.read_parquet(scores)) > 0
        assert champion in (sites_root / site / "processed" / "alarms.md").read_text()

    # raw data never left a site: only the site's own processes opened its files, and each site's were opened
    seen: dict[str, set[str]] = {}
    for log in audit.glob("opens.*"):
        for line in log.read_text().splitlines():
            role, path = line.split("\t", 1)
            owner = Path(path).relative_to(sites_root).parts[0]
            seen.setdefault(owner, set()).add(role)
    assert seen == {site: {site} for site in SITES}, seen

    # measured figures (see BENCHMARKS.md): the cycle's timings and what a site sends per round
    from bearing_core.model_io import load_model

    model = load_model(models / "fleet" / champion)
    n_bytes = sum(p.detach().numpy().nbytes for p in model.model.state_dict().values())
    print("\nsites e2e timings (s since start):", {k: round(v, 1) for k, v in timings.items()})
    print(f"model update per site per round: {n_bytes} bytes")
