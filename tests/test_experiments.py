"""Experiment grids: the common evaluation set, the seed preset's notebook wiring, client files, and the whole demo
grid as a Prefect flow run (tiny generated data, 2 rounds) with its report and artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.splits import CHANNELS, samples_split

from bearing_core.experiments import (
    CENTRALIZED,
    DETECTION_COLUMNS,
    SEED_FILES,
    SUMMARY_COLUMNS,
    ExperimentSpec,
    GridConfig,
    block_holdout_split,
    deal_eval_rows,
    demo_grid,
    resolve_partitioner,
    rounds_to_within,
    run_experiment,
    seed_grid,
    seed_split,
    site_holdout_split,
    write_experiment_clients,
)
from bearing_core.partition.quantity import NOTEBOOK_RATIOS
from bearing_core.partition.writer import (
    SPLIT_HOLDOUT,
    SPLIT_TRAIN,
    load_manifest,
    read_client,
)

# ------------------------------------------------------------------------------------------ evaluation set


def test_block_split_is_the_notebooks_in_order_80_20_per_block() -> None:
    train, evaluation = block_holdout_split(40_960, 10, 0.2)
    assert len(train) == 32_760 and len(evaluation) == 8_200
    assert np.array_equal(np.sort(np.r_[train, evaluation]), np.arange(40_960))
    blocks = evaluation.reshape(10, 820)
    # each block of 4,096 rows keeps its first 3,276 rows for training and its last 820 (in order) for evaluation
    assert np.array_equal(blocks[:, 0], np.arange(10) * 4096 + 3276)
    assert np.array_equal(blocks[:, -1], np.arange(10) * 4096 + 4095)
    assert np.all(np.diff(blocks, axis=1) == 1)
    with pytest.raises(ValueError, match="blocks"):
        block_holdout_split(5, 6, 0.2)


def test_site_split_holds_out_the_latest_fifth_of_each_site() -> None:
    rows = pd.DataFrame(
        {"site": ["a"] * 10 + ["b"] * 4, "timestamp": pd.date_range("2004-01-01", periods=14, freq="h")}
    )
    train, evaluation = site_holdout_split(rows, 0.2)
    assert list(evaluation) == [8, 9, 13]  # ceil(0.2*10) = 2 of site a, ceil(0.2*4) = 1 of site b
    assert list(train) == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12]


def test_seed_split_reads_the_two_notebook_files(shared_ims: Path) -> None:
    from bearing_core.ims_reader import read_ims_file

    split = seed_split(shared_ims / "raw" / "1st_test", seed_grid())
    assert split.columns == list(CHANNELS)
    assert len(split.train) == 32_760 and len(split.eval) == 8_200
    assert set(split.train["file"]) == set(SEED_FILES) and set(split.eval["file"]) == set(SEED_FILES)
    first = read_ims_file(shared_ims / "raw" / "1st_test" / SEED_FILES[0]).data
    assert np.array_equal(split.train[list(CHANNELS)].to_numpy()[:3276], first[:3276])  # raw g values, unscaled
    assert np.array_equal(split.eval[list(CHANNELS)].to_numpy()[:820], first[3276:4096])


def test_seed_split_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=SEED_FILES[0]):
        seed_split(tmp_path, seed_grid())


# ------------------------------------------------------------------------------------------ seed preset wiring


def test_seed_preset_is_the_notebooks_recipe() -> None:
    import torch

    from bearing_core.autoencoder import ModelConfig, build_model

    grid = seed_grid()
    assert (grid.mode, grid.scale, grid.rounds, grid.local_epochs) == ("samples", False, 20, 1)
    assert (grid.lr, grid.batch_size, grid.num_clients, grid.threshold_quantile) == (1e-3, 128, 10, 0.95)
    assert (grid.eval_blocks, grid.eval_fraction) == (10, 0.2)
    names = [e.name for e in grid.experiments]
    assert names[:3] == [CENTRALIZED, "fedavg-iid", "fedavg-quantity"]
    assert {"fedavg-dirichlet", "fedprox-quantity", "fedprox-dirichlet", "fedadam-quantity"} <= set(names)

    specs = {e.name: e for e in grid.experiments}
    iid = resolve_partitioner(specs["fedavg-iid"], 10)
    assert iid.name == "blocks"
    quantity = resolve_partitioner(specs["fedavg-quantity"], 10)
    assert quantity.name == "quantity" and quantity.ratios == NOTEBOOK_RATIOS and quantity.shuffle is False
    dirichlet = resolve_partitioner(specs["fedavg-dirichlet"], 10)
    assert (dirichlet.alpha, dirichlet.by) == (0.3, "time_block")

    cfg = grid.federated_config(specs["fedavg-iid"], 10)
    assert (cfg.strategy, cfg.rounds, cfg.local_epochs, cfg.lr, cfg.batch_size) == ("fedavg", 20, 1, 1e-3, 128)
    assert (cfg.scale, cfg.activation, cfg.threshold_method, cfg.threshold_quantile) == (
        False,
        "relu",
        "quantile",
        0.95,
    )
    assert grid.federated_config(specs["fedprox-quantity"], 10).strategy == "fedprox"
    model = build_model(ModelConfig(n_inputs=8, hidden=cfg.hidden, activation=cfg.activation), seed=0)
    linear = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linear == [(8, 16), (16, 4), (4, 16), (16, 8)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 3
    assert seed_grid(rounds=3).rounds == 3


def test_quantity_skew_uses_zipf_shares_for_other_client_counts() -> None:
    spec = next(e for e in demo_grid().experiments if e.name == "fedavg-quantity")
    ratios = resolve_partitioner(spec, 4).ratios
    assert ratios == pytest.approx(np.array([1, 1 / 2, 1 / 3, 1 / 4]) / sum([1, 1 / 2, 1 / 3, 1 / 4]))


def test_grid_validation_and_selection() -> None:
    grid = demo_grid(rounds=2)
    assert [e.name for e in grid.select(["fedavg-natural", CENTRALIZED]).experiments] == [CENTRALIZED, "fedavg-natural"]
    with pytest.raises(ValueError, match="unknown experiments"):
        grid.select(["fedsgd-iid"])
    with pytest.raises(ValueError, match="needs a partition"):
        ExperimentSpec(name="x", label="x")
    spec = ExperimentSpec(name="a", label="a", partition="iid")
    with pytest.raises(ValueError, match="unique"):
        GridConfig(preset="seed", experiments=(spec, spec))


def test_rounds_to_within_five_percent_of_the_final_value() -> None:
    assert rounds_to_within([10.0, 5.0, 1.2, 1.04, 1.0]) == 4
    assert rounds_to_within([1.0, 2.0, 1.0]) == 3  # left the 5 % band in round 2: settles only at the end
    assert rounds_to_within([3.0]) == 1


# ------------------------------------------------------------------------------------------ client files


def test_client_files_train_on_their_part_and_hold_a_share_of_the_common_eval_set(tmp_path: Path) -> None:
    from bearing_core.federated.client_app import load_partition

    split = samples_split()
    for name, partitioner in (
        ("iid", resolve_partitioner(ExperimentSpec(name="i", label="i", partition="blocks"), 10)),
        ("skew", resolve_partitioner(ExperimentSpec(name="q", label="q", partition="quantity"), 10)),
    ):
        parts = partitioner.partition(split.train, 10, 0)
        eval_parts = deal_eval_rows(split.eval, [len(p) for p in parts], partitioner.name, {})
        clients_dir = write_experiment_clients(split, parts, eval_parts, tmp_path, name, partitioner.params(), 0)
        manifest = load_manifest(clients_dir)
        assert manifest.num_clients == 10 and manifest.input_columns == list(CHANNELS)
        holdouts = [read_client(clients_dir, k, SPLIT_HOLDOUT)[list(CHANNELS)].to_numpy() for k in range(10)]
        # every experiment evaluates on the same E: the clients' holdouts are E, in order, whatever the partition
        assert np.array_equal(np.concatenate(holdouts), split.X_eval().astype(np.float32))
        for k, idx in enumerate(parts):
            columns, X_train, _ = load_partition(clients_dir, k)
            assert columns == list(CHANNELS)
            assert np.array_equal(X_train, split.X_train()[idx].astype(np.float32).astype(np.float64))
            assert len(read_client(clients_dir, k, SPLIT_TRAIN)) == manifest.clients[k].train_rows == len(idx)
        if name == "iid":  # equal blocks: client k holds exactly block k's last 20 % (the notebook's test split)
            assert [len(h) for h in holdouts] == [40] * 10
            assert manifest.clients[3].train_rows == 160
        else:  # the notebook's ratios: client 0 has 30 % of T and of E, client 9 1 %
            assert [c.train_rows for c in manifest.clients] == [480, 80, 192, 160, 144, 128, 128, 112, 160, 16]
            assert [c.holdout_rows for c in manifest.clients] == [120, 20, 48, 40, 36, 32, 32, 28, 40, 4]


def test_centralized_baseline_threshold_is_the_95th_percentile_of_eval_errors(tmp_path: Path) -> None:
    grid = seed_grid(rounds=2).model_copy(update={"batch_size": 64}).select([CENTRALIZED])
    split = samples_split()
    result = run_experiment(grid.experiments[0], grid, split, tmp_path)
    exact = np.quantile(result.eval_errors, 0.95)
    assert result.threshold == pytest.approx(exact, rel=0.012)  # federated sketch: within its bin width
    curve = result.curve
    assert list(curve["round"]) == [1, 2] and set(curve["client"]) == {CENTRALIZED}
    # the last round's evaluation is the final model on E, recomputed independently
    assert curve["eval_mse"].iloc[-1] == pytest.approx(result.final_eval_mse, rel=1e-5)
    assert result.final_train_mse == pytest.approx(float(result.clients["final_mse"].iloc[0]))
    assert result.curve["eval_mse"].iloc[1] < result.curve["eval_mse"].iloc[0]  # it learns


def test_demo_data_of_an_earlier_run_is_reused_only_when_it_matches(tmp_path: Path) -> None:
    from bearing_core.experiments import prepare_demo_dataset
    from bearing_core.synthetic import generate_demo

    generate_demo(tmp_path / "data" / "raw" / "demo", sites=2, files_per_site=3, n_samples=256)
    with pytest.raises(ValueError, match=r"\(2, 3, 256, 0\), not \(2, 4, 256, 0\)"):
        prepare_demo_dataset(tmp_path, None, sites=2, files=4, n_samples=256)


def test_split_written_for_the_experiment_tasks_reads_back_identical_and_refuses_changes(tmp_path: Path) -> None:
    from bearing_core.fingerprint import sha256_file
    from tasks.experiments import read_split, write_split

    split = samples_split()
    manifest = write_split(split, tmp_path / "split")
    sha = sha256_file(manifest)
    assert sha256_file(write_split(split, tmp_path / "split")) == sha  # same split, same bytes: a stable cache key
    back = read_split(manifest, sha)
    pd.testing.assert_frame_equal(back.train, split.train)
    pd.testing.assert_frame_equal(back.eval, split.eval)
    assert np.array_equal(back.train_position, split.train_position)
    assert np.array_equal(back.eval_position, split.eval_position)
    assert (back.columns, back.description, back.dataset_dir, back.faulty) == (
        split.columns,
        split.description,
        None,
        None,
    )
    (tmp_path / "split" / "eval.parquet").write_bytes((tmp_path / "split" / "train.parquet").read_bytes())
    with pytest.raises(ValueError, match=r"eval.parquet changed since it was recorded"):
        read_split(manifest, sha)
    with pytest.raises(ValueError, match="split manifest .* changed"):
        read_split(manifest, "0" * 64)


# ------------------------------------------------------------------------------------------ the flow, end to end


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("prefect-results")}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


DEMO_RUN = {
    "preset": "demo",
    "rounds": 2,
    "experiments": [CENTRALIZED, "fedavg-natural"],
    "demo_sites": 2,
    "demo_files": 14,
    "demo_samples": 2048,
}
"""The tiny demo grid every flow test runs (the second and third runs are served from the cache)."""


@pytest.fixture(scope="module")
def demo_run(harness, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, list[str]]]:
    """The flow run once on the tiny demo grid: output directory, returned dict, task run states."""
    from helpers.prefect_runs import task_run_states

    from flows.experiments import experiments_flow

    out = tmp_path_factory.mktemp("experiments")
    state = experiments_flow(out=str(out), **DEMO_RUN, return_state=True)
    return out, state.result(), task_run_states(state.state_details.flow_run_id)


@pytest.mark.integration
def test_demo_grid_flow_writes_report_summary_and_artifact(demo_run) -> None:
    from prefect.artifacts import Artifact

    out, result, states = demo_run
    assert states["experiment"] == ["Completed", "Completed"]  # one content-cached task per experiment
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["experiment"]) == [CENTRALIZED, "fedavg-natural"]
    assert [*SUMMARY_COLUMNS, *DETECTION_COLUMNS] == [c for c in summary.columns if c != "faulty_sites"]
    numeric = summary[["final_train_mse", "final_eval_mse", "final_eval_rmse", "wall_s", "threshold"]]
    assert np.isfinite(numeric.to_numpy()).all() and (numeric.to_numpy() > 0).all()
    assert np.allclose(summary["final_eval_rmse"], np.sqrt(summary["final_eval_mse"]))
    assert (summary["faulty_sites"] >= 1).all() and (summary["detected"] <= summary["faulty_sites"]).all()

    # the Flower run's per-round global eval MSE is over the common E: its last round equals the recomputed value
    metrics = pd.read_csv(out / "metrics.csv")
    last = metrics[(metrics["experiment"] == "fedavg-natural") & (metrics["client"] == "global")]["eval_mse"].iloc[-1]
    final = summary.set_index("experiment").loc["fedavg-natural", "final_eval_mse"]
    assert last == pytest.approx(final, rel=1e-4)
    clients = pd.read_csv(out / "clients.csv")
    assert len(clients[clients["experiment"] == "fedavg-natural"]) == 2  # one client per site

    markdown = (out / "report.md").read_text()
    assert "## Detection against the ground truth" in markdown and "## What this shows" in markdown
    assert markdown.count("data:image/png;base64,") == 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    artifact = Artifact.get(key="experiments-demo")
    assert artifact is not None
    shown = str(artifact.data).replace("\\_", "_")  # the artifact escapes markdown: final\_eval\_mse
    assert "final_eval_mse" in shown and "fedavg-natural" in shown
    assert result["summary_csv"] == str(out / "summary.csv") and len(result["findings"]) >= 3


@pytest.mark.integration
def test_rerun_serves_every_experiment_from_the_cache_and_reruns_one_whose_result_was_deleted(demo_run) -> None:
    from helpers.prefect_runs import task_run_states

    from flows.experiments import experiments_flow

    out, first, _ = demo_run
    weights = {name: (out / "models" / name / "weights.pt").stat().st_mtime_ns for name in DEMO_RUN["experiments"]}
    state = experiments_flow(out=str(out), **DEMO_RUN, return_state=True)
    second = state.result()
    assert task_run_states(state.state_details.flow_run_id)["experiment"] == ["Cached", "Cached"]
    pd.testing.assert_frame_equal(pd.DataFrame(second["summary"]), pd.DataFrame(first["summary"]))
    assert second["findings"] == first["findings"]
    assert {n: (out / "models" / n / "weights.pt").stat().st_mtime_ns for n in weights} == weights  # not retrained

    # a result file deleted since: that experiment runs again (cache refreshed), the other is still served
    (out / "models" / CENTRALIZED / "experiment_errors.parquet").unlink()
    state = experiments_flow(out=str(out), **DEMO_RUN, return_state=True)
    third = state.result()
    assert task_run_states(state.state_details.flow_run_id)["experiment"] == ["Cached", "Completed", "Cached"]
    assert (out / "models" / CENTRALIZED / "experiment_errors.parquet").is_file()
    pd.testing.assert_frame_equal(
        pd.DataFrame(third["summary"]).drop(columns="wall_s"), pd.DataFrame(first["summary"]).drop(columns="wall_s")
    )


@pytest.mark.integration
def test_cli_reports_a_missing_seed_file_with_exit_code_2(harness, tmp_path: Path, capsys) -> None:
    import argparse

    from cli import experiments_cmd

    parser = argparse.ArgumentParser(prog="bearing")
    experiments_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["experiments", "--preset", "seed", "--raw-dir", str(tmp_path), "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert SEED_FILES[0] in capsys.readouterr().err
    assert args.func(parser.parse_args(["experiments", "--rounds", "0"])) == 2
