"""Deployment mode: real sites run a Flower SuperNode next to their own data, the coordinator a SuperLink.

Topology (Flower 1.42; the processes are started through :mod:`bearing_core.federated.launch`)::

    coordinator:  SuperLink  Fleet API on --host:--port (9093; TLS)            <- the sites dial this, nothing else
                             Control + Runtime APIs on 127.0.0.1:--control-port (9095; this host only)
                             + guarded SuperExec: runs bearing-fl's ServerApp and nothing else
                  flwr run bearing_core/federated/app bearing --run-config "out-dir='...' rounds=..."   (to 127.0.0.1)
    site k:       SuperNode  dials HOST:9093; its Runtime API on 127.0.0.1:<runtime port>
                      --node-config "clients-dir='/site/clients/iid' partition-id=k"      (bearing site)
                             + guarded SuperExec: runs bearing-fl's ClientApp and nothing else

The ServerApp and ClientApp are :data:`bearing_core.federated.server_app.app` and
:data:`bearing_core.federated.client_app.app`; the Flower app directory :data:`APP_DIR` only holds their
``pyproject.toml`` (components + default run config), the code comes from the bearing-fl installation on each
host. Runtime dependency installation is disabled (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``), else
``flwr run`` would pip-install a CUDA torch on every host.

Security:

* Only the Fleet API faces the network. Flower's Control API has no authentication (TLS and SuperNode
  authentication do not change that): whoever reaches it may submit a run, whose ServerApp would run on the
  coordinator and whose ClientApp at every site. So it listens on 127.0.0.1 only, whatever ``--host`` says.
* Only bearing-fl's app runs (:mod:`bearing_core.federated.guard`): the SuperLink and each SuperNode run with
  ``--isolation process`` and a guarded SuperExec that checks every run's app bundle before any of its code
  runs; a foreign run is refused at the coordinator and, should a SuperLink hand one out anyway, at each site.
* TLS on the Fleet API: ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key`` on
  the coordinator and ``--root-certificates ca.crt`` at the sites instead of ``--insecure``. The server
  certificate must name the address the sites dial (SAN).
* SuperNode authentication: ``--enable-supernode-auth``; each site has an ECDSA key pair,
  passes ``--auth-supernode-private-key site.key`` and the coordinator registers the site's public key
  (``flwr supernode register site.pub bearing``, on the coordinator) before it may join.
* Everything binds 127.0.0.1 by default; bind a routable Fleet address deliberately (``--host``) and only
  with TLS (``bearing federate`` refuses ``--insecure`` on a non-loopback host without an explicit consent flag).

The helpers here build the command lines and environment, manage the processes (each in its own process group,
so a stop also ends the SuperExec / ServerApp / ClientApp children) and submit/await a run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bearing_core.env import configure_environment
from bearing_core.io import write_text_atomic

APP_DIR = Path(__file__).resolve().parent / "app"
LOOPBACK = "127.0.0.1"
DEFAULT_HOST = LOOPBACK
DEFAULT_SUPERLINK_PORT = 9093
DEFAULT_CONTROL_PORT = 9095
DEFAULT_NODE_PORT = 9094
CONNECTION = "bearing"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS SuperLink (server side) and what clients need to verify it (``ca_certfile``)."""

    ca_certfile: Path
    certfile: Path | None = None
    keyfile: Path | None = None

    def check(self) -> None:
        """``FileNotFoundError`` naming the first given file that does not exist (before any process starts)."""
        for label, path in (
            ("CA certificate", self.ca_certfile),
            ("certificate", self.certfile),
            ("private key", self.keyfile),
        ):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"TLS {label} not found: {path}")


def flower_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: offline defaults, venv ``bin`` on PATH, bearing-fl importable.

    The SuperLink and SuperNodes spawn ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name
    and those import ``bearing_core``: the interpreter's ``bin`` directory goes first on ``PATH`` and the project
    root on ``PYTHONPATH`` (harmless when bearing-fl is pip-installed).
    """
    configure_environment()
    env = dict(os.environ if base is None else base)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    paths = [str(_PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def superlink_command(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_SUPERLINK_PORT,
    tls: TlsFiles | None = None,
    enable_supernode_auth: bool = False,
    database: Path | None = None,
    control_port: int = DEFAULT_CONTROL_PORT,
) -> list[str]:
    """The SuperLink: Fleet API on ``host:port`` (``--insecure`` without TLS), Control and Runtime APIs on
    ``127.0.0.1:control_port``, the guarded SuperExec (see :mod:`bearing_core.federated.launch`)."""
    cmd = [
        sys.executable,
        "-m",
        "bearing_core.federated.launch",
        "superlink",
        "--fleet-host",
        host,
        "--fleet-port",
        str(port),
        "--control-port",
        str(control_port),
    ]
    if tls is None:
        cmd.append("--insecure")
    else:
        if tls.certfile is None or tls.keyfile is None:
            raise ValueError("a TLS SuperLink needs certfile and keyfile besides ca_certfile")
        cmd += [
            "--ssl-ca-certfile",
            str(tls.ca_certfile),
            "--ssl-certfile",
            str(tls.certfile),
            "--ssl-keyfile",
            str(tls.keyfile),
        ]
    if enable_supernode_auth:
        cmd.append("--enable-supernode-auth")
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd


def node_config(clients_dir: str | os.PathLike[str], partition_id: int) -> str:
    """The ``--node-config`` value telling the bearing ClientApp where this site's partition file is."""
    clients_dir = Path(clients_dir).resolve()
    if "'" in str(clients_dir):
        raise ValueError(f"clients dir may not contain a single quote: {clients_dir}")
    return f"clients-dir='{clients_dir}' partition-id={int(partition_id)}"


def supernode_command(
    superlink: str,
    clients_dir: str | os.PathLike[str],
    partition_id: int,
    runtime_port: int = DEFAULT_NODE_PORT,
    root_certificates: Path | None = None,
    auth_private_key: Path | None = None,
) -> list[str]:
    """One site's SuperNode dialing ``superlink`` (HOST:PORT; ``--insecure`` without a CA file), its Runtime API
    on ``127.0.0.1:runtime_port``, and the guarded SuperExec (see :mod:`bearing_core.federated.launch`)."""
    cmd = [
        sys.executable,
        "-m",
        "bearing_core.federated.launch",
        "supernode",
        "--superlink",
        superlink,
        "--runtime-port",
        str(runtime_port),
        "--node-config",
        node_config(clients_dir, partition_id),
    ]
    cmd += ["--insecure"] if root_certificates is None else ["--root-certificates", str(root_certificates)]
    if auth_private_key is not None:
        cmd += ["--auth-supernode-private-key", str(auth_private_key)]
    return cmd


def run_config_arg(run_config: Mapping[str, Any]) -> str:
    """A ``--run-config`` value: ``key=value`` pairs, strings TOML-quoted."""
    parts = []
    for key, value in run_config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        parts.append(f"{key}={text}")
    return " ".join(parts)


def write_connection(address: str, name: str = CONNECTION, flwr_home: Path | None = None) -> Path:
    """Add/replace ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml`` (what ``flwr run <name>`` dials): the
    SuperLink's Control API at ``address``, plain HTTP because it listens on 127.0.0.1 only."""
    import tomli_w  # a flwr dependency

    home = Path(flwr_home or os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    path = home / "config.toml"
    config: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    links = config.setdefault("superlink", {})
    links[name] = {"address": address, "insecure": True}
    links.setdefault("default", name)
    write_text_atomic(path, tomli_w.dumps(config))
    return path


@dataclass
class FlowerProcess:
    """A Flower server process started by :func:`start`, in its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group (SuperExec and app children included), SIGKILL what is left after grace."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start(name: str, cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> FlowerProcess:
    """Start ``cmd`` in a new process group with stdout+stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - owned by the child process
    try:
        process = subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, env=dict(env or flower_env()), start_new_session=True
        )
    finally:
        log.close()
    return FlowerProcess(name, process, log_path)


@contextmanager
def running(processes: list[FlowerProcess]) -> Iterator[list[FlowerProcess]]:
    """Stop every process on exit, whatever happens inside the block, SIGTERM included.

    The processes run in their own process groups (so a Ctrl-C at the terminal reaches them once, through us), so a
    SIGTERM to our group does not reach them: while the block runs in the main thread, SIGTERM raises
    ``SystemExit`` here, and the ``finally`` stops them instead of leaving them orphaned.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield processes
    finally:
        for proc in reversed(processes):
            proc.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def wait_for_log(proc: FlowerProcess, text: str, timeout_s: float = 60.0) -> None:
    """Block until ``text`` appears in the process log; ``RuntimeError`` if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in proc.log_path.read_text(encoding="utf-8", errors="replace"):
            return
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with code {proc.process.returncode}:\n{proc.log_tail()}")
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name}: '{text}' not logged within {timeout_s:g}s:\n{proc.log_tail()}")


def submit_run(
    run_config: Mapping[str, Any], connection: str = CONNECTION, env: Mapping[str, str] | None = None
) -> int:
    """Submit the bearing app with ``flwr run`` (no log stream); returns the run id."""
    args = ["run", str(APP_DIR), connection, "--run-config", run_config_arg(run_config)]
    return int(_flwr_json(args, env, timeout_s=120)["run-id"])


def run_status(run_id: int, connection: str = CONNECTION, env: Mapping[str, str] | None = None) -> str:
    """Status of a run as ``flwr ls`` reports it (e.g. ``running``, ``finished:completed``, ``finished:failed``)."""
    out = subprocess.run(
        ["flwr", "ls", connection, "--run-id", str(run_id), "--format", "json"],
        capture_output=True,
        text=True,
        env=dict(env or flower_env()),
        timeout=60,
        check=False,
    )
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown"
    return str(runs[0]["status"]) if runs else "unknown"


def wait_for_run(
    run_id: int,
    timeout_s: float,
    connection: str = CONNECTION,
    env: Mapping[str, str] | None = None,
    poll_s: float = 3.0,
) -> str:
    """Poll until the run finishes; returns its final status, ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run_status(run_id, connection, env)
        if status.startswith("finished"):
            return status
        time.sleep(poll_s)
    raise TimeoutError(f"run {run_id} not finished within {timeout_s:g}s")


def _flwr_json(args: Sequence[str], env: Mapping[str, str] | None, timeout_s: float = 60) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` and return its JSON reply (``RuntimeError`` unless it reports success)."""
    out = subprocess.run(
        ["flwr", *args, "--format", "json"],
        capture_output=True,
        text=True,
        env=dict(env or flower_env()),
        timeout=timeout_s,
        check=False,
    )
    try:
        reply = json.loads(out.stdout)
    except json.JSONDecodeError:
        reply = {}
    if out.returncode != 0 or not reply.get("success"):
        raise RuntimeError(
            f"flwr {args[0]} {args[1] if len(args) > 1 else ''} failed ({out.returncode}): "
            f"{out.stdout.strip()} {out.stderr.strip()}"
        )
    return reply


def register_supernode(
    public_key: Path, name: str, connection: str = CONNECTION, env: Mapping[str, str] | None = None
) -> int:
    """Admit a site's SuperNode (``--enable-supernode-auth``): ``flwr supernode register KEY.pub`` through the
    Control API (this host only); returns the node id the SuperLink gave it."""
    reply = _flwr_json(["supernode", "register", str(public_key), connection, "--name", name], env)
    return int(reply["node-id"])


def supernode_status(connection: str = CONNECTION, env: Mapping[str, str] | None = None) -> dict[int, str]:
    """Node id -> status (``registered``, ``online``, ``offline``, ...) of the SuperNodes the SuperLink knows."""
    reply = _flwr_json(["supernode", "ls", connection], env)
    return {int(node["node-id"]): str(node["status"]) for node in reply.get("nodes", [])}


def start_detached(name: str, cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> int:
    """Start ``cmd`` in its own session, not tied to the caller (it outlives the flow run that started it, e.g.
    the coordinator's SuperLink, reused by the next night's run); returns its pid (= its process group id)."""
    return start(name, cmd, log_path, env).process.pid


def group_alive(pgid: int) -> bool:
    """Whether the process group ``pgid`` (a :func:`start_detached` process) still has a live leader."""
    try:
        os.kill(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by a parent that is still there) is not alive
        return Path(f"/proc/{pgid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def stop_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group ``pgid``, SIGKILL it after ``grace_s`` if its leader is still alive."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_group(pgid, signal.SIGKILL)
