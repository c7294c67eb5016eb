"""Vectorised per-snapshot features: time-domain statistics and envelope-spectrum band energies.

One snapshot is an array ``(n_samples, n_channels)`` of accelerations in g. Every channel gets the same
``FEATURES`` vector, computed with numpy over all channels (and, with :func:`compute_features_batch`, all
snapshots) at once, in float64 whatever the input dtype.

Units:
    mean_abs, rms, std, peak          g
    crest, kurtosis, skewness         dimensionless (kurtosis is Pearson's: 3 for Gaussian noise)
    env_bpfo, env_bpfi, env_bsf       g^2 (energy of the envelope's amplitude spectrum, see below)

Degenerate channels: a constant (or all-zero) channel has no shape, so crest, kurtosis and skewness are
reported as 0.0 rather than NaN/inf, which keeps feature matrices finite for the models; such a channel is
recognisable by ``std == 0``. Envelope energies of a constant channel are 0.0.

Envelope analysis (classic bearing diagnostics): the rollers strike a localised defect at a defect frequency
(BPFO, BPFI, BSF) and each strike rings a structural resonance at kHz frequencies. The defect frequency is
therefore hardly visible in the raw spectrum but clear in the *envelope* of the resonance band:

1. high-pass the signal above ``rig.envelope_highpass_hz`` (FFT mask; removes the shaft harmonics),
2. envelope = |analytic signal| (Hilbert transform by FFT), minus its mean,
3. single-sided amplitude spectrum of the envelope, ``|rfft| * 2 / n_samples``: a sinusoidal envelope
   modulation of amplitude ``a`` g shows as a line of height ``a``,
4. ``env_<d>`` = sum of squared amplitudes in bands ``k * f_d +- rig.band_hz`` for ``k = 1..rig.harmonics``,
   scaled by the bin width relative to ``fs / n_samples`` so zero-padding to a fast FFT length does not
   change it.

With that normalisation a modulation line of amplitude ``a`` g contributes ``~a**2`` g^2 (Parseval over the
band, leakage included) and broadband envelope noise contributes PSD x bandwidth; both are independent of
``n_samples`` as long as a band spans several bins (``n_samples >> fs / band_hz``; 20,480 samples at 20 kHz
give ~1 Hz bins, so a +-4 Hz band holds ~8).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import fft as sp_fft

from bearing_core.config import RigConfig

FEATURES: tuple[str, ...] = (
    "mean_abs",
    "rms",
    "std",
    "peak",
    "crest",
    "kurtosis",
    "skewness",
    "env_bpfo",
    "env_bpfi",
    "env_bsf",
)
ENVELOPE_DEFECTS: tuple[str, ...] = ("bpfo", "bpfi", "bsf")
"""Defect frequencies with an ``env_<defect>`` feature, in FEATURES order."""

# std below this fraction of rms means the channel is constant up to float rounding.
_DEGENERATE_RELATIVE_STD = 1e-12


def feature_columns(channels: Sequence[str]) -> list[str]:
    """Column names of a flattened feature row, channel-major: ``B1_a_mean_abs, ..., B4_b_env_bsf``."""
    return [f"{ch}_{feat}" for ch in channels for feat in FEATURES]


def compute_features(x: np.ndarray, rig: RigConfig) -> np.ndarray:
    """Features of one snapshot ``x`` of shape ``(n_samples, n_channels)`` -> ``(n_channels, len(FEATURES))``.

    Row ``c`` flattened in channel order matches :func:`feature_columns` (``result.ravel()``).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D snapshot (n_samples, n_channels), got shape {x.shape}")
    return compute_features_batch(x[np.newaxis], rig)[0]


def compute_features_batch(x: np.ndarray, rig: RigConfig) -> np.ndarray:
    """Features of a batch ``(n_snapshots, n_samples, n_channels)`` -> ``(n_snapshots, n_channels, len(FEATURES))``.

    All snapshots must have the same length; memory is ~5 complex float64 copies of the batch, so callers
    with thousands of snapshots should pass them in chunks of a few dozen.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"expected a 3-D batch (n_snapshots, n_samples, n_channels), got shape {x.shape}")
    if x.shape[1] < 2:
        raise ValueError(f"a snapshot needs at least 2 samples, got {x.shape[1]}")
    # (n_snapshots, n_channels, n_samples): contiguous along time for the FFTs and reductions.
    signals = np.ascontiguousarray(np.swapaxes(x, 1, 2), dtype=np.float64)
    time_domain = _time_domain_features(signals)
    envelope = envelope_band_energies(signals, rig)
    return np.concatenate([time_domain, envelope], axis=-1)


def _time_domain_features(signals: np.ndarray) -> np.ndarray:
    """mean_abs, rms, std, peak, crest, kurtosis, skewness over the last axis -> (..., 7)."""
    abs_x = np.abs(signals)
    mean_abs = abs_x.mean(axis=-1)
    peak = abs_x.max(axis=-1)
    rms = np.sqrt(np.einsum("...i,...i->...", signals, signals) / signals.shape[-1])
    centred = signals - signals.mean(axis=-1, keepdims=True)
    sq = centred * centred
    m2 = sq.mean(axis=-1)
    m3 = (sq * centred).mean(axis=-1)
    m4 = (sq * sq).mean(axis=-1)
    std = np.sqrt(m2)

    shaped = std > _DEGENERATE_RELATIVE_STD * rms  # False for constant channels (incl. all-zero: 0 > 0)
    safe_m2 = np.where(shaped, m2, 1.0)
    crest = np.where(shaped, peak / np.where(shaped, rms, 1.0), 0.0)
    kurtosis = np.where(shaped, m4 / (safe_m2 * safe_m2), 0.0)
    skewness = np.where(shaped, m3 / (safe_m2 * np.sqrt(safe_m2)), 0.0)
    return np.stack([mean_abs, rms, std, peak, crest, kurtosis, skewness], axis=-1)


def envelope_spectrum(signals: np.ndarray, rig: RigConfig) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude spectrum of the envelope of ``signals`` (..., n_samples) -> (frequencies_hz, amplitudes_g).

    The signal is high-passed above ``rig.envelope_highpass_hz``; the envelope (|analytic signal|, mean
    removed) is transformed with an rfft of a fast length >= n_samples and scaled by ``2 / n_samples`` so a
    sinusoidal envelope modulation of amplitude ``a`` g has a peak of ~``a`` g. Amplitudes are ``(..., n_bins)``.
    """
    signals = np.asarray(signals, dtype=np.float64)
    n = signals.shape[-1]
    n_fft = sp_fft.next_fast_len(n, real=True)
    spectrum = sp_fft.rfft(signals, n=n_fft, axis=-1)
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / rig.fs_hz)
    # Analytic signal: positive frequencies doubled, DC / negative frequencies zeroed; the high-pass drops
    # everything below the cut-off (DC included). The Nyquist bin of an even length keeps weight 1.
    weights = np.where(freqs >= max(rig.envelope_highpass_hz, np.finfo(float).tiny), 2.0, 0.0)
    if n_fft % 2 == 0:
        weights[-1] = min(weights[-1], 1.0)
    analytic_spectrum = np.zeros(signals.shape[:-1] + (n_fft,), dtype=np.complex128)
    analytic_spectrum[..., : freqs.size] = spectrum * weights
    envelope = np.abs(sp_fft.ifft(analytic_spectrum, axis=-1, overwrite_x=True)[..., :n])
    envelope -= envelope.mean(axis=-1, keepdims=True)
    amplitudes = np.abs(sp_fft.rfft(envelope, n=n_fft, axis=-1)) * (2.0 / n)
    return freqs, amplitudes


def envelope_band_energies(signals: np.ndarray, rig: RigConfig) -> np.ndarray:
    """``env_bpfo, env_bpfi, env_bsf`` (g^2) of ``signals`` (..., n_samples) -> (..., 3).

    Sum of squared envelope amplitudes within ``rig.band_hz`` of each of the first ``rig.harmonics``
    multiples of the defect frequency, times ``n_samples / n_fft`` (bin-width correction for zero-padding).
    """
    n = np.asarray(signals).shape[-1]
    _, amplitudes = envelope_spectrum(signals, rig)
    n_fft = sp_fft.next_fast_len(n, real=True)
    masks = _band_masks(n_fft, rig)
    return (amplitudes * amplitudes) @ masks.T * (n / n_fft)


@lru_cache(maxsize=32)
def _band_masks(n_fft: int, rig: RigConfig) -> np.ndarray:
    """(len(ENVELOPE_DEFECTS), n_bins) 0/1 matrix selecting the bins of each defect's harmonic bands."""
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / rig.fs_hz)
    defects = rig.defect_frequencies()
    harmonics = np.arange(1, rig.harmonics + 1, dtype=np.float64)
    masks = np.zeros((len(ENVELOPE_DEFECTS), freqs.size), dtype=np.float64)
    for row, name in enumerate(ENVELOPE_DEFECTS):
        centres = harmonics * defects[name]
        in_band = np.abs(freqs[np.newaxis, :] - centres[:, np.newaxis]) <= rig.band_hz
        masks[row] = in_band.any(axis=0)
    masks.setflags(write=False)
    return masks
