"""Project-local runtime directories (bearing_core.env)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bearing_core.env import OFFLINE_DEFAULTS, configure_environment

REPO = Path(__file__).resolve().parents[1]


def test_configure_environment_sets_the_homes_and_keeps_the_users_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("PREFECT_HOME", "FLWR_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "mine"))
    set_now = configure_environment(tmp_path)
    assert os.environ["PREFECT_HOME"] == set_now["PREFECT_HOME"] == str(tmp_path.resolve() / ".prefect")
    assert os.environ["FLWR_HOME"] == str(tmp_path / "mine") and "FLWR_HOME" not in set_now
    assert all(Path(os.environ[key]).is_dir() for key in ("PREFECT_HOME", "FLWR_HOME"))
    assert not [key for key in set_now if key.startswith("RAY_")]  # the simulation runtime does not use Ray
    assert not (tmp_path / ".ray").exists()


def _makefile_exports(root: Path) -> dict[str, str]:
    """``export NAME := VALUE`` lines of the Makefile, with $(CURDIR) = ``root`` and earlier exports expanded."""
    exports: dict[str, str] = {}
    for line in (REPO / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"export\s+(\w+)\s*:=\s*(.*?)\s*", line)
        assert match or not line.lstrip().startswith("export"), f"Makefile export this test cannot read: {line!r}"
        if match:
            value = match.group(2).replace("$(CURDIR)", str(root))
            exports[match.group(1)] = re.sub(r"\$\((\w+)\)", lambda m: exports[m.group(1)], value)
    return exports


def test_the_makefile_exports_what_configure_environment_sets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = tmp_path.resolve()
    for key in list(os.environ):
        if key.startswith(("PREFECT_", "FLWR_", "RAY_", "GX_", "DO_NOT_TRACK", "BEARING_")) or key in OFFLINE_DEFAULTS:
            monkeypatch.delenv(key)
    set_now = configure_environment(root)
    # both directions: every variable configure_environment sets is exported with the same value, and nothing else
    assert _makefile_exports(root) == set_now
    assert set(OFFLINE_DEFAULTS) <= set(set_now)
    assert set_now["PREFECT_LOCAL_STORAGE_PATH"] == str(root / ".prefect" / "storage")
    assert set_now["PREFECT_RESULTS_DEFAULT_SERIALIZER"] == "json"


def test_result_storage_follows_a_users_prefect_home_and_keeps_a_users_storage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("PREFECT_HOME", "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    configure_environment(tmp_path)
    assert os.environ["PREFECT_LOCAL_STORAGE_PATH"] == str(tmp_path / "home" / "storage")
    monkeypatch.delenv("PREFECT_LOCAL_STORAGE_PATH")
    monkeypatch.setenv("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(tmp_path / "mine"))  # Prefect's other name
    assert "PREFECT_LOCAL_STORAGE_PATH" not in configure_environment(tmp_path)
    assert "PREFECT_LOCAL_STORAGE_PATH" not in os.environ


def test_requirements_lock_pins_every_direct_dependency_at_pyprojects_version() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    direct = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]
    text = (REPO / "requirements.lock").read_text(encoding="utf-8").replace("\\\n", " ")
    requirements = [Requirement(line.split(" --hash=")[0]) for line in text.splitlines() if line.strip()]
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in requirements)
    lock = {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in requirements}
    # every pin carries its SHA-256: `make install` runs pip in hash-checking mode (issue 14.8)
    assert text.count("--hash=sha256:") == len(requirements)
    assert {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in direct} == {
        canonicalize_name(r.name): lock.get(canonicalize_name(r.name)) for r in direct
    }
    assert lock["torch"] == "2.13.0"


def test_make_install_upgrades_pip_first_and_installs_the_lock_with_hashes() -> None:
    """What `make install` runs (make's dry run, not the Makefile's text): pip >= 23.3, then every dependency from
    the lock in hash-checking mode without resolving anything else, then the project alone, then pip check."""
    import shlex
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make not installed")
    dry = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, check=True)
    installs = [shlex.split(line) for line in dry.stdout.splitlines() if "pip install" in line]
    args = [cmd[cmd.index("install") + 1 :] for cmd in installs]
    assert [a for a in args[0] if not a.startswith("-")] == ["pip>=23.3"]
    assert {"--require-hashes", "--no-deps"} <= set(args[1]) and args[1][args[1].index("-r") + 1] == "requirements.lock"
    assert "--no-deps" in args[2] and args[2][-2:] == ["-e", "."]
    assert len(installs) == 3
    assert any(line.startswith(".venv/bin/python -m pip check") for line in dry.stdout.splitlines())
