"""Threshold methods, the mergeable error sketch (federated calibration) and threshold.json round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bearing_core.autoencoder import ModelConfig, build_model
from bearing_core.model_io import load_model, save_model
from bearing_core.partition.writer import write_partitions
from bearing_core.scaling import Scaler
from bearing_core.threshold import (
    THRESHOLD_FILE,
    ErrorSketch,
    ThresholdConfig,
    calibrate_from_clients,
    client_error_sketch,
    load_threshold,
    merge_sketches,
    snapshot_errors,
    threshold_from_errors,
    threshold_from_sketch,
)


def _lognormal(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(mean=-4.0, sigma=1.2, size=n)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 0.995, 0.999])
def test_sketch_quantile_is_within_the_stated_bound_of_np_quantile(q: float) -> None:
    errors = _lognormal(20_000, seed=1)
    sketch = ErrorSketch.from_errors(errors)
    bound = sketch.relative_error_bound
    assert bound == pytest.approx(10 ** (1 / 200) - 1)  # 100 bins per decade: ±1.16 %
    exact = np.quantile(errors, q)
    assert abs(sketch.quantile(q) / exact - 1) <= bound


def test_coarse_bins_widen_the_bound_and_it_still_holds() -> None:
    errors = _lognormal(5_000, seed=2)
    sketch = ErrorSketch.from_errors(errors, bins_per_decade=5)
    assert sketch.relative_error_bound == pytest.approx(10**0.1 - 1)
    ratios = [sketch.quantile(q) / np.quantile(errors, q) for q in np.linspace(0.01, 0.99, 50)]
    assert max(abs(r - 1) for r in ratios) <= sketch.relative_error_bound
    assert max(abs(r - 1) for r in ratios) > 0.01  # coarse bins really are approximate


def test_mean_kstd_is_exact() -> None:
    errors = _lognormal(1_000, seed=3)
    cfg = ThresholdConfig(method="mean_kstd", k=3.0)
    expected = errors.mean() + 3.0 * errors.std()
    assert threshold_from_errors(errors, cfg) == pytest.approx(expected, rel=1e-12)
    assert threshold_from_sketch(ErrorSketch.from_errors(errors), cfg) == pytest.approx(expected, rel=1e-12)


def test_merged_client_sketches_match_the_pooled_errors() -> None:
    """Federated calibration: unequal clients, merged in any order, give the pooled thresholds."""
    clients = [_lognormal(n, seed) * scale for n, seed, scale in ((50, 4, 1.0), (3_000, 5, 2.0), (700, 6, 0.5))]
    pooled = np.concatenate(clients)
    sketches = [ErrorSketch.from_errors(c) for c in clients]
    merged = merge_sketches(sketches)
    reversed_merge = merge_sketches(sketches[::-1])
    assert merged.count == reversed_merge.count == pooled.size
    assert np.array_equal(merged.counts, reversed_merge.counts)
    assert (merged.min, merged.max) == (pooled.min(), pooled.max())
    quantile = ThresholdConfig(method="quantile", quantile=0.995)
    exact = threshold_from_errors(pooled, quantile)
    assert abs(threshold_from_sketch(merged, quantile) / exact - 1) <= merged.relative_error_bound
    kstd = ThresholdConfig(method="mean_kstd", k=2.5)
    assert threshold_from_sketch(merged, kstd) == pytest.approx(threshold_from_errors(pooled, kstd), rel=1e-12)
    assert threshold_from_sketch(reversed_merge, kstd) == pytest.approx(threshold_from_errors(pooled, kstd), rel=1e-12)


def test_sketch_travels_as_arrays_and_handles_out_of_range_values() -> None:
    errors = np.array([0.0, 1e-12, 3e-3, 0.2, 5e5])  # zero and 1e-12 underflow, 5e5 overflows the 1e4 top
    sketch = ErrorSketch.from_errors(errors)
    assert sketch.counts[0] == 2 and sketch.counts[-1] == 1
    back = ErrorSketch.from_arrays(sketch.to_arrays())
    assert np.array_equal(back.counts, sketch.counts)
    assert (back.count, back.mean, back.m2, back.min, back.max) == (
        sketch.count,
        sketch.mean,
        sketch.m2,
        sketch.min,
        sketch.max,
    )
    assert back.quantile(1.0) == 5e5 and back.quantile(0.0) == 0.0  # extremes are exact (clamped to min/max)
    empty = ErrorSketch.empty()
    assert merge_sketches([empty, sketch, empty]).count == 5


def test_sketch_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        ErrorSketch.from_errors(np.array([0.1, -1.0]))
    with pytest.raises(ValueError, match="different bins"):
        ErrorSketch.from_errors(np.ones(3)).merge(ErrorSketch.from_errors(np.ones(3), bins_per_decade=10))
    with pytest.raises(ValueError, match="expected 2 arrays"):
        ErrorSketch.from_arrays([np.zeros(8)])
    with pytest.raises(ValueError, match="every client's holdout is empty"):
        threshold_from_sketch(ErrorSketch.empty(), ThresholdConfig())
    with pytest.raises(ValueError):
        ThresholdConfig(method="bogus")


def _clients(tmp_path: Path, columns: list[str]) -> Path:
    """Two clients (sites a and b) with train + holdout rows of 3 inputs; returns the scheme directory."""
    rng = np.random.default_rng(0)
    frames = []
    for s, site in enumerate(("a", "b")):
        ts = pd.Timestamp("2004-02-12") + pd.to_timedelta(np.arange(40) * 10 + s, unit="min")
        files = ts.strftime("%Y.%m.%d.%H.%M.%S")
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": ts.astype("datetime64[us]"),
                    "file": files,
                    "site": site,
                    "path": [f"{site}/{f}" for f in files],
                    **{c: rng.normal(1.0 + s, 0.1, size=40) for c in columns},
                }
            )
        )
    df = pd.concat(frames).sort_values(["timestamp", "site"]).reset_index(drop=True)
    parts = [np.flatnonzero(df["site"] == "a"), np.flatnonzero(df["site"] == "b")]
    write_partitions(df, parts, tmp_path, "natural", columns, {}, 0, holdout_fraction=0.25)
    return tmp_path / "clients" / "natural"


def test_calibrate_from_clients_uses_holdout_rows_only_and_saves_threshold_json(tmp_path: Path) -> None:
    columns = ["B1_mean_abs", "B2_mean_abs", "B3_mean_abs"]
    clients_dir = _clients(tmp_path, columns)
    cfg = ModelConfig(n_inputs=3, hidden=(2,), activation="elu")
    scaler = Scaler(mean=np.array([1.5, 1.5, 1.5]), std=np.array([0.6, 0.6, 0.6]))
    model_dir = save_model(tmp_path / "models" / "v1", build_model(cfg, 0), cfg, scaler, columns)
    loaded = load_model(model_dir)

    record = calibrate_from_clients(model_dir, clients_dir, ThresholdConfig(per_site=True, min_site_rows=10))

    holdout = [pd.read_parquet(clients_dir / f"client_{k}.parquet") for k in (0, 1)]
    holdout = [h[h["split"] == "holdout"] for h in holdout]
    errors = [snapshot_errors(loaded, h[columns].to_numpy())[0] for h in holdout]
    pooled = np.concatenate(errors)
    assert record.calibration_size == pooled.size == 20  # 10 holdout rows per client, never train rows
    assert abs(record.threshold / np.quantile(pooled, 0.995) - 1) <= ErrorSketch.empty().relative_error_bound
    assert (
        record.model_version == "v1"
        and record.weights_sha256 == json.loads((model_dir / "config.json").read_text())["weights_sha256"]
    )
    assert set(record.site_thresholds) == {"a", "b"} and record.site_calibration_sizes == {"a": 10, "b": 10}
    assert abs(record.site_thresholds["b"] / np.quantile(errors[1], 0.995) - 1) <= 0.0116
    assert list(record.for_sites(["b", "a", "elsewhere"])) == [
        record.site_thresholds["b"],
        record.site_thresholds["a"],
        record.threshold,
    ]
    assert load_threshold(model_dir) == record
    assert client_error_sketch(loaded, holdout[0][columns].to_numpy()).count == 10

    # a site below min_site_rows keeps the global threshold
    strict = calibrate_from_clients(model_dir, clients_dir, ThresholdConfig(per_site=True, min_site_rows=11))
    assert strict.site_thresholds == {}


def test_load_threshold_refuses_missing_or_foreign_records(tmp_path: Path) -> None:
    columns = ["B1_mean_abs", "B2_mean_abs", "B3_mean_abs"]
    clients_dir = _clients(tmp_path, columns)
    cfg = ModelConfig(n_inputs=3)
    model_dir = save_model(tmp_path / "m", build_model(cfg, 0), cfg, Scaler.identity(3), columns)
    with pytest.raises(FileNotFoundError, match="calibrate the model first"):
        load_threshold(model_dir)
    calibrate_from_clients(model_dir, clients_dir)
    assert (model_dir / THRESHOLD_FILE).is_file()
    save_model(model_dir, build_model(cfg, 1), cfg, Scaler.identity(3), columns)  # new weights, old threshold.json gone
    assert not (model_dir / THRESHOLD_FILE).exists()
    calibrate_from_clients(model_dir, clients_dir)
    (model_dir / "weights.pt").write_bytes((tmp_path / "m" / "weights.pt").read_bytes() + b"x")
    with pytest.raises(ValueError, match="other weights"):
        load_threshold(model_dir)


def test_margin_widens_the_threshold_in_std_units_for_sketch_and_exact_paths() -> None:
    from bearing_core.threshold import with_margin

    errors = np.array([0.01, 0.04, 0.09, 0.25])  # sqrt: 0.1 .. 0.5 std
    plain = ThresholdConfig(method="max")
    wide = ThresholdConfig(method="max", margin=1.0)
    assert threshold_from_errors(errors, plain) == pytest.approx(0.25)
    assert threshold_from_errors(errors, wide) == pytest.approx(1.5**2)  # (0.5 + 1)^2
    sketch = ErrorSketch.from_errors(errors)
    assert threshold_from_sketch(sketch, wide) == pytest.approx(2.25)
    assert with_margin(0.0, 2.0) == 4.0
    # no margin is the threshold itself, bit for bit (sqrt then square is not: 0.7312329109820315 -> ...314)
    assert all(with_margin(t, 0.0) == t for t in (0.7312329109820315, 0.3, 1e-9, 123.456))
    assert "margin 1 std" in wide.describe()
    with pytest.raises(ValueError):
        ThresholdConfig(margin=-0.5)
