"""IMS-format synthetic multi-site demo data with ground truth (run-to-failure bearings on several rigs).

Each site is one rig like the NASA IMS one (four bearings on a shaft at 2,000 RPM, 20,480 samples per snapshot
at ``rig.fs_hz``), written as one folder ``site_<k>`` of raw snapshot files named ``YYYY.MM.DD.hh.mm.ss``:
ASCII, tab-separated, 3 decimals (g), ``\\n`` line ends, no header, 8 channels (``B1_a ... B4_b``) or 4.

Signal model, per channel (all in g)::

    x = dc + gain * (shaft harmonics 1x/2x/3x  +  broadband noise with a structural resonance hump
                     + coupling * defect ringing)

The sites differ the way real rigs do (non-IID federated clients): load (shaft-harmonic level), sensor gain,
noise level, DC offset and structural resonance frequency. On faulty sites, from an onset snapshot on, one
bearing develops a localised defect: an impulse train at BPFO (outer race) or BPFI (inner race, whose
impulses are amplitude-modulated at shaft rate as the defect rotates through the load zone) that rings the
site's resonance with an exponentially decaying sinusoid. The impulse amplitude grows exponentially from onset
to the last file (the failure), and the broadband floor rises near the end. Both accelerometers of the
faulty bearing see the defect, the other bearings slightly through the shaft. At least one site stays healthy.

Everything random comes from ``numpy.random.default_rng`` seeded by ``(seed, site, file)``, so the bytes of a
file depend only on the arguments (not on batching or worker count). Files are written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bearing_core.config import IMS_SAMPLES_PER_SNAPSHOT, RigConfig, channel_names
from bearing_core.io import write_bytes_atomic, write_json_atomic

GROUND_TRUTH_FILE = "ground_truth.json"
TIMESTAMP_FORMAT = "%Y.%m.%d.%H.%M.%S"
MAX_ABS_G = 9.999
"""Values are clipped to +-MAX_ABS_G so every value prints as ``[-]D.ddd`` (the real rig stays far below)."""

_BATCH_FILES = 16  # snapshots generated together (bounds memory at ~16 x channels x n_samples complex)
_DEFECT_GROWTH_RATE = 3.0  # exponential growth of impulse amplitude over onset -> failure
_DEFECT_INITIAL_FRACTION = 0.08  # impulse amplitude at onset relative to failure
_FLOOR_RISE = 1.5  # broadband noise multiplier at failure is 1 + _FLOOR_RISE (faulty bearing's channels)
_FLOOR_RISE_POWER = 4.0  # the floor rises only near the end: 1 + _FLOOR_RISE * progress**power
_SAME_BEARING_SECOND_SENSOR = 0.8  # the 2nd (perpendicular) accelerometer sees the defect a bit less
_NEIGHBOUR_COUPLING = (1.0, 0.12, 0.05, 0.03)  # defect seen at bearing distance 0, 1, 2, 3
_SHAFT_HARMONIC_G = (0.035, 0.018, 0.008)  # 1x, 2x, 3x shaft amplitudes at load factor 1


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoConfig(_Frozen):
    """What :func:`generate_demo` writes. Defaults make a good demo that still runs fast (4 x 120 files)."""

    sites: int = Field(4, ge=1, le=64, description="Number of sites (rigs), one folder site_<k> each")
    files_per_site: int = Field(120, ge=2, le=100_000, description="Snapshot files per site")
    seed: int = Field(0, ge=0, description="Random seed: same arguments and seed -> identical bytes")
    channels: Literal[4, 8] = Field(8, description="Channels per file: 8 (B1_a..B4_b, 1st test) or 4 (B1..B4)")
    start: datetime = Field(datetime(2004, 2, 12, 10, 32, 39), description="Time of site_1's first snapshot (UTC)")
    interval_minutes: float = Field(10.0, gt=0, description="Time between snapshots of one site")
    onset_fraction: float = Field(
        0.6, gt=0, lt=1, description="Typical defect onset as a fraction of the files (+-0.05 per site)"
    )
    n_samples: int = Field(IMS_SAMPLES_PER_SNAPSHOT, ge=256, description="Samples (lines) per snapshot file")
    workers: int = Field(1, ge=1, description="Parallel writer processes (output does not depend on it)")
    rig: RigConfig = Field(default_factory=RigConfig)

    @field_validator("start")
    @classmethod
    def _naive_utc(cls, v: datetime) -> datetime:
        if v.tzinfo is not None:
            raise ValueError("start must be a naive datetime (UTC), like the IMS file names")
        return v.replace(microsecond=0)

    @field_validator("interval_minutes")
    @classmethod
    def _whole_seconds(cls, v: float) -> float:
        if not float(v * 60).is_integer():
            raise ValueError("interval_minutes must be a whole number of seconds (file names have 1 s resolution)")
        return v


class SiteProfile(_Frozen):
    """The physical differences of one site's rig (why the federated clients are non-IID)."""

    gain: float = Field(..., description="Sensor/mounting gain applied to the whole vibration signal")
    load: float = Field(..., description="Load factor scaling the shaft harmonics")
    noise_g: float = Field(..., description="Broadband vibration noise, standard deviation in g before gain")
    resonance_hz: float = Field(..., description="Structural resonance excited by defect impacts")
    resonance_bandwidth_hz: float = Field(..., description="-3 dB bandwidth of the resonance (damping)")
    defect_peak_g: float = Field(..., description="Defect impulse amplitude at failure (g, before gain)")
    dc_offsets_g: tuple[float, ...] = Field(..., description="Per-channel DC offset of the accelerometers (g)")
    channel_gains: tuple[float, ...] = Field(..., description="Per-channel sensitivity relative to gain")
    start_offset_s: int = Field(..., ge=0, description="Start of this site's acquisitions after DemoConfig.start")


class SiteTruth(_Frozen):
    """Ground truth of one site: healthy, or a defect on one bearing from onset to failure (the last file)."""

    faulty: bool
    bearing: str | None = Field(None, description="Faulty bearing, e.g. 'B3'")
    channels: list[str] = Field(default_factory=list, description="Channels of the faulty bearing")
    defect: Literal["bpfo", "bpfi"] | None = Field(None, description="Outer- or inner-race defect")
    onset: datetime | None = Field(None, description="Timestamp of the first snapshot with the defect")
    failure: datetime | None = Field(None, description="Timestamp of the last snapshot (failure); null if healthy")
    onset_index: int | None = Field(None, description="Index of the onset snapshot in the site's time order")
    first_file: datetime = Field(..., description="Timestamp of the site's first snapshot")
    n_files: int = Field(..., description="Snapshot files of this site")
    profile: SiteProfile


class GroundTruth(_Frozen):
    """Contents of ``<out_dir>/ground_truth.json``."""

    seed: int
    fs_hz: float
    n_samples: int
    interval_minutes: float
    channels: list[str]
    files_per_site: int
    sites: dict[str, SiteTruth]

    def timestamps(self, site: str) -> list[datetime]:
        """Acquisition times of ``site``'s snapshots, in order (the file names)."""
        truth = self.sites[site]
        step = timedelta(minutes=self.interval_minutes)
        return [truth.first_file + i * step for i in range(truth.n_files)]

    def is_defective(self, site: str, timestamp: datetime) -> bool:
        """True when ``site`` has a defect at ``timestamp`` (at or after its onset)."""
        truth = self.sites[site]
        return truth.onset is not None and timestamp >= truth.onset


def load_ground_truth(path: str | os.PathLike[str]) -> GroundTruth:
    """Read a ``ground_truth.json`` (or the demo directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / GROUND_TRUTH_FILE
    return GroundTruth.model_validate_json(path.read_bytes())


def generate_demo(
    out_dir: str | os.PathLike[str],
    sites: int = 4,
    files_per_site: int = 120,
    seed: int = 0,
    channels: int = 8,
    start: datetime = datetime(2004, 2, 12, 10, 32, 39),
    interval_minutes: float = 10.0,
    onset_fraction: float = 0.6,
    n_samples: int = IMS_SAMPLES_PER_SNAPSHOT,
    workers: int = 1,
    rig: RigConfig | None = None,
) -> GroundTruth:
    """Write the demo raw dataset to ``out_dir/site_<k>/`` plus ``out_dir/ground_truth.json``; return the truth.

    Arguments are validated as a :class:`DemoConfig` (see its field descriptions). Existing files with the same
    names are replaced; other files in ``out_dir`` are left alone (the CLI refuses non-empty directories).
    """
    config = DemoConfig(
        sites=sites,
        files_per_site=files_per_site,
        seed=seed,
        channels=channels,
        start=start,
        interval_minutes=interval_minutes,
        onset_fraction=onset_fraction,
        n_samples=n_samples,
        workers=workers,
        rig=rig or RigConfig(),
    )
    return generate_demo_from_config(out_dir, config)


def generate_demo_from_config(out_dir: str | os.PathLike[str], config: DemoConfig) -> GroundTruth:
    """:func:`generate_demo` for an already validated :class:`DemoConfig`."""
    out_dir = Path(out_dir)
    truth = plan_ground_truth(config)
    jobs = [
        (out_dir, config, truth, site, list(range(lo, min(lo + _BATCH_FILES, config.files_per_site))))
        for site in truth.sites
        for lo in range(0, config.files_per_site, _BATCH_FILES)
    ]
    if config.workers == 1 or len(jobs) == 1:
        for job in jobs:
            _write_batch(*job)
    else:
        with ProcessPoolExecutor(max_workers=min(config.workers, len(jobs))) as pool:
            list(pool.map(_write_batch, *zip(*jobs, strict=True)))
    write_json_atomic(out_dir / GROUND_TRUTH_FILE, truth.model_dump(mode="json"))
    return truth


def plan_ground_truth(config: DemoConfig) -> GroundTruth:
    """Decide each site's profile, start time and fault (without generating any signal).

    The last ``max(1, sites // 4)`` sites stay healthy; the others get a defect, alternating inner race
    (BPFI) and outer race (BPFO), on a bearing drawn at random, from an onset near ``onset_fraction``.
    """
    names = channel_names(config.channels)
    n_healthy = max(1, config.sites // 4)
    step = timedelta(minutes=config.interval_minutes)
    sites: dict[str, SiteTruth] = {}
    for k in range(config.sites):
        rng = np.random.default_rng([config.seed, 0, k])
        profile = SiteProfile(
            gain=round(float(rng.uniform(0.8, 1.25)), 4),
            load=round(float(rng.uniform(0.7, 1.3)), 4),
            noise_g=round(float(rng.uniform(0.07, 0.1)), 4),
            resonance_hz=round(float(rng.uniform(2500.0, 4500.0)), 1),
            resonance_bandwidth_hz=round(float(rng.uniform(150.0, 300.0)), 1),
            defect_peak_g=round(float(rng.uniform(1.6, 2.4)), 4),
            dc_offsets_g=tuple(round(float(v), 4) for v in rng.uniform(-0.1, 0.01, size=config.channels)),
            channel_gains=tuple(round(float(v), 4) for v in rng.uniform(0.9, 1.1, size=config.channels)),
            start_offset_s=0 if k == 0 else int(rng.integers(0, 600)),
        )
        first = config.start + timedelta(seconds=profile.start_offset_s)
        bearing_index = int(rng.integers(0, 4))
        onset_jitter = float(rng.uniform(-0.05, 0.05))
        n = config.files_per_site
        if k >= config.sites - n_healthy:
            sites[f"site_{k + 1}"] = SiteTruth(faulty=False, first_file=first, n_files=n, profile=profile)
            continue
        onset_index = min(max(round(n * (config.onset_fraction + onset_jitter)), 1), n - 1)
        bearing = f"B{bearing_index + 1}"
        sites[f"site_{k + 1}"] = SiteTruth(
            faulty=True,
            bearing=bearing,
            channels=[c for c in names if c.split("_")[0] == bearing],
            defect="bpfi" if k % 2 == 0 else "bpfo",
            onset=first + onset_index * step,
            failure=first + (n - 1) * step,
            onset_index=onset_index,
            first_file=first,
            n_files=n,
            profile=profile,
        )
    return GroundTruth(
        seed=config.seed,
        fs_hz=config.rig.fs_hz,
        n_samples=config.n_samples,
        interval_minutes=config.interval_minutes,
        channels=list(names),
        files_per_site=config.files_per_site,
        sites=sites,
    )


def _write_batch(out_dir: Path, config: DemoConfig, truth: GroundTruth, site: str, indices: list[int]) -> None:
    """Generate and atomically write the snapshots ``indices`` of ``site`` (one worker task)."""
    signals = synthesize_snapshots(config, truth, site, indices)
    timestamps = truth.timestamps(site)
    for i, snapshot in zip(indices, signals, strict=True):
        target = out_dir / site / timestamps[i].strftime(TIMESTAMP_FORMAT)
        write_bytes_atomic(target, format_ims(snapshot))


def synthesize_snapshots(config: DemoConfig, truth: GroundTruth, site: str, indices: Sequence[int]) -> np.ndarray:
    """Signals (g, float64) of ``site``'s snapshots ``indices``: shape ``(len(indices), n_samples, channels)``.

    Random draws are made per snapshot from ``default_rng((seed, 1, site number, index))``; the transforms
    run on the whole batch at once.
    """
    rig = config.rig
    site_truth = truth.sites[site]
    profile = site_truth.profile
    site_number = int(site.rsplit("_", 1)[1])
    n, n_ch, n_batch = config.n_samples, config.channels, len(indices)
    n_bins = n // 2 + 1
    freqs = np.fft.rfftfreq(n, d=1.0 / rig.fs_hz)

    noise_re = np.empty((n_batch, n_ch, n_bins))
    noise_im = np.empty((n_batch, n_ch, n_bins))
    shaft_phase = np.empty((n_batch, n_ch, len(_SHAFT_HARMONIC_G)))
    level_jitter = np.empty((n_batch, n_ch))
    n_impulses = math.ceil(n / rig.fs_hz * max(rig.bpfo_hz, rig.bpfi_hz)) + 2
    impulse_phase = np.empty((n_batch, 2))
    impulse_jitter = np.empty((n_batch, n_impulses))
    impulse_scatter = np.empty((n_batch, n_impulses))
    for row, index in enumerate(indices):
        rng = np.random.default_rng([config.seed, 1, site_number, index])
        noise_re[row] = rng.standard_normal((n_ch, n_bins))
        noise_im[row] = rng.standard_normal((n_ch, n_bins))
        shaft_phase[row] = rng.uniform(0.0, 2 * np.pi, size=(n_ch, len(_SHAFT_HARMONIC_G)))
        level_jitter[row] = rng.normal(1.0, 0.03, size=n_ch)
        impulse_phase[row] = rng.uniform(0.0, 1.0, size=2)
        impulse_jitter[row] = rng.normal(0.0, 0.004, size=n_impulses)
        impulse_scatter[row] = rng.normal(1.0, 0.1, size=n_impulses)

    progress = _defect_progress(site_truth, np.asarray(indices))  # (batch,), NaN before onset / healthy
    defective = ~np.isnan(progress)
    progress_or_zero = np.where(defective, progress, 0.0)
    coupling = _defect_coupling(site_truth, config.channels)  # (channels,)

    # Broadband noise + resonance hump, shaped in the frequency domain; scaled so std = noise_g.
    resonance_shape = 1.0 + 3.0 / (1.0 + ((freqs - profile.resonance_hz) / profile.resonance_bandwidth_hz) ** 2)
    resonance_shape[0] = 0.0
    shape_scale = n / (2.0 * np.sqrt(np.sum(resonance_shape**2)))
    floor = 1.0 + _FLOOR_RISE * progress_or_zero[:, np.newaxis] ** _FLOOR_RISE_POWER * np.minimum(1.0, 2.0 * coupling)
    noise_level = profile.noise_g * shape_scale * level_jitter * floor  # (batch, channels)
    spectrum = (noise_re + 1j * noise_im) * (resonance_shape * noise_level[..., np.newaxis])

    if defective.any():
        defect_spectrum = _defect_spectrum(
            config, site_truth, progress_or_zero, defective, impulse_phase, impulse_jitter, impulse_scatter
        )
        spectrum += coupling[np.newaxis, :, np.newaxis] * defect_spectrum[:, np.newaxis, :]
    vibration = np.fft.irfft(spectrum, n=n, axis=-1)  # (batch, channels, n)

    t = np.arange(n) / rig.fs_hz
    orders = np.arange(1, len(_SHAFT_HARMONIC_G) + 1)
    angle = 2 * np.pi * rig.shaft_hz * orders[:, np.newaxis] * t  # (harmonics, n)
    amplitude = profile.load * np.asarray(_SHAFT_HARMONIC_G)
    cos_part = amplitude * np.cos(shaft_phase)  # (batch, channels, harmonics)
    sin_part = amplitude * np.sin(shaft_phase)
    vibration += cos_part @ np.sin(angle) + sin_part @ np.cos(angle)

    gains = profile.gain * np.asarray(profile.channel_gains)
    signals = np.asarray(profile.dc_offsets_g)[:, np.newaxis] + gains[:, np.newaxis] * vibration
    return np.swapaxes(signals, 1, 2)


def _defect_progress(site_truth: SiteTruth, indices: np.ndarray) -> np.ndarray:
    """0 at onset -> 1 at the last file; NaN before the onset or on a healthy site."""
    if not site_truth.faulty or site_truth.onset_index is None:
        return np.full(indices.shape, np.nan)
    span = max(site_truth.n_files - 1 - site_truth.onset_index, 1)
    progress = (indices - site_truth.onset_index) / span
    return np.where(indices >= site_truth.onset_index, progress, np.nan)


def _defect_coupling(site_truth: SiteTruth, n_channels: int) -> np.ndarray:
    """How much of the faulty bearing's defect each channel sees (1 on its first accelerometer)."""
    if not site_truth.faulty or site_truth.bearing is None:
        return np.zeros(n_channels)
    sensors = n_channels // 4
    bearing_of_channel = np.arange(n_channels) // sensors
    distance = np.abs(bearing_of_channel - (int(site_truth.bearing[1:]) - 1))
    coupling = np.asarray(_NEIGHBOUR_COUPLING)[distance]
    if sensors == 2:
        coupling[1::2] *= _SAME_BEARING_SECOND_SENSOR
    return coupling


def _defect_spectrum(
    config: DemoConfig,
    site_truth: SiteTruth,
    progress: np.ndarray,
    defective: np.ndarray,
    impulse_phase: np.ndarray,
    impulse_jitter: np.ndarray,
    impulse_scatter: np.ndarray,
) -> np.ndarray:
    """rfft of the defect vibration (impulse train ringing the resonance), (batch, n_bins), in g.

    The train repeats at the defect frequency with a small random timing jitter (roller slip) and amplitude
    scatter; inner-race impulses are modulated at shaft rate. Their amplitude grows exponentially with
    ``progress``; snapshots before the onset get none. The ringing is circular over the snapshot, like the
    tail of an impact just before the acquisition started.
    """
    rig, profile = config.rig, site_truth.profile
    n = config.n_samples
    defect_hz = rig.bpfi_hz if site_truth.defect == "bpfi" else rig.bpfo_hz
    growth = (np.exp(_DEFECT_GROWTH_RATE * progress) - 1.0) / (np.exp(_DEFECT_GROWTH_RATE) - 1.0)
    peak = profile.defect_peak_g * (_DEFECT_INITIAL_FRACTION + (1.0 - _DEFECT_INITIAL_FRACTION) * growth)
    peak = np.where(defective, peak, 0.0)  # (batch,)

    k = np.arange(impulse_jitter.shape[1])
    times = (impulse_phase[:, :1] + k + impulse_jitter) / defect_hz  # (batch, impulses) in s
    amplitude = peak[:, np.newaxis] * impulse_scatter
    if site_truth.defect == "bpfi":
        load_zone = 0.5 * (1.0 + np.cos(2 * np.pi * (rig.shaft_hz * times + impulse_phase[:, 1:])))
        amplitude = amplitude * (0.3 + 0.7 * load_zone)
    position = np.rint(times * rig.fs_hz).astype(np.int64)
    inside = (position >= 0) & (position < n)  # the train is drawn long enough to cover the snapshot
    amplitude = np.where(inside, amplitude, 0.0)
    position = np.clip(position, 0, n - 1)
    rows = np.broadcast_to(np.arange(len(progress))[:, np.newaxis], position.shape)
    train = np.bincount((rows * n + position).ravel(), weights=amplitude.ravel(), minlength=len(progress) * n)

    t = np.arange(n) / rig.fs_hz
    decay_s = 1.0 / (np.pi * profile.resonance_bandwidth_hz)
    ringing = np.exp(-t / decay_s) * np.sin(2 * np.pi * profile.resonance_hz * t)
    return np.fft.rfft(train.reshape(len(progress), n), axis=-1) * np.fft.rfft(ringing)


def format_ims(snapshot: np.ndarray) -> bytes:
    """IMS text of a ``(n_samples, channels)`` array in g: ``[-]D.ddd`` values, tabs, ``\\n``, no header.

    Vectorised: every value is laid out as 7 bytes (sign slot, digit, '.', 3 decimals, separator) and the
    unused sign slots of non-negative values are dropped. Values are clipped to +-MAX_ABS_G.
    """
    milli = np.rint(np.clip(snapshot, -MAX_ABS_G, MAX_ABS_G) * 1000.0).astype(np.int32)
    negative = milli < 0
    magnitude = np.abs(milli)
    chars = np.empty(milli.shape + (7,), dtype=np.uint8)
    chars[..., 0] = ord("-")
    chars[..., 1] = ord("0") + magnitude // 1000
    chars[..., 2] = ord(".")
    chars[..., 3] = ord("0") + magnitude // 100 % 10
    chars[..., 4] = ord("0") + magnitude // 10 % 10
    chars[..., 5] = ord("0") + magnitude % 10
    chars[..., 6] = ord("\t")
    chars[:, -1, 6] = ord("\n")
    keep = np.ones(chars.shape, dtype=bool)
    keep[..., 0] = negative
    return chars[keep].tobytes()

