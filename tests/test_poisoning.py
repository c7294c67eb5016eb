"""One site must not be able to poison the model or silence every alarm (issue 14, point 3).

Two attacks (fault modes of :class:`~bearing_core.federated.config.FaultInjection`): ``scale`` (weights x1e6 and a
claimed 1e9 rows: plain FedAvg hands the site the whole global model) and ``sketch`` (a calibration sketch whose
errors are all 1e6: the merged 0.995-quantile, hence the threshold, jumps to 1e6 and nothing ever alarms). The
server's screening (``FederatedConfig.outlier_factor``, ``manifest``) is checked piece by piece on hand-made
statistics, sketches and reply messages (no Ray), then end to end in real Flower simulations: the attacked run's
holdout MSE and threshold stay within 1.5x of the honest run's, while the same attacks with the screening off
wreck both (so the attacks are real and the assertions can fail).
"""

from __future__ import annotations

from datetime import UTC

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from helpers.feature_datasets import write_feature_dataset

from bearing_core.federated.client_app import _maybe_fail, _poisons_sketch, _scaled
from bearing_core.federated.config import SCALE_ATTACK_ROWS, FaultInjection, FederatedConfig
from bearing_core.federated.messages import ARRAYS_KEY, METRICS_KEY, PARTITION_KEY, WEIGHT_KEY
from bearing_core.federated.strategies import build_strategy, clip_update, update_norm
from bearing_core.inputs import InputConfig
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.writer import MANIFEST_FILE, scheme_dir
from bearing_core.scaling import Scaler, ScalerStats, cap_counts, local_stats, merge_stats, screen_stats
from bearing_core.threshold import ErrorSketch, ThresholdConfig, merge_sketches, screen_sketches, threshold_from_sketch

Q = ThresholdConfig().quantile


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are stamped with the running task's identity, which a ServerApp process sets; fake one here."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _sites(n: int = 4, rows: int = 50, seed: int = 0) -> list[np.ndarray]:
    """Rows of ``n`` heterogeneous honest sites: shifted means (several within-site stds apart), similar spread."""
    rng = np.random.default_rng(seed)
    return [0.1 + 0.01 * k + 0.002 * rng.normal(size=(rows, 3)) for k in range(n)]


# ------------------------------------------------------------------------------------------ fault injection


def test_attack_modes_parse_and_reach_the_client_helpers() -> None:
    cfg = FederatedConfig(faults="1@3:scale,2@1:sketch")
    assert [f.mode for f in cfg.faults] == ["scale", "sketch"]
    assert FederatedConfig.from_run_config(cfg.to_run_config()) == cfg
    config = cfg.fault_config()
    assert _maybe_fail(config, 1, 3) == "scale" and _maybe_fail(config, 1, 2) is None
    assert _maybe_fail(config, 2, 1) is None  # a sketch attack does not touch training
    assert _poisons_sketch(config, 2) and not _poisons_sketch(config, 1)
    weights = [np.ones(3, dtype=np.float32)]
    assert _scaled(weights)[0].dtype == np.float32 and float(_scaled(weights)[0][0]) == 1e6


def test_screening_settings_are_validated_and_travel_in_the_run_config() -> None:
    with pytest.raises(ValueError, match="outlier_factor must be 0 \\(off\\) or above 1"):
        FederatedConfig(outlier_factor=0.5)
    cfg = FederatedConfig(outlier_factor=5, norm_action="clip", manifest="/data/clients/natural/manifest.json")
    assert FederatedConfig.from_run_config(cfg.to_run_config()) == cfg
    assert FederatedConfig().outlier_factor == 10 and FederatedConfig().norm_action == "reject"


# ------------------------------------------------------------------------------------------ scaler statistics


def test_poisoned_scaler_statistics_are_rejected_and_the_honest_merge_kept() -> None:
    honest = [local_stats(x) for x in _sites()]
    poisoned = ScalerStats(count=50, sum=honest[0].sum * 1e6, sumsq=honest[0].sumsq * 1e12)
    screened = screen_stats([*honest, poisoned], factor=10, columns=["a", "b", "c"])
    assert [s is None for s, _ in screened] == [False] * 4 + [True]
    assert [note for _, note in screened[:4]] == [None] * 4  # heterogeneous honest sites all pass
    assert "robust scales from the sites' median (bound 10): scaler statistics rejected" in str(screened[4][1])
    kept = merge_stats([s for s, _ in screened if s is not None])
    honest_scaler = Scaler.from_stats(merge_stats(honest))
    np.testing.assert_allclose(Scaler.from_stats(kept).mean, honest_scaler.mean)
    # without the screening the poisoned site owns the scaler
    assert np.abs(Scaler.from_stats(merge_stats([*honest, poisoned])).mean / honest_scaler.mean).min() > 1e4

    wide = ScalerStats(count=50, sum=honest[1].sum, sumsq=honest[1].sumsq * 1e4)  # std x100, same mean
    assert "std of" in str(screen_stats([*honest, wide], factor=10)[4][1])
    nan = ScalerStats(count=50, sum=np.full(3, np.nan), sumsq=np.ones(3))
    assert screen_stats([honest[0], nan], factor=10)[1] == (None, "non-finite or negative scaler statistics rejected")


def test_inflated_counts_are_capped_keeping_the_site_mean_and_variance() -> None:
    honest = [local_stats(x) for x in _sites()]
    liar = ScalerStats(
        count=SCALE_ATTACK_ROWS,
        sum=honest[3].sum / 50 * SCALE_ATTACK_ROWS,
        sumsq=honest[3].sumsq / 50 * SCALE_ATTACK_ROWS,
    )
    # the manifest's rows win; without one the cap is factor x the median claim
    assert cap_counts([50, 50, 50, SCALE_ATTACK_ROWS], 10, [50, 50, 50, 50]) == [50, 50, 50, 50]
    assert cap_counts([50, 50, 50, SCALE_ATTACK_ROWS], 10) == [500] * 4
    assert cap_counts([50, SCALE_ATTACK_ROWS], 10) == [None, None]  # two sites: no median to trust
    screened = screen_stats([*honest[:3], liar], factor=10, caps=[50, 50, 50, 50])
    stats, note = screened[3]
    assert note == f"claimed {SCALE_ATTACK_ROWS} train rows, more than its cap 50: weighted as 50"
    merged = merge_stats([s for s, _ in screened])
    np.testing.assert_allclose(merged.sum / merged.count, merge_stats(honest).sum / 200, rtol=1e-9)
    np.testing.assert_allclose(merged.sumsq, merge_stats(honest).sumsq, rtol=1e-6)


# ------------------------------------------------------------------------------------------ calibration sketches


def test_a_poisoned_sketch_is_rejected_and_the_threshold_stays_honest() -> None:
    rng = np.random.default_rng(1)
    scales = (0.8, 1.0, 2.5, 4.0)  # honest sites differ (IMS 1st test: medians 0.6e-3 .. 2.9e-3)
    honest = [ErrorSketch.from_errors(s * 1e-3 * rng.lognormal(size=87)) for s in scales]
    honest_threshold = threshold_from_sketch(merge_sketches(honest), ThresholdConfig())
    poisoned = ErrorSketch.from_errors(np.full(87, 1e6))
    attacked = threshold_from_sketch(merge_sketches([*honest, poisoned]), ThresholdConfig())
    assert attacked > 1e5 * honest_threshold  # what the attack does to a plain merge

    notes = screen_sketches([*honest, poisoned], factor=10, q=Q)
    assert notes[:4] == [None] * 4
    assert "error sketch rejected: its median error 1e+06" in str(notes[4])
    kept = [s for s, note in zip([*honest, poisoned], notes) if note is None]
    assert threshold_from_sketch(merge_sketches(kept), ThresholdConfig()) == pytest.approx(honest_threshold)

    tiny = ErrorSketch.from_errors(np.full(87, 1e-9))  # pulls the threshold down: alarms on healthy data
    assert "x the sites' median" in str(screen_sketches([*honest, tiny], factor=10, q=Q)[4])
    # an honest site with bursts: the same bulk, a tail 30x the others' (the demo's seed 1): kept; 1000x: rejected
    bursty = ErrorSketch.from_errors(np.r_[1e-3 * rng.lognormal(size=80), np.full(7, 0.5)])
    assert screen_sketches([*honest, bursty], factor=10, q=Q)[4] is None
    wild = ErrorSketch.from_errors(np.r_[1e-3 * rng.lognormal(size=80), np.full(7, 50.0)])
    assert "quantile" in str(screen_sketches([*honest, wild], factor=10, q=Q)[4])
    capped = screen_sketches(honest, 10, Q, caps=[87, 87, 87, 50])
    assert capped[:3] == [None] * 3 and "of 87 errors, more than its 50 holdout rows" in str(capped[3])
    assert screen_sketches([honest[0], poisoned], factor=10, q=Q) == [None, None]  # two sites: undecidable


# ------------------------------------------------------------------------------------------ train replies


class _Nodes:
    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


def _reply(node_id: int, pid: int, arrays: list[np.ndarray], n: int) -> Message:
    instruction = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node_id, message_type=MessageType.TRAIN
    )
    metrics = MetricRecord({"train_loss": 0.1, "train_s": 0.1, PARTITION_KEY: pid, WEIGHT_KEY: n})
    return Message(RecordDict({ARRAYS_KEY: ArrayRecord(arrays), METRICS_KEY: metrics}), reply_to=instruction)


def _round(cfg: FederatedConfig, row_caps: dict[int, int] | None = None):
    """One FedAvg round from a global model of ones: 3 honest updates (+0.1, +0.2, +0.3) and client 3's attack."""
    strategy = build_strategy(cfg)
    strategy.ledger.node_partitions.update({100 + k: k for k in range(4)})
    strategy.ledger.row_caps.update(row_caps or {})
    start = [np.ones(3, dtype=np.float32), np.ones((2, 2), dtype=np.float32)]
    list(strategy.configure_train(1, ArrayRecord(start), ConfigRecord(), _Nodes([100, 101, 102, 103])))
    replies = [_reply(100 + k, k, [w + 0.1 * (k + 1) for w in start], 20) for k in range(3)]
    trained = [w + 0.2 for w in start]
    replies.append(_reply(103, 3, _scaled(trained), SCALE_ATTACK_ROWS))
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays.to_numpy_ndarrays()[0], strategy.ledger


def test_scaled_update_with_a_false_row_count_is_rejected_and_logged_with_its_site() -> None:
    first, ledger = _round(FederatedConfig(num_clients=4), row_caps={0: 20, 1: 20, 2: 20, 3: 20})
    np.testing.assert_allclose(first, 1.2, rtol=1e-6)  # the mean of the three honest updates
    assert [(a["client"], a["reason"]) for a in ledger.adjustments] == [
        (3, f"claimed {SCALE_ATTACK_ROWS} train rows, more than its cap 20: weighted as 20")
    ]
    assert [(f["client"], f["node_id"]) for f in ledger.failures] == [(3, 103)]
    assert "update norm" in ledger.failures[0]["reason"] and "x the round's median" in ledger.failures[0]["reason"]
    assert ledger.failures[0]["reason"].endswith("rejected")

    unscreened, _ = _round(FederatedConfig(num_clients=4, outlier_factor=0))
    assert float(unscreened[0]) > 1e5  # the attack owns the plain FedAvg model


def test_clip_mode_keeps_the_update_on_the_bound_and_caps_the_weight_at_the_median() -> None:
    first, ledger = _round(FederatedConfig(num_clients=4, norm_action="clip"))  # no row caps known: median cap
    assert ledger.failures == []
    reasons = [a["reason"] for a in ledger.adjustments]
    assert reasons[0] == f"claimed {SCALE_ATTACK_ROWS} train rows, more than its cap 200: weighted as 200"
    assert "clipped to it" in reasons[1]
    # the attacker's update is scaled onto 10 x the median norm (0.25 * sqrt(7): between the 0.2 and 0.3 updates),
    # i.e. +2.5 on each of the 7 weights, and weighs 200 of 260 rows: bounded, nowhere near 1e6
    median = update_norm([np.full(3, 1.25), np.full((2, 2), 1.25)], [np.ones(3), np.ones((2, 2))])
    assert median == pytest.approx(0.25 * np.sqrt(7))
    np.testing.assert_allclose(first, (20 * (1.1 + 1.2 + 1.3) + 200 * (1 + 10 * median / np.sqrt(7))) / 260, rtol=1e-5)
    ref = [np.zeros(2)]
    np.testing.assert_allclose(clip_update([np.array([3.0, 4.0])], ref, 1.0)[0], [0.6, 0.8])
    np.testing.assert_allclose(clip_update([np.array([0.3, 0.4])], ref, 1.0)[0], [0.3, 0.4])


# ------------------------------------------------------------------------------------------ real simulations

ATTACKER, SKETCHER, ROUNDS = 1, 2, 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """Honest, attacked (screened, manifest known) and attacked with the screening off; 5 IID clients."""
    from bearing_core.federated.simulation import run_federated

    root = tmp_path_factory.mktemp("poison")
    dataset = write_feature_dataset(root / "dataset", rows_per_site=80)
    partition_dataset(dataset, "iid", 5, 0, InputConfig(train_fraction=1.0))
    base = FederatedConfig(
        rounds=ROUNDS, local_epochs=2, batch_size=16, seed=0, manifest=str(scheme_dir(dataset, "iid") / MANIFEST_FILE)
    )
    attacks = (
        FaultInjection(partition_id=ATTACKER, round=ROUNDS, mode="scale"),
        FaultInjection(partition_id=SKETCHER, mode="sketch"),
    )
    cases = {
        "honest": base,
        "attacked": base.model_copy(update={"faults": attacks}),
        "unscreened": base.model_copy(update={"faults": attacks, "outlier_factor": 0.0, "manifest": ""}),
    }
    return {name: run_federated(dataset, cfg, root / name, baseline=False) for name, cfg in cases.items()}


def _outcome(result) -> tuple[float, float]:
    from bearing_core.threshold import load_threshold

    return float(result.final("global")["eval_mse"]), load_threshold(result.model_dir).threshold


@pytest.mark.slow
def test_both_attacks_leave_model_and_threshold_within_their_honest_values(runs) -> None:
    honest_mse, honest_threshold = _outcome(runs["honest"])
    mse, threshold = _outcome(runs["attacked"])
    assert mse <= 1.5 * honest_mse
    assert honest_threshold / 1.5 <= threshold <= 1.5 * honest_threshold


@pytest.mark.slow
def test_every_rejection_and_cap_is_logged_with_its_site(runs) -> None:
    from bearing_core.model_io import load_model
    from bearing_core.threshold import load_threshold

    result = runs["attacked"]
    failures = {(f["round"], f["step"], f["client"]): f["reason"] for f in result.failures}
    assert set(failures) == {(ROUNDS, "train", ATTACKER)}
    assert "update norm" in failures[(ROUNDS, "train", ATTACKER)]
    screening = load_model(result.model_dir).extra["screening"]
    assert [(a["round"], a["step"], a["client"]) for a in screening] == [(ROUNDS, "train", ATTACKER)]
    assert f"claimed {SCALE_ATTACK_ROWS} train rows" in screening[0]["reason"]
    record = load_threshold(result.model_dir)
    assert list(record.rejected_sketches) == [str(SKETCHER)] and record.source == "federated: 4 clients"
    assert runs["honest"].failures == [] and load_threshold(runs["honest"].model_dir).rejected_sketches == {}


@pytest.mark.slow
def test_model_card_names_the_screened_site(runs) -> None:
    import json
    from datetime import datetime

    from bearing_core.model_card import DataFingerprint, render_model_card
    from bearing_core.model_io import load_model

    result = runs["attacked"]
    fingerprint = DataFingerprint(
        dataset="dataset",
        dataset_dir="dataset",
        dataset_sha256="0",
        partition_manifest=result.config.manifest,
        partition_manifest_sha256="0",
        partition_scheme="iid",
        num_clients=5,
        sites=["site_1", "site_2"],
        train_rows=1,
        holdout_rows=1,
    )
    threshold = json.loads((result.model_dir / "threshold.json").read_text())
    card = render_model_card(
        "v1", datetime.now(UTC), load_model(result.model_dir), fingerprint, result.metrics, threshold
    )
    assert "1 client reply failed or was rejected by the server's screening" in card
    assert f"- round {ROUNDS} train, client {ATTACKER}: claimed {SCALE_ATTACK_ROWS} train rows" in card
    assert f'"{SKETCHER}": "error sketch rejected: its median error 1e+06' in card
    assert "| outlier_factor | 10 |" in card and "No differential privacy" in card


@pytest.mark.slow
def test_without_the_screening_the_same_attacks_take_over(runs) -> None:
    honest_mse, honest_threshold = _outcome(runs["honest"])
    mse, threshold = _outcome(runs["unscreened"])
    assert not mse <= 1e3 * honest_mse  # NaN/inf or astronomically large: the model is gone
    assert threshold > 1e3 * honest_threshold  # and nothing would ever alarm


# ------------------------------------------------------------------------------------------ privacy (issue 14, 9)


def test_private_strategy_clips_adds_calibrated_noise_and_keeps_logging_errors() -> None:
    from flwr.app import Error

    from bearing_core.federated.strategies import Private, privacy_summary

    with pytest.raises(ValueError, match="dp_noise_multiplier > 0 needs clipping_norm > 0"):
        FederatedConfig(dp_noise_multiplier=1.0)
    cfg = FederatedConfig(num_clients=4, clipping_norm=2.0, dp_noise_multiplier=0.5, outlier_factor=0)
    strategy = build_strategy(cfg)
    assert isinstance(strategy, Private) and strategy.clipping_norm == 2.0 and strategy.num_sampled_clients == 4
    inner = strategy.strategy
    inner.ledger.node_partitions.update({100 + k: k for k in range(4)})
    start = [np.zeros(20_000, dtype=np.float64)]
    list(strategy.configure_train(1, ArrayRecord(start), ConfigRecord(), _Nodes([100, 101, 102, 103])))
    replies = [_reply(100 + k, k, [np.full(20_000, 1.0)], 10) for k in range(3)]  # norm sqrt(20000) >> 2
    instruction = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=103, message_type=MessageType.TRAIN
    )
    replies.append(Message(Error(code=0, reason="boom Message: disk full'>"), reply_to=instruction))
    np.random.seed(0)
    arrays, _ = strategy.aggregate_train(1, replies)
    aggregate = arrays.to_numpy_ndarrays()[0]
    clipped = 2.0 / np.sqrt(20_000)  # every update scaled onto the clipping norm, then averaged
    assert float(aggregate.mean()) == pytest.approx(clipped, abs=0.005)
    assert float(aggregate.std()) == pytest.approx(0.5 * 2.0 / 4, rel=0.03)  # noise std = z * C / sampled
    assert [(f["client"], f["reason"]) for f in inner.ledger.failures] == [(3, "disk full")]  # the round went on

    summary = privacy_summary(cfg)
    assert summary["noise_std_per_round"] == 0.25 and summary["rounds"] == cfg.rounds and summary["epsilon"] > 0
    assert "site-level" in summary["accountant"] and privacy_summary(FederatedConfig()) is None


def test_absolute_clipping_without_privacy_is_applied_and_logged() -> None:
    cfg = FederatedConfig(num_clients=4, clipping_norm=0.1, outlier_factor=0)
    strategy = build_strategy(cfg)
    strategy.ledger.node_partitions.update({100 + k: k for k in range(4)})
    start = [np.zeros(4)]
    list(strategy.configure_train(1, ArrayRecord(start), ConfigRecord(), _Nodes([100, 101, 102, 103])))
    replies = [_reply(100, 0, [np.full(4, 0.01)], 10), _reply(101, 1, [np.full(4, 1.0)], 10)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], (0.01 + 0.05) / 2)  # client 1: norm 2 -> 0.1
    assert [(a["client"], a["reason"]) for a in strategy.ledger.adjustments] == [
        (1, "update norm 2 above clipping_norm 0.1: clipped to it")
    ]


def test_train_cli_rejects_bad_screening_settings_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    import argparse

    from cli import train_cmd

    parser = argparse.ArgumentParser(prog="bearing")
    train_cmd.register(parser.add_subparsers())
    for flags, message in (
        (["--outlier-factor", "0.5"], "outlier_factor must be 0 (off) or above 1, got 0.5"),
        (["--dp-noise-multiplier", "1"], "dp_noise_multiplier > 0 needs clipping_norm > 0"),
    ):
        args = parser.parse_args(["train", str(tmp_path), *flags])
        assert args.func(args) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("bearing train: error:") and message in error[0]
