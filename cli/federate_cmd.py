"""``bearing federate``: coordinate a federated run across real sites (SuperLink + ServerApp)."""

from __future__ import annotations

import argparse
import ipaddress
import math
import socket
import sys
from pathlib import Path

from bearing_core.federated.deployment import LOOPBACK  # a light module (no flwr / torch)
from cli.train_cmd import add_training_arguments

HELP = "Coordinate federated training across sites: start a SuperLink, run the bearing ServerApp, save the model."
DESCRIPTION = """\
Start a Flower SuperLink whose Fleet API (the only API sites need) listens on --host:--port (127.0.0.1:9093
by default), wait for --clients sites to connect (each runs `bearing site --superlink HOST:PORT --data ...
--partition-id k`), run the federated training (federated scaling, then --rounds rounds of --strategy) with
`flwr run`, write the model and metrics.parquet to --out, then stop the SuperLink. The SuperLink's Control
API (`flwr run/ls/stop`, unauthenticated in Flower) and Runtime API listen on 127.0.0.1:--control-port only,
whatever --host says, and only bearing-fl's own ServerApp runs: a run of any other app is refused.
TLS: --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile (the certificate must name the address the sites dial);
plain HTTP needs an explicit --insecure, which a non-loopback --host refuses unless
--i-know-this-is-insecure is given too. --enable-supernode-auth only admits sites whose public keys were
registered (`flwr supernode register KEY.pub bearing` on this host while it runs)."""


def port_number(text: str) -> int:
    """A TCP port (1-65535) for argparse."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1-65535, got {port}")
    return port


def ip_address(text: str) -> str:
    """An IP address to bind (no host names: resolving one would query DNS) for argparse."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an IP address to bind (e.g. 127.0.0.1, 192.0.2.10, ::1), got {text!r}"
        ) from None


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0 for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("federate", help=HELP, description=DESCRIPTION)
    parser.add_argument("--clients", type=int, required=True, help="sites expected in the federation")
    add_training_arguments(parser)
    parser.add_argument(
        "--out",
        dest="model_dir",
        type=Path,
        required=True,
        help="model directory: new, empty or an earlier model (anything else is refused)",
    )
    parser.add_argument(
        "--host",
        type=ip_address,
        default=LOOPBACK,
        help="IP address the Fleet API (the sites' address) binds (default: 127.0.0.1)",
    )
    parser.add_argument("--port", type=port_number, default=9093, help="Fleet API port (default: 9093)")
    parser.add_argument(
        "--control-port",
        type=port_number,
        default=9095,
        help="Control and Runtime API port, on 127.0.0.1 only (default: 9095)",
    )
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--ssl-ca-certfile", type=Path, help="CA certificate (TLS; with --ssl-certfile/keyfile)")
    security.add_argument("--insecure", action="store_true", help="plain HTTP, for local tests only")
    parser.add_argument(
        "--i-know-this-is-insecure",
        dest="insecure_consent",
        action="store_true",
        help="allow --insecure on a non-loopback --host (unencrypted, unauthenticated sites)",
    )
    parser.add_argument("--ssl-certfile", type=Path, default=None, help="SuperLink TLS certificate")
    parser.add_argument("--ssl-keyfile", type=Path, default=None, help="SuperLink TLS private key")
    parser.add_argument("--enable-supernode-auth", action="store_true", help="admit registered sites only")
    parser.add_argument(
        "--timeout", type=positive_seconds, default=6 * 3600.0, help="give up after this many seconds (default: 21600)"
    )
    parser.add_argument("--logs", type=Path, default=Path("reports/federate"), help="SuperLink log directory")
    parser.set_defaults(func=run)


def address_problem(flag: str, host: str, port: int) -> str | None:
    """Why ``host:port`` (given by ``flag``) cannot be bound now (``None`` if it can); binds without listening."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"{flag} {port}: cannot bind {host}:{port}: {exc.strerror or exc}"
    return None


def security_problem(args: argparse.Namespace) -> str | None:
    """Why the address/security combination is refused (``None`` if acceptable)."""
    loopback = ipaddress.ip_address(args.host).is_loopback
    if args.insecure and not loopback and not args.insecure_consent:
        return (
            f"--insecure on --host {args.host} would serve unencrypted, unauthenticated federated traffic "
            "beyond this host; use TLS (--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile), or add "
            "--i-know-this-is-insecure"
        )
    if args.insecure_consent and not args.insecure:
        return "--i-know-this-is-insecure only goes with --insecure"
    if args.control_port == args.port and (loopback or ipaddress.ip_address(args.host).is_unspecified):
        return f"--control-port {args.control_port} is the Fleet API port; pick another"
    return None


def error(message: str, code: int = 2) -> int:
    """Print ``bearing federate: error: message`` (one line) and return ``code``."""
    print(f"bearing federate: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """SuperLink up, run submitted and awaited, SuperLink down; 0 when the model was written."""
    problem = security_problem(args)
    if problem:
        return error(problem)
    from pydantic import ValidationError

    from bearing_core.federated.deployment import (
        TlsFiles,
        flower_env,
        running,
        start,
        submit_run,
        superlink_command,
        wait_for_log,
        wait_for_run,
        write_connection,
    )
    from bearing_core.io import check_output_dir
    from bearing_core.model_io import MODEL_KIND
    from bearing_core.registry import check_training_output
    from cli.common import validation_message
    from cli.train_cmd import federated_config, print_table

    try:
        check_output_dir(args.model_dir, MODEL_KIND)  # before the SuperLink: the model is saved hours later
        cfg = federated_config(args)
        tls = None if args.insecure else TlsFiles(args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile)
        cmd = superlink_command(args.host, args.port, tls, args.enable_supernode_auth, control_port=args.control_port)
        if tls is not None:
            tls.check()
        check_training_output(args.model_dir)  # not over a registry or a published version
    except ValidationError as exc:
        return error(validation_message(exc))
    except (ValueError, FileNotFoundError) as exc:
        return error(str(exc))
    problem = address_problem("--port", args.host, args.port)
    problem = problem or address_problem("--control-port", LOOPBACK, args.control_port)
    if problem:
        return error(problem)
    # every refusal above comes before the heavy imports (torch, flwr): it is immediate
    from bearing_core.federated.launch import READY
    from bearing_core.federated.server_app import METRICS_FILE
    from bearing_core.model_io import GLOBAL_CLIENT

    if args.insecure:
        print(
            f"bearing federate: warning: --insecure: the Fleet API on {args.host}:{args.port} is plain HTTP "
            "(model updates unencrypted, sites not authenticated); for local tests only",
            file=sys.stderr,
        )
    env = flower_env()
    control = f"{LOOPBACK}:{args.control_port}"
    write_connection(control)
    model_dir = args.model_dir.resolve()
    superlink = start("superlink", cmd, args.logs / "superlink.log", env)
    with running([superlink]):
        try:
            wait_for_log(superlink, READY, timeout_s=120)
        except RuntimeError:
            return error(f"the SuperLink did not start; see {superlink.log_path}", 1)
        print(
            f"SuperLink: Fleet API on {args.host}:{args.port} (sites), Control API on {control} (this host "
            f"only); waiting for {cfg.num_clients} sites (log: {superlink.log_path})",
            flush=True,
        )
        try:
            run_id = submit_run({**cfg.to_run_config(), "out-dir": str(model_dir)}, env=env)
            status = wait_for_run(run_id, args.timeout, env=env)
        except (RuntimeError, TimeoutError) as exc:
            return error(f"{exc}; see {superlink.log_path}", 1)
    if status != "finished:completed" or not (model_dir / METRICS_FILE).is_file():
        return error(f"run {run_id} ended {status}; see {superlink.log_path}", 1)
    import pandas as pd

    print_table(pd.read_parquet(model_dir / METRICS_FILE), GLOBAL_CLIENT, f"federated ({cfg.strategy}), run {run_id}")
    print(f"model:   {model_dir}")
    print(f"metrics: {model_dir / METRICS_FILE}")
    return 0
