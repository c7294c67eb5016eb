"""bearing_core.features: time-domain features against numpy/scipy on a real IMS file, envelope bands on
synthetic modulated carriers and against a float64 reference of the documented algorithm."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.fft import next_fast_len

from bearing_core.config import IMS_CHANNELS_8, RigConfig
from bearing_core.features import (
    FEATURES,
    compute_features,
    compute_features_batch,
    envelope_spectrum,
    feature_columns,
)

RIG = RigConfig()
FS = RIG.fs_hz
IDX = {name: i for i, name in enumerate(FEATURES)}
ENV = [IDX["env_bpfo"], IDX["env_bpfi"], IDX["env_bsf"]]


@pytest.fixture(scope="module")
def real_snapshot(shared_ims: Path) -> np.ndarray:
    return np.loadtxt(shared_ims / "raw" / "1st_test" / "2003.10.22.12.06.24")


def modulated_carrier(n: int, mod_hz: float, depth: float = 0.5, carrier_hz: float = 3000.0) -> np.ndarray:
    """(n, 1) resonance carrier of amplitude 1 g amplitude-modulated at ``mod_hz``: envelope line of ``depth`` g."""
    t = np.arange(n) / FS
    return ((1.0 + depth * np.cos(2 * np.pi * mod_hz * t)) * np.sin(2 * np.pi * carrier_hz * t))[:, np.newaxis]


def test_feature_columns_are_channel_major() -> None:
    cols = feature_columns(IMS_CHANNELS_8)
    assert len(cols) == 8 * len(FEATURES) == 80
    assert cols[:3] == ["B1_a_mean_abs", "B1_a_rms", "B1_a_std"]
    assert cols[len(FEATURES)] == "B1_b_mean_abs"
    assert cols[-1] == "B4_b_env_bsf"


def test_real_file_mean_abs_matches_known_value(real_snapshot: np.ndarray) -> None:
    feats = compute_features(real_snapshot, RIG)
    assert feats.shape == (8, len(FEATURES))
    assert feats.dtype == np.float64
    assert round(feats[0, IDX["mean_abs"]], 6) == 0.104144


def test_real_file_time_domain_features_match_numpy_and_scipy(real_snapshot: np.ndarray) -> None:
    x = real_snapshot
    feats = compute_features(x, RIG)
    rms = np.sqrt(np.mean(x**2, axis=0))
    peak = np.max(np.abs(x), axis=0)
    expected = {
        "mean_abs": np.mean(np.abs(x), axis=0),
        "rms": rms,
        "std": np.std(x, axis=0),
        "peak": peak,
        "crest": peak / rms,
        "kurtosis": stats.kurtosis(x, axis=0, fisher=False, bias=True),
        "skewness": stats.skew(x, axis=0, bias=True),
    }
    for name, values in expected.items():
        np.testing.assert_allclose(feats[:, IDX[name]], values, rtol=1e-10, err_msg=name)
    # healthy real bearings: envelope band energies are tiny and positive
    assert np.all(feats[:, ENV] > 0) and np.all(feats[:, ENV] < 1e-3)


def test_float32_input_and_batch_agree_with_single_float64(real_snapshot: np.ndarray) -> None:
    x32 = real_snapshot.astype(np.float32)
    single = compute_features(x32, RIG)
    np.testing.assert_allclose(single, compute_features(x32.astype(np.float64), RIG), rtol=1e-12)
    batch = compute_features_batch(np.stack([x32, x32[::-1]]), RIG)
    assert batch.shape == (2, 8, len(FEATURES))
    np.testing.assert_allclose(batch[0], single, rtol=1e-12)
    # time reversal keeps every time-domain statistic
    np.testing.assert_allclose(batch[1][:, :7], single[:, :7], rtol=1e-9)


def _reference_band_energies(x: np.ndarray, rig: RigConfig) -> np.ndarray:
    """The module docstring's envelope algorithm, step by step in float64 numpy: (n, channels) -> (channels, 3)."""
    n = x.shape[0]
    n_fft = next_fast_len(n, real=True)
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / rig.fs_hz)
    spectrum = np.fft.rfft(x - x.mean(axis=0), n=n_fft, axis=0)
    weights = np.where(freqs >= rig.envelope_highpass_hz, 2.0, 0.0)
    weights[-1] = min(weights[-1], 1.0) if n_fft % 2 == 0 else weights[-1]
    analytic = np.zeros((n_fft, x.shape[1]), dtype=complex)
    analytic[: freqs.size] = spectrum * weights[:, np.newaxis]
    envelope = np.abs(np.fft.ifft(analytic, axis=0)[:n])
    amplitudes = np.abs(np.fft.rfft(envelope - envelope.mean(axis=0), n=n_fft, axis=0)) * 2.0 / n
    energies = []
    for f_d in (rig.bpfo_hz, rig.bpfi_hz, rig.bsf_hz):
        band = np.zeros(freqs.size, dtype=bool)
        for k in range(1, rig.harmonics + 1):
            band |= np.abs(freqs - k * f_d) <= rig.band_hz
        energies.append((amplitudes[band] ** 2).sum(axis=0) * n / n_fft)
    return np.stack(energies, axis=-1)


@pytest.mark.parametrize("n", [20_480, 20_001])
def test_envelope_bands_match_a_float64_reference_of_the_algorithm(n: int) -> None:
    rng = np.random.default_rng(11)
    fault = modulated_carrier(n, RIG.bpfi_hz, depth=0.3) * 0.2 + 0.05  # with a DC offset
    x = np.hstack([fault, rng.normal(0.0, 0.1, (n, 1)), fault + rng.normal(0.0, 0.05, (n, 1))]).astype(np.float32)
    got = compute_features(x, RIG)[:, ENV]
    np.testing.assert_allclose(got, _reference_band_energies(x.astype(np.float64), RIG), rtol=2e-4)


def test_channel_major_input_gives_identical_features(real_snapshot: np.ndarray) -> None:
    x32 = real_snapshot.astype(np.float32)
    np.testing.assert_array_equal(compute_features(np.asfortranarray(x32), RIG), compute_features(x32, RIG))


@pytest.mark.parametrize(
    ("mod", "strong"), [(RIG.bpfo_hz, "env_bpfo"), (RIG.bpfi_hz, "env_bpfi"), (RIG.bsf_hz, "env_bsf")]
)
def test_envelope_band_energy_picks_the_modulation_frequency(mod: float, strong: str) -> None:
    feats = compute_features(modulated_carrier(20_480, mod), RIG)[0]
    # envelope line of 0.5 g -> ~0.25 g^2 in its band
    assert feats[IDX[strong]] == pytest.approx(0.25, rel=0.05)
    for other in ("env_bpfo", "env_bpfi", "env_bsf"):
        if other != strong:
            assert feats[IDX[strong]] > 1000 * feats[IDX[other]], other


def test_envelope_spectrum_peaks_at_modulation_line() -> None:
    freqs, amps = envelope_spectrum(modulated_carrier(20_480, RIG.bpfi_hz).T, RIG)
    assert amps.shape == (1, freqs.size)
    assert freqs[np.argmax(amps[0])] == pytest.approx(RIG.bpfi_hz, abs=FS / 20_480)
    assert amps[0].max() == pytest.approx(0.5, rel=0.1)


def test_noise_and_shaft_harmonics_give_small_envelope_energies() -> None:
    rng = np.random.default_rng(7)
    n = 20_480
    t = np.arange(n) / FS
    noise = rng.normal(0.0, 0.1, size=(n, 1))
    shaft = 0.5 * np.sin(2 * np.pi * RIG.shaft_hz * t) + 0.3 * np.sin(2 * np.pi * 2 * RIG.shaft_hz * t)
    fault = compute_features(modulated_carrier(n, RIG.bpfo_hz) * 0.1, RIG)[0, IDX["env_bpfo"]]
    for signal in (noise, shaft[:, np.newaxis], noise + shaft[:, np.newaxis]):
        env = compute_features(signal, RIG)[0, ENV]
        assert np.all(env < 1e-4), env
        assert fault > 20 * env.max()


@pytest.mark.parametrize("n", [10_240, 40_960, 20_001])
def test_envelope_energy_does_not_depend_on_snapshot_length(n: int) -> None:
    reference = compute_features(modulated_carrier(20_480, RIG.bpfo_hz), RIG)[0, IDX["env_bpfo"]]
    assert compute_features(modulated_carrier(n, RIG.bpfo_hz), RIG)[0, IDX["env_bpfo"]] == pytest.approx(
        reference, rel=0.06
    )
    # broadband noise: PSD x bandwidth, same expected value whatever n (averaged over 24 realisations)
    rng = np.random.default_rng(3)
    short = compute_features_batch(rng.normal(0, 0.3, size=(24, 20_480, 1)), RIG)[:, 0, ENV].mean()
    other = compute_features_batch(rng.normal(0, 0.3, size=(24, n, 1)), RIG)[:, 0, ENV].mean()
    assert other == pytest.approx(short, rel=0.2)


def test_constant_channels_give_zero_shape_features_without_warnings() -> None:
    x = np.zeros((1000, 3))
    x[:, 1] = 0.123
    x[:, 2] = np.random.default_rng(0).normal(size=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feats = compute_features(x, RIG)
    assert np.all(np.isfinite(feats))
    np.testing.assert_array_equal(feats[0], np.zeros(len(FEATURES)))
    assert feats[1, IDX["mean_abs"]] == pytest.approx(0.123)
    assert feats[1, IDX["std"]] < 1e-12
    for name in ("crest", "kurtosis", "skewness", "env_bpfo", "env_bpfi", "env_bsf"):
        assert feats[1, IDX[name]] == pytest.approx(0.0, abs=1e-20), name
    assert feats[2, IDX["kurtosis"]] == pytest.approx(3.0, abs=0.5)


def test_wrong_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="2-D snapshot"):
        compute_features(np.zeros(100), RIG)
    with pytest.raises(ValueError, match="3-D batch"):
        compute_features_batch(np.zeros((100, 8)), RIG)
    with pytest.raises(ValueError, match="at least 2 samples"):
        compute_features(np.zeros((1, 8)), RIG)
