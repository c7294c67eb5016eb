"""Only bearing-fl's app runs: the app-bundle (FAB) check and the guarded SuperExec that launches app processes.

A SuperLink accepts runs of any Flower app through its Control API, and a SuperNode runs the ClientApp of
whatever run the SuperLink hands it. In deployment mode bearing-fl therefore starts both with
``--isolation process`` and launches the app processes itself, through this module
(``python -m bearing_core.federated.guard``):

* ``superexec --role serverapp|clientapp --runtime-api-address 127.0.0.1:PORT``: flwr's SuperExec loop
  (:func:`flwr.supercore.superexec.run_superexec.run_superexec`) with a :class:`GuardedExecutor`: it acquires
  tasks of that one type only and starts them as ``python -m bearing_core.federated.guard <role> ...``, never
  ``flwr-serverapp`` / ``flwr-clientapp``, never with runtime dependency installation;
* ``serverapp`` / ``clientapp``: flwr's ``flwr-serverapp`` / ``flwr-clientapp`` whose FAB installation step is
  preceded by :func:`check_fab`. A foreign bundle raises :class:`ForeignAppError` before any of its files is
  written or imported: flwr reports the task as failed (the run ends ``finished:failed`` with the reason, a
  site answers the server's message with an error) and no code of the bundle runs.

What "bearing-fl's app" means (:func:`check_fab`): the bundle holds ``pyproject.toml`` (and flwr's
``.info/CONTENT`` manifest) and nothing else, its publisher and project name are bearing-fl's, and its
``[tool.flwr.app.components]`` name :mod:`bearing_core.federated.server_app` and
:mod:`bearing_core.federated.client_app`, so the code that runs is the bearing-fl installed on this host. Run
config values (``--run-config``) are data the app validates (:class:`~bearing_core.federated.config.FederatedConfig`).
The check reads the bundle's content, not its hash: a FAB's bytes depend on the zlib that compressed it.
"""

from __future__ import annotations

import argparse
import importlib
import io
import logging
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bearing_core.federated.deployment import APP_DIR

#: Files a bearing-fl FAB may hold: the app definition and flwr's content manifest (the code is installed).
FAB_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
ROLES = ("serverapp", "clientapp")
MODULE = "bearing_core.federated.guard"  # not __name__: that is "__main__" when run with -m


class ForeignAppError(PermissionError):
    """The app bundle of a run is not bearing-fl's: its code must not run here."""


def app_identity(config: dict[str, Any]) -> dict[str, Any]:
    """What identifies the app in a parsed ``pyproject.toml``: publisher, project name, components."""
    flwr_app = config.get("tool", {}).get("flwr", {}).get("app", {})
    return {
        "publisher": flwr_app.get("publisher"),
        "name": config.get("project", {}).get("name"),
        "components": dict(flwr_app.get("components", {})),
    }


def expected_identity() -> dict[str, Any]:
    """bearing-fl's app identity, from :data:`~bearing_core.federated.deployment.APP_DIR` on this host."""
    return app_identity(tomllib.loads((APP_DIR / "pyproject.toml").read_text(encoding="utf-8")))


def check_fab(content: bytes) -> None:
    """Return if ``content`` is bearing-fl's app bundle, else raise :class:`ForeignAppError` saying why."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            names = fab.namelist()
            extra = sorted(set(names) - FAB_FILES)
            if extra:
                shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
                raise ForeignAppError(
                    f"refused: the app bundle carries files besides pyproject.toml ({shown}); "
                    "bearing-fl's bundle has no code of its own"
                )
            if "pyproject.toml" not in names or len(names) != len(set(names)):
                raise ForeignAppError("refused: the app bundle has no single pyproject.toml")
            config = tomllib.loads(fab.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ForeignAppError(f"refused: not a readable app bundle ({exc})") from exc
    got, want = app_identity(config), expected_identity()
    if got != want:
        raise ForeignAppError(
            f"refused: app {got['publisher']}/{got['name']} (components {got['components']}) is not "
            f"bearing-fl's {want['publisher']}/{want['name']} (components {want['components']})"
        )


def _replace(module_name: str, attribute: str, value: Any) -> Any:
    """Replace ``module.attribute``; fail closed (``RuntimeError``) when flwr no longer has it."""
    module = importlib.import_module(module_name)
    if not hasattr(module, attribute):
        raise RuntimeError(f"{module_name} has no '{attribute}': this flwr version cannot be guarded")
    original = getattr(module, attribute)
    setattr(module, attribute, value)
    return original


# Where flwr's app processes install the FAB they pulled (flwr 1.42), and their entry points.
_TASKS = {
    "serverapp": ("flwr.superlink.runtime.run_serverapp", "flwr.superlink.cli.flwr_serverapp", "flwr_serverapp"),
    "clientapp": ("flwr.supernode.runtime.run_clientapp", "flwr.supernode.cli.flwr_clientapp", "flwr_clientapp"),
}


def run_task(role: str, argv: Sequence[str]) -> None:
    """``flwr-serverapp`` / ``flwr-clientapp`` with :func:`check_fab` before the bundle is installed."""
    runtime_module, cli_module, entry = _TASKS[role]

    def guarded_install(fab: bytes | Path, *args: Any, **kwargs: Any) -> Any:
        check_fab(fab if isinstance(fab, bytes) else Path(fab).read_bytes())
        return install(fab, *args, **kwargs)

    install = _replace(runtime_module, "install_from_fab", guarded_install)
    sys.argv = [f"flwr-{role}", *argv]
    getattr(importlib.import_module(cli_module), entry)()


def _guarded_executor(role: str) -> Any:
    """A SuperExec executor that starts ``role`` tasks through :func:`run_task` and refuses every other type."""
    from flwr.supercore import log
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import LaunchResult
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    allowed = TaskType.SERVER_APP if role == "serverapp" else TaskType.CLIENT_APP

    class GuardedExecutor(SubprocessExecutor):
        def get_eligible_capacity(
            self, supported_task_types: set[TaskType], **_: Any
        ) -> tuple[set[TaskType], set[str]]:
            return supported_task_types & {allowed}, set()  # acquire tasks of the one allowed type only

        def launch(self, spec: Any) -> Any:
            if spec.task_type != allowed:
                message = f"refused task {spec.task_id} of type {spec.task_type}: only bearing-fl's {role} runs here"
                log(logging.ERROR, message)
                return LaunchResult.failed(message)
            args = [
                sys.executable,
                "-m",
                MODULE,
                role,
                "--runtime-api-address",
                spec.runtime_api_address,
                "--token",
                spec.token,
            ]
            if spec.insecure:
                args.append("--insecure")
            elif spec.root_certificates_path is not None:
                args += ["--root-certificates", spec.root_certificates_path]
            if spec.parent_pid is not None:
                args += ["--parent-pid", str(spec.parent_pid)]
            subprocess.Popen(args)  # noqa: S603 - this interpreter, fixed module
            return LaunchResult.accepted()

    return GuardedExecutor()


def run_superexec(
    role: str, runtime_api_address: str, insecure: bool, root_certificates: str | None, parent_pid: int | None
) -> None:
    """flwr's SuperExec loop for one role with the :class:`GuardedExecutor` (never installs dependencies)."""
    module = "flwr.supercore.superexec.run_superexec"
    _replace(module, "get_executor", lambda *args, **kwargs: _guarded_executor(role))
    importlib.import_module(module).run_superexec(
        runtime_api_address=runtime_api_address,
        insecure=insecure,
        root_certificates_path=root_certificates,
        parent_pid=parent_pid,
        runtime_dependency_install=False,
    )


def superexec_command(role: str, runtime_api_address: str, parent_pid: int | None = None) -> list[str]:
    """The guarded SuperExec for ``role`` against a plain-HTTP Runtime API on this host."""
    cmd = [
        sys.executable,
        "-m",
        MODULE,
        "superexec",
        "--role",
        role,
        "--runtime-api-address",
        runtime_api_address,
        "--insecure",
    ]
    return cmd + ([] if parent_pid is None else ["--parent-pid", str(parent_pid)])


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ROLES:
        run_task(argv[0], argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m bearing_core.federated.guard")
    sub = parser.add_subparsers(dest="command", required=True)
    exe = sub.add_parser("superexec", help="run bearing-fl's app processes, nothing else")
    exe.add_argument("--role", choices=ROLES, required=True)
    exe.add_argument("--runtime-api-address", required=True)
    tls = exe.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true")
    tls.add_argument("--root-certificates", default=None)
    exe.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    run_superexec(args.role, args.runtime_api_address, args.insecure, args.root_certificates, args.parent_pid)


if __name__ == "__main__":
    main()
