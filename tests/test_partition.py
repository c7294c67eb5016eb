"""Partitioners, client files + manifest, and the Prefect partition task (small generated data)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.input_datasets import write_dataset, write_samples

from bearing_core.config import IMS_CHANNELS_4
from bearing_core.inputs import InputConfig, load_features
from bearing_core.partition import (
    BlockPartitioner,
    DirichletPartitioner,
    IidPartitioner,
    NaturalPartitioner,
    QuantityPartitioner,
    get_partitioner,
)
from bearing_core.partition.build import partition_dataset
from bearing_core.partition.quantity import NOTEBOOK_RATIOS
from bearing_core.partition.writer import holdout_mask, load_manifest, read_client, write_partitions

INPUTS = ["B1_mean_abs", "B2_mean_abs"]


def _frame(sites: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """Rows as the partitioners see them: metadata + inputs, sorted by (timestamp, site)."""
    rng = np.random.default_rng(seed)
    frames = []
    for s, (site, n) in enumerate(sites.items()):
        ts = pd.Timestamp("2004-02-12") + pd.to_timedelta(np.arange(n) * 10 + s, unit="min")
        files = ts.strftime("%Y.%m.%d.%H.%M.%S")
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": ts.astype("datetime64[us]"),
                    "file": files,
                    "site": site,
                    "path": [f"{site}/{f}" for f in files],
                    **{c: rng.normal(size=n) for c in INPUTS},
                }
            )
        )
    return pd.concat(frames).sort_values(["timestamp", "site"]).reset_index(drop=True)


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    flat = np.concatenate(parts)
    assert len(flat) == n and np.array_equal(np.sort(flat), np.arange(n))
    assert all(len(p) > 0 and np.all(np.diff(p) > 0) for p in parts)  # non-empty, sorted, no duplicates


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_registry_builds_by_name_and_rejects_unknowns() -> None:
    assert isinstance(get_partitioner("dirichlet", alpha=0.1), DirichletPartitioner)
    assert get_partitioner("quantity").params() == {"ratios": list(NOTEBOOK_RATIOS), "shuffle": False}
    with pytest.raises(ValueError, match="unknown partitioner 'label'; available: iid, quantity, dirichlet, natural"):
        get_partitioner("label")
    with pytest.raises(ValueError, match="partitioner 'iid': bad parameters"):
        get_partitioner("iid", alpha=1.0)


def test_iid_equal_sizes_disjoint_cover_deterministic() -> None:
    df = _frame({"a": 53, "b": 50})
    parts = IidPartitioner().partition(df, 10, seed=1)
    _assert_disjoint_cover(parts, 103)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    assert _same(parts, IidPartitioner().partition(df, 10, seed=1))
    assert not _same(parts, IidPartitioner().partition(df, 10, seed=2))


def test_quantity_honours_the_notebook_ratios() -> None:
    df = _frame({"a": 1000})
    parts = QuantityPartitioner().partition(df, 10, seed=0)
    _assert_disjoint_cover(parts, 1000)
    assert [len(p) for p in parts] == [300, 50, 120, 100, 90, 80, 80, 70, 100, 10]
    assert np.array_equal(parts[0], np.arange(300))  # contiguous: client 0 gets the first 30 % in time
    shuffled = QuantityPartitioner(shuffle=True)
    a, b = shuffled.partition(df, 10, seed=0), shuffled.partition(df, 10, seed=1)
    assert [len(p) for p in a] == [len(p) for p in parts]
    assert _same(a, shuffled.partition(df, 10, seed=0)) and not _same(a, b)


def test_quantity_rounding_sums_exactly_and_gives_every_client_a_row() -> None:
    # 7 × (0.5, 0.25, 0.25) = (3.5, 1.75, 1.75): floors (3, 1, 1), the 2 left-over rows go to the largest remainders
    sizes = QuantityPartitioner(ratios=(0.5, 0.25, 0.25)).partition(_frame({"a": 7}), 3, seed=0)
    assert [len(p) for p in sizes] == [3, 2, 2]
    # 10 rows, notebook ratios: 0.05 and 0.01 round to 0 rows; they are topped up from the largest client
    parts = QuantityPartitioner().partition(_frame({"a": 10}), 10, seed=0)
    _assert_disjoint_cover(parts, 10)
    assert [len(p) for p in parts] == [1] * 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ratios": (0.5, 0.4)}, "must sum to 1, they sum to 0.9"), ({"ratios": (1.2, -0.2)}, "must be positive")],
)
def test_quantity_rejects_bad_ratios(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantityPartitioner(**kwargs)


def test_quantity_needs_one_ratio_per_client() -> None:
    with pytest.raises(ValueError, match="10 ratios given but num_clients=4"):
        QuantityPartitioner().partition(_frame({"a": 100}), 4, seed=0)


def _site_skew(df: pd.DataFrame, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's site mix and the global site mix."""
    overall = df["site"].value_counts(normalize=True)
    mixes = [df["site"].iloc[p].value_counts(normalize=True).reindex(overall.index, fill_value=0) for p in parts]
    return float(np.mean([0.5 * (mix - overall).abs().sum() for mix in mixes]))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    df = _frame({f"site_{i}": 60 for i in range(6)})
    skew = {}
    for alpha in (0.05, 1.0, 1000.0):
        runs = [DirichletPartitioner(alpha=alpha).partition(df, 5, seed=s) for s in range(5)]
        for parts in runs:
            _assert_disjoint_cover(parts, len(df))
        skew[alpha] = np.mean([_site_skew(df, parts) for parts in runs])
    assert skew[0.05] > skew[1.0] > skew[1000.0]
    assert skew[1000.0] < 0.1 and skew[0.05] > 0.5


def test_dirichlet_deterministic_min_size_and_groupings() -> None:
    df = _frame({"a": 40, "b": 40, "c": 40})
    p = DirichletPartitioner(alpha=0.5, min_size=5)
    parts = p.partition(df, 4, seed=3)
    assert min(len(x) for x in parts) >= 5
    assert _same(parts, p.partition(df, 4, seed=3)) and not _same(parts, p.partition(df, 4, seed=4))
    by_time = DirichletPartitioner(alpha=0.1, by="time_block", time_blocks=4).partition(df, 3, seed=0)
    _assert_disjoint_cover(by_time, 120)
    assert len(DirichletPartitioner(by="file").group_codes(df).tolist()) == 120


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DirichletPartitioner(alpha=0), "alpha must be > 0"),
        (lambda: DirichletPartitioner(alpha=-1.0), "alpha must be > 0"),
        (lambda: DirichletPartitioner(by="machine").partition(_frame({"a": 9}), 2, 0), "column 'machine' not in data"),
        (lambda: DirichletPartitioner(min_size=5).partition(_frame({"a": 9}), 2, 0), "2 clients × min_size 5 > 9"),
        (
            lambda: DirichletPartitioner(alpha=0.01, min_size=4, max_tries=3).partition(_frame({"a": 9}), 2, 0),
            "no draw in 3 tries",
        ),
    ],
)
def test_dirichlet_errors(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_natural_is_one_client_per_site() -> None:
    df = _frame({"site_b": 7, "site_a": 5, "site_c": 3})
    parts = NaturalPartitioner().partition(df, 3, seed=0)
    _assert_disjoint_cover(parts, 15)
    assert [set(df["site"].iloc[p]) for p in parts] == [{"site_a"}, {"site_b"}, {"site_c"}]
    assert _same(parts, NaturalPartitioner().partition(df, 3, seed=99))  # no randomness
    with pytest.raises(ValueError, match=r"gives 3 clients \(site_a, site_b, site_c\), but num_clients=4"):
        NaturalPartitioner().partition(df, 4, seed=0)


def test_blocks_are_contiguous_and_equal() -> None:
    parts = BlockPartitioner().partition(_frame({"a": 23}), 4, seed=0)
    _assert_disjoint_cover(parts, 23)
    assert [len(p) for p in parts] == [6, 6, 6, 5]
    assert all(np.array_equal(p, np.arange(p[0], p[-1] + 1)) for p in parts)


@pytest.mark.parametrize("name", ["iid", "quantity", "dirichlet", "blocks"])
def test_more_clients_than_rows_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match=r"more clients \(10\) than rows \(5\)|10 clients × min_size 1 > 5 rows"):
        get_partitioner(name).partition(_frame({"a": 5}), 10, seed=0)


def test_write_partitions_files_split_manifest_and_stale_cleanup(tmp_path: Path) -> None:
    df = _frame({"site_1": 30, "site_2": 21})
    parts = IidPartitioner().partition(df, 3, seed=0)
    manifest = write_partitions(df, parts, tmp_path, "iid", INPUTS, {}, 0, 0.2)
    scheme = tmp_path / "clients" / "iid"
    assert sorted(p.name for p in scheme.iterdir()) == [
        "client_0.parquet",
        "client_1.parquet",
        "client_2.parquet",
        "manifest.json",
    ]
    assert manifest.sizes == [17, 17, 17]
    assert [(c.train_rows, c.holdout_rows) for c in manifest.clients] == [(13, 4)] * 3  # ceil(0.2 × 17) = 4
    client = read_client(scheme, 1)
    assert list(client.columns) == ["timestamp", "file", "site", "path", *INPUTS, "split"]
    assert str(pq.read_schema(scheme / "client_1.parquet").field("timestamp").type) == "timestamp[us]"
    assert client["timestamp"].is_monotonic_increasing
    assert client["split"].tolist() == ["train"] * 13 + ["holdout"] * 4  # holdout = the latest rows in time
    assert set(client["path"]) == set(df["path"].iloc[parts[1]])
    assert len(read_client(scheme, 1, split="holdout")) == 4
    on_disk = json.loads((scheme / "manifest.json").read_text())
    assert on_disk["num_clients"] == 3 and on_disk["input_columns"] == INPUTS and on_disk["seed"] == 0
    assert load_manifest(scheme) == manifest

    # deterministic bytes for a seed; a rerun with fewer clients removes the stale files
    first = (scheme / "client_0.parquet").read_bytes()
    write_partitions(df, IidPartitioner().partition(df, 3, seed=0), tmp_path, "iid", INPUTS, {}, 0, 0.2)
    assert (scheme / "client_0.parquet").read_bytes() == first
    write_partitions(df, IidPartitioner().partition(df, 2, seed=0), tmp_path, "iid", INPUTS, {}, 0, 0.2)
    assert sorted(p.name for p in scheme.iterdir()) == ["client_0.parquet", "client_1.parquet", "manifest.json"]


def test_holdout_mask_last_or_spread_evenly() -> None:
    assert np.flatnonzero(holdout_mask(17, 0.2)).tolist() == [13, 14, 15, 16]  # ceil(0.2 x 17) = 4, the latest
    assert np.flatnonzero(holdout_mask(17, 0.2, "interleaved")).tolist() == [3, 7, 11, 16]
    assert np.flatnonzero(holdout_mask(20, 0.2, "interleaved")).tolist() == [4, 9, 14, 19]  # every 5th
    for n in (1, 2, 7, 100, 431):
        for fraction in (0.0, 0.1, 0.2, 0.5, 0.9):
            last, spread = holdout_mask(n, fraction), holdout_mask(n, fraction, "interleaved")
            assert last.sum() == spread.sum() < max(n, 2)  # same size, at least one training row
    with pytest.raises(ValueError, match="'last' or 'interleaved'"):
        holdout_mask(10, 0.2, "random")


def test_write_partitions_interleaved_holdout(tmp_path: Path) -> None:
    df = _frame({"site_1": 30, "site_2": 21})
    manifest = write_partitions(
        df,
        NaturalPartitioner().partition(df, 2, seed=0),
        tmp_path,
        "natural",
        INPUTS,
        {},
        0,
        0.2,
        holdout_mode="interleaved",
    )
    assert manifest.holdout_mode == "interleaved"
    assert [(c.train_rows, c.holdout_rows) for c in manifest.clients] == [(24, 6), (16, 5)]
    client = read_client(tmp_path / "clients" / "natural", 0)
    assert np.flatnonzero(client["split"].to_numpy() == "holdout").tolist() == [4, 9, 14, 19, 24, 29]
    assert load_manifest(tmp_path / "clients" / "natural") == manifest


def test_write_partitions_rejects_bad_parts_and_names(tmp_path: Path) -> None:
    df = _frame({"a": 10})
    with pytest.raises(ValueError, match="overlap"):
        write_partitions(df, [np.arange(6), np.arange(5, 10)], tmp_path, "x", INPUTS, {}, 0, 0.2)
    with pytest.raises(ValueError, match="out of range"):
        write_partitions(df, [np.arange(11)], tmp_path, "x", INPUTS, {}, 0, 0.2)
    with pytest.raises(ValueError, match=r"columns \['B9_mean_abs'\] not in data"):
        write_partitions(df, [np.arange(10)], tmp_path, "x", ["B9_mean_abs"], {}, 0, 0.2)
    with pytest.raises(ValueError, match="invalid scheme name"):
        write_partitions(df, [np.arange(10)], tmp_path, "../evil", INPUTS, {}, 0, 0.2)


def test_partition_dataset_end_to_end(tmp_path: Path) -> None:
    ds = write_dataset(
        tmp_path / "demo",
        {"site_1": 40, "site_2": 40, "site_3": 20},
        channels=IMS_CHANNELS_4,
        quarantined=("site_1/2004.02.12.10.00.00",),
    )
    manifest = partition_dataset(ds, "natural", 3, seed=0, input_cfg=InputConfig(train_fraction=0.5))
    assert manifest.sizes == [20, 20, 10]  # ceil(0.5 × 39), ceil(0.5 × 40), ceil(0.5 × 20)
    assert [c.sites for c in manifest.clients] == [["site_1"], ["site_2"], ["site_3"]]
    assert manifest.input_columns == [f"{ch}_mean_abs" for ch in IMS_CHANNELS_4]
    assert "site_1/2004.02.12.10.00.00" not in set(read_client(ds / "clients" / "natural", 0)["path"])
    assert set(manifest.provenance) == {"data_sha256", "fingerprint"}


# ----------------------------------------------------------------------------------------------------------- task
@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A throw-away Prefect API and result store (cached results must not leak between test sessions)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("results")}),
    ):
        yield


@pytest.mark.integration
def test_partition_task_caches_on_content_and_rebuilds_missing_outputs(tmp_path: Path, prefect_harness) -> None:
    from prefect import flow

    from tasks.partition import partition_task

    ds = write_dataset(tmp_path / "demo", {"site_1": 30, "site_2": 30})

    @flow
    def run(seed: int, dataset: Path = ds):
        cfg = InputConfig().model_dump(mode="json")
        state = partition_task(str(dataset), "iid", 4, seed, cfg, None, return_state=True)
        return state.name, state.result()

    name1, result1 = run(0)
    assert name1 == "Completed"
    assert result1["sizes"] == [3, 3, 3, 3] and result1["path"] == str(ds / "clients" / "iid" / "manifest.json")
    from prefect.artifacts import Artifact

    artifact = Artifact.get("partition-iid")
    assert artifact is not None and artifact.type == "table"
    assert [row["train_rows"] + row["holdout_rows"] for row in json.loads(artifact.data)] == [3, 3, 3, 3]
    name2, result2 = run(0)
    assert name2 == "Cached" and result2 == result1
    assert run(1)[0] == "Completed"  # another seed: another key (and the outputs now hold seed 1)
    name3, result3 = run(0)
    assert name3 == "Completed" and result3 == result1  # outputs were overwritten by seed 1: recomputed, same result
    (ds / "clients" / "iid" / "client_2.parquet").unlink()
    assert run(0)[0] == "Completed"  # never serves a cached result whose files are gone
    assert (ds / "clients" / "iid" / "client_2.parquet").is_file()
    assert run(0)[0] == "Cached"
    write_dataset(ds, {"site_1": 30, "site_2": 40})  # new content under the same path: new key
    assert run(0)[1]["sizes"] == [4, 4, 3, 3]

    twin = write_dataset(tmp_path / "twin", {"site_1": 30, "site_2": 40})  # same content elsewhere: its own outputs
    twin_name, twin_result = run(0, twin)
    assert twin_name == "Completed" and twin_result["path"] == str(twin / "clients" / "iid" / "manifest.json")


def test_partition_dataset_in_samples_mode_splits_raw_time_samples(tmp_path: Path) -> None:
    ds = write_dataset(tmp_path / "demo", {"site_1": 4, "site_2": 4}, channels=IMS_CHANNELS_4)
    rng = np.random.default_rng(0)
    for path, ts in load_features(ds)[["path", "timestamp"]].itertuples(index=False):
        write_samples(ds, path, rng.normal(size=(100, 4)), IMS_CHANNELS_4, ts.isoformat())
    cfg = InputConfig(mode="samples", train_fraction=0.5, holdout_fraction=0.25)
    manifest = partition_dataset(ds, "blocks", 4, seed=0, input_cfg=cfg)
    assert manifest.input_columns == list(IMS_CHANNELS_4)
    assert manifest.sizes == [100] * 4  # 2 healthy snapshots per site × 100 samples, in 4 contiguous blocks
    client = read_client(ds / "clients" / "blocks", 0)
    assert client["path"].astype(str).unique().tolist() == ["site_1/2004.02.12.10.00.00"]
    assert (client["split"] == "holdout").sum() == 25


@pytest.mark.integration
def test_partition_task_fails_fast_with_the_partitioners_message(tmp_path: Path, prefect_harness) -> None:
    from prefect import flow

    from tasks.partition import partition_task

    ds = write_dataset(tmp_path / "demo", {"site_1": 10})

    from prefect.client.orchestration import get_client

    @flow
    def run() -> tuple[str, str, object]:
        state = partition_task(str(ds), "dirichlet", 2, 0, None, {"alpha": 0.0}, return_state=True)
        return state.name, state.message, state.state_details.task_run_id

    name, message, task_run_id = run()
    assert name == "Failed" and "dirichlet: alpha must be > 0, got 0.0" in message
    with get_client(sync_client=True) as client:
        assert client.read_task_run(task_run_id).run_count == 1  # a parameter error is not retried
