"""Entry point of the `bearing` console script.

Each sub-command lives in its own module ``cli/<name>_cmd.py`` exposing ``register(subparsers)``, which adds a
parser and sets ``func`` to a function ``(args) -> int`` (the exit code). Heavy libraries (torch, flwr, prefect,
great_expectations) are imported inside those functions only, so ``bearing --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from bearing_core import __version__
from bearing_core.env import configure_environment

# Order = order in `bearing --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "cli.demo_data_cmd",
    "cli.ingest_cmd",
    "cli.validate_cmd",
    "cli.train_cmd",
    "cli.score_cmd",
    "cli.evaluate_cmd",
    "cli.run_cmd",
    "cli.models_cmd",
    "cli.alarms_cmd",
    "cli.experiments_cmd",
    "cli.import_features_cmd",
    "cli.per_bearing_cmd",
    "cli.site_cmd",
    "cli.federate_cmd",
)


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr (``bearing train: error: ...``) and exit code 2; --help shows usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bearing",
        description="bearing-fl: federated anomaly detection for rolling-element bearings (NASA IMS format).",
    )
    parser.add_argument("--version", action="version", version=f"bearing-fl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a read-only or vanished output: one line naming the file, not a traceback
        print(f"bearing {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
