"""Federated training: config, strategies and their aggregation, fault tolerance, and a real Flower simulation.

One simulation (3 clients, 3 rounds, client 1 failing in round 1) is shared by the end-to-end assertions, and run
once more to check that a seed gives the same model bit for bit; strategies and the fault-tolerance rules are also
checked directly on reply messages, without a simulation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from helpers.feature_datasets import write_feature_dataset

from bearing_core.config import IMS_CHANNELS_4
from bearing_core.federated.config import STRATEGIES, FaultInjection, FederatedConfig, check_strategy
from bearing_core.federated.messages import ARRAYS_KEY, METRICS_KEY, PARTITION_KEY, WEIGHT_KEY
from bearing_core.federated.strategies import NotEnoughClients, RoundLedger, build_strategy, short_reason
from bearing_core.inputs import InputConfig
from bearing_core.model_io import load_model
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import scheme_dir

# --------------------------------------------------------------------------------------------- config


def test_unknown_strategy_fails_with_one_line_listing_choices() -> None:
    with pytest.raises(ValueError) as excinfo:
        check_strategy("fedsgd")
    message = str(excinfo.value)
    assert "\n" not in message and "fedsgd" in message
    assert all(name in message for name in ("fedavg", "fedprox", "fedadam", "fedmedian"))
    with pytest.raises(ValueError, match="unknown strategy"):
        FederatedConfig(strategy="nope")
    assert FederatedConfig(strategy="FedAdam").strategy == "fedadam"


def test_flower_app_defaults_equal_federated_config_defaults() -> None:
    """`flwr run` (deployment) and the simulation start from the same defaults."""
    import tomllib

    from bearing_core.federated.deployment import APP_DIR

    app_config = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    app_config.pop("out-dir")
    assert FederatedConfig.from_run_config(app_config) == FederatedConfig()
    assert set(app_config) == set(FederatedConfig().to_run_config())


def test_run_config_round_trip() -> None:
    cfg = FederatedConfig(
        strategy="fedprox", rounds=3, hidden=(8, 3, 8), proximal_mu=0.1, fault=FaultInjection(partition_id=2, round=2)
    )
    run_config = cfg.to_run_config()
    assert run_config["hidden"] == "8,3,8" and run_config["fault-partition-id"] == 2
    assert all(isinstance(v, int | float | str | bool) for v in run_config.values())
    assert FederatedConfig.from_run_config({**run_config, "out-dir": "/elsewhere"}) == cfg
    assert FederatedConfig(num_clients=10, min_available_fraction=0.5).min_available_clients == 5
    assert FederatedConfig(min_fit_fraction=0.5).min_successful(3) == 2


# -------------------------------------------------------------------- strategies without a simulation


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are stamped with the running task's identity, which a ServerApp process sets; fake one here."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


class _Nodes:
    """Stands in for the Grid in configure_train, which only asks it for the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


def _instruction(node_id: int) -> Message:
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN)


def _train_reply(instruction: Message | int, pid: int, value: float, n: int, loss: float) -> Message:
    content = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord([np.full(3, value, dtype=np.float32), np.full((2, 2), value, dtype=np.float32)]),
            METRICS_KEY: MetricRecord({"train_loss": loss, "train_s": 0.1, PARTITION_KEY: pid, WEIGHT_KEY: n}),
        }
    )
    reply_to = instruction if isinstance(instruction, Message) else _instruction(instruction)
    return Message(content, reply_to=reply_to)


def _error_reply(node_id: int, reason: str) -> Message:
    return Message(Error(code=0, reason=reason), reply_to=_instruction(node_id))


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_builds_and_aggregates(name: str) -> None:
    cfg = FederatedConfig(strategy=name, num_clients=5, trim_beta=0.2, outlier_factor=0)  # the strategies' own math
    strategy = build_strategy(cfg)
    assert type(strategy).__name__.lower() == f"bearing{name}"
    start = ArrayRecord([np.zeros(3, dtype=np.float32), np.zeros((2, 2), dtype=np.float32)])
    instructions = sorted(
        strategy.configure_train(1, start, ConfigRecord(), _Nodes([100, 101, 102, 103, 104])),
        key=lambda m: m.metadata.dst_node_id,
    )
    assert len(instructions) == 5
    if name == "fedprox":
        assert instructions[0].content["config"]["proximal-mu"] == cfg.proximal_mu
    values, sizes = [1.0, 2.0, 3.0, 4.0, 100.0], [10, 10, 10, 10, 60]
    replies = [_train_reply(msg, k, v, n, loss=v) for k, (msg, v, n) in enumerate(zip(instructions, values, sizes))]
    arrays, metrics = strategy.aggregate_train(1, replies)
    first = arrays.to_numpy_ndarrays()[0]
    assert first.shape == (3,)
    weighted = float(np.dot(values, sizes) / sum(sizes))
    if name in ("fedavg", "fedprox"):
        np.testing.assert_allclose(first, weighted, rtol=1e-6)
    elif name == "fedmedian":
        np.testing.assert_allclose(first, 3.0)
    elif name == "fedtrimmedavg":  # drops the lowest and the highest (100.0) before averaging
        np.testing.assert_allclose(first, 3.0)
    elif name == "krum":  # picks one client's update, never the outlier
        assert float(first[0]) in values[:4]
    else:  # fedadam: one server Adam step of size ~server_lr from 0 towards the average
        assert np.all((first > 0) & (first < 2 * cfg.server_lr))
    # the aggregated train loss covers the replies the strategy used: Krum's selected one, everyone otherwise
    expected_loss = float(first[0]) if name == "krum" else weighted
    assert metrics["train_loss"] == pytest.approx(expected_loss)
    strategy.ledger.close_round(1, metrics, None)
    assert [row["client"] for row in strategy.ledger.rows] == ["0", "1", "2", "3", "4", "global"]
    assert strategy.ledger.rows[-1]["num_train_examples"] == sum(sizes)


def test_failed_replies_are_excluded_and_logged_until_too_few_remain() -> None:
    cfg = FederatedConfig(num_clients=3, min_fit_fraction=0.5)
    ledger = RoundLedger(cfg, node_partitions={101: 1})
    replies = [
        _train_reply(100, 0, 1.0, 10, 0.5),
        _error_reply(101, "boom Message: injected fault'>"),
        _train_reply(102, 2, 3.0, 30, 0.7),
    ]
    kept = ledger.check_replies(1, "train", sampled=3, replies=replies)
    assert [m.has_error() for m in kept] == [False, False, True]
    assert ledger.failures == [{"round": 1, "step": "train", "client": 1, "node_id": 101, "reason": "injected fault"}]
    # one reply missing (timeout) and one error: 1 of 3 succeeded < ceil(0.5 * 3) = 2
    with pytest.raises(NotEnoughClients, match="round 2 train: 1 of 3 sampled clients succeeded, 2 required"):
        replies = [_train_reply(100, 0, 1.0, 10, 0.5), _error_reply(101, "x")]
        ledger.check_replies(2, "train", sampled=3, replies=replies)
    assert any("no reply within" in f["reason"] for f in ledger.failures if f["round"] == 2)


def test_replies_are_aggregated_in_partition_order() -> None:
    ledger = RoundLedger(FederatedConfig(num_clients=3))
    replies = [_train_reply(7, 2, 1.0, 1, 0.1), _train_reply(5, 0, 1.0, 1, 0.1), _train_reply(9, 1, 1.0, 1, 0.1)]
    kept = ledger.check_replies(1, "train", 3, replies)
    assert [int(m.content[METRICS_KEY][PARTITION_KEY]) for m in kept] == [0, 1, 2]


def test_short_reason_keeps_the_client_message() -> None:
    ray_reason = "<class 'RayTaskError'>:<'traceback...\nClientAppException: \nException occurred. Message: disk full'>"
    assert short_reason(ray_reason) == "disk full"
    assert short_reason("line one\nlast line\n") == "last line"


# ------------------------------------------------------------------------------ one real simulation


SIMULATED_CFG = FederatedConfig(
    rounds=3,
    local_epochs=2,
    lr=1e-2,
    batch_size=16,
    min_fit_fraction=0.5,
    fault=FaultInjection(partition_id=1, round=1),
)


def _torch_settings() -> tuple[int, bool]:
    import torch

    return torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory):
    """3 IID clients, 3 rounds of FedAvg, client 1 raising in round 1; the result and its directories."""
    from bearing_core.federated.simulation import run_federated

    dataset = write_feature_dataset(tmp_path_factory.mktemp("fl") / "dataset")
    partition_dataset(dataset, "iid", 3, 0, InputConfig(train_fraction=1.0))
    before = _torch_settings()
    result = run_federated(dataset, SIMULATED_CFG, dataset.parent / "model")
    assert _torch_settings() == before  # the in-process ClientApps' torch.set_num_threads(1) etc. do not leak
    return result, dataset


@pytest.mark.integration
def test_simulation_trains_and_loss_decreases(simulated) -> None:
    result, _ = simulated
    glob = result.metrics[result.metrics["client"] == "global"].sort_values("round")
    assert list(glob["round"]) == [1, 2, 3]
    assert glob["train_loss"].iloc[-1] < glob["train_loss"].iloc[0]
    assert glob["eval_mse"].iloc[-1] < glob["eval_mse"].iloc[0]
    np.testing.assert_allclose(glob["eval_rmse"], np.sqrt(glob["eval_mse"]))
    per_client = result.metrics[~result.metrics["client"].isin(["global", "centralized"])]
    assert sorted(per_client["client"].unique()) == ["0", "1", "2"]
    assert (per_client["num_eval_examples"] > 0).all()


@pytest.mark.integration
def test_failing_client_is_excluded_not_fatal(simulated) -> None:
    result, _ = simulated
    assert [(f["round"], f["step"], f["client"]) for f in result.failures] == [(1, "train", 1)]
    assert "injected fault" in result.failures[0]["reason"]
    m = result.metrics
    round1 = m[(m["round"] == 1) & (m["client"] != "centralized")].set_index("client")
    assert np.isnan(round1.loc["1", "train_loss"])  # no train reply from client 1 in round 1 ...
    trained = round1["num_train_examples"]
    assert trained["global"] == trained["0"] + trained["2"]
    assert not np.isnan(m[(m["round"] == 2) & (m["client"] == "1")]["train_loss"]).any()  # ... back in round 2


@pytest.mark.integration
def test_model_and_metrics_written_with_centralized_baseline(simulated) -> None:
    result, dataset = simulated
    metrics = pq.read_table(result.model_dir / "metrics.parquet").to_pandas()
    assert list(metrics.columns) == [
        "round",
        "client",
        "train_loss",
        "eval_mse",
        "eval_rmse",
        "num_train_examples",
        "num_eval_examples",
        "wall_s",
    ]
    central = metrics[metrics["client"] == "centralized"].sort_values("round")
    assert list(central["round"]) == [1, 2, 3]
    round2 = metrics[(metrics["client"] == "global") & (metrics["round"] == 2)]
    assert central["num_train_examples"].iloc[0] == round2["num_train_examples"].iloc[0]
    assert central["eval_mse"].iloc[-1] < central["eval_mse"].iloc[0]

    loaded = load_model(result.model_dir)
    assert loaded.input_columns == [f"{c}_mean_abs" for c in IMS_CHANNELS_4]
    assert loaded.extra["strategy"] == "fedavg" and loaded.extra["failures"][0]["client"] == 1
    # federated scaling = exact global statistics of the union of the clients' train rows
    train = pd.concat(pd.read_parquet(p) for p in sorted(scheme_dir(dataset, "iid").glob("client_*.parquet")))
    train = train[train["split"] == "train"][loaded.input_columns].to_numpy()
    np.testing.assert_allclose(loaded.scaler.mean, train.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(loaded.scaler.std, train.std(axis=0), rtol=1e-8)
    assert result.final("global")["eval_mse"] == pytest.approx(loaded.extra["final_eval_mse"])


@pytest.mark.integration
def test_same_seed_gives_the_same_model_bit_for_bit(simulated, tmp_path: Path) -> None:
    """The in-process runtime keeps runs reproducible: clients seed their own work, replies are aggregated in
    partition order, and concurrent ClientApps do not disturb each other (nor the server)."""
    from bearing_core.federated.config import SimulationResources
    from bearing_core.federated.simulation import run_federated

    result, dataset = simulated
    again = run_federated(
        dataset, SIMULATED_CFG, tmp_path / "again", baseline=False, resources=SimulationResources(workers=3)
    )
    first, second = load_model(result.model_dir), load_model(again.model_dir)
    for name, tensor in first.model.state_dict().items():
        assert tensor.numpy().tobytes() == second.model.state_dict()[name].numpy().tobytes(), name
    fl = result.metrics[result.metrics["client"] != "centralized"].drop(columns="wall_s").reset_index(drop=True)
    pd.testing.assert_frame_equal(fl, again.metrics.drop(columns="wall_s").reset_index(drop=True))
    without_node_ids = [[{k: v for k, v in f.items() if k != "node_id"} for f in r.failures] for r in (result, again)]
    assert without_node_ids[0] == without_node_ids[1] != []  # node ids are drawn at random per run


def test_simulation_workers_are_validated() -> None:
    from pydantic import ValidationError

    from bearing_core.federated.backend import run_inprocess
    from bearing_core.federated.config import SimulationResources

    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        SimulationResources(workers=0)
    with pytest.raises(ValueError, match="workers must be between 1 and"):
        run_inprocess(None, None, 2, 1000)  # checked before anything starts


@pytest.mark.integration
def test_federated_threshold_equals_pooled_calibration(simulated) -> None:
    """The threshold merged from the clients' sketches equals the pooled computation on all holdout rows."""
    from bearing_core.threshold import ThresholdConfig, load_threshold, snapshot_errors

    result, dataset = simulated
    record = load_threshold(result.model_dir)
    assert record.source == "federated: 3 clients"
    loaded = load_model(result.model_dir)
    holdout = pd.concat(pd.read_parquet(p) for p in sorted(scheme_dir(dataset, "iid").glob("client_*.parquet")))
    holdout = holdout[holdout["split"] == "holdout"][loaded.input_columns].to_numpy()
    errors, _ = snapshot_errors(loaded, holdout)
    assert record.calibration_size == len(errors) > 0
    pooled = float(np.quantile(errors, ThresholdConfig().quantile))
    bound = 10 ** (1 / (2 * ThresholdConfig().bins_per_decade))  # the sketch's stated relative error
    assert pooled / bound <= record.threshold <= pooled * bound
    assert record.error_mean == pytest.approx(errors.mean(), rel=1e-6)  # float32 errors, other process
    assert record.error_std == pytest.approx(errors.std(), rel=1e-6)


def test_train_cli_rejects_unknown_strategy_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import argparse

    from cli import train_cmd

    parser = argparse.ArgumentParser(prog="bearing")
    train_cmd.register(parser.add_subparsers())
    with pytest.raises(SystemExit) as excinfo:
        parser.parse_args(["train", str(tmp_path), "--strategy", "fedsgd"])
    assert excinfo.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "fedsgd" in error and "fedavg" in error and "fedmedian" in error
    args = parser.parse_args(["train", str(tmp_path / "missing"), "--clients", "2"])
    assert args.func(args) == 2  # no dataset there: one error line, exit 2, nothing trained
    assert "bearing train: error:" in capsys.readouterr().err
