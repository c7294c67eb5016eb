"""``bearing federate``: coordinate a federated run across real sites (SuperLink + ServerApp)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.train_cmd import add_training_arguments

HELP = "Coordinate federated training across sites: start a SuperLink, run the bearing ServerApp, save the model."
DESCRIPTION = """\
Start a Flower SuperLink on --host:--port (127.0.0.1:9093 by default), wait for --clients sites to connect
(each runs `bearing site --superlink HOST:PORT --data ... --partition-id k`), run the federated training
(federated scaling, then --rounds rounds of --strategy) with `flwr run`, write the model and metrics.parquet to
--out, then stop the SuperLink. TLS: --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile (the certificate must name
the address the sites dial); plain HTTP needs an explicit --insecure. --enable-supernode-auth only admits sites
whose public keys were registered (`flwr supernode register KEY.pub bearing`)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("federate", help=HELP, description=DESCRIPTION)
    parser.add_argument("--clients", type=int, required=True, help="sites expected in the federation")
    add_training_arguments(parser)
    parser.add_argument("--out", dest="model_dir", type=Path, required=True, help="model directory")
    parser.add_argument("--host", default="127.0.0.1", help="SuperLink bind address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9093, help="SuperLink port (default: 9093)")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--ssl-ca-certfile", type=Path, help="CA certificate (TLS; with --ssl-certfile/keyfile)")
    security.add_argument("--insecure", action="store_true", help="plain HTTP, for local tests only")
    parser.add_argument("--ssl-certfile", type=Path, default=None, help="SuperLink TLS certificate")
    parser.add_argument("--ssl-keyfile", type=Path, default=None, help="SuperLink TLS private key")
    parser.add_argument("--enable-supernode-auth", action="store_true", help="admit registered sites only")
    parser.add_argument("--timeout", type=float, default=6 * 3600.0, help="give up after this many seconds")
    parser.add_argument("--logs", type=Path, default=Path("reports/federate"), help="SuperLink log directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """SuperLink up, run submitted and awaited, SuperLink down; 0 when the model was written."""
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
    from bearing_core.federated.server_app import METRICS_FILE
    from bearing_core.federated.simulation import GLOBAL
    from bearing_core.registry import check_training_output
    from cli.train_cmd import federated_config, print_table, validation_message

    try:
        cfg = federated_config(args)
        tls = None if args.insecure else TlsFiles(args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile)
        cmd = superlink_command(args.host, args.port, tls, args.enable_supernode_auth)
        if tls is not None:
            tls.check()
        check_training_output(args.model_dir)  # not over a registry or a published version
    except ValidationError as exc:
        print(f"bearing federate: error: {validation_message(exc)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"bearing federate: error: {exc}", file=sys.stderr)
        return 2
    env = flower_env()
    write_connection(f"{args.host}:{args.port}", root_certificates=None if tls is None else tls.ca_certfile)
    model_dir = args.model_dir.resolve()
    superlink = start("superlink", cmd, args.logs / "superlink.log", env)
    with running([superlink]):
        wait_for_log(superlink, "Uvicorn running on", timeout_s=120)
        print(f"SuperLink on {args.host}:{args.port}; waiting for {cfg.num_clients} sites (log: {superlink.log_path})")
        run_id = submit_run({**cfg.to_run_config(), "out-dir": str(model_dir)}, env=env)
        status = wait_for_run(run_id, args.timeout, env=env)
    if status != "finished:completed" or not (model_dir / METRICS_FILE).is_file():
        print(f"bearing federate: run {run_id} ended {status}; see {superlink.log_path}", file=sys.stderr)
        return 1
    import pandas as pd

    print_table(pd.read_parquet(model_dir / METRICS_FILE), GLOBAL, f"federated ({cfg.strategy}), run {run_id}")
    print(f"model:   {model_dir}")
    print(f"metrics: {model_dir / METRICS_FILE}")
    return 0
