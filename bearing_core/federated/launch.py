"""The coordinator's SuperLink and a site's SuperNode as bearing-fl runs them.

Run as ``python -m bearing_core.federated.launch superlink|supernode ...``.

Flower 1.42 serves the SuperLink's Fleet API (sites), Control API (``flwr run/ls/stop``: anyone who reaches it
may submit a run, there is no authentication) and Runtime API (the ServerApp process; the former ServerAppIo API)
from ONE HTTP application on one ``--host:--port``. bearing-fl splits them:

``superlink --fleet-host H --fleet-port P --control-port C [TLS | --insecure] [--enable-supernode-auth]``
    flwr's SuperLink application (:func:`flwr.superlink.main.create_app`, configured by flwr's own
    ``flower-superlink`` argument parser) served twice from one process and one state:

    * ``H:P``, what the sites dial (TLS when given): the Fleet API routes only (``/v1/fleet/<rpc>``, see
      :class:`FleetOnly`); the Control and Runtime APIs, the docs and the OpenAPI schema answer 404 there;
    * ``127.0.0.1:C``, plain HTTP on this host only: every API. ``flwr run/ls/stop`` and the ServerApp use it.

    The SuperLink runs with ``--isolation process``; this launcher starts the guarded SuperExec
    (:mod:`bearing_core.federated.guard`) which runs nothing but bearing-fl's ServerApp.

``supernode --superlink HOST:PORT --runtime-port R --node-config ... [--insecure | --root-certificates CA] ...``
    flwr's ``flower-supernode`` (``--isolation process``, its Runtime API on ``127.0.0.1:R``) plus the guarded
    SuperExec, which runs nothing but bearing-fl's ClientApp.

Both print :data:`READY` once everything listens, and stop the guarded SuperExec when they stop (it also exits
when its parent dies). The command lines are built by :mod:`bearing_core.federated.deployment`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from bearing_core.federated.deployment import LOOPBACK
from bearing_core.federated.guard import superexec_command

READY = "bearing-fl: ready"
#: Paths served on the sites' address: flwr's Fleet RPCs (``/v1/fleet/register-node`` ...), nothing else.
FLEET_PATH = re.compile(r"/v1/fleet/[a-z][a-z-]*")


class FleetOnly:
    """ASGI wrapper passing HTTP requests for Fleet API paths to ``app``; anything else gets 404."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and FLEET_PATH.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http":
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"10")],
                }
            )
            await send({"type": "http.response.body", "body": b"not found\n"})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """A uvicorn server leaving SIGTERM/SIGINT to :func:`_serve` (two servers share one process)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


@contextlib.contextmanager
def _guarded_superexec(role: str, runtime_address: str) -> Iterator[subprocess.Popen[bytes]]:
    import os

    proc = subprocess.Popen(superexec_command(role, runtime_address, parent_pid=os.getpid()))  # noqa: S603
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _serve(servers: Sequence[Any], ready_line: str, role: str, runtime_address: str) -> None:
    """Start ``servers`` one after the other, then the guarded SuperExec; run until a signal or a server ends."""
    tasks = []
    for server in servers:
        tasks.append(asyncio.create_task(server.serve()))
        while not server.started:
            if tasks[-1].done():
                break
            await asyncio.sleep(0.05)
        if not server.started:
            for other in servers:
                other.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
            raise SystemExit(1)

    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    with _guarded_superexec(role, runtime_address):
        print(ready_line, flush=True)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def run_superlink(args: argparse.Namespace) -> None:
    import uvicorn
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module, not the function

    flwr_args = [
        "--host",
        LOOPBACK,
        "--port",
        str(args.control_port),
        "--isolation",
        "process",
        "--disable-runtime-dependency-installation",
    ]
    if args.insecure:
        flwr_args.append("--insecure")
    else:
        flwr_args += [
            "--ssl-ca-certfile",
            args.ssl_ca_certfile,
            "--ssl-certfile",
            args.ssl_certfile,
            "--ssl-keyfile",
            args.ssl_keyfile,
        ]
    if args.enable_supernode_auth:
        flwr_args.append("--enable-supernode-auth")
    if args.database is not None:
        flwr_args += ["--database", args.database]
    sys.argv = ["flower-superlink", *flwr_args]
    config = cli._parse_superlink_lifespan_config()  # flwr's own validation of its options
    app = create_app(config, cli.SuperLinkLifespan)

    server = _server_class()
    control = server(
        uvicorn.Config(
            app,
            host=LOOPBACK,
            port=args.control_port,
            access_log=True,
            workers=1,
            log_config=get_uvicorn_log_config(console_handler.level),
        )
    )
    fleet = server(
        uvicorn.Config(
            FleetOnly(app),
            host=args.fleet_host,
            port=args.fleet_port,
            lifespan="off",
            access_log=True,
            workers=1,
            log_config=None,
            ssl_certfile=config.ssl_certfile,
            ssl_keyfile=config.ssl_keyfile,
        )
    )
    scheme = "http" if args.insecure else "https"
    ready = (
        f"{READY}: Fleet API on {scheme}://{args.fleet_host}:{args.fleet_port} (sites); Control and "
        f"Runtime APIs on http://{LOOPBACK}:{args.control_port} (this host only)"
    )
    runtime = f"{LOOPBACK}:{args.control_port}"
    asyncio.run(_serve([control, fleet], ready, "serverapp", runtime))


def run_supernode(args: argparse.Namespace) -> None:
    flower_supernode = importlib.import_module("flwr.supernode.cli.flower_supernode").flower_supernode

    flwr_args = [
        "--superlink",
        args.superlink,
        "--isolation",
        "process",
        "--host",
        LOOPBACK,
        "--port",
        str(args.runtime_port),
        "--node-config",
        args.node_config,
    ]
    flwr_args += ["--insecure"] if args.insecure else ["--root-certificates", args.root_certificates]
    if args.auth_supernode_private_key is not None:
        flwr_args += ["--auth-supernode-private-key", args.auth_supernode_private_key]
    sys.argv = ["flower-supernode", *flwr_args]
    with _guarded_superexec("clientapp", f"{LOOPBACK}:{args.runtime_port}"):
        print(
            f"{READY}: SuperNode dialing {args.superlink}; ClientApp runtime on {LOOPBACK}:{args.runtime_port}",
            flush=True,
        )
        flower_supernode()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bearing_core.federated.launch")
    sub = parser.add_subparsers(dest="command", required=True)
    link = sub.add_parser("superlink")
    link.add_argument("--fleet-host", required=True)
    link.add_argument("--fleet-port", type=int, required=True)
    link.add_argument("--control-port", type=int, required=True)
    link.add_argument("--enable-supernode-auth", action="store_true")
    link.add_argument("--database", default=None)
    link.add_argument("--ssl-certfile", default=None)
    link.add_argument("--ssl-keyfile", default=None)
    node = sub.add_parser("supernode")
    node.add_argument("--superlink", required=True)
    node.add_argument("--runtime-port", type=int, required=True)
    node.add_argument("--node-config", required=True)
    node.add_argument("--auth-supernode-private-key", default=None)
    for p in (link, node):
        tls = p.add_mutually_exclusive_group(required=True)
        tls.add_argument("--insecure", action="store_true")
        tls.add_argument("--ssl-ca-certfile" if p is link else "--root-certificates", default=None)
    args = parser.parse_args(argv)
    (run_superlink if args.command == "superlink" else run_supernode)(args)


if __name__ == "__main__":
    main()
