"""Raw IMS directory -> processed Parquet dataset: incremental, parallel, atomic.

Outputs (the shared data contract, see README): ``samples/<rel>.parquet`` (one per valid snapshot),
``features.parquet``, ``quarantine.parquet``, ``manifest.parquet``, ``dataset.json``.

Which files are snapshots:
    ``RAW_DIR/<file>`` (site = name of RAW_DIR) and ``RAW_DIR/<site>/<file>``. Metadata files (``*.json``,
    ``*.md``, ``*.csv``, ``*.txt``, ``README*``) and hidden files/folders are skipped. Files nested deeper
    (``RAW_DIR/<site>/<folder>/...``), empty folders inside a site and non-regular files (FIFOs, sockets) are
    quarantined, never read.
    Two files of one site with the same timestamp: the later-sorted path is quarantined.
    Symlinks are followed only when their target lies inside RAW_DIR; a file or site folder linking outside is
    quarantined ("symlink points outside the raw directory") and never read. The check is made on the file
    actually opened (its real path read from the open descriptor, :func:`bearing_core.ims_reader.opened_path`),
    not on the path before opening, so a link swapped during the run (e.g. dangling at scan time, its target
    created outside RAW_DIR since) is quarantined too. With ``follow_symlinks`` (DVC-style raw folders whose files
    link into a cache elsewhere) links are followed wherever they point: each is resolved once, at scan time, the
    resolved target is what is read (the open file must still be that target) and it is recorded in the
    manifest's ``target`` column. Names that are not valid UTF-8
    are quarantined (shown with \\xNN escapes). Names are any Unicode (spaces, accents, CJK) except that a
    snapshot's timestamp must use ASCII digits. Nothing outside RAW_DIR is read and nothing outside OUT_DIR is
    written: a symlink planted in OUT_DIR/samples is replaced by a real directory, never written through.

Incremental bookkeeping (``manifest.parquet``: path, size, mtime_ns, sha256, status, reason, target = the real
path read when it is not ``RAW_DIR/<path>`` itself, i.e. the file was reached through a symlink):
    a file whose size and mtime_ns match its manifest row is *unchanged* and not read at all; a file whose
    stat changed but whose sha256 equals the manifest's is also unchanged (content-addressed: ``touch`` does
    not re-parse); anything else is parsed again. Quarantined files are re-tried only when they change,
    except files that could not be read (unreadable or too large: no sha256), which are re-tried every run (a
    permission fix does not change mtime).
    Deleted raw files disappear from every output, their samples file included. Changing ``expected_samples``,
    the rig or the feature set, or passing a ``channels`` that differs from the dataset's, re-ingests all.

Counting (``IngestReport``): ``ingested`` = valid files parsed in this run, ``unchanged`` = valid files
reused from the previous run, ``quarantined`` = every file in quarantine.parquet with stage "ingest" after the
run, new or carried over. So ``ingested + unchanged + quarantined`` = all snapshot candidates, and a re-run on
an unchanged directory reports ``ingested 0, unchanged N, quarantined Q`` with ``parsed == 0``.

Channel count: ``cfg.channels``, else the one in an existing ``dataset.json``, else that of the first valid file
in sorted path order (parsed in-process before the pool starts). Files with another count are quarantined.

Crash safety: every file is written via temp + rename (:mod:`bearing_core.io`), in the order samples ->
one ``os.sync()`` -> features.parquet -> quarantine.parquet -> dataset.json -> obsolete samples removed ->
manifest.parquet. The manifest, written last, only ever describes outputs that exist, so a run killed at any
moment leaves the previous outputs readable and the next run redoes exactly the unfinished files (stale temp
files are removed first). A lock file (``OUT/.ingest.lock``) stops two ingests from writing one output
directory at once.
Samples files are not fsynced one by one (an fsync costs ~1 ms of CPU and ~3 ms of latency per file); instead
``os.sync()`` runs in a background thread while the workers go on (one at a time, re-started as batches
complete), and a last one after the last batch makes all of them durable before features.parquet, the first file
that references them, is written: that last sync only has the final batches left to flush. A killed process loses
nothing that was written (the page cache keeps it); after an
OS crash before that sync, only this run's samples can be missing, and no committed output describes them yet: a
re-run parses those files again, because the manifest still describes the previous state.

Parallelism: ``cfg.workers`` processes (spawn: safe with the threads pyarrow starts, and the workers are direct
children, so ``RUSAGE_CHILDREN`` accounts for them; scripts calling this need the usual
``if __name__ == "__main__":`` guard), work unit = ``cfg.batch_size`` files. Workers read, hash, parse, compute
features and write the samples files, returning only a small row per file; at most two batches per worker are in
flight, so memory stays bounded whatever the number of files. Each worker tunes its allocator once
(:func:`configure_worker_process`) and imports numpy, scipy.fft, pyarrow and pydantic only (no pandas: Arrow
arrays are built from numpy buffers). ``workers=1`` (or a single batch) runs in-process.

Cost of one 1.1 MB 8-channel file on one core (see BENCHMARKS.md): read + sha256 ~1 ms, parse ~2.8 ms,
features ~2.4 ms, samples write ~2 ms. Workers need ~0.4 s each to start; the calling process parses batches
itself meanwhile (:func:`_run_batches`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bearing_core.config import IngestConfig, RigConfig, channel_names
from bearing_core.features import FEATURES, compute_features, feature_columns
from bearing_core.ims_reader import (
    MAX_FILE_BYTES,
    IMSFormatError,
    parse_ims_bytes,
    parse_snapshot_time,
    read_raw_bytes,
)
from bearing_core.io import remove_stale_temp_files, write_json_atomic, write_parquet_atomic

SAMPLES_DIR = "samples"
FEATURES_FILE = "features.parquet"
QUARANTINE_FILE = "quarantine.parquet"
MANIFEST_FILE = "manifest.parquet"
DATASET_FILE = "dataset.json"
LOCK_FILE = ".ingest.lock"
INGEST_STAGE = "ingest"

METADATA_SUFFIXES = (".json", ".md", ".csv", ".txt")
# Samples parquet: plain float32 channels, no codec, no statistics; dictionary (RLE) only for the constant
# timestamp column. Measured per 8-channel file: 0.6 ms of encoding for ~660 kB. Dictionary-encoding the channels
# (IMS values are 3-decimal quantised) makes it ~230 kB but costs 2.1 ms, zstd-1 or lz4 on plain values save
# < 15 % for +1.5 ms: the disk writes 650 MB in ~0.5 s here, the CPU is the bottleneck.
_SAMPLES_PARQUET_OPTIONS = {
    "compression": "none",
    "use_dictionary": ["timestamp"],
    "write_statistics": False,
    "write_batch_size": 32_768,  # > samples per snapshot: one batch per column chunk
}

_NESTED_REASON = "nested too deep: snapshots must be RAW_DIR/<file> or RAW_DIR/<site>/<file>"
_OUTSIDE_REASON = "symlink points outside the raw directory: not followed"
_NOT_UTF8_REASON = "name is not valid UTF-8"


def _printable(name: str) -> str:
    """A file name as text that Parquet can store: undecodable bytes shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir decoded undecodable bytes as surrogates
        return False
    return True


def _escapes(entry: os.DirEntry[str], root: Path) -> bool:
    """True for a symlink whose target exists outside ``root`` (dangling links are left to the reader, which
    checks the file it actually opens: :func:`_opened_file_check`)."""
    if not entry.is_symlink():
        return False
    target = Path(entry.path).resolve()
    return target.exists() and not target.is_relative_to(root)


def _is_inside(real: str, root: str) -> bool:
    """``real`` (a canonical path) is ``root`` or lies under it."""
    return real == root or real.startswith(root.rstrip("/") + "/")


# glibc mallopt() parameters (malloc.h), see configure_worker_process.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

QUARANTINE_SCHEMA = pa.schema([("file", pa.string()), ("reason", pa.string()), ("stage", pa.string())])
MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("target", pa.string()),
    ]
)

Status = Literal["ok", "quarantined", "unchanged"]


class IngestError(RuntimeError):
    """The run cannot proceed (e.g. another ingest holds the output directory's lock)."""


@dataclass(frozen=True)
class IngestProgress:
    """Progress after each batch: files checked/parsed so far out of those needing it, and their raw bytes."""

    files_done: int
    files_total: int
    bytes_done: int


@dataclass(frozen=True)
class IngestReport:
    """Outcome of :func:`ingest_directory` (counting rules in the module docstring)."""

    out_dir: Path
    ingested: int
    unchanged: int
    quarantined: int
    parsed: int
    removed: int
    channels: tuple[str, ...]
    rebuilt_reason: str | None = None
    outputs: dict[str, Path] = field(default_factory=dict)

    def summary_line(self) -> str:
        return f"ingested {self.ingested}, unchanged {self.unchanged}, quarantined {self.quarantined}"


@dataclass(frozen=True)
class RawFile:
    """A snapshot candidate found by the scan: path relative to RAW_DIR (posix), its site and stat."""

    rel: str
    site: str
    size: int
    mtime_ns: int
    target: str | None = None
    """Real path of a file reached through a symlink (the file's own or its site folder's), resolved once at scan
    time; None for a plain file."""


@dataclass(frozen=True)
class _Task:
    rel: str
    abs_path: str
    site: str
    prev_sha256: str | None
    target: str | None = None


@dataclass(frozen=True)
class _WorkerSettings:
    out_dir: str
    expected_samples: int
    channels: int | None
    rig: RigConfig
    max_bytes: int
    use_threads: bool
    raw_root: str
    """RAW_DIR's canonical path: without ``follow_symlinks`` every file read must lie under it."""
    follow_symlinks: bool


@dataclass(frozen=True)
class _Result:
    """What a worker returns per file: small (one feature row at most), whatever the file size."""

    rel: str
    site: str
    size: int
    mtime_ns: int
    sha256: str | None
    status: Status
    parsed: bool
    reason: str | None = None
    timestamp: datetime | None = None
    n_channels: int | None = None
    features: np.ndarray | None = None
    target: str | None = None


def is_metadata_name(name: str) -> bool:
    """Dataset metadata (README, *.json, ...) and hidden files are not snapshots."""
    lower = name.lower()
    return name.startswith(".") or lower.startswith("readme") or lower.endswith(METADATA_SUFFIXES)


def samples_path(out_dir: Path, rel: str) -> Path:
    """``OUT/samples/<rel>.parquet`` for the raw file at relative path ``rel``."""
    return out_dir / SAMPLES_DIR / f"{rel}.parquet"


def scan_raw_directory(raw_dir: Path, follow_symlinks: bool = False) -> tuple[list[RawFile], list[tuple[str, str]]]:
    """Snapshot candidates (sorted by path) and ``(rel, reason)`` of entries quarantined by layout alone.

    A file reached through a symlink (its own or its site folder's) gets its ``target`` resolved here, once.
    Without ``follow_symlinks`` a link whose target exists outside RAW_DIR is quarantined; with it, it is a
    candidate like any other.
    """
    raw_dir = Path(raw_dir)
    root = raw_dir.resolve()
    top_site = root.name
    candidates: list[RawFile] = []
    rejected: list[tuple[str, str]] = []

    def add(path: Path, rel: str, site: str, target: str | None) -> None:
        try:
            st = os.stat(target if target is not None else path)
        except OSError:  # dangling symlink etc.: the reader reports why it cannot be read
            candidates.append(RawFile(rel, site, -1, -1, target))
            return
        if not stat.S_ISREG(st.st_mode):
            rejected.append((rel, "not a regular file"))
        else:
            candidates.append(RawFile(rel, site, st.st_size, st.st_mtime_ns, target))

    def refused(entry: os.DirEntry[str]) -> bool:
        return not _is_utf8(entry.name) or (not follow_symlinks and _escapes(entry, root))

    for entry in sorted(os.scandir(raw_dir), key=lambda e: e.name):
        if is_metadata_name(entry.name):
            continue
        if refused(entry):
            rejected.append((_printable(entry.name), _NOT_UTF8_REASON if not _is_utf8(entry.name) else _OUTSIDE_REASON))
            continue
        if not entry.is_dir():
            add(Path(entry.path), entry.name, top_site, os.path.realpath(entry.path) if entry.is_symlink() else None)
            continue
        site_target = os.path.realpath(entry.path) if entry.is_symlink() else None
        for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
            if is_metadata_name(sub.name):
                continue
            rel = f"{entry.name}/{sub.name}"
            if refused(sub):
                rejected.append((_printable(rel), _NOT_UTF8_REASON if not _is_utf8(sub.name) else _OUTSIDE_REASON))
                continue
            if not sub.is_dir():
                if sub.is_symlink():
                    target: str | None = os.path.realpath(sub.path)
                else:
                    target = os.path.join(site_target, sub.name) if site_target is not None else None
                add(Path(sub.path), rel, entry.name, target)
                continue
            nested_files = [p.relative_to(raw_dir).as_posix() for p in _walk_files(Path(sub.path))]
            rejected.extend((p, _NESTED_REASON) for p in nested_files)
            if not nested_files:
                rejected.append((rel, "is a directory, expected a snapshot file"))
    candidates.sort(key=lambda f: f.rel)
    return candidates, rejected


def _real_sample_dirs(out_dir: Path, sites: Iterable[str]) -> None:
    """Make ``samples/`` and ``samples/<site>/`` real directories: a symlink planted there is removed (never
    written through), so nothing outside OUT_DIR is ever written."""
    for folder in [out_dir / "samples", *(out_dir / "samples" / site for site in sorted(sites))]:
        if folder.is_symlink():
            folder.unlink()
        folder.mkdir(parents=True, exist_ok=True)


def _walk_files(root: Path) -> Iterator[Path]:
    """Non-metadata files under ``root`` (any depth, hidden folders skipped), sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not is_metadata_name(name):
                yield Path(dirpath) / name


def find_duplicate_timestamps(files: Sequence[RawFile]) -> dict[str, str]:
    """``{rel: reason}`` for files whose (site, timestamp-from-name) repeats an earlier-sorted path."""
    first_seen: dict[tuple[str, datetime], str] = {}
    duplicates: dict[str, str] = {}
    for f in sorted(files, key=lambda f: f.rel):
        try:
            ts = parse_snapshot_time(Path(f.rel).name)
        except IMSFormatError:
            continue  # the reader quarantines the bad name
        key = (f.site, ts)
        if key in first_seen:
            duplicates[f.rel] = (
                f"duplicate timestamp {ts.isoformat(sep=' ')} in site {f.site!r}: same as {first_seen[key]}"
            )
        else:
            first_seen[key] = f.rel
    return duplicates


def ingest_directory(cfg: IngestConfig, progress: Callable[[IngestProgress], None] | None = None) -> IngestReport:
    """Bring ``cfg.resolved_out_dir()`` up to date with ``cfg.raw_dir`` (see the module docstring)."""
    raw_dir = Path(cfg.raw_dir)
    out_dir = cfg.resolved_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out_dir / LOCK_FILE):
        remove_stale_temp_files(out_dir)
        return _ingest_locked(cfg, raw_dir, out_dir, progress)


def _ingest_locked(
    cfg: IngestConfig, raw_dir: Path, out_dir: Path, progress: Callable[[IngestProgress], None] | None
) -> IngestReport:
    previous = _PreviousRun.load(out_dir)
    rebuilt_reason = previous.settings_mismatch(cfg)
    if rebuilt_reason is not None:
        previous = _PreviousRun.empty(out_dir)
    n_channels = cfg.channels or previous.n_channels

    candidates, layout_rejects = scan_raw_directory(raw_dir, cfg.follow_symlinks)
    duplicates = find_duplicate_timestamps(candidates)
    scan_quarantine = dict(layout_rejects) | duplicates
    snapshots = [f for f in candidates if f.rel not in duplicates]

    results: list[_Result] = []
    tasks: list[_Task] = []
    for f in snapshots:
        reused = previous.reuse(f)
        if reused is not None:
            results.append(reused)
        else:
            tasks.append(_Task(f.rel, str(raw_dir / f.rel), f.site, previous.reusable_sha256(f.rel), f.target))

    _real_sample_dirs(out_dir, {t.site for t in tasks})
    settings = _WorkerSettings(
        out_dir=str(out_dir),
        expected_samples=cfg.expected_samples,
        channels=n_channels,
        rig=cfg.rig,
        max_bytes=MAX_FILE_BYTES,
        use_threads=False,
        raw_root=str(raw_dir.resolve()),
        follow_symlinks=cfg.follow_symlinks,
    )
    tracker = _ProgressTracker(len(tasks), progress)
    if n_channels is None:
        # Infer the dataset's channel count from the first valid file in sorted order, in-process.
        while tasks and settings.channels is None:
            result = _process_file(tasks.pop(0), settings)
            results.append(result)
            tracker.advance([result])
            if result.status == "ok" and result.n_channels is not None:
                settings = dataclasses.replace(settings, channels=result.n_channels)
    syncer = _BackgroundSync()
    for batch_results in _run_batches(tasks, settings, cfg.workers, cfg.batch_size):
        results.extend(batch_results)
        tracker.advance(batch_results)
        if any(r.parsed for r in batch_results):
            syncer.kick()
    n_channels = settings.channels
    results = [previous.resolve_unchanged(r) for r in results]

    channels = channel_names(n_channels) if n_channels is not None else ()
    ok = [r for r in results if r.status == "ok"]
    quarantined = [r for r in results if r.status == "quarantined"]
    ingest_quarantine = {r.rel: r.reason or "" for r in quarantined} | scan_quarantine
    present = {f.rel for f in candidates} | set(scan_quarantine)

    # Write order matters for crash safety (module docstring): samples are already written by the workers.
    outputs = {
        "samples": out_dir / SAMPLES_DIR,
        "features": out_dir / FEATURES_FILE,
        "quarantine": out_dir / QUARANTINE_FILE,
        "dataset": out_dir / DATASET_FILE,
        "manifest": out_dir / MANIFEST_FILE,
    }
    syncer.finish()  # the samples written without fsync are durable before anything references them
    write_parquet_atomic(outputs["features"], _features_table(ok, previous, channels))
    write_parquet_atomic(outputs["quarantine"], _quarantine_table(ingest_quarantine, previous, present))
    write_json_atomic(outputs["dataset"], _dataset_description(raw_dir, cfg, channels, ok))
    _remove_obsolete_samples(out_dir, {r.rel for r in ok})
    write_parquet_atomic(outputs["manifest"], _manifest_table(results))

    return IngestReport(
        out_dir=out_dir,
        ingested=sum(1 for r in ok if r.parsed),
        unchanged=sum(1 for r in ok if not r.parsed),
        quarantined=len(ingest_quarantine),
        parsed=sum(1 for r in results if r.parsed),
        removed=len(set(previous.manifest) - present),
        channels=channels,
        rebuilt_reason=rebuilt_reason,
        outputs=outputs,
    )


class _BackgroundSync:
    """``os.sync()`` in a daemon thread, at most one at a time, while the ingest goes on (module docstring)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        """New samples were written: start a background sync unless one is running."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=os.sync, name="ingest-sync", daemon=True)
            self._thread.start()

    def finish(self) -> None:
        """Return once everything written before this call is durable (no-op if nothing was kicked)."""
        if self._thread is None:
            return
        self._thread.join()
        os.sync()  # covers what was written while (or after) the last background sync ran


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (released by the OS even if the process is killed)."""
    with open(lock_path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IngestError(f"another ingest is writing {lock_path.parent} (lock {lock_path.name} is held)") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class _ProgressTracker:
    """Counts finished files/bytes and forwards them to the user's callback after each batch."""

    def __init__(self, total: int, callback: Callable[[IngestProgress], None] | None) -> None:
        self.total, self.callback = total, callback
        self.files = 0
        self.bytes = 0
        self._emit()

    def advance(self, batch: Sequence[_Result]) -> None:
        self.files += len(batch)
        self.bytes += sum(max(r.size, 0) for r in batch)
        self._emit()

    def _emit(self) -> None:
        if self.callback is not None:
            self.callback(IngestProgress(self.files, self.total, self.bytes))


def _run_batches(
    tasks: list[_Task], settings: _WorkerSettings, workers: int, batch_size: int
) -> Iterator[list[_Result]]:
    """Results batch by batch: in-process for one worker or one batch, else a bounded process pool.

    Spawned workers need ~0.4 s of CPU each to start (interpreter, numpy, scipy.fft, pyarrow) before their first
    file. The calling process, which has all of that loaded, parses files itself until the first worker is ready
    (it then hands the rest of its batch to the pool), so the start-up does not leave the cores idle. The last
    batches are a quarter of ``batch_size``, so no worker idles long while another finishes a full batch. The
    pool is not joined on success: its processes exit on their own once the results are in.
    """
    tail = min(len(tasks), 2 * workers * batch_size)
    small = max(1, batch_size // 4)
    head = len(tasks) - tail
    batches = [tasks[i : min(i + batch_size, head)] for i in range(0, head, batch_size)]
    batches += [tasks[i : i + small] for i in range(head, len(tasks), small)]
    if workers <= 1 or len(batches) <= 1:
        in_process = dataclasses.replace(settings, use_threads=True)
        for batch in batches:
            yield _process_batch(batch, in_process)
        return
    context = multiprocessing.get_context("spawn")
    max_in_flight = 2 * workers
    pending = iter(batches)
    n_processes = min(workers, len(batches))
    pool = ProcessPoolExecutor(max_workers=n_processes, mp_context=context, initializer=configure_worker_process)
    try:
        ready = pool.submit(os.getpid)  # done as soon as a worker has started
        in_flight: set[Future[list[_Result]]] = set()
        for batch in pending:
            in_flight.add(pool.submit(_process_batch, batch, settings))
            if len(in_flight) >= max_in_flight:
                break
        while not ready.done() and (batch := next(pending, None)) is not None:
            results: list[_Result] = []
            for i, task in enumerate(batch):
                if ready.done():
                    in_flight.add(pool.submit(_process_batch, batch[i:], settings))
                    break
                results.append(_process_file(task, settings))
            if results:
                yield results
        while in_flight:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                next_batch = next(pending, None)
                if next_batch is not None:
                    in_flight.add(pool.submit(_process_batch, next_batch, settings))
                yield future.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=False)


def configure_worker_process() -> None:
    """Pool initializer of the ingest's worker processes (public so benchmarks can profile under the same
    conditions): make glibc keep freed memory for reuse (a no-op with other C libraries).

    Every file allocates and frees a dozen MB-sized numpy temporaries (parser indices, float64 signals, FFT
    buffers). By default glibc maps such blocks afresh or trims them off the heap after each free, so every
    file page-faults ~15 MB of zeroed memory again: ~2 ms of CPU per file, as much as the features themselves.
    With a fixed 16 MB mmap threshold and a 256 MB trim threshold they stay in the heap and are reused; a
    worker's RSS stays at its working set (tens of MB). Only done in the pool's own processes, never in a
    caller's process.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    mallopt(_M_MMAP_THRESHOLD, 16 << 20)


def _process_batch(tasks: Iterable[_Task], settings: _WorkerSettings) -> list[_Result]:
    """Worker entry point (module-level, so it pickles under spawn): one result per file, in order."""
    return [_process_file(task, settings) for task in tasks]


def _opened_file_check(task: _Task, settings: _WorkerSettings) -> tuple[str, Callable[[str], str | None], list[str]]:
    """What to open for ``task``, the check of the file actually opened (see
    :func:`bearing_core.ims_reader.read_raw_bytes`) and a list receiving that file's real path.

    With ``follow_symlinks`` a link resolved at scan time is read through its recorded target, which the open file
    must still be (a link swapped since is not followed to its new target). Otherwise the path is opened and the
    open file must lie inside RAW_DIR, whatever the path resolved to at scan time.
    """
    seen: list[str] = []
    if settings.follow_symlinks and task.target is not None:
        target = task.target

        def check(real: str) -> str | None:
            seen.append(real)
            return None if real == target else f"symlink target changed during the ingest (now {real}): not read"

        return target, check, seen

    root = settings.raw_root

    def check(real: str) -> str | None:
        seen.append(real)
        return None if _is_inside(real, root) else _OUTSIDE_REASON

    return task.abs_path, check, seen


def _read_target(task: _Task, settings: _WorkerSettings, opened: list[str]) -> str | None:
    """The manifest's ``target``: the real path of the file opened when it is not ``RAW_DIR/<rel>`` itself (else
    None); the scan's resolution when nothing could be opened."""
    if not opened:
        return task.target
    return opened[0] if opened[0] != f"{settings.raw_root.rstrip('/')}/{task.rel}" else None


def _process_file(task: _Task, settings: _WorkerSettings) -> _Result:
    """Read, hash, parse, featurise one file and write its samples; bad files become a quarantine result."""
    source, check_opened, opened = _opened_file_check(task, settings)
    try:
        st = os.stat(source)  # before reading: if the file changes meanwhile, the next run sees a new mtime
        size, mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime_ns = -1, -1
    try:
        raw = read_raw_bytes(source, settings.max_bytes, check_opened=check_opened)
    except IMSFormatError as exc:  # unreadable, too large, or refused: not parsed
        target = _read_target(task, settings, opened)
        return _Result(task.rel, task.site, size, mtime_ns, None, "quarantined", parsed=False, reason=exc.reason,
                       target=target)  # fmt: skip
    target = _read_target(task, settings, opened)
    sha256 = hashlib.sha256(raw).hexdigest()
    if task.prev_sha256 is not None and sha256 == task.prev_sha256:
        return _Result(task.rel, task.site, size, mtime_ns, sha256, "unchanged", parsed=False, target=target)
    try:
        timestamp = parse_snapshot_time(Path(task.rel).name)
        data = parse_ims_bytes(raw, settings.expected_samples, settings.channels, use_threads=settings.use_threads)
    except IMSFormatError as exc:
        return _Result(task.rel, task.site, size, mtime_ns, sha256, "quarantined", parsed=True, reason=exc.reason,
                       target=target)  # fmt: skip
    features = compute_features(data, settings.rig).ravel()
    write_samples(samples_path(Path(settings.out_dir), task.rel), data, timestamp, task.rel, task.site, fsync=False)
    return _Result(
        task.rel,
        task.site,
        size,
        mtime_ns,
        sha256,
        "ok",
        parsed=True,
        timestamp=timestamp,
        n_channels=data.shape[1],
        features=features,
        target=target,
    )


def write_samples(
    target: Path, data: np.ndarray, timestamp: datetime, rel: str, site: str, *, fsync: bool = True
) -> Path:
    """One snapshot's samples as Parquet: ``timestamp`` (same on every row) + one float32 column per channel.

    Key-value metadata ``file``, ``site``, ``path``, ``timestamp`` (ISO) make the file self-describing.
    ``fsync=False`` leaves durability to the caller (the ingest syncs once for all files, module docstring).
    """
    n_samples = data.shape[0]
    micros = np.full(n_samples, np.datetime64(timestamp, "us").astype(np.int64))
    columns = np.ascontiguousarray(data.T, dtype=np.float32)  # a view for the reader's channel-major samples
    arrays = [_arrow_view(micros, pa.timestamp("us"))]
    arrays += [_arrow_view(columns[j], pa.float32()) for j in range(columns.shape[0])]
    schema = pa.schema(
        [("timestamp", pa.timestamp("us"))] + [(name, pa.float32()) for name in channel_names(data.shape[1])],
        metadata={"file": Path(rel).name, "site": site, "path": rel, "timestamp": timestamp.isoformat()},
    )
    table = pa.Table.from_arrays(arrays, schema=schema)
    return write_parquet_atomic(target, table, fsync=fsync, **_SAMPLES_PARQUET_OPTIONS)


def _arrow_view(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """Zero-copy Arrow array over a contiguous 1-D numpy array of the matching fixed-width type.

    ``pa.array`` would copy, and its first call imports pandas (~0.3 s of CPU in every worker process).
    """
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def _arrow_strings(values: Sequence[str | None]) -> pa.Array:
    """Arrow string array (``None`` -> null) built from its buffers, without ``pa.array``.

    The ingest's own tables (features, quarantine, manifest) are built this way, so the ingesting process never
    imports pandas (``pa.array`` does on its first call: ~0.4 s on the critical path, after the last file).
    """
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )


def _arrow_int64(values: Sequence[int]) -> pa.Array:
    return _arrow_view(np.fromiter(values, dtype=np.int64, count=len(values)), pa.int64())


def read_samples(path: str | os.PathLike[str]) -> tuple[np.ndarray, datetime, dict[str, str]]:
    """Read back one samples file -> (``(n_samples, n_channels)`` float32, timestamp, key-value metadata)."""
    table = pq.read_table(path)
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if not k.startswith(b"ARROW")}
    data = np.column_stack([table.column(i).to_numpy() for i in range(1, table.num_columns)])
    return data.astype(np.float32, copy=False), datetime.fromisoformat(metadata["timestamp"]), metadata


class _PreviousRun:
    """What the last completed (or partially completed) run left: manifest, features rows, dataset.json."""

    def __init__(
        self,
        out_dir: Path,
        manifest: dict[str, dict],
        features: pa.Table | None,
        dataset: dict | None,
        quarantine: pa.Table | None,
    ) -> None:
        self.out_dir = out_dir
        self.manifest = manifest
        self.features = features
        self.dataset = dataset
        self.quarantine = quarantine
        self.feature_paths: set[str] = set(features.column("path").to_pylist()) if features is not None else set()

    @classmethod
    def empty(cls, out_dir: Path) -> _PreviousRun:
        return cls(out_dir, {}, None, None, _read_parquet_or_none(out_dir / QUARANTINE_FILE))

    @classmethod
    def load(cls, out_dir: Path) -> _PreviousRun:
        manifest_table = _read_parquet_or_none(out_dir / MANIFEST_FILE)
        manifest = {row["path"]: row for row in manifest_table.to_pylist()} if manifest_table is not None else {}
        dataset = None
        with contextlib.suppress(OSError, ValueError):
            dataset = json.loads((out_dir / DATASET_FILE).read_text())
        return cls(
            out_dir,
            manifest,
            _read_parquet_or_none(out_dir / FEATURES_FILE),
            dataset,
            _read_parquet_or_none(out_dir / QUARANTINE_FILE),
        )

    @property
    def n_channels(self) -> int | None:
        channels = (self.dataset or {}).get("channels") or []
        return len(channels) or None

    def settings_mismatch(self, cfg: IngestConfig) -> str | None:
        """Why previous outputs cannot be reused with ``cfg`` (then everything is re-ingested), or None."""
        if self.dataset is None:
            return None
        checks = {
            "expected_samples": (self.dataset.get("expected_samples"), cfg.expected_samples),
            "rig": (self.dataset.get("rig"), json.loads(cfg.rig.model_dump_json())),
            "features": (self.dataset.get("features"), list(FEATURES)),
        }
        if cfg.channels is not None and self.n_channels is not None:
            checks["channels"] = (self.n_channels, cfg.channels)
        for name, (before, now) in checks.items():
            if before != now:
                return f"{name} changed since the previous run ({before!r} -> {now!r})"
        return None

    def _row_available(self, rel: str, status: str | None) -> bool:
        """A manifest entry is reusable only if its outputs exist (a killed run may have lost them)."""
        if status == "ok":
            return rel in self.feature_paths and samples_path(self.out_dir, rel).is_file()
        return status == "quarantined"

    def reuse(self, f: RawFile) -> _Result | None:
        """The unchanged result for ``f`` when its stat matches the manifest, else None (it must be read)."""
        row = self.manifest.get(f.rel)
        if row is None or row["sha256"] is None or f.size < 0 or row.get("target") != f.target:
            return None  # a link pointing elsewhere since is read again, even if the stat matches
        if (row["size"], row["mtime_ns"]) != (f.size, f.mtime_ns) or not self._row_available(f.rel, row["status"]):
            return None
        return _Result(
            f.rel,
            f.site,
            f.size,
            f.mtime_ns,
            row["sha256"],
            row["status"],
            parsed=False,
            reason=row["reason"],
            target=f.target,
        )

    def reusable_sha256(self, rel: str) -> str | None:
        """The manifest sha256 a worker may compare against to skip parsing a touched-but-identical file."""
        row = self.manifest.get(rel)
        if row is None or not self._row_available(rel, row["status"]):
            return None
        return row["sha256"]

    def resolve_unchanged(self, result: _Result) -> _Result:
        """Turn a worker's "unchanged" (same sha256, new stat) into the previous status and reason."""
        if result.status != "unchanged":
            return result
        row = self.manifest[result.rel]
        return _Result(
            result.rel,
            result.site,
            result.size,
            result.mtime_ns,
            result.sha256,
            row["status"],
            parsed=False,
            reason=row["reason"],
            target=result.target,
        )


def _read_parquet_or_none(path: Path) -> pa.Table | None:
    """A previous output, or None if absent/unreadable (then the affected files are simply re-ingested)."""
    if not path.is_file():
        return None
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid):
        return None


def _features_table(ok: Sequence[_Result], previous: _PreviousRun, channels: Sequence[str]) -> pa.Table:
    """features.parquet: new rows from this run's parses + previous rows of unchanged files, sorted."""
    columns = feature_columns(channels)
    schema = pa.schema(
        [("timestamp", pa.timestamp("us")), ("file", pa.string()), ("site", pa.string()), ("path", pa.string())]
        + [(c, pa.float64()) for c in columns]
    )
    new = [r for r in ok if r.parsed]
    matrix = np.vstack([r.features for r in new]) if new else np.empty((0, len(columns)))
    new_table = pa.Table.from_arrays(
        [
            _arrow_view(
                np.array([r.timestamp for r in new], dtype="datetime64[us]").view(np.int64), pa.timestamp("us")
            ),
            _arrow_strings([Path(r.rel).name for r in new]),
            _arrow_strings([r.site for r in new]),
            _arrow_strings([r.rel for r in new]),
        ]
        + [
            _arrow_view(np.ascontiguousarray(matrix[:, j], dtype=np.float64), pa.float64()) for j in range(len(columns))
        ],
        schema=schema,
    )
    reused = [r.rel for r in ok if not r.parsed]
    parts = [new_table]
    if reused and previous.features is not None:
        kept = previous.features.filter(pc.is_in(previous.features.column("path"), _arrow_strings(reused)))
        parts.append(kept.select(schema.names).cast(schema))
    table = pa.concat_tables(parts)
    return table.sort_by([("timestamp", "ascending"), ("site", "ascending"), ("path", "ascending")])


def _quarantine_table(ingest_rows: dict[str, str], previous: _PreviousRun, present: set[str]) -> pa.Table:
    """quarantine.parquet: this stage's rows, plus other stages' rows for raw files that still exist."""
    files = list(ingest_rows)
    reasons = [ingest_rows[f] for f in files]
    stages = [INGEST_STAGE] * len(files)
    if previous.quarantine is not None:
        for row in previous.quarantine.to_pylist():
            if row.get("stage") != INGEST_STAGE and row.get("file") in present:
                files.append(row["file"])
                reasons.append(row["reason"])
                stages.append(row["stage"])
    table = pa.Table.from_arrays(
        [_arrow_strings(files), _arrow_strings(reasons), _arrow_strings(stages)],
        schema=QUARANTINE_SCHEMA,
    )
    return table.sort_by([("file", "ascending"), ("stage", "ascending")])


def _manifest_table(results: Sequence[_Result]) -> pa.Table:
    rows = sorted(results, key=lambda r: r.rel)
    return pa.Table.from_arrays(
        [
            _arrow_strings([r.rel for r in rows]),
            _arrow_int64([r.size for r in rows]),
            _arrow_int64([r.mtime_ns for r in rows]),
            _arrow_strings([r.sha256 for r in rows]),
            _arrow_strings([r.status for r in rows]),
            _arrow_strings([r.reason for r in rows]),
            _arrow_strings([r.target for r in rows]),
        ],
        schema=MANIFEST_SCHEMA,
    )


def _dataset_description(raw_dir: Path, cfg: IngestConfig, channels: Sequence[str], ok: Sequence[_Result]) -> dict:
    return {
        "name": raw_dir.resolve().name,
        "channels": list(channels),
        "expected_samples": cfg.expected_samples,
        "fs_hz": cfg.rig.fs_hz,
        "features": list(FEATURES),
        "sites": sorted({r.site for r in ok}),
        "rig": json.loads(cfg.rig.model_dump_json()),
    }


def _remove_obsolete_samples(out_dir: Path, valid: set[str]) -> None:
    """Delete samples files of raw files that are gone or now quarantined (and orphans of killed runs)."""
    root = out_dir / SAMPLES_DIR
    if not root.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix().removesuffix(".parquet")
            if rel not in valid:
                path.unlink(missing_ok=True)
        if Path(dirpath) != root and not os.listdir(dirpath):
            os.rmdir(dirpath)
