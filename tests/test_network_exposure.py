"""Training opens no network socket outside loopback (issue 14, point 2).

A real ``bearing train`` (4 sites, 2 rounds) runs in a subprocess while this test polls the listening sockets of
its whole process tree: TCP sockets in state LISTEN and unconnected (bound) UDP sockets, IPv4 and IPv6, read from
``/proc/<pid>/fd`` (socket inodes) joined with ``/proc/<pid>/net/{tcp,tcp6,udp,udp6}``. Every local address must
be in 127.0.0.0/8 or ``::1``: a wildcard (``0.0.0.0`` / ``::``) or a host address would let anyone on the plant
network reach the process while a nightly retrain runs (Ray's unauthenticated servers did exactly that).

The lister itself is checked first on a helper process that listens on the wildcard and on loopback, so the
exposure test cannot pass by seeing nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.feature_datasets import write_feature_dataset
from helpers.sockets import PROC, Listener, decode_address, listening_sockets, process_tree

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (PROC / "self" / "net" / "tcp").is_file(), reason="needs Linux /proc")


def watch(process: subprocess.Popen, interval_s: float = 0.05) -> tuple[set[Listener], int]:
    """Poll the listening sockets of ``process``'s tree until it exits: everything seen, number of polls."""
    seen: set[Listener] = set()
    polls = 0
    while process.poll() is None:
        seen |= listening_sockets(process_tree(process.pid))
        polls += 1
        time.sleep(interval_s)
    return seen, polls


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "BEARING_"))}
    env.update(PYTHONPATH=str(REPO), BEARING_PROJECT_DIR=str(project), PYTHONUNBUFFERED="1")
    return env


@pytest.mark.integration
def test_lister_sees_wildcard_and_loopback_listeners(tmp_path: Path) -> None:
    """The socket lister finds a child's TCP/UDP listeners and classifies them: the real test cannot be vacuous."""
    script = textwrap.dedent(
        """
        import socket, sys, time
        socks = []
        for family, kind, host in [(socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0"),
                                   (socket.AF_INET, socket.SOCK_STREAM, "127.0.0.2"),
                                   (socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0"),
                                   (socket.AF_INET6, socket.SOCK_STREAM, "::1"),
                                   (socket.AF_INET6, socket.SOCK_STREAM, "::")]:
            s = socket.socket(family, kind)
            s.bind((host, 0))
            if kind == socket.SOCK_STREAM:
                s.listen()
            socks.append(s)
        client = socket.create_connection(socks[1].getsockname())  # connected: not a listener
        print("ready", flush=True)
        time.sleep(30)
        """
    )
    # The listeners live in a grandchild: the lister must follow the whole tree.
    wrapper = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {script!r}])"
    process = subprocess.Popen([sys.executable, "-c", wrapper], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        found = listening_sockets(process_tree(process.pid))
    finally:
        for pid in reversed(process_tree(process.pid)):
            os.kill(pid, 9)
        process.wait()
    summary = sorted((s.proto, s.address, s.loopback) for s in found)
    assert summary == [
        ("tcp", "0.0.0.0", False),
        ("tcp", "127.0.0.2", True),
        ("tcp6", "::", False),
        ("tcp6", "::1", True),
        ("udp", "0.0.0.0", False),
    ]
    assert len({s.pid for s in found}) == 1 and all(s.port > 0 for s in found)


def test_address_decoding() -> None:
    assert decode_address("0100007F") == "127.0.0.1" and decode_address("00000000") == "0.0.0.0"
    assert decode_address("00000000000000000000000001000000") == "::1"
    mapped = decode_address("0000000000000000FFFF00000100007F")  # IPv4-mapped 127.0.0.1 on a dual-stack socket
    assert ipaddress.ip_address(mapped).ipv4_mapped == ipaddress.ip_address("127.0.0.1")
    assert Listener("tcp6", mapped, 1, 1, "x").loopback
    assert not Listener("tcp6", "::ffff:10.0.0.1", 1, 1, "x").loopback


@pytest.mark.slow
def test_bearing_train_listens_on_loopback_only(tmp_path: Path) -> None:
    """``bearing train`` (4 sites, 2 rounds, the default runtime) never listens outside 127.0.0.0/8 / ::1."""
    dataset = write_feature_dataset(tmp_path / "dataset", rows_per_site=60, sites=("s1", "s2", "s3", "s4"))
    model_dir = tmp_path / "model"
    driver = textwrap.dedent(
        f"""
        import json, sys
        from cli.main import main
        code = main(["train", {str(dataset)!r}, "--partition", "natural", "--clients", "4", "--rounds", "2",
                     "--local-epochs", "1", "--train-fraction", "0.8", "--out", {str(model_dir)!r}])
        print(json.dumps({{"exit": code, "ray_imported": "ray" in sys.modules}}))
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", driver],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen, polls = watch(process)
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    assert process.returncode == 0, output
    outcome = json.loads(output.strip().splitlines()[-1])
    assert outcome["exit"] == 0, output
    assert (model_dir / "metrics.parquet").is_file() and (model_dir / "threshold.json").is_file()
    assert polls >= 10  # the tree was watched throughout the run
    exposed = sorted(str(s) for s in seen if not s.loopback)
    assert exposed == [], "listening outside loopback during training:\n" + "\n".join(exposed)
    assert not outcome["ray_imported"]  # the default runtime does not even load Ray
