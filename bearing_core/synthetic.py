"""IMS-format synthetic multi-site demo data with ground truth (run-to-failure bearings on several rigs).

Each site is one rig like the NASA IMS one (four bearings on a shaft at 2,000 RPM, 20,480 samples per snapshot
at ``rig.fs_hz``), written as one folder ``site_<k>`` of raw snapshot files named ``YYYY.MM.DD.hh.mm.ss``:
ASCII, tab-separated, 3 decimals (g), ``\\n`` line ends, no header, 8 channels (``B1_a ... B4_b``, the IMS 1st
test's layout: two accelerometers a bearing) or 4 (``B1 ... B4``, the 2nd and 3rd tests').

Signal model, per channel (all in g)::

    x = dc + gain * (level * (shaft harmonics 1x/2x/3x + broadband noise with a structural resonance hump)
                     + coupling * defect ringing)

The sites differ the way real rigs do (non-IID federated clients): load (shaft-harmonic level), sensor gain
(0.7-1.5), noise level, DC offset and structural resonance frequency.

What a real IMS run shows besides the defect, and the demo reproduces (the *nuisances*, listed per site in the
ground truth as non-defects): the acquisition runs for several days with stops of hours to a day; the
acquisition interval changes (the IMS 1st test took a file every 5 minutes for its first hours, then every 10;
here site_1 does the same and the other sites use other intervals); healthy bearings run in over the first days
(their level falls or rises by a few per cent, then settles); after a stop the cold bearings are louder by a
few per cent for a few hours (all bearings, or one); and short bursts (minutes to an hour, 2-5 times the level)
hit one healthy bearing or one accelerometer at a time. These are given as factors on the per-file mean|x| of
a channel (the level the product watches); ``level`` above is the vibration multiplier that gives that mean|x|
(solved exactly for the Gaussian model, the DC offset included), times a small per-file jitter.

On faulty sites (not all: at least one stays healthy), from an onset snapshot on, one bearing develops a
localised defect: an impulse train at BPFO (outer race) or BPFI (inner race, whose impulses are
amplitude-modulated at shaft rate as the defect rotates through the load zone) that rings the site's resonance
with an exponentially decaying sinusoid. The impulse amplitude grows exponentially with the running hours from
onset to the last file (the failure): slowly at first (some defects start barely above the noise), fast at the
end, where the faulty bearing's mean|x| is several times its healthy level; the broadband floor rises near the
end. Both accelerometers of the faulty bearing see the defect, the other bearings slightly through the shaft.

Everything random comes from ``numpy.random.default_rng`` seeded by ``(seed, stream, site[, file])``, so the bytes
of a file depend only on the arguments (not on batching or worker count), and another seed moves every event.
Files are written atomically (and made durable with one ``os.sync()`` before the ground truth is written).
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
from scipy.special import ndtr

from bearing_core.config import IMS_SAMPLES_PER_SNAPSHOT, RigConfig, channel_names
from bearing_core.io import write_bytes_atomic, write_json_atomic

GROUND_TRUTH_FILE = "ground_truth.json"
TIMESTAMP_FORMAT = "%Y.%m.%d.%H.%M.%S"
MAX_ABS_G = 9.999
"""Values are clipped to +-MAX_ABS_G so every value prints as ``[-]D.ddd`` (the real rig stays far below)."""

_BATCH_FILES = 16  # snapshots generated together (bounds memory at ~16 x channels x n_samples complex)
_DEFECT_GROWTH_RATE = 3.0  # exponential growth of impulse amplitude over onset -> failure (running hours)
_DEFECT_PEAK_PER_NOISE = (20.0, 28.0)  # impulse amplitude at failure / the site's noise_g
_DEFECT_INITIAL_FRACTION = (0.06, 0.12)  # impulse amplitude at onset relative to failure ...
_SUBTLE_INITIAL_FRACTION = (0.025, 0.04)  # ... or, on one faulty site in three (at least one), a subtle onset
_FLOOR_RISE = 1.5  # broadband noise multiplier at failure is 1 + _FLOOR_RISE (faulty bearing's channels)
_FLOOR_RISE_POWER = 4.0  # the floor rises only near the end: 1 + _FLOOR_RISE * progress**power
_SAME_BEARING_SECOND_SENSOR = 0.8  # the 2nd (perpendicular) accelerometer sees the defect a bit less
_NEIGHBOUR_COUPLING = (1.0, 0.12, 0.05, 0.03)  # defect seen at bearing distance 0, 1, 2, 3
_SHAFT_HARMONIC_G = (0.035, 0.018, 0.008)  # 1x, 2x, 3x shaft amplitudes at load factor 1
_GAIN = (0.7, 1.5)  # sensor sensitivity; the sites take one equal part of the range each, in random order
_NOISE_G = (0.06, 0.11)  # broadband noise before gain; idem
_DC_PER_STD = (0.3, 1.0)  # accelerometer DC offset (negative, as in the IMS files) / the channel's vibration std

# Timeline. Acquisition intervals as multiples of DemoConfig.interval_minutes: (first hours, then).
_IMS_FIRST_TEST_INTERVALS = (0.5, 1.0)  # site_1: 5 min for the first hours, then 10 min
_OTHER_INTERVALS = ((1.0, 2.0), (0.5, 1.5), (1.5, 3.0), (2.0, 2.0), (1.0, 3.0), (3.0, 3.0))
_FIRST_PHASE_HOURS = (2.0, 6.0)  # how long the first interval lasts (at most a third of the files)
_SPAN_DAYS_PER_150_FILES = (3.0, 5.0)  # first to last file, stops included (scales with the number of files)
_MIN_STOP_HOURS = 1.0
_FILES_PER_RESTART = 50.0  # about one stop/restart per 50 files (+-30 %)
_FILES_PER_BURST = 45.0  # about one burst per 45 files (-20 % / +40 %)

# Nuisances, as factors on a channel's mean|x|.
_RUN_IN_CHANGE = (0.03, 0.09)  # a bearing starts this much above or below its settled level ...
_RUN_IN_SETTLE_FRACTION = (0.06, 0.15)  # ... and settles with this e-folding time / the site's running hours
_RESTART_SHIFT = (0.02, 0.07)  # a cold bearing is this much louder after a restart ...
_RESTART_SETTLE_HOURS = (1.0, 4.0)  # ... and settles with this e-folding time (running hours)
_RESTART_ONE_BEARING = 0.4  # probability that only one bearing shows the shift
_BURST_FACTOR = (2.0, 5.0)
_BURST_MINUTES = (3.0, 60.0)  # log-uniform duration
_LEVEL_JITTER = (0.002, 0.008)  # per-file relative scatter of mean|x| (+~0.5 % from the samples; IMS 1st test: ~0.6 %)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoConfig(_Frozen):
    """What :func:`generate_demo` writes. Defaults: 4 sites x 150 files over 3-5 days each (~0.8 GB, 8 channels)."""

    sites: int = Field(4, ge=1, le=64, description="Number of sites (rigs), one folder site_<k> each")
    files_per_site: int = Field(150, ge=2, le=100_000, description="Snapshot files per site")
    seed: int = Field(0, ge=0, description="Random seed: same arguments and seed -> identical bytes")
    channels: Literal[4, 8] = Field(8, description="Channels per file: 8 (B1_a..B4_b, 1st test) or 4 (B1..B4)")
    start: datetime = Field(datetime(2004, 2, 12, 10, 32, 39), description="Time of site_1's first snapshot (UTC)")
    interval_minutes: float = Field(
        10.0,
        gt=0,
        description="Base acquisition interval: site_1 takes a file every half of it for its first "
        "hours, then every interval; the other sites use 0.5-3 times it",
    )
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
    # defaults = what ground truths written before these fields existed were generated with
    level_jitter: float = Field(0.03, ge=0, description="Per-file relative scatter of each channel's level")
    defect_initial_fraction: float = Field(
        0.08, gt=0, le=1, description="Defect impulse amplitude at onset relative to failure (small: subtle onset)"
    )


class AcquisitionRun(_Frozen):
    """Snapshots taken at one interval without a stop: ``files`` files from ``start``, ``interval_minutes`` apart."""

    start: datetime
    interval_minutes: float = Field(..., gt=0)
    files: int = Field(..., ge=1)
    after_stop: bool = Field(
        False, description="The rig was stopped between the previous run's last file and this run (a restart)"
    )


class Nuisance(_Frozen):
    """A non-defect event that changes some channels' level (mean|x|), for audit: run-in, restart or burst.

    ``factor`` is the channels' mean|x| relative to their undisturbed level: over ``[start, end)`` for a burst;
    at ``start`` for a run-in or restart, decaying to 1 as ``1 + (factor - 1) * exp(-h / settle_hours)``, ``h``
    the running hours since ``start`` (time between a stop and the next restart does not count).
    """

    kind: Literal["run_in", "restart", "burst"]
    channels: list[str]
    start: datetime = Field(..., description="run_in: the first file; restart: the first file after the stop")
    end: datetime | None = Field(None, description="burst: end (exclusive)")
    stopped_at: datetime | None = Field(None, description="restart: the last file before the stop")
    factor: float = Field(..., gt=0)
    settle_hours: float | None = Field(None, gt=0, description="run_in, restart: e-folding time (running hours)")


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
    acquisition: list[AcquisitionRun] = Field(
        default_factory=list, description="The site's snapshots as runs (empty: every interval_minutes, no stop)"
    )
    nuisances: list[Nuisance] = Field(
        default_factory=list, description="Non-defect level changes (run-in, restarts, bursts), for audit"
    )


class GroundTruth(_Frozen):
    """Contents of ``<out_dir>/ground_truth.json``."""

    seed: int
    fs_hz: float
    n_samples: int
    interval_minutes: float = Field(..., description="DemoConfig.interval_minutes (each site's in its acquisition)")
    channels: list[str]
    files_per_site: int
    sites: dict[str, SiteTruth]

    def timestamps(self, site: str) -> list[datetime]:
        """Acquisition times of ``site``'s snapshots, in order (the file names)."""
        truth = self.sites[site]
        if not truth.acquisition:  # a ground truth written before acquisition runs were recorded
            step = timedelta(minutes=self.interval_minutes)
            return [truth.first_file + i * step for i in range(truth.n_files)]
        return _run_timestamps(truth.acquisition)

    def running_hours(self, site: str) -> np.ndarray:
        """Hours the rig had run at each of ``site``'s snapshots since its first one (stops do not count)."""
        truth = self.sites[site]
        if not truth.acquisition:
            return np.arange(truth.n_files) * self.interval_minutes / 60
        return _running_hours(truth.acquisition)

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
    files_per_site: int = 150,
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
    os.sync()  # the snapshots (written without fsync) are durable before the ground truth describes them
    write_json_atomic(out_dir / GROUND_TRUTH_FILE, truth.model_dump(mode="json"))
    return truth


def plan_ground_truth(config: DemoConfig) -> GroundTruth:
    """Decide each site's profile, timeline, nuisances and fault (without generating any signal).

    The last ``max(1, sites // 4)`` sites stay healthy; the others get a defect, alternating inner race
    (BPFI) and outer race (BPFO), on a bearing drawn at random, from an onset near ``onset_fraction``; one
    faulty site in three (at least one), drawn at random, has a subtle onset. Gains and noise levels are spread:
    each site draws them in its own part of their ranges (parts assigned in random order).
    """
    names = channel_names(config.channels)
    n_healthy = max(1, config.sites // 4)
    n_faulty = config.sites - n_healthy
    layout = np.random.default_rng([config.seed, 3])  # what is spread over the sites
    gain_part, noise_part = layout.permutation(config.sites), layout.permutation(config.sites)
    subtle = set(layout.choice(n_faulty, size=max(1, n_faulty // 3), replace=False).tolist()) if n_faulty else set()
    sites: dict[str, SiteTruth] = {}
    for k in range(config.sites):
        rng = np.random.default_rng([config.seed, 0, k])
        parts = (int(gain_part[k]), int(noise_part[k]), config.sites)
        profile = _plan_profile(config, k, rng, parts, subtle=k in subtle)
        first = config.start + timedelta(seconds=profile.start_offset_s)
        bearing_index = int(rng.integers(0, 4))
        onset_jitter = float(rng.uniform(-0.05, 0.05))
        n = config.files_per_site
        faulty = k < config.sites - n_healthy
        timeline_rng = np.random.default_rng([config.seed, 2, k])
        acquisition = _plan_acquisition(config, k, first, timeline_rng)
        nuisances = _plan_nuisances(config, acquisition, names, bearing_index if faulty else None, timeline_rng)
        common = dict(first_file=first, n_files=n, profile=profile, acquisition=acquisition, nuisances=nuisances)
        if not faulty:
            sites[f"site_{k + 1}"] = SiteTruth(faulty=False, **common)
            continue
        onset_index = min(max(round(n * (config.onset_fraction + onset_jitter)), 1), n - 1)
        stamps = _run_timestamps(acquisition)
        bearing = f"B{bearing_index + 1}"
        sites[f"site_{k + 1}"] = SiteTruth(
            faulty=True,
            bearing=bearing,
            channels=[c for c in names if c.split("_")[0] == bearing],
            defect="bpfi" if k % 2 == 0 else "bpfo",
            onset=stamps[onset_index],
            failure=stamps[-1],
            onset_index=onset_index,
            **common,
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


def _plan_profile(
    config: DemoConfig, k: int, rng: np.random.Generator, parts: tuple[int, int, int], subtle: bool
) -> SiteProfile:
    """Site ``k``'s rig: gain and noise in the parts ``parts = (gain part, noise part, number of parts)`` of
    their ranges, load, resonance, defect size (small at onset when ``subtle``), DC offsets."""
    gain_part, noise_part, n_parts = parts
    gain = _GAIN[0] + (_GAIN[1] - _GAIN[0]) * (gain_part + float(rng.uniform())) / n_parts
    load = float(rng.uniform(0.7, 1.3))
    noise_g = _NOISE_G[0] + (_NOISE_G[1] - _NOISE_G[0]) * (noise_part + float(rng.uniform())) / n_parts
    channel_gains = rng.uniform(0.9, 1.1, size=config.channels)
    std = gain * channel_gains * math.sqrt(noise_g**2 + float(np.sum((load * np.asarray(_SHAFT_HARMONIC_G)) ** 2)) / 2)
    return SiteProfile(
        gain=round(gain, 4),
        load=round(load, 4),
        noise_g=round(noise_g, 4),
        resonance_hz=round(float(rng.uniform(2500.0, 4500.0)), 1),
        resonance_bandwidth_hz=round(float(rng.uniform(150.0, 300.0)), 1),
        defect_peak_g=round(noise_g * float(rng.uniform(*_DEFECT_PEAK_PER_NOISE)), 4),
        dc_offsets_g=tuple(round(float(v), 4) for v in -std * rng.uniform(*_DC_PER_STD, size=config.channels)),
        channel_gains=tuple(round(float(v), 4) for v in channel_gains),
        start_offset_s=0 if k == 0 else int(rng.integers(0, 3 * 3600)),
        level_jitter=round(float(rng.uniform(*_LEVEL_JITTER)), 4),
        defect_initial_fraction=round(
            float(rng.uniform(*(_SUBTLE_INITIAL_FRACTION if subtle else _DEFECT_INITIAL_FRACTION))), 4
        ),
    )


def _plan_acquisition(config: DemoConfig, k: int, first: datetime, rng: np.random.Generator) -> list[AcquisitionRun]:
    """Site ``k``'s snapshot times as runs: an interval change after the first hours, and stops of hours.

    site_1 follows the IMS 1st test (half the base interval for its first hours, then the base interval); the
    other sites draw their pair of intervals. About one stop per 50 files, placed in equal parts of the files
    (none in the first 8 %), long enough in total that the site spans 3-5 days per 150 files.
    """
    n = config.files_per_site
    if k == 0:
        first_mult, then_mult = _IMS_FIRST_TEST_INTERVALS
    else:
        first_mult, then_mult = _OTHER_INTERVALS[int(rng.integers(len(_OTHER_INTERVALS)))]
    first_s, then_s = (max(1, round(config.interval_minutes * 60 * m)) for m in (first_mult, then_mult))
    n_first = n  # files at the first interval (n: no change)
    if first_s != then_s:
        n_first = int(np.clip(round(rng.uniform(*_FIRST_PHASE_HOURS) * 3600 / first_s), 2, max(2, n // 3)))
    steps = np.where(np.arange(1, n) < n_first, first_s, then_s).astype(np.int64)  # steps[i - 1]: file i-1 -> i

    n_stops = round(n / _FILES_PER_RESTART * float(rng.uniform(0.7, 1.3)))
    restarts = _one_in_each_part(rng, math.ceil(0.08 * n), math.floor(0.95 * n), n_stops, min_part=4, margin=0.0)
    if restarts:
        span_s = n / 150 * float(rng.uniform(*_SPAN_DAYS_PER_150_FILES)) * 86400
        minimum = _MIN_STOP_HOURS * 3600
        total = max(span_s - float(steps.sum()), len(restarts) * minimum)
        shares = rng.dirichlet(np.ones(len(restarts)))
        stops = np.rint(minimum + shares * (total - len(restarts) * minimum)).astype(np.int64)
        steps[np.asarray(restarts) - 1] += stops
    seconds = np.concatenate([[0], np.cumsum(steps)])

    breaks = sorted({0, *restarts, *([n_first] if n_first < n else [])})
    runs = []
    for a, b in zip(breaks, [*breaks[1:], n]):
        interval_s = first_s if a < n_first else then_s
        runs.append(
            AcquisitionRun(
                start=first + timedelta(seconds=int(seconds[a])),
                interval_minutes=interval_s / 60,
                files=b - a,
                after_stop=a in restarts,
            )
        )
    return runs


def _one_in_each_part(
    rng: np.random.Generator, lo: int, hi: int, count: int, min_part: int, margin: float
) -> list[int]:
    """``count`` sorted indices in ``[lo, hi)``, one drawn in each of ``count`` equal parts (at most one per
    ``min_part`` indices), away from the parts' edges by ``margin`` of their width: spread, never adjacent."""
    count = min(count, max(0, (hi - lo) // min_part))
    edges = np.linspace(lo, hi, count + 1)
    picks = []
    for a, b in zip(edges[:-1], edges[1:]):
        first = math.ceil(a + margin * (b - a))
        picks.append(int(rng.integers(first, max(first + 1, math.floor(b - margin * (b - a))))))
    return picks


def _midpoint(a: datetime, b: datetime) -> datetime:
    return a + timedelta(seconds=int((b - a).total_seconds()) // 2)


def _run_timestamps(acquisition: Sequence[AcquisitionRun]) -> list[datetime]:
    return [run.start + j * timedelta(minutes=run.interval_minutes) for run in acquisition for j in range(run.files)]


def _running_hours(acquisition: Sequence[AcquisitionRun]) -> np.ndarray:
    """Running hours at each snapshot of ``acquisition`` since its first (the time of a stop does not count)."""
    stamps = _run_timestamps(acquisition)
    steps = np.diff([(t - stamps[0]).total_seconds() for t in stamps], prepend=0.0)
    first_of_run = np.cumsum([0] + [run.files for run in acquisition[:-1]])
    steps[[i for i, run in zip(first_of_run, acquisition) if run.after_stop]] = 0.0
    return np.cumsum(steps) / 3600.0


def _plan_nuisances(
    config: DemoConfig,
    acquisition: list[AcquisitionRun],
    names: Sequence[str],
    faulty_bearing: int | None,
    rng: np.random.Generator,
) -> list[Nuisance]:
    """Run-in of every bearing, a cold-start shift after every stop, and bursts on healthy bearings."""
    stamps = _run_timestamps(acquisition)
    n = len(stamps)
    sensors = len(names) // 4
    of_bearing = [list(names[b * sensors : (b + 1) * sensors]) for b in range(4)]
    running = float(_running_hours(acquisition)[-1])
    nuisances = []
    for b in range(4):
        change = float(rng.uniform(*_RUN_IN_CHANGE)) * (1 if rng.random() < 0.5 else -1)
        nuisances.append(
            Nuisance(
                kind="run_in",
                channels=of_bearing[b],
                start=stamps[0],
                factor=round(1 + change, 4),
                settle_hours=round(max(0.5, running * float(rng.uniform(*_RUN_IN_SETTLE_FRACTION))), 3),
            )
        )
    first_of_run = np.cumsum([0] + [run.files for run in acquisition[:-1]])
    for index, run in zip(first_of_run, acquisition):
        if not run.after_stop:
            continue
        shift = float(rng.uniform(*_RESTART_SHIFT))
        settle = round(float(rng.uniform(*_RESTART_SETTLE_HOURS)), 3)
        if rng.random() < _RESTART_ONE_BEARING:
            shifts = {int(rng.integers(0, 4)): shift}
        else:
            shifts = {b: shift * float(rng.uniform(0.6, 1.0)) for b in range(4)}
        for b, value in shifts.items():
            nuisances.append(
                Nuisance(
                    kind="restart",
                    channels=of_bearing[b],
                    start=stamps[index],
                    stopped_at=stamps[index - 1],
                    factor=round(1 + value, 4),
                    settle_hours=settle,
                )
            )

    n_bursts = round(n / _FILES_PER_BURST * float(rng.uniform(0.8, 1.4)))
    healthy = [b for b in range(4) if b != faulty_bearing]
    anchors = _one_in_each_part(rng, math.ceil(0.05 * n), math.floor(0.95 * n), n_bursts, min_part=8, margin=0.2)
    times = [stamps[a] for a in anchors]
    for k, anchor in enumerate(times):  # each burst covers its anchor file and stays clear of its neighbours'
        bearing = healthy[int(rng.integers(len(healthy)))]
        channels = of_bearing[bearing]
        if sensors == 2 and rng.random() < 0.5:
            channels = [channels[int(rng.integers(2))]]
        seconds = round(float(np.exp(rng.uniform(*np.log(_BURST_MINUTES)))) * 60)
        start = anchor - timedelta(seconds=round(float(rng.uniform(0.0, 0.5)) * seconds))
        if k > 0:  # after the midpoint (whole seconds) between the previous anchor and this one
            start = max(start, _midpoint(times[k - 1], anchor) + timedelta(seconds=1))
        end = start + timedelta(seconds=seconds)
        if k + 1 < len(times):
            end = min(end, _midpoint(anchor, times[k + 1]))
        nuisances.append(
            Nuisance(
                kind="burst",
                channels=channels,
                start=start,
                end=end,
                factor=round(float(rng.uniform(*_BURST_FACTOR)), 3),
            )
        )
    return nuisances


def _write_batch(out_dir: Path, config: DemoConfig, truth: GroundTruth, site: str, indices: list[int]) -> None:
    """Generate and atomically write the snapshots ``indices`` of ``site`` (one worker task; no fsync, see
    :func:`generate_demo_from_config`)."""
    signals = synthesize_snapshots(config, truth, site, indices)
    timestamps = truth.timestamps(site)
    for i, snapshot in zip(indices, signals, strict=True):
        target = out_dir / site / timestamps[i].strftime(TIMESTAMP_FORMAT)
        write_bytes_atomic(target, format_ims(snapshot), fsync=False)


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
        level_jitter[row] = rng.normal(1.0, profile.level_jitter, size=n_ch)
        impulse_phase[row] = rng.uniform(0.0, 1.0, size=2)
        impulse_jitter[row] = rng.normal(0.0, 0.004, size=n_impulses)
        impulse_scatter[row] = rng.normal(1.0, 0.1, size=n_impulses)

    indices = np.asarray(indices)
    progress = _defect_progress(truth, site, indices)  # (batch,), NaN before onset / healthy
    defective = ~np.isnan(progress)
    progress_or_zero = np.where(defective, progress, 0.0)
    coupling = _defect_coupling(site_truth, n_ch)  # (channels,)

    # The level: the nuisances' mean|x| factors (times jitter) -> vibration multipliers, DC offset included.
    gains = profile.gain * np.asarray(profile.channel_gains)
    harmonics = profile.load * np.asarray(_SHAFT_HARMONIC_G)
    healthy_std = gains * math.sqrt(profile.noise_g**2 + float(np.sum(harmonics**2)) / 2)
    dc = np.asarray(profile.dc_offsets_g)
    mean_abs_factor = nuisance_factors(truth, site, indices) * level_jitter
    level = _std_for_mean_abs(mean_abs_factor * _folded_mean(dc, healthy_std), dc) / healthy_std

    # Broadband noise + resonance hump, shaped in the frequency domain; scaled so std = noise_g * level.
    resonance_shape = 1.0 + 3.0 / (1.0 + ((freqs - profile.resonance_hz) / profile.resonance_bandwidth_hz) ** 2)
    resonance_shape[0] = 0.0
    shape_scale = n / (2.0 * np.sqrt(np.sum(resonance_shape**2)))
    floor = 1.0 + _FLOOR_RISE * progress_or_zero[:, np.newaxis] ** _FLOOR_RISE_POWER * np.minimum(1.0, 2.0 * coupling)
    noise_level = profile.noise_g * shape_scale * level * floor  # (batch, channels)
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
    amplitude = level[..., np.newaxis] * harmonics  # (batch, channels, harmonics)
    cos_part = amplitude * np.cos(shaft_phase)
    sin_part = amplitude * np.sin(shaft_phase)
    vibration += cos_part @ np.sin(angle) + sin_part @ np.cos(angle)

    signals = dc[:, np.newaxis] + gains[:, np.newaxis] * vibration
    return np.swapaxes(signals, 1, 2)


def nuisance_factors(truth: GroundTruth, site: str, indices: Sequence[int]) -> np.ndarray:
    """The product of ``site``'s nuisance factors on each channel's mean|x| at snapshots ``indices``,
    ``(len(indices), channels)`` (1 where nothing disturbs; per-file jitter and the defect not included)."""
    site_truth = truth.sites[site]
    indices = np.asarray(indices)
    stamps = truth.timestamps(site)
    seconds = np.array([(stamps[i] - site_truth.first_file).total_seconds() for i in indices])
    hours = truth.running_hours(site)
    all_seconds = np.array([(t - site_truth.first_file).total_seconds() for t in stamps])
    column = {name: c for c, name in enumerate(truth.channels)}
    factors = np.ones((len(indices), len(truth.channels)))
    for event in site_truth.nuisances:
        columns = [column[c] for c in event.channels]
        start = (event.start - site_truth.first_file).total_seconds()
        if event.kind == "burst":
            assert event.end is not None
            end = (event.end - site_truth.first_file).total_seconds()
            value = np.where((seconds >= start) & (seconds < end), event.factor, 1.0)
        else:
            assert event.settle_hours is not None
            start_hours = hours[np.searchsorted(all_seconds, start)]
            since = hours[indices] - start_hours
            decay = np.exp(-np.maximum(since, 0.0) / event.settle_hours)
            value = np.where(since >= 0, 1.0 + (event.factor - 1.0) * decay, 1.0)
        factors[:, columns] *= value[:, np.newaxis]
    return factors


def _folded_mean(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """E|mu + sigma Z|, Z standard normal (the mean|x| of a Gaussian vibration with DC offset ``mu``)."""
    sigma = np.maximum(sigma, 1e-12)
    ratio = np.abs(mu) / sigma
    return sigma * np.sqrt(2 / np.pi) * np.exp(-0.5 * ratio**2) + np.abs(mu) * (1.0 - 2.0 * ndtr(-ratio))


def _std_for_mean_abs(target: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """The sigma with E|mu + sigma Z| = ``target`` (bisection, elementwise; increasing in sigma, >= |mu|).

    A target at or below |mu| (no vibration could reach it) gets a tenth of the smallest that could."""
    target, mu = np.broadcast_arrays(np.asarray(target, dtype=float), np.asarray(mu, dtype=float))
    target = np.maximum(target, np.abs(mu) * 1.001 + 1e-9)
    lo = np.zeros_like(target)
    hi = target * np.sqrt(np.pi / 2) * 1.01 + 1e-9  # E >= sigma sqrt(2/pi)
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        below = _folded_mean(mu, mid) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _defect_progress(truth: GroundTruth, site: str, indices: np.ndarray) -> np.ndarray:
    """0 at onset -> 1 at the last file in running hours; NaN before the onset or on a healthy site."""
    site_truth = truth.sites[site]
    if not site_truth.faulty or site_truth.onset_index is None:
        return np.full(indices.shape, np.nan)
    hours = truth.running_hours(site)
    onset, last = hours[site_truth.onset_index], hours[-1]
    progress = (hours[indices] - onset) / max(last - onset, 1e-9)
    return np.where(indices >= site_truth.onset_index, np.clip(progress, 0.0, 1.0), np.nan)


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
    ``progress`` from ``defect_initial_fraction`` of the peak; snapshots before the onset get none. The ringing
    is circular over the snapshot, like the tail of an impact just before the acquisition started.
    """
    rig, profile = config.rig, site_truth.profile
    n = config.n_samples
    defect_hz = rig.bpfi_hz if site_truth.defect == "bpfi" else rig.bpfo_hz
    growth = (np.exp(_DEFECT_GROWTH_RATE * progress) - 1.0) / (np.exp(_DEFECT_GROWTH_RATE) - 1.0)
    initial = profile.defect_initial_fraction
    peak = profile.defect_peak_g * (initial + (1.0 - initial) * growth)
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
