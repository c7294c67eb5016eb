"""``bearing run --raw-dir DIR``: the whole pipeline as one Prefect flow run.

On failure it prints the cause and how to retry that very flow run once the cause is fixed (completed steps come
back as Cached, the failed step and what follows run again); re-running ``bearing run`` with the same arguments
does the same as a new flow run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = (
    "Run the whole pipeline (ingest -> validate -> federated training + threshold -> publish -> score -> "
    "evaluate -> report) as one Prefect flow run."
)


def _retry_hint(state: object) -> str:
    """How to re-run the failed flow run once its cause is fixed (see README, "Re-running a failed run")."""
    import os

    import flows.pipeline
    from bearing_core.run_report import relative

    run_id = getattr(getattr(state, "state_details", None), "flow_run_id", None)
    module = Path(flows.pipeline.__file__).resolve()
    root = module.parents[1]
    entrypoint = f"{relative(module) if module.is_relative_to(Path.cwd()) else module}:pipeline_flow"
    home = relative(os.environ["PREFECT_HOME"]) if "PREFECT_HOME" in os.environ else ".prefect"
    pythonpath = "." if root == Path.cwd().resolve() else str(root)
    return (
        "fix the cause, then retry this flow run (completed steps are served from cache, the failed step and the "
        "ones after it run again):\n"
        f"  PREFECT_HOME={home} PYTHONPATH={pythonpath} prefect flow-run retry {run_id} --entrypoint {entrypoint}\n"
        "or run the same `bearing run ...` command again (a new flow run, same cached steps)"
    )


RUN_ALIASES: dict[str, tuple[str, ...]] = {
    "out_dir": ("--out",),
    "relative_inputs": ("--relative",),
    "holdout_mode": ("--holdout",),
    "proximal_mu": ("--mu",),
    "lock_timeout_s": ("--lock-timeout",),
}
"""Older spellings of some flags, still accepted (hidden from --help); the alarm rule's are in cli.score_cmd."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """One flag per setting of :class:`bearing_core.params.PipelineParams`, named after it (``--threshold-quantile``
    = ``threshold.quantile``), with its description and default; checks are the model's (see :func:`run`)."""
    from bearing_core.params import PipelineParams, settings
    from cli.model_flags import add_field_argument
    from cli.score_cmd import ALARM_ALIASES

    p = subparsers.add_parser("run", help=HELP, description=HELP)
    groups: dict[str, argparse._ArgumentGroup] = {}
    aliases = {**RUN_ALIASES, **ALARM_ALIASES}
    for key, section, _, info in settings():
        if section and section not in groups:
            groups[section] = p.add_argument_group(PipelineParams.model_fields[section].title)
        add_field_argument(groups.get(section, p), key, info, aliases.get(key, ()))
    p.set_defaults(func=run)


def pipeline_params(args: argparse.Namespace) -> object:
    """The :class:`~bearing_core.params.PipelineParams` of the given flags, checked with the raw directory;
    :class:`~bearing_core.params.ParameterError` (one line naming the flag) if not."""
    from bearing_core.params import check_params, nested, settings
    from cli.model_flags import flag, given

    return check_params(nested(given(args, [key for key, *_ in settings()])), flag)


def run(args: argparse.Namespace) -> int:
    from bearing_core.params import SECTIONS, ParameterError

    try:
        params = pipeline_params(args)
    except ParameterError as exc:  # fail fast, before Prefect or any step starts
        print(f"bearing run: error: {exc}", file=sys.stderr)
        return 2
    from bearing_core.locking import LockTimeout
    from bearing_core.validation import ValidationFailed
    from cli.dataset_lock import report_lock_timeout
    from flows.pipeline import pipeline_flow

    state = pipeline_flow(
        **{section: getattr(params, section) for section in SECTIONS},
        lock_timeout_s=params.lock_timeout_s,
        return_state=True,
    )
    try:
        out = state.result()
    except ValidationFailed as exc:
        print(f"bearing run: validation failed, nothing was trained:\n{exc}", file=sys.stderr)
        print(_retry_hint(state), file=sys.stderr)
        return 1
    except LockTimeout as exc:  # exit 3, as every command that waits for a dataset lock
        return report_lock_timeout(exc, "bearing run")
    except Exception as exc:  # noqa: BLE001 - any failed step: report it with the retry procedure, exit 1
        print(f"bearing run: the pipeline failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(_retry_hint(state), file=sys.stderr)
        return 1
    width = max(len(k) for k in out)
    print("\nbearing-fl pipeline finished:")
    for key, value in out.items():
        print(f"  {key:<{width}}  {value}")
    return 0
