"""``bearing site``: run this site's Flower SuperNode next to its own data (deployment mode)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from cli.federate_cmd import port_number

HELP = "Join a federation: run a Flower SuperNode that trains on this site's own partition file."
DESCRIPTION = """\
Start a Flower SuperNode that connects to the coordinator's SuperLink (--superlink HOST:PORT) and answers the
bearing ServerApp with this site's data only: DATA is a partition directory (holding manifest.json and
client_<k>.parquet) or a processed dataset with one partitioning under clients/ (or --scheme). Only weights and
aggregate statistics leave the site. Only bearing-fl's own ClientApp (the installed bearing_core) runs here: a
run of any other app is refused before its code runs. TLS: pass --root-certificates CA.pem (the CA that signed
the SuperLink's certificate); plain HTTP needs an explicit --insecure (local tests). SuperNode authentication:
pass --auth-private-key (the coordinator registers the matching public key with `flwr supernode register`).
Runs in the foreground until interrupted."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("site", help=HELP, description=DESCRIPTION)
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the coordinator's SuperLink")
    parser.add_argument("--data", required=True, type=Path, metavar="DATA", help="partition dir or dataset dir")
    parser.add_argument("--scheme", default=None, help="partitioning under DATA/clients/ (if several)")
    parser.add_argument("--partition-id", type=int, default=0, help="which client_<k>.parquet is this site's")
    parser.add_argument("--port", type=port_number, default=9094, help="local ClientApp runtime port on 127.0.0.1")
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--root-certificates", type=Path, help="CA certificate verifying the SuperLink (TLS)")
    security.add_argument("--insecure", action="store_true", help="plain HTTP, for local tests only")
    parser.add_argument("--auth-private-key", type=Path, default=None, help="SuperNode authentication key")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the SuperNode until it exits; 2 on bad arguments, else its exit code."""
    from bearing_core.federated.client_app import partition_file
    from bearing_core.federated.deployment import (
        TlsFiles,
        flower_env,
        supernode_command,
    )
    from bearing_core.federated.simulation import resolve_clients_dir

    try:
        clients_dir = resolve_clients_dir(args.data, args.scheme)
        if args.root_certificates is not None:
            TlsFiles(args.root_certificates).check()
    except FileNotFoundError as exc:
        print(f"bearing site: error: {exc}", file=sys.stderr)
        return 2
    if not partition_file(clients_dir, args.partition_id).is_file():
        print(f"bearing site: error: {partition_file(clients_dir, args.partition_id)} not found", file=sys.stderr)
        return 2
    cmd = supernode_command(
        args.superlink, clients_dir, args.partition_id, args.port, args.root_certificates, args.auth_private_key
    )
    if args.insecure:
        print(
            f"bearing site: warning: --insecure: plain HTTP to {args.superlink} (model updates unencrypted, the "
            "SuperLink not authenticated); for local tests only",
            file=sys.stderr,
        )
    print("starting: " + " ".join(cmd), file=sys.stderr)
    try:
        return subprocess.call(cmd, env=flower_env())
    except KeyboardInterrupt:
        return 130
