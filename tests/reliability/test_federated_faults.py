"""Federated faults: clients that raise, hang past the round timeout or reply NaN weights.

One real Flower simulation (10 clients, 2 rounds, tiny data) with three faulty clients in round 1 checks that the
round completes with the 7 good clients, that the NaN update never reaches the global model and that every fault is
in the ledger with its reason. The fault-injection configuration and the ledger's non-finite check are also
tested directly on reply messages (no simulation).

How flwr 1.42 behaves with a hanging simulated client (read from ``InMemoryGrid.send_and_receive`` and
``vce_api``): the grid stops waiting after ``timeout`` and returns the replies it has; the worker thread running
the hanging ClientApp (:mod:`bearing_core.federated.backend`) stays busy until the sleep ends (its late reply is
stored but never pulled) while the other worker serves the remaining clients, and at the end of the run the
simulation joins its worker threads, so ``run_federated`` returns only once that call has returned. The hang is
therefore set a little longer than the timeout, not arbitrarily long.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from helpers.feature_datasets import write_feature_dataset

from bearing_core.federated.client_app import _maybe_fail, _poisoned
from bearing_core.federated.config import FaultInjection, FederatedConfig
from bearing_core.federated.messages import ARRAYS_KEY, METRICS_KEY, PARTITION_KEY, WEIGHT_KEY
from bearing_core.federated.strategies import NotEnoughClients, RoundLedger, build_strategy, non_finite_update
from bearing_core.inputs import InputConfig
from bearing_core.model_io import load_model
from bearing_core.partition.build import partition_dataset

RAISING, HANGING, POISONING = 3, 5, 7
ROUND_TIMEOUT_S = 30.0  # > the first train step (torch's optimizer imports ~800 modules once), even on a busy machine
HANG_S = ROUND_TIMEOUT_S + 5.0


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are stamped with the running task's identity, which a ServerApp process sets; fake one here."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _instruction(node_id: int) -> Message:
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN)


def _train_reply(
    node_id: int, pid: int, value: float, n: int, loss: float = 0.1, arrays: list[np.ndarray] | None = None
) -> Message:
    if arrays is None:
        arrays = [np.full(3, value, dtype=np.float32), np.full((2, 2), value, dtype=np.float32)]
    metrics = MetricRecord({"train_loss": loss, "train_s": 0.1, PARTITION_KEY: pid, WEIGHT_KEY: n})
    return Message(RecordDict({ARRAYS_KEY: ArrayRecord(arrays), METRICS_KEY: metrics}), reply_to=_instruction(node_id))


class _Nodes:
    """Stands in for the Grid in configure_train, which only asks it for the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


# ------------------------------------------------------------------------------------------------ configuration


def test_several_faults_round_trip_through_the_flat_run_config() -> None:
    cfg = FederatedConfig(
        fault=FaultInjection(partition_id=1, round=2),
        faults=(
            FaultInjection(partition_id=RAISING),
            FaultInjection(partition_id=HANGING, mode="sleep", sleep_s=2.5),
            FaultInjection(partition_id=POISONING, mode="nan"),
        ),
    )
    run_config = cfg.to_run_config()
    assert run_config["fault-partition-id"] == 1 and run_config["fault-round"] == 2  # the single fault: as before
    assert run_config["faults"] == "3@1:raise,5@1:sleep:2.5,7@1:nan"
    assert all(isinstance(v, int | float | str | bool) for v in run_config.values())
    assert FederatedConfig.from_run_config(run_config) == cfg
    assert [f.partition_id for f in FaultInjection.all_from_config(run_config)] == [1, RAISING, HANGING, POISONING]
    assert "faults" not in FederatedConfig().to_run_config() and FederatedConfig().fault_config() == {}
    odd = FaultInjection(partition_id=0, mode="nan", sleep_s=1e-3)  # a non-default duration survives too
    assert FaultInjection.parse(odd.spec()) == odd


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ("3@1:explode", "bad fault spec '3@1:explode'"),
        ("3@0:raise", "greater than or equal to 1"),
        ("3@1:raise,3@1:nan", "two fault injections for client 3 in round 1"),
    ],
)
def test_bad_fault_settings_fail_with_one_clear_line(faults: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederatedConfig(faults=faults)


def test_client_fault_helper_raises_sleeps_or_asks_for_poisoned_weights() -> None:
    config = FederatedConfig(faults="3@1:raise,5@1:sleep:0.01,7@1:nan").fault_config()
    with pytest.raises(RuntimeError, match="injected fault: client 3 fails in round 1"):
        _maybe_fail(config, 3, 1)
    assert _maybe_fail(config, 5, 1) is None  # slept, then trains normally
    assert _maybe_fail(config, 7, 1) == "nan"
    assert _maybe_fail(config, 7, 2) is None and _maybe_fail(config, 0, 1) is None
    weights = [np.ones(3, dtype=np.float32), np.ones((2, 2), dtype=np.float32)]
    poisoned = _poisoned(weights)
    assert [int(np.isnan(w).sum()) for w in poisoned] == [1, 1] and np.isfinite(weights[0]).all()


def test_strategy_forwards_every_fault_to_the_train_instructions() -> None:
    cfg = FederatedConfig(num_clients=2, fault=FaultInjection(partition_id=0), faults="1@1:nan")
    strategy = build_strategy(cfg)
    start = ArrayRecord([np.zeros(3, dtype=np.float32)])
    for msg in strategy.configure_train(1, start, ConfigRecord({"lr": 0.1}), _Nodes([10, 11])):
        config = msg.content["config"]
        assert config["fault-partition-id"] == 0 and config["faults"] == "1@1:nan" and config["lr"] == 0.1


# ----------------------------------------------------------------------------- non-finite replies, no simulation


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "krum"])
def test_non_finite_update_is_rejected_before_aggregation(name: str) -> None:
    cfg = FederatedConfig(strategy=name, num_clients=4)
    strategy = build_strategy(cfg)
    strategy.ledger.node_partitions.update({100: 0, 101: 1, 102: 2, 103: 3})
    start = ArrayRecord([np.zeros(3, dtype=np.float32), np.zeros((2, 2), dtype=np.float32)])
    instructions = list(strategy.configure_train(1, start, ConfigRecord(), _Nodes([100, 101, 102, 103])))
    assert len(instructions) == 4
    one_inf = np.ones((2, 2), dtype=np.float32)
    one_inf[1, 0] = np.inf
    poisoned = _train_reply(102, 2, 1.0, 10, arrays=[np.ones(3, dtype=np.float32), one_inf])
    replies = [
        _train_reply(100, 0, 1.0, 10),
        _train_reply(101, 1, 2.0, 10),
        poisoned,
        _train_reply(103, 3, 3.0, 20, loss=float("nan")),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert all(np.isfinite(a).all() for a in arrays.to_numpy_ndarrays())
    assert np.isfinite(metrics["train_loss"])
    if name == "fedavg":  # the mean of the two finite replies only
        np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], 1.5, rtol=1e-6)
    failures = [(f["client"], f["node_id"], f["reason"]) for f in strategy.ledger.failures]
    assert failures == [
        (2, 102, "client 2 round 1: non-finite weights rejected"),
        (3, 103, "client 3 round 1: non-finite train_loss rejected"),
    ]


def test_rejected_updates_count_against_min_fit_fraction() -> None:
    ledger = RoundLedger(FederatedConfig(num_clients=3, min_fit_fraction=0.6))
    nan_reply = _train_reply(101, 1, float("nan"), 10)
    assert non_finite_update(nan_reply) == "non-finite weights" and non_finite_update(_train_reply(1, 0, 1, 1)) is None
    with pytest.raises(NotEnoughClients, match="1 of 3 sampled clients succeeded, 2 required"):
        ledger.check_replies(1, "train", 3, [_train_reply(100, 0, 1.0, 10), nan_reply], sampled_nodes=[100, 101, 102])
    reasons = [f["reason"] for f in ledger.failures]
    assert reasons == ["client 1 round 1: non-finite weights rejected", "node 102 round 1: no reply within 600s"]


def test_evaluate_replies_without_holdout_rows_are_not_rejected() -> None:
    """A client with no holdout rows reports eval_mse NaN with weight 0 by design: only train replies are checked."""
    ledger = RoundLedger(FederatedConfig(num_clients=1))
    metrics = MetricRecord({"eval_mse": float("nan"), "eval_rmse": float("nan"), PARTITION_KEY: 0, WEIGHT_KEY: 0})
    reply = Message(RecordDict({METRICS_KEY: metrics}), reply_to=_instruction(100))
    assert ledger.check_replies(1, "evaluate", 1, [reply], sampled_nodes=[100]) == [reply]
    assert ledger.failures == []


# ---------------------------------------------------------------------------------------- one real simulation


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory):
    """10 IID clients, 2 FedAvg rounds; in round 1 client 3 raises, 5 hangs past the timeout, 7 replies NaN."""
    import threading

    from bearing_core.federated.simulation import run_federated

    dataset = write_feature_dataset(tmp_path_factory.mktemp("faults") / "dataset", rows_per_site=60)
    partition_dataset(dataset, "iid", 10, 0, InputConfig(train_fraction=1.0))
    cfg = FederatedConfig(
        rounds=2,
        local_epochs=1,
        batch_size=16,
        min_fit_fraction=0.5,
        round_timeout_s=ROUND_TIMEOUT_S,
        faults=(
            FaultInjection(partition_id=RAISING),
            FaultInjection(partition_id=HANGING, mode="sleep", sleep_s=HANG_S),
            FaultInjection(partition_id=POISONING, mode="nan"),
        ),
    )
    threads_before = set(threading.enumerate())
    result = run_federated(dataset, cfg, dataset.parent / "model", baseline=False)
    return result, set(threading.enumerate()) - threads_before


@pytest.mark.slow
def test_round_completes_with_the_good_clients_and_logs_every_fault(faulty_run) -> None:
    result, threads_left = faulty_run
    assert not threads_left  # every simulation thread has ended, the hanging client's included
    failures = {(f["round"], f["step"], f["client"]): f["reason"] for f in result.failures}
    assert set(failures) == {(1, "train", RAISING), (1, "train", HANGING), (1, "train", POISONING)}
    assert "injected fault: client 3 fails in round 1" in failures[(1, "train", RAISING)]
    assert failures[(1, "train", HANGING)] == f"client {HANGING} round 1: no reply within {ROUND_TIMEOUT_S:g}s"
    assert failures[(1, "train", POISONING)] == f"client {POISONING} round 1: non-finite weights rejected"

    m = result.metrics
    round1 = m[m["round"] == 1].set_index("client")
    good = [str(k) for k in range(10) if k not in (RAISING, HANGING, POISONING)]
    assert round1.loc[good, "train_loss"].notna().all()
    assert round1.loc[[str(RAISING), str(HANGING), str(POISONING)], "train_loss"].isna().all()
    assert round1.loc["global", "num_train_examples"] == round1.loc[good, "num_train_examples"].sum() > 0
    round2 = m[m["round"] == 2].set_index("client")
    assert round2.loc["global", "num_train_examples"] == round2.drop("global")["num_train_examples"].sum()
    assert round2.drop("global")["train_loss"].notna().sum() == 10  # every client is back in round 2
    assert np.isfinite(m[m["client"] == "global"][["train_loss", "eval_mse"]].to_numpy()).all()


@pytest.mark.slow
def test_global_model_stays_finite(faulty_run) -> None:
    result, _ = faulty_run
    loaded = load_model(result.model_dir)
    assert all(bool(np.isfinite(t.numpy()).all()) for t in loaded.model.state_dict().values())
    assert len(loaded.extra["failures"]) == 3
    assert (Path(result.model_dir) / "threshold.json").is_file()
