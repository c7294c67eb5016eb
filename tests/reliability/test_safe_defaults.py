"""Safe defaults: servers bind loopback, model files cannot run code, configuration errors fail fast.

* The Prefect server (``scripts/serve.sh``) and the Flower SuperLink / SuperNodes (``bearing federate``,
  ``bearing site``, :mod:`bearing_core.federated.deployment`) bind 127.0.0.1 unless told otherwise, and plain
  HTTP is never implicit. Checked on the argument defaults and the command lines built, no server is started.
* Models are state_dicts loaded with ``torch.load(weights_only=True)``: a weights file whose unpickling would run
  code is refused and the code does not run.
* Configuration errors (unknown strategy, negative rounds, missing directory) exit 2 with one clear error line
  before any work starts: no output directory is created.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from bearing_core.autoencoder import Autoencoder, ModelConfig
from bearing_core.federated import launch
from bearing_core.federated.deployment import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_HOST,
    superlink_command,
    supernode_command,
)
from bearing_core.model_io import CONFIG_FILE, WEIGHTS_FILE, load_model, save_model
from bearing_core.scaling import Scaler
from cli.main import main

PROJECT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------------------------- loopback binds


def test_environment_defaults_keep_the_prefect_api_local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bearing_core.env import configure_environment

    monkeypatch.delenv("PREFECT_SERVER_API_HOST", raising=False)
    for key in ("PREFECT_HOME", "FLWR_HOME", "RAY_TMPDIR"):
        monkeypatch.setenv(key, str(tmp_path / key))
    assert configure_environment(tmp_path)["PREFECT_SERVER_API_HOST"] == LOOPBACK
    monkeypatch.setenv("PREFECT_SERVER_API_HOST", "10.0.0.5")  # told otherwise: the user's choice wins
    assert "PREFECT_SERVER_API_HOST" not in configure_environment(tmp_path)


def test_no_project_file_binds_all_interfaces() -> None:
    sources = [PROJECT / "prefect.yaml", PROJECT / "Makefile", *sorted((PROJECT / "scripts").glob("*.sh"))]
    for package in ("bearing_core", "cli", "flows", "tasks"):
        sources += sorted((PROJECT / package).rglob("*.py"))
    offenders = [str(p.relative_to(PROJECT)) for p in sources if p.is_file() and "0.0.0.0" in p.read_text()]
    assert offenders == []


def _parser(module: str) -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="bearing")
    importlib.import_module(f"cli.{module}").register(parser.add_subparsers())
    return parser


def _launch_args(command: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The options :mod:`bearing_core.federated.launch` parses from ``command`` (nothing is started)."""
    assert command[1:3] == ["-m", "bearing_core.federated.launch"]
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(launch, "run_superlink", seen.append)
    monkeypatch.setattr(launch, "run_supernode", seen.append)
    launch.main(command[3:])
    return seen[0]


def test_federate_superlink_binds_loopback_by_default_and_needs_explicit_security(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = _parser("federate_cmd")
    args = parser.parse_args(["federate", "--clients", "2", "--out", str(tmp_path / "m"), "--insecure"])
    assert args.host == LOOPBACK == DEFAULT_HOST
    command = superlink_command(args.host, args.port)
    launched = _launch_args(command, monkeypatch)
    assert launched.fleet_host == LOOPBACK and launched.insecure  # plain HTTP only because asked for
    assert launched.control_port == DEFAULT_CONTROL_PORT  # the Control API: always 127.0.0.1 (launch.LOOPBACK)
    with pytest.raises(SystemExit) as excinfo:  # neither TLS nor an explicit --insecure: refused
        parser.parse_args(["federate", "--clients", "2", "--out", str(tmp_path / "m")])
    assert excinfo.value.code == 2
    assert "one of the arguments --ssl-ca-certfile --insecure is required" in capsys.readouterr().err
    told = parser.parse_args(["federate", "--clients", "2", "--out", "m", "--insecure", "--host", "10.1.2.3"])
    assert _launch_args(superlink_command(told.host, told.port), monkeypatch).fleet_host == "10.1.2.3"
    with pytest.raises(SystemExit):  # the launcher itself refuses a SuperLink with neither TLS nor --insecure
        _launch_args([a for a in command if a != "--insecure"], monkeypatch)


def test_site_supernode_listens_on_loopback_and_needs_explicit_security(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    command = supernode_command("coordinator:9093", "/data/clients", 0)
    assert "--insecure" in command  # plain HTTP is spelled out, never implied
    assert "--insecure" not in supernode_command("coordinator:9093", "/data/clients", 0, root_certificates=Path("ca"))
    # what the launcher hands flower-supernode: its Runtime API on 127.0.0.1, whatever the SuperLink's address
    flwr_argv: list[str] = []
    with monkeypatch.context() as patch:  # launch.importlib is the importlib module: undo before going on
        patch.setattr(launch, "_guarded_superexec", lambda *a, **k: contextlib.nullcontext())
        patch.setattr(
            launch.importlib,
            "import_module",
            lambda name: types.SimpleNamespace(flower_supernode=lambda: flwr_argv.extend(sys.argv)),
        )
        patch.setattr(sys, "argv", list(sys.argv))
        launch.main(command[3:])
    assert flwr_argv[flwr_argv.index("--host") + 1] == LOOPBACK and flwr_argv.count("--host") == 1
    assert "--insecure" in flwr_argv
    parser = _parser("site_cmd")
    with pytest.raises(SystemExit) as excinfo:
        parser.parse_args(["site", "--superlink", "coordinator:9093", "--data", "/data"])
    assert excinfo.value.code == 2 and "--insecure is required" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- model files


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on a marker file: what a malicious weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    cfg = ModelConfig(n_inputs=3, hidden=(2,), activation="elu")
    model = Autoencoder(cfg)
    return save_model(tmp_path / "model", model, cfg, Scaler.identity(3), ["a", "b", "c"])


def test_weights_are_a_plain_state_dict_loadable_with_weights_only(model_dir: Path) -> None:
    state = torch.load(model_dir / WEIGHTS_FILE, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert list(state) == list(load_model(model_dir).model.state_dict())


def test_pickle_bomb_weights_are_refused_and_never_run(model_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    bomb = {"encoder.0.weight": _RunsCode(marker)}
    torch.save(bomb, model_dir / WEIGHTS_FILE)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    config["weights_sha256"] = hashlib.sha256((model_dir / WEIGHTS_FILE).read_bytes()).hexdigest()
    (model_dir / CONFIG_FILE).write_text(json.dumps(config))  # checksum matches: torch.load itself must refuse

    with pytest.raises(
        ValueError, match=r"weights\.pt: not a plain state_dict, refused to load \(Weights only load failed"
    ):
        load_model(model_dir)
    assert not marker.exists()
    torch.load(model_dir / WEIGHTS_FILE, weights_only=False)  # the bomb is real: a full unpickle runs it
    assert marker.exists()


def test_every_torch_load_in_the_project_is_weights_only() -> None:
    calls = []
    for package in ("bearing_core", "cli", "flows", "tasks"):
        for path in sorted((PROJECT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    flags = {kw.arg: ast.unparse(kw.value) for kw in node.keywords}
                    calls.append((str(path.relative_to(PROJECT)), flags.get("weights_only")))
    assert calls and all(flag == "True" for _, flag in calls), calls


# ------------------------------------------------------------------------------------ fail fast on bad config


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory (where default outputs would go); runtime homes live elsewhere."""
    for key in ("PREFECT_HOME", "FLWR_HOME", "RAY_TMPDIR"):
        monkeypatch.setenv(key, str(tmp_path / "homes" / key))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def _exit_code_and_stderr(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["train", "processed", "--rounds", "-1"], "bearing train: error: rounds: Input should be greater than or"),
        (["train", "missing"], "bearing train: error: missing/dataset.json not found"),
        (["run", "--raw-dir", "missing"], "bearing run: error: --raw-dir missing does not exist"),
        (["run", "--raw-dir", ".", "--rounds", "-3"], "bearing run: error: --rounds must be >= 1, got -3"),
        (
            ["run", "--raw-dir", ".", "--alarm-warmup-h", "-1"],
            "bearing run: error: --alarm-warmup-h must be >= 0, got -1.0",
        ),
        (
            ["run", "--raw-dir", ".", "--alarm-warmup-h", "nan"],
            "bearing run: error: --alarm-warmup-h: Input should be a finite number, got nan",
        ),
        (
            ["score", ".", "--model", ".", "--alarm-warmup-h", "-1"],
            "bearing score: error: --alarm-warmup-h must be >= 0",
        ),
        (["score", ".", "--alarm-fraction", "1.5"], "bearing score: error: --alarm-fraction must be <= 1, got 1.5"),
        (
            ["run", "--raw-dir", ".", "--holdout-mode", "random"],
            "bearing run: error: --holdout-mode 'random' is not one of: last, interleaved",
        ),
        (["ingest", "missing", "--out", "out"], "bearing ingest: error: raw_dir does not exist or is not a directory"),
        (["ingest", ".", "--out", "out", "--workers", "0"], "bearing ingest: error: workers: Input should be greater"),
    ],
)
def test_configuration_errors_exit_2_with_one_line_and_no_outputs(
    argv: list[str], error: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _exit_code_and_stderr(argv, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(error), lines
    assert sorted(p.name for p in workdir.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "run"])
def test_unknown_strategy_is_refused_by_the_parser_before_any_work(
    command: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "processed"] if command == "train" else [command, "--raw-dir", "."]
    code, lines = _exit_code_and_stderr([*argv, "--strategy", "fedsgd"], capsys)
    assert code == 2
    assert len(lines) == 1, lines  # one line, no usage block
    refused = (
        "argument --strategy: invalid choice: 'fedsgd'"
        if command == "train"  # argparse's choices
        else "--strategy 'fedsgd' is not one of:"
    )  # the pipeline's parameter model (bearing_core/params.py)
    assert lines[0].startswith(f"bearing {command}: error: {refused}")
    assert "fedavg" in lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == []
