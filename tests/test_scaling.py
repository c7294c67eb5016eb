"""Federated scaling: merged client statistics equal the pooled computation, without pooling rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bearing_core.scaling import Scaler, ScalerStats, local_stats, merge_stats


def _clients(seed: int, sizes: list[int], n_features: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # different location and spread per client (non-IID), IMS-like magnitude: mean ~0.1 g, spread ~1e-3 g
    return [rng.normal(0.1 + 0.01 * k, 1e-3 * (k + 1), size=(n, n_features)) for k, n in enumerate(sizes)]


def test_merged_stats_equal_pooled_mean_and_std_on_uneven_splits() -> None:
    clients = _clients(0, [1, 7, 250, 33, 0, 2])
    pooled = np.concatenate(clients)
    merged = merge_stats([local_stats(X) for X in clients])
    assert merged.count == len(pooled) == 293
    scaler = Scaler.from_stats(merged)
    np.testing.assert_allclose(scaler.mean, pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaler.std, pooled.std(axis=0), rtol=1e-10)
    np.testing.assert_allclose(merged.sum, pooled.sum(axis=0), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=6).filter(lambda s: sum(s) > 0),
    seed=st.integers(min_value=0, max_value=2**16),
    offset=st.sampled_from([0.0, 1e3, 1e6]),
)
def test_merge_is_exact_for_any_split_even_with_large_offsets(sizes: list[int], seed: int, offset: float) -> None:
    clients = [X + offset for X in _clients(seed, sizes, n_features=3)]
    pooled = np.concatenate(clients)
    scaler = Scaler.from_stats(merge_stats([local_stats(X) for X in clients]))
    np.testing.assert_allclose(scaler.mean, pooled.mean(axis=0), rtol=1e-12)
    # the naive E[x²]−E[x]² would lose every digit of a 1e-3 spread at offset 1e6; the pairwise merge does not
    np.testing.assert_allclose(scaler.std, np.maximum(pooled.std(axis=0), 1e-8), rtol=1e-6)


def test_merge_is_order_independent_and_method_equals_function() -> None:
    stats = [local_stats(X) for X in _clients(1, [5, 9, 13])]
    a = merge_stats(stats)
    b = stats[2].merge([stats[0], stats[1]])
    assert a.count == b.count
    np.testing.assert_allclose(a.sum, b.sum, rtol=1e-13)
    np.testing.assert_allclose(a.sumsq, b.sumsq, rtol=1e-12)


def test_stats_array_round_trip() -> None:
    s = local_stats(_clients(2, [11])[0])
    arrays = s.to_arrays()
    assert [a.shape for a in arrays] == [(1,), (8,), (8,)]
    back = ScalerStats.from_arrays(arrays)
    assert back.count == 11
    np.testing.assert_array_equal(back.sum, s.sum)
    np.testing.assert_array_equal(back.sumsq, s.sumsq)
    with pytest.raises(ValueError, match="3 arrays"):
        ScalerStats.from_arrays(arrays[:2])
    with pytest.raises(ValueError, match="single integer"):
        ScalerStats.from_arrays([np.array([2.5]), *arrays[1:]])


def test_constant_column_gets_floored_std_and_transform_round_trips() -> None:
    X = np.column_stack([np.full(10, 3.0), np.arange(10.0)])
    scaler = Scaler.from_stats(local_stats(X))
    assert scaler.std[0] == 1e-8
    Z = scaler.transform(X)
    assert Z.dtype == np.float32
    np.testing.assert_array_equal(Z[:, 0], 0.0)
    np.testing.assert_allclose(Z[:, 1].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(Z[:, 1].std(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(scaler.inverse_transform(Z), X, atol=1e-6)


def test_identity_and_dict_round_trip_and_errors() -> None:
    X = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(Scaler.identity(2).transform(X), X.astype(np.float32))
    s = Scaler(mean=np.array([1.0, 2.0]), std=np.array([0.5, 4.0]))
    back = Scaler.from_dict(s.to_dict())
    np.testing.assert_array_equal(back.mean, s.mean)
    np.testing.assert_array_equal(back.std, s.std)
    with pytest.raises(ValueError, match=r"expected shape \(n, 2\)"):
        s.transform(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="zero rows"):
        Scaler.from_stats(merge_stats([local_stats(np.zeros((0, 2)))]))
    with pytest.raises(ValueError, match="different widths"):
        merge_stats([local_stats(np.zeros((2, 2))), local_stats(np.zeros((2, 3)))])
