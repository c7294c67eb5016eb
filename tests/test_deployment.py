"""Deployment mode: a real SuperLink and two SuperNodes on 127.0.0.1, the bearing app submitted with ``flwr run``.

Every ClientApp call is a fresh ``flwr-clientapp`` process (it imports torch), so the integration test is the
slowest in the suite; it still runs in CI. All processes run in their own process groups and are killed in
teardown whatever happens.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from bearing_core.federated.config import FederatedConfig
from bearing_core.federated.deployment import (
    APP_DIR,
    flower_env,
    node_config,
    run_config_arg,
    running,
    start,
    submit_run,
    superlink_command,
    supernode_command,
    wait_for_log,
    wait_for_run,
    write_connection,
)
from bearing_core.inputs import InputConfig
from bearing_core.model_io import load_model
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import scheme_dir
from test_federated import write_feature_dataset


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_commands_bind_loopback_and_carry_the_node_config(tmp_path: Path) -> None:
    link = superlink_command(port=9999)
    assert link[:5] == ["flower-superlink", "--host", "127.0.0.1", "--port", "9999"] and "--insecure" in link
    node = supernode_command("127.0.0.1:9999", tmp_path, 3, runtime_port=9100)
    assert node[node.index("--node-config") + 1] == f"clients-dir='{tmp_path.resolve()}' partition-id=3"
    assert node[node.index("--host") + 1] == "127.0.0.1" and "--insecure" in node
    tls = supernode_command("link:9093", tmp_path, 0, root_certificates=tmp_path / "ca.crt")
    assert "--insecure" not in tls and tls[tls.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    with pytest.raises(ValueError, match="single quote"):
        node_config(tmp_path / "it's", 0)


def test_run_config_arg_and_app_defaults_match_the_config_model() -> None:
    arg = run_config_arg({"out-dir": "/m", "rounds": 2, "scale": True, "lr": 0.01})
    assert arg == 'out-dir="/m" rounds=2 scale=true lr=0.01'
    defaults = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert FederatedConfig.from_run_config(defaults) == FederatedConfig()
    assert set(defaults) - set(FederatedConfig().to_run_config()) == {"out-dir"}


def test_write_connection_keeps_other_entries(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[superlink]\ndefault = "other"\n\n[superlink.other]\naddress = "x:1"\n')
    path = write_connection("127.0.0.1:9093", flwr_home=tmp_path)
    config = tomllib.loads(path.read_text())["superlink"]
    assert config["default"] == "other" and config["other"]["address"] == "x:1"
    assert config["bearing"] == {"address": "127.0.0.1:9093", "insecure": True}


@pytest.mark.integration
def test_superlink_and_two_supernodes_train_a_model(tmp_path: Path) -> None:
    dataset = write_feature_dataset(tmp_path / "dataset", rows_per_site=40)
    manifest = partition_dataset(dataset, "natural", 2, 0, InputConfig(train_fraction=1.0))
    clients_dir = scheme_dir(dataset, "natural")
    env = flower_env()
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    port = _free_port()
    write_connection(f"127.0.0.1:{port}", flwr_home=tmp_path / "flwr-home")
    logs = tmp_path / "logs"
    processes = [start("superlink", superlink_command(port=port), logs / "superlink.log", env)]
    with running(processes):
        wait_for_log(processes[0], "Uvicorn running on", timeout_s=60)
        for k in range(2):
            node = start(f"supernode-{k}", supernode_command(f"127.0.0.1:{port}", clients_dir, k, _free_port()),
                         logs / f"supernode-{k}.log", env)
            processes.append(node)
        for node in processes[1:]:
            wait_for_log(node, "SuperNode ID", timeout_s=60)
        model_dir = tmp_path / "model"
        run_config = {**FederatedConfig(rounds=2, num_clients=2, lr=0.01, batch_size=8).to_run_config(),
                      "out-dir": str(model_dir)}
        run_id = submit_run(run_config, env=env)
        status = wait_for_run(run_id, timeout_s=300, env=env)
        assert status == "finished:completed", "\n".join(p.log_tail() for p in processes)
    assert all(not p.alive() for p in processes)
    loaded = load_model(model_dir)
    assert loaded.extra["strategy"] == "fedavg" and loaded.extra["train_rows_per_client"] == {
        str(c.client_id): c.train_rows for c in manifest.clients
    }
    metrics = pd.read_parquet(model_dir / "metrics.parquet")
    glob = metrics[metrics["client"] == "global"]
    assert list(glob["round"]) == [1, 2] and glob["eval_mse"].notna().all()
    assert glob["eval_mse"].iloc[1] < glob["eval_mse"].iloc[0]
    assert sorted(metrics.loc[metrics["client"] != "global", "client"].unique()) == ["0", "1"]
