"""Deployment mode: the coordinator runs nobody else's code and sites reach the Fleet API only (issue 14).

A foreign Flower app (written here, its server and client code each drop a marker file) is submitted with the
venv's ``flwr run``: to ``bearing federate`` it is refused (the sites' address has no Control API, the local
Control API accepts the run but the coordinator refuses its ServerApp), and a ``bearing site`` refuses its
ClientApp even when a stock SuperLink runs the foreign ServerApp. Everything listens on loopback; no test
contacts an address other than 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from helpers.feature_datasets import write_feature_dataset
from helpers.processes import bearing, free_port

from bearing_core.federated.deployment import (
    APP_DIR,
    FlowerProcess,
    flower_env,
    running,
    start,
    wait_for_log,
    wait_for_run,
    write_connection,
)
from bearing_core.inputs import InputConfig
from bearing_core.partition.build import partition_dataset

FOREIGN_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "foreignapp"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "foreignapp.server:app"
clientapp = "foreignapp.client:app"

[tool.flwr.app.config]
answer = 42
"""

FOREIGN_SERVER = """\
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

MARKERS = Path({markers!r})
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    MARKERS.mkdir(exist_ok=True)
    (MARKERS / "server-ran").write_text("foreign server code ran")
    nodes, deadline = [], time.monotonic() + 60
    while not nodes and time.monotonic() < deadline:
        nodes = list(grid.get_node_ids())
        time.sleep(0.5)
    messages = [Message(RecordDict({{"cfg": ConfigRecord({{"x": 1}})}}), dst_node_id=node,
                        message_type=MessageType.QUERY) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=60))
    (MARKERS / "server-replies").write_text(
        "\\n".join(reply.error.reason if reply.has_error() else "ok" for reply in replies) or "no replies")
"""

FOREIGN_CLIENT = """\
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

MARKERS = Path({markers!r})
app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    MARKERS.mkdir(exist_ok=True)
    (MARKERS / "client-ran").write_text("foreign client code ran next to the site's data")
    return Message(RecordDict({{"cfg": ConfigRecord({{"ok": 1}})}}), reply_to=msg)
"""


def write_foreign_app(app_dir: Path, markers: Path) -> Path:
    """A minimal Flower app whose server and client code each write a marker file into ``markers``."""
    package = app_dir / "foreignapp"
    package.mkdir(parents=True)
    (app_dir / "pyproject.toml").write_text(FOREIGN_PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "server.py").write_text(FOREIGN_SERVER.format(markers=str(markers)))
    (package / "client.py").write_text(FOREIGN_CLIENT.format(markers=str(markers)))
    return app_dir


def flwr_run(app_dir: Path, connection: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The venv's ``flwr run`` (JSON output)."""
    return subprocess.run(
        ["flwr", "run", str(app_dir), connection, "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def run_id_of(out: subprocess.CompletedProcess[str]) -> int:
    reply = json.loads(out.stdout)
    assert out.returncode == 0 and reply.get("success"), out.stdout + out.stderr
    return int(reply["run-id"])


def markers_written(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.iterdir()) if markers.exists() else []


def http_status(url: str) -> int:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _process_tree(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grown = {root}, True
    while grown:
        children = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= children
        grown = bool(children)
    return tree


def listening_sockets(root: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by ``root`` or its descendants (from /proc)."""
    inodes = set()
    for pid in _process_tree(root):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not Path(table).is_file():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                continue
            address, port = fields[1].split(":")
            raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def start_site(port: int, dataset: Path, logs: Path, env: dict[str, str]) -> FlowerProcess:
    """``bearing site --insecure`` as partition 0 of ``dataset``, dialling 127.0.0.1:``port``; returns once its
    SuperNode has registered."""
    cmd = bearing("site", "--superlink", f"127.0.0.1:{port}", "--data", str(dataset), "--scheme", "natural")
    cmd += ["--partition-id", "0", "--port", str(free_port()), "--insecure"]
    site = start("site", cmd, logs / "site.log", env)
    wait_for_log(site, "SuperNode ID", timeout_s=60)
    return site


# --- the app check ---------------------------------------------------------------------------------------------


def _fab(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as fab:
        for name, content in files.items():
            fab.writestr(name, content)
    return buffer.getvalue()


def test_check_fab_accepts_bearings_bundle_and_refuses_any_other(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk

    from bearing_core.federated.guard import ForeignAppError, check_fab

    check_fab(build_fab_from_disk(APP_DIR))  # what `flwr run bearing_core/federated/app` submits: accepted

    foreign = build_fab_from_disk(write_foreign_app(tmp_path / "foreignapp", tmp_path / "markers"))
    with pytest.raises(ForeignAppError, match=r"files besides pyproject.toml \(foreignapp/__init__.py"):
        check_fab(foreign)

    ours = (APP_DIR / "pyproject.toml").read_bytes()
    # bearing's own pyproject, plus a module that would shadow the installed ServerApp
    with pytest.raises(ForeignAppError, match="bearing_core/federated/server_app.py"):
        check_fab(_fab({"pyproject.toml": ours, "bearing_core/federated/server_app.py": b"import os"}))
    # bearing's publisher and name, another ServerApp
    hijacked = ours.replace(b"bearing_core.federated.server_app:app", b"os:system")
    with pytest.raises(ForeignAppError, match="is not bearing-fl's"):
        check_fab(_fab({"pyproject.toml": hijacked}))
    with pytest.raises(ForeignAppError, match="not a readable app bundle"):
        check_fab(b"#!/bin/sh\n")
    check_fab(_fab({"pyproject.toml": ours}))  # another run config / version of the same app is fine


def test_guarded_superexec_acquires_and_launches_its_own_task_type_only() -> None:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResultStatus

    from bearing_core.federated.guard import _guarded_executor

    executor = _guarded_executor("serverapp")
    assert executor.get_eligible_capacity(set(TaskType))[0] == {TaskType.SERVER_APP}
    for task_type in set(TaskType) - {TaskType.SERVER_APP}:  # e.g. a simulation or agent run: never launched
        spec = ExecutionSpec(
            task_type=task_type,
            runtime_api_address="127.0.0.1:9",
            token="t",
            insecure=True,
            root_certificates_path=None,
            runtime_dependency_install=False,
            parent_pid=None,
            suppress_output=False,
            task_id=7,
        )
        result = executor.launch(spec)
        assert result.status == LaunchResultStatus.FAILED and "only bearing-fl's serverapp runs here" in result.message
    assert _guarded_executor("clientapp").get_eligible_capacity(set(TaskType))[0] == {TaskType.CLIENT_APP}


def test_fleet_listener_serves_fleet_paths_only() -> None:
    from starlette.testclient import TestClient

    from bearing_core.federated.launch import FleetOnly

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    client = TestClient(FleetOnly(app))
    assert client.post("/v1/fleet/register-node").text == "/v1/fleet/register-node"
    for path in (
        "/v1/control/start-run",
        "/v1/runtime/acquire-task",
        "/docs",
        "/openapi.json",
        "/health",
        "/v1/fleet/../control/start-run",
        "/v1/fleet/",
        "/v1/fleetx/get-run",
    ):
        assert client.post(path).status_code == 404, path


# --- command-line refusals ---------------------------------------------------------------------------------------


def _federate(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    cmd = bearing(
        "federate", "--clients", "1", "--out", str(tmp_path / "model"), "--logs", str(tmp_path / "logs"), *argv
    )
    return subprocess.run(cmd, capture_output=True, text=True, env=flower_env(), timeout=120, check=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--host", "0.0.0.0", "--insecure"), "--insecure on --host 0.0.0.0 would serve unencrypted"),
        (("--host", "::", "--insecure"), "--insecure on --host :: would serve unencrypted"),
        (("--port", "70000", "--insecure"), "argument --port: port must be in 1-65535, got 70000"),
        (("--host", "coordinator.example", "--insecure"), "argument --host: expected an IP address"),
        (("--timeout", "-1", "--insecure"), "argument --timeout: must be a finite number of seconds > 0"),
        (("--timeout", "inf", "--insecure"), "argument --timeout: must be a finite number of seconds > 0"),
        (("--control-port", "0", "--insecure"), "argument --control-port: port must be in 1-65535, got 0"),
        (
            (
                "--i-know-this-is-insecure",
                "--ssl-ca-certfile",
                "ca.pem",
                "--ssl-certfile",
                "s.pem",
                "--ssl-keyfile",
                "s.key",
            ),
            "--i-know-this-is-insecure only goes with --insecure",
        ),
    ],
)
@pytest.mark.integration
def test_federate_refuses_bad_or_unsafe_addresses_in_one_line(
    tmp_path: Path, argv: tuple[str, ...], message: str
) -> None:
    out = _federate(tmp_path, *argv)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("bearing federate: error: "), out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "logs").exists()  # nothing was started, nothing listened


@pytest.mark.integration
def test_federate_refuses_a_port_in_use_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag, other in (("--port", "--control-port"), ("--control-port", "--port")):
            out = _federate(tmp_path, flag, str(port), other, str(free_port()), "--insecure")
            assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
            assert f"bearing federate: error: {flag} {port}: cannot bind 127.0.0.1:{port}" in out.stderr
    assert not (tmp_path / "logs").exists()


# --- the running federation ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_control_and_runtime_apis_listen_on_loopback_whatever_host_says(tmp_path: Path) -> None:
    """``--host 127.0.0.2`` (loopback, but not 127.0.0.1): the Fleet API follows it, the rest stays on 127.0.0.1."""
    env = flower_env()
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    port, control_port, logs = free_port(), free_port(), tmp_path / "logs"
    coordinator = start(
        "federate",
        bearing(
            "federate",
            "--clients",
            "1",
            "--out",
            str(tmp_path / "model"),
            "--host",
            "127.0.0.2",
            "--port",
            str(port),
            "--control-port",
            str(control_port),
            "--insecure",
            "--logs",
            str(logs),
            "--timeout",
            "300",
        ),
        logs / "federate.log",
        env,
    )
    with running([coordinator]):
        wait_for_log(coordinator, "waiting for 1 sites", timeout_s=120)
        assert listening_sockets(coordinator.process.pid) == {("127.0.0.2", port), ("127.0.0.1", control_port)}
        log = coordinator.log_path.read_text()
        assert "bearing federate: warning: --insecure" in log
        assert f"Control API on 127.0.0.1:{control_port} (this host only)" in log


def test_a_terminated_coordinator_stops_its_superlink(tmp_path: Path) -> None:
    """SIGTERM to ``bearing federate`` (a service manager stopping it, a test's cleanup) stops the SuperLink it
    started in its own process group, instead of leaving it listening."""
    env = flower_env()
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    logs = tmp_path / "logs"
    args = ["--clients", "1", "--out", str(tmp_path / "model"), "--port", str(free_port())]
    args += ["--control-port", str(free_port()), "--insecure", "--logs", str(logs), "--timeout", "300"]
    coordinator = start("federate", bearing("federate", *args), logs / "federate.log", env)
    with running([coordinator]):
        wait_for_log(coordinator, "waiting for 1 sites", timeout_s=120)
        children = _process_tree(coordinator.process.pid) - {coordinator.process.pid}
        superlinks = [pid for pid in children if b"superlink" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert superlinks, "no SuperLink under the coordinator"
        os.kill(coordinator.process.pid, signal.SIGTERM)  # the leader only, as a service manager would
        assert coordinator.process.wait(30) != 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(pid) for pid in superlinks):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in superlinks), "the SuperLink outlived its coordinator"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.integration
def test_foreign_app_submitted_to_bearing_federate_is_refused_and_runs_nowhere(tmp_path: Path) -> None:
    dataset = write_feature_dataset(tmp_path / "dataset", rows_per_site=20)
    partition_dataset(dataset, "natural", 2, 0, InputConfig(train_fraction=1.0))
    markers = tmp_path / "markers"
    app = write_foreign_app(tmp_path / "foreignapp", markers)
    home = tmp_path / "flwr-home"
    env = flower_env()
    env["FLWR_HOME"] = str(home)
    port, control_port, logs = free_port(), free_port(), tmp_path / "logs"
    # two sites expected, one joins: bearing's own run waits while the foreign app is submitted
    coordinator = start(
        "federate",
        bearing(
            "federate",
            "--clients",
            "2",
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "model"),
            "--port",
            str(port),
            "--control-port",
            str(control_port),
            "--insecure",
            "--logs",
            str(logs),
            "--timeout",
            "300",
        ),
        logs / "federate.log",
        env,
    )
    processes: list[FlowerProcess] = [coordinator]
    with running(processes):
        wait_for_log(coordinator, "waiting for 2 sites", timeout_s=120)
        site = start_site(port, dataset, logs, env)
        processes.append(site)

        # the address the sites dial has no Control API: the submission fails there
        write_connection(f"127.0.0.1:{port}", "sites-address", flwr_home=home)
        refused = json.loads(flwr_run(app, "sites-address", env).stdout)
        assert refused["success"] is False, refused
        assert f"'404 Not Found' for url 'http://127.0.0.1:{port}/v1/control/start-run'" in refused["error-message"]
        for path in ("/v1/control/start-run", "/v1/control/list-runs", "/v1/runtime/acquire-task", "/docs"):
            assert http_status(f"http://127.0.0.1:{port}{path}") == 404, path

        # on the coordinator's own host the Control API takes the run, and the coordinator refuses to run it
        write_connection(f"127.0.0.1:{control_port}", "local", flwr_home=home)
        run_id = run_id_of(flwr_run(app, "local", env))
        assert wait_for_run(run_id, timeout_s=120, connection="local", env=env, poll_s=1.0) == "finished:failed"
        superlink_log = (logs / "superlink.log").read_text()
        assert "refused: the app bundle carries files besides pyproject.toml (foreignapp/__init__.py" in superlink_log
        assert markers_written(markers) == []
        assert coordinator.alive() and site.alive()  # bearing's own run still waits for its second site
    assert markers_written(markers) == []


@pytest.mark.integration
def test_site_refuses_a_foreign_clientapp_even_from_a_superlink_that_runs_it(tmp_path: Path) -> None:
    """A stock SuperLink (what `bearing federate` was before) runs the foreign ServerApp, which queries the site:
    the site answers with a refusal and the foreign client code never runs next to its data."""
    dataset = write_feature_dataset(tmp_path / "dataset", rows_per_site=20)
    partition_dataset(dataset, "natural", 2, 0, InputConfig(train_fraction=1.0))
    markers = tmp_path / "markers"
    app = write_foreign_app(tmp_path / "foreignapp", markers)
    home = tmp_path / "flwr-home"
    env = flower_env()
    env["FLWR_HOME"] = str(home)
    port, logs = free_port(), tmp_path / "logs"
    stock = start(
        "stock-superlink",
        [
            "flower-superlink",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--insecure",
            "--disable-runtime-dependency-installation",
        ],
        logs / "stock.log",
        env,
    )
    processes: list[FlowerProcess] = [stock]
    with running(processes):
        wait_for_log(stock, "Uvicorn running on", timeout_s=60)
        site = start_site(port, dataset, logs, env)
        processes.append(site)
        write_connection(f"127.0.0.1:{port}", "stock", flwr_home=home)
        run_id = run_id_of(flwr_run(app, "stock", env))
        wait_for_run(run_id, timeout_s=180, connection="stock", env=env, poll_s=1.0)
        assert site.alive()
    # the foreign app works (its server code ran on the stock SuperLink) but the site refused its client code
    assert markers_written(markers) == ["server-ran", "server-replies"]
    replies = (markers / "server-replies").read_text()
    assert "ForeignAppError" in replies and "refused: the app bundle carries files besides pyproject.toml" in replies
    assert "refused: the app bundle carries files besides pyproject.toml" in site.log_path.read_text()
