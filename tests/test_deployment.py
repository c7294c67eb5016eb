"""Deployment mode: a real SuperLink and two SuperNodes on 127.0.0.1, the bearing app submitted with ``flwr run``;
in plain HTTP through the library, and over TLS through the product's commands (``bearing federate`` +
``bearing site``) with a throw-away CA generated here.

Every ClientApp call is a fresh ``flwr-clientapp`` process (it imports torch) and an idle SuperNode polls every
3 s, so each of the run's 6 messages (scaling, 2 x train + evaluate, calibration) costs several seconds: these
integration tests are the slowest in the suite; they still run in CI. All processes run in their own process
groups and are killed in teardown whatever happens.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from helpers.feature_datasets import write_feature_dataset
from helpers.processes import bearing, free_port

from bearing_core.federated.config import FederatedConfig
from bearing_core.federated.deployment import (
    APP_DIR,
    FlowerProcess,
    TlsFiles,
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
from bearing_core.federated.launch import READY
from bearing_core.inputs import InputConfig
from bearing_core.model_io import load_model
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import scheme_dir


def write_test_pki(out: Path, name: str) -> TlsFiles:
    """A throw-away CA (``ca.pem``) and a SuperLink certificate it signed for ``localhost`` / ``127.0.0.1``
    (``server.pem``, ``server.key``), ECDSA P-256, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def certificate(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        certificate(f"{name} test CA", ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        certificate("localhost", ca_name, server_key.public_key())
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (out / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TlsFiles(out / "ca.pem", out / "server.pem", out / "server.key")


def test_commands_bind_loopback_and_carry_the_node_config(tmp_path: Path) -> None:
    link = superlink_command(port=9999, control_port=9998)
    assert link[:4] == [sys.executable, "-m", "bearing_core.federated.launch", "superlink"] and "--insecure" in link
    assert [link[link.index(flag) + 1] for flag in ("--fleet-host", "--fleet-port", "--control-port")] == [
        "127.0.0.1",
        "9999",
        "9998",
    ]
    node = supernode_command("127.0.0.1:9999", tmp_path, 3, runtime_port=9100)
    assert node[:4] == [sys.executable, "-m", "bearing_core.federated.launch", "supernode"]
    assert node[node.index("--node-config") + 1] == f"clients-dir='{tmp_path.resolve()}' partition-id=3"
    assert node[node.index("--runtime-port") + 1] == "9100" and "--insecure" in node
    tls = supernode_command("link:9093", tmp_path, 0, root_certificates=tmp_path / "ca.crt")
    assert "--insecure" not in tls and tls[tls.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    with pytest.raises(ValueError, match="single quote"):
        node_config(tmp_path / "it's", 0)


def test_tls_options_are_passed_and_their_files_checked_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    tls = write_test_pki(tmp_path / "pki", "bearing")
    link = superlink_command(port=9999, tls=tls)
    assert "--insecure" not in link
    assert [link[link.index(f"--ssl-{name}") + 1] for name in ("ca-certfile", "certfile", "keyfile")] == [
        str(tls.ca_certfile),
        str(tls.certfile),
        str(tls.keyfile),
    ]
    tls.check()  # all three exist
    with pytest.raises(FileNotFoundError, match="TLS private key not found: .*missing.key"):
        TlsFiles(tls.ca_certfile, tls.certfile, tmp_path / "missing.key").check()

    federate = ["federate", "--clients", "2", "--out", str(tmp_path / "model"), "--logs", str(tmp_path / "logs")]
    assert (
        main(
            [
                *federate,
                "--ssl-ca-certfile",
                str(tls.ca_certfile),
                "--ssl-certfile",
                str(tls.certfile),
                "--ssl-keyfile",
                str(tmp_path / "missing.key"),
            ]
        )
        == 2
    )
    assert "bearing federate: error: TLS private key not found" in capsys.readouterr().err
    assert main([*federate, "--ssl-ca-certfile", str(tls.ca_certfile)]) == 2
    assert "needs certfile and keyfile" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()  # no SuperLink was started

    dataset = write_feature_dataset(tmp_path / "dataset", rows_per_site=10)
    partition_dataset(dataset, "natural", 2, 0, InputConfig(train_fraction=1.0))
    assert (
        main(
            [
                "site",
                "--superlink",
                "127.0.0.1:9",
                "--data",
                str(dataset),
                "--root-certificates",
                str(tmp_path / "nope.pem"),
            ]
        )
        == 2
    )
    assert f"bearing site: error: TLS CA certificate not found: {tmp_path / 'nope.pem'}" in capsys.readouterr().err


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
    port, control_port = free_port(), free_port()
    write_connection(f"127.0.0.1:{control_port}", flwr_home=tmp_path / "flwr-home")  # flwr run: the Control API
    logs = tmp_path / "logs"
    processes = [
        start("superlink", superlink_command(port=port, control_port=control_port), logs / "superlink.log", env)
    ]
    with running(processes):
        wait_for_log(processes[0], READY, timeout_s=60)
        for k in range(2):
            node = start(
                f"supernode-{k}",
                supernode_command(f"127.0.0.1:{port}", clients_dir, k, free_port()),
                logs / f"supernode-{k}.log",
                env,
            )
            processes.append(node)
        for node in processes[1:]:
            wait_for_log(node, "SuperNode ID", timeout_s=60)
        model_dir = tmp_path / "model"
        run_config = {
            **FederatedConfig(rounds=2, num_clients=2, lr=0.01, batch_size=8).to_run_config(),
            "out-dir": str(model_dir),
        }
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


@pytest.mark.integration
def test_tls_federation_with_bearing_federate_and_site_rejects_insecure_and_foreign_ca_nodes(tmp_path: Path) -> None:
    dataset = write_feature_dataset(tmp_path / "dataset", rows_per_site=40)
    manifest = partition_dataset(dataset, "natural", 2, 0, InputConfig(train_fraction=1.0))
    tls = write_test_pki(tmp_path / "pki", "bearing")
    foreign_ca = write_test_pki(tmp_path / "foreign", "foreign").ca_certfile
    env = flower_env()
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    port, logs, model_dir = free_port(), tmp_path / "logs", tmp_path / "model"
    superlink = f"127.0.0.1:{port}"

    def site(name: str, partition_id: int, *security: str) -> FlowerProcess:
        cmd = bearing(
            "site",
            "--superlink",
            superlink,
            "--data",
            str(dataset),
            "--scheme",
            "natural",
            "--partition-id",
            str(partition_id),
            "--port",
            str(free_port()),
            *security,
        )
        return start(name, cmd, logs / f"{name}.log", env)

    coordinator = start(
        "federate",
        bearing(
            "federate",
            "--clients",
            "2",
            "--rounds",
            "2",
            "--lr",
            "0.01",
            "--batch-size",
            "8",
            "--out",
            str(model_dir),
            "--port",
            str(port),
            "--control-port",
            str(free_port()),
            "--ssl-ca-certfile",
            str(tls.ca_certfile),
            "--ssl-certfile",
            str(tls.certfile),
            "--ssl-keyfile",
            str(tls.keyfile),
            "--logs",
            str(logs),
            "--timeout",
            "300",
        ),
        logs / "federate.log",
        env,
    )
    processes = [coordinator]
    with running(processes):
        wait_for_log(coordinator, "waiting for 2 sites", timeout_s=120)

        # two TLS sites; meanwhile a site speaking plain HTTP and one trusting another CA try to join and cannot
        sites = [site(f"site-{k}", k, "--root-certificates", str(tls.ca_certfile)) for k in range(2)]
        plain = site("plain", 0, "--insecure")
        foreign = site("foreign-ca", 1, "--root-certificates", str(foreign_ca))
        processes += [*sites, plain, foreign]
        assert foreign.process.wait(60) != 0, foreign.log_tail()
        assert "CERTIFICATE_VERIFY_FAILED" in foreign.log_path.read_text()
        wait_for_log(plain, "Connection attempt failed", timeout_s=60)  # it would retry forever: stop it
        plain.stop()
        assert "SuperNode ID" not in plain.log_path.read_text() + foreign.log_path.read_text()
        for node in sites:
            wait_for_log(node, "SuperNode ID", timeout_s=60)
        assert coordinator.process.wait(360) == 0, "\n".join(p.log_tail() for p in processes)
    assert all(not p.alive() for p in processes)
    superlink_log = (logs / "superlink.log").read_text()
    assert superlink_log.count("/v1/fleet/register-node") == 2  # only the two TLS sites ever registered
    loaded = load_model(model_dir)
    assert loaded.extra["train_rows_per_client"] == {str(c.client_id): c.train_rows for c in manifest.clients}
    glob = pd.read_parquet(model_dir / "metrics.parquet").query("client == 'global'")
    assert list(glob["round"]) == [1, 2] and glob["eval_mse"].notna().all()
    assert "round    train loss" in coordinator.log_path.read_text()  # federate printed its per-round table
