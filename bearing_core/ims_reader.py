"""Read one raw NASA IMS snapshot file: fast paths for good files, a precise path for bad ones.

Format (IMS bearing data set): one file = one snapshot, named after its acquisition time
``YYYY.MM.DD.hh.mm.ss``; ASCII, ``expected_samples`` lines (20,480), no header, 4 or 8 tab-separated decimal
values per line (accelerations in g). Accepted variations: ``\\n`` or ``\\r\\n`` line endings (a lone ``\\r``
too, as pyarrow does), spaces/tabs at the end of a line, a final newline or not, blank lines after the last sample.

Reading strategy (each path only accepts files the precise path also accepts, with the same values):

* **Archive layout** - the layout the IMS archive is written in (every value ``[-]D[.DDD]``: one integer
  digit, at most three decimals; one tab between values; ``\\n`` or ``\\r\\n`` line ends) is parsed by a
  vectorised numpy pass over the bytes: separators are located once, the digits gathered by position and
  combined into exact integers (value x 1000). ~2 ms for a 1.1 MB file, less than half of pyarrow's CSV
  parser, which handles the general grammar. Any deviation (another layout, a bad value) returns None.
* **pyarrow** - ``pyarrow.csv`` parses any other well-formed file straight into float64 columns (one C++
  pass), copied into float32.
* **Normalised retry** - if pyarrow refuses the file (e.g. tabs at line ends), whitespace at line ends and
  blank lines at the end are removed and pyarrow tries again.
* **Precise path** - only when all of these fail, or the values contain nulls/non-finite numbers, the file is
  re-read line by line in Python to produce an exact reason such as ``line 17: 7 columns, expected 8``.
  It defines the accepted grammar.

Values are stored as float32: IMS values have 3 decimals and magnitudes far below 1,000 g, so rounding a
stored value to 3 decimals gives back the text exactly (float64 -> float32 cannot double-round a decimal
with few digits, and ``float32(k) / 1000`` is the same correctly rounded float32 as parsing ``k / 1000``).
Samples come back channel-major: ``data`` has shape ``(n_samples, n_channels)`` but is the transpose of a
C-contiguous ``(n_channels, n_samples)`` array, so each channel is contiguous for the features and the
samples writer.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from bearing_core.config import IMS_SAMPLES_PER_SNAPSHOT, channel_names

MAX_FILE_BYTES = 64 * 1024 * 1024
"""Files larger than this are refused before reading (a real IMS file is ~1.1 MB for 8 channels)."""

SNAPSHOT_NAME_PATTERN = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})\.(\d{2})", re.ASCII)
VALID_CHANNEL_COUNTS = (4, 8)
_FLOAT32_MAX = float(np.finfo(np.float32).max)

# The precise path's grammar of one value (after stripping surrounding spaces).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Bytes that cannot appear in an IMS text file: control characters other than \t \n \r, and non-ASCII.
_BINARY_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]")

# The archive-layout parser's bytes, and each digit's offset from a value's first digit with the width the
# value needs for that digit to exist ("D" has only offset 0, "D.DDD" all four).
_TAB, _LF, _CR, _MINUS, _POINT, _ZERO = (ord(c) for c in "\t\n\r-.0")
_DIGIT_OFFSETS = (0, 2, 3, 4)
_DIGIT_MIN_WIDTH = np.array([1, 3, 4, 5])[:, np.newaxis]


class IMSFormatError(ValueError):
    """A file is not a valid IMS snapshot. ``reason`` is precise and short, e.g. ``line 17: 7 columns, expected 8``."""

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        self.reason = reason
        self.path = Path(path) if path is not None else None
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


@dataclass(frozen=True)
class IMSSnapshot:
    """One parsed snapshot: its acquisition time and the samples, ``data[sample, channel]`` in g (float32)."""

    path: Path
    timestamp: datetime
    data: np.ndarray

    @property
    def channels(self) -> tuple[str, ...]:
        """Channel names, from the column count (8 -> B1_a..B4_b, 4 -> B1..B4)."""
        return channel_names(self.data.shape[1])


def parse_snapshot_time(name: str) -> datetime:
    """Acquisition time encoded in an IMS file name ``YYYY.MM.DD.hh.mm.ss`` (naive, as recorded).

    Raises :class:`IMSFormatError` for names that do not have that shape or are not a real date/time.
    """
    match = SNAPSHOT_NAME_PATTERN.fullmatch(name)
    if match is None:
        raise IMSFormatError("name is not a timestamp YYYY.MM.DD.hh.mm.ss")
    try:
        return datetime(*(int(part) for part in match.groups()))
    except ValueError as exc:
        raise IMSFormatError(f"name is not a valid timestamp YYYY.MM.DD.hh.mm.ss: {exc}") from None


def read_raw_bytes(
    path: str | os.PathLike[str],
    max_bytes: int = MAX_FILE_BYTES,
    *,
    check_opened: Callable[[str], str | None] | None = None,
) -> bytes:
    """The bytes of ``path``, refusing directories, non-regular files, unreadable files and files over ``max_bytes``.

    The size is checked before reading (and the read is capped), so a stray huge file cannot exhaust memory.
    ``check_opened``, when given, receives the real path of the file actually opened (:func:`opened_path`, taken
    from the open descriptor, not from ``path``) and returns a reason to refuse it, or None: a symlink swapped
    between a caller's check and this open cannot redirect the read. The open never blocks (``O_NONBLOCK``: a
    FIFO planted in place of a file is refused, not waited on).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except PermissionError:
        raise IMSFormatError("unreadable: permission denied") from None
    except OSError as exc:
        raise IMSFormatError(f"unreadable: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IMSFormatError("is a directory, expected a snapshot file")
        if not stat.S_ISREG(st.st_mode):
            raise IMSFormatError("not a regular file")
        if check_opened is not None:
            refused = check_opened(opened_path(fd, path, st))
            if refused:
                raise IMSFormatError(refused)
        size = st.st_size
        if size > max_bytes:
            raise IMSFormatError(f"file too large: {size} bytes, limit {max_bytes}")
        # size + 1, not max_bytes + 1: read(n) first allocates n bytes (~0.5 ms per file for 64 MB).
        # The extra byte reveals a file that grew since fstat; its remainder is then read up to the cap.
        data = os.read(fd, size + 1)
        if len(data) > size:
            data += os.read(fd, max_bytes + 1 - len(data))
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise IMSFormatError("is a directory, expected a snapshot file") from None
        raise IMSFormatError(f"unreadable: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise IMSFormatError(f"file too large: more than {max_bytes} bytes")
    return data


_DELETED_SUFFIX = " (deleted)"


def opened_path(fd: int, path: str | os.PathLike[str], st: os.stat_result) -> str:
    """The real path of the file open on ``fd`` (opened from ``path``, ``st`` = its ``fstat``).

    On Linux one ``readlink`` of ``/proc/self/fd/<fd>``: the kernel's path of the open file, every symlink already
    resolved, whatever happened to ``path`` since. Elsewhere (no ``/proc``): ``os.path.realpath(path)``, accepted
    only while it still names the open file (same device and inode), else :class:`IMSFormatError`.
    """
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = os.path.realpath(path)
        try:
            now = os.stat(real)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise IMSFormatError("file was replaced while being opened: not read") from None
        return real
    if st.st_nlink == 0 and real.endswith(_DELETED_SUFFIX):  # unlinked since the open: the kernel marks the name
        real = real[: -len(_DELETED_SUFFIX)]
    return real


def parse_ims_bytes(
    raw: bytes,
    expected_samples: int = IMS_SAMPLES_PER_SNAPSHOT,
    expected_channels: int | None = None,
    *,
    use_threads: bool = False,
) -> np.ndarray:
    """Parse the content of an IMS file -> ``(expected_samples, n_channels)`` float32.

    ``expected_channels`` (4 or 8) is the dataset's channel count; ``None`` accepts either, consistently.
    ``use_threads`` lets pyarrow use its thread pool (leave it off inside worker processes).
    Raises :class:`IMSFormatError` with a precise reason.
    """
    if expected_channels is not None and expected_channels not in VALID_CHANNEL_COUNTS:
        raise ValueError(f"expected_channels must be 4 or 8, not {expected_channels}")
    data = _parse_archive_layout(raw, expected_samples, expected_channels)
    if data is None:
        data = _parse_arrow(raw, expected_samples, expected_channels, use_threads)
    if data is None:
        stripped = _strip_line_ends(raw)
        if stripped != raw:
            data = _parse_arrow(stripped, expected_samples, expected_channels, use_threads)
    if data is None:
        data = _parse_precise(raw, expected_samples, expected_channels)
    return data


def read_ims_file(
    path: str | os.PathLike[str],
    expected_samples: int = IMS_SAMPLES_PER_SNAPSHOT,
    expected_channels: int | None = None,
    *,
    max_bytes: int = MAX_FILE_BYTES,
    use_threads: bool = False,
) -> IMSSnapshot:
    """Read and validate one IMS snapshot file (name, size, content).

    Raises :class:`IMSFormatError` (with ``path`` set) for any invalid file.
    """
    path = Path(path)
    try:
        timestamp = parse_snapshot_time(path.name)
        raw = read_raw_bytes(path, max_bytes)
        data = parse_ims_bytes(raw, expected_samples, expected_channels, use_threads=use_threads)
    except IMSFormatError as exc:
        raise IMSFormatError(exc.reason, path) from None
    return IMSSnapshot(path=path, timestamp=timestamp, data=data)


def _strip_line_ends(raw: bytes) -> bytes:
    """``raw`` without spaces/tabs at line ends and blank lines at the end, ``\\n``-terminated (~7 ms per file).

    Only runs on the retry path. Per-line ``rstrip`` (C) is 4x faster here than one regex over the file, which
    would try a match at every tab.
    """
    lines = [line.rstrip(b" \t") for line in raw.splitlines()]  # bytes.splitlines: \n, \r\n, \r only
    while lines and not lines[-1]:
        lines.pop()
    return b"\n".join(lines) + b"\n"


def _first_line_columns(raw: bytes) -> int:
    """Column count of the first line (trailing whitespace ignored)."""
    end = len(raw)
    for line_break in (b"\n", b"\r"):
        position = raw.find(line_break, 0, end)
        if position >= 0:
            end = position
    return raw[:end].rstrip(b" \t").count(b"\t") + 1


def _parse_archive_layout(raw: bytes, expected_samples: int, expected_channels: int | None) -> np.ndarray | None:
    """Vectorised parse of a file in the archive's own layout, or ``None`` if it deviates anywhere.

    Layout: ``expected_samples`` lines of ``n_channels`` values ``[-]D``, ``[-]D.``, ``[-]D.D`` .. ``[-]D.DDD``
    separated by single tabs, each line ended by ``\\n`` (or each by ``\\r\\n``), the last one optionally
    missing. Every byte of the file is checked: separators by kind and position per line, then each value's sign,
    width and digits; a file that passes holds exactly these values, so no other path is needed.
    """
    n_channels = expected_channels or _first_line_columns(raw)
    if n_channels not in VALID_CHANNEL_COUNTS:
        return None
    # A value takes 2 ("D\t") to 8 ("-D.DDD\r\n") bytes: anything else is refused before any allocation (the
    # separator index below costs 8 bytes per control character, 512 MB for a 64 MB file of line breaks).
    n_values = expected_samples * n_channels
    if not 2 * n_values - 1 <= len(raw) <= 8 * n_values:
        return None
    crlf = b"\r" in raw
    if not raw.endswith(b"\n"):
        raw += b"\r\n" if crlf else b"\n"
    per_line = n_channels + crlf  # separators per line: tabs, then \n or \r\n
    buffer = np.frombuffer(raw, dtype=np.uint8)
    separators = np.flatnonzero(buffer < 0x20)  # every control character, so stray ones fail the layout check
    if separators.size != expected_samples * per_line:
        return None
    layout = np.full(per_line, _TAB, dtype=np.uint8)
    layout[-1] = _LF
    if crlf:
        layout[-2] = _CR
    if not (buffer[separators].reshape(expected_samples, per_line) == layout).all():
        return None
    # Value i spans [first[i], ends[i]): it starts after the previous separator (a sign, if any, skipped below).
    first = np.empty_like(separators)
    first[0] = 0
    np.add(separators[:-1], 1, out=first[1:])
    ends = separators
    if crlf:  # drop the empty "value" between \r and \n
        ends = separators.reshape(expected_samples, per_line)[:, :n_channels].ravel()
        first = first.reshape(expected_samples, per_line)[:, :n_channels].ravel()
    negative = buffer[first] == _MINUS
    first += negative
    width = ends - first  # characters after the sign: 1 "D", 2 "D.", 3..5 "D.D" .. "D.DDD"
    if width.min() < 1 or width.max() > 5:
        return None
    # Digits at offsets 0 (integer) and 2, 3, 4 (decimals) of each value; offset 1 is the point.
    digits = np.empty((len(_DIGIT_OFFSETS), ends.size), dtype=np.uint8)
    for row, offset in enumerate(_DIGIT_OFFSETS):
        np.take(buffer, first + offset, out=digits[row], mode="clip")  # clip: offsets past the file's end
    digits -= _ZERO  # wraps around for non-digits: anything >= 10 is not a digit
    present = width >= _DIGIT_MIN_WIDTH
    if ((digits >= 10) & present).any():
        return None
    # Every other byte is now known to be a separator, a sign or a digit, so the file's points must be exactly
    # the one expected at offset 1 of every value wider than one character.
    if np.count_nonzero(buffer == _POINT) != np.count_nonzero(width >= 2):
        return None
    digits *= present
    thousandths = digits[0] * np.float32(1000.0)  # exact integers in float32 (< 10,000)
    for row, place in ((1, 100.0), (2, 10.0), (3, 1.0)):
        thousandths += digits[row] * np.float32(place)
    thousandths *= 1 - 2 * negative.view(np.int8)
    data = np.empty((n_channels, expected_samples), dtype=np.float32)
    np.divide(thousandths.reshape(expected_samples, n_channels).T, np.float32(1000.0), out=data)
    return data.T


def _parse_arrow(
    raw: bytes, expected_samples: int, expected_channels: int | None, use_threads: bool
) -> np.ndarray | None:
    """pyarrow parse of a well-formed file, or ``None`` when anything is off (the precise path then decides)."""
    n_channels = expected_channels or _first_line_columns(raw)
    if n_channels not in VALID_CHANNEL_COUNTS:
        return None
    names = [f"c{i}" for i in range(n_channels)]
    try:
        table = pa_csv.read_csv(
            pa.py_buffer(raw),
            read_options=pa_csv.ReadOptions(column_names=names, use_threads=use_threads, block_size=1 << 24),
            parse_options=_PARSE_OPTIONS,
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.float64() for name in names},
                null_values=[""],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if table.num_rows != expected_samples or any(col.null_count for col in table.columns):
        return None
    data = np.empty((n_channels, table.num_rows), dtype=np.float32)
    with np.errstate(over="ignore"):  # |value| > float32 max becomes inf, rejected just below
        for j, column in enumerate(table.columns):
            data[j] = column.to_numpy()
    if not np.isfinite(data).all():
        return None
    return data.T


_PARSE_OPTIONS = pa_csv.ParseOptions(
    delimiter="\t",
    quote_char=False,
    double_quote=False,
    escape_char=False,
    newlines_in_values=False,
    ignore_empty_lines=False,
)


def _parse_precise(raw: bytes, expected_samples: int, expected_channels: int | None) -> np.ndarray:
    """Line-by-line parse that either returns the samples or raises the exact reason (first problem wins).

    Memory stays proportional to the file: lines are split into tokens one at a time, and a file with far more
    lines than samples is refused from a line count before being split at all.
    """
    if not raw.strip():
        raise IMSFormatError("empty file")
    binary = _BINARY_BYTE.search(raw)
    if binary is not None:
        line_no = len(_LINE_BREAK.findall(raw[: binary.start()].decode("ascii"))) + 1
        raise IMSFormatError(f"line {line_no}: binary data (byte 0x{raw[binary.start()]:02x}), not IMS text")
    text = raw.decode("ascii").rstrip(" \t\r\n")  # final newline and trailing blank lines
    n_lines = text.count("\n") + text.count("\r") - text.count("\r\n") + 1
    if n_lines > 2 * expected_samples:
        raise IMSFormatError(f"{n_lines} lines, expected {expected_samples} samples")
    lines = [line.rstrip(" \t") for line in _LINE_BREAK.split(text)]
    counts = np.fromiter((line.count("\t") + 1 if line else 0 for line in lines), dtype=np.int64, count=len(lines))
    reference = _reference_column_count(counts, expected_channels)
    values = np.empty((len(lines), reference), dtype=np.float64)
    for i, line in enumerate(lines):
        line_no = i + 1
        if counts[i] == 0:
            raise IMSFormatError(f"line {line_no}: empty line")
        if counts[i] != reference:
            raise IMSFormatError(f"line {line_no}: {_columns(counts[i])}, expected {reference}")
        for j, token in enumerate(line.split("\t")):
            values[i, j] = _parse_value(token, line_no, j + 1)
    if len(lines) != expected_samples:
        raise IMSFormatError(f"{len(lines)} samples, expected {expected_samples}")
    return np.asfortranarray(values, dtype=np.float32)


def _reference_column_count(counts: np.ndarray, expected_channels: int | None) -> int:
    """The column count every line must have; raises when the whole file has a wrong (uniform) count."""
    non_empty = counts[counts > 0]
    uniform = non_empty.size > 0 and bool((non_empty == non_empty[0]).all())
    if uniform and expected_channels is not None and non_empty[0] != expected_channels:
        raise IMSFormatError(f"{_columns(non_empty[0])}, expected {expected_channels}")
    if expected_channels is not None:
        return expected_channels
    values, frequency = np.unique(non_empty, return_counts=True)
    most_common = int(values[np.argmax(frequency)])
    if most_common not in VALID_CHANNEL_COUNTS:
        if uniform:
            raise IMSFormatError(f"{_columns(most_common)}, expected 4 or 8")
        first_bad = int(np.flatnonzero(~np.isin(counts, VALID_CHANNEL_COUNTS) & (counts > 0))[0])
        raise IMSFormatError(f"line {first_bad + 1}: {_columns(counts[first_bad])}, expected 4 or 8")
    return most_common


def _columns(n: int | np.integer) -> str:
    return f"{int(n)} column" if n == 1 else f"{int(n)} columns"


def _parse_value(token: str, line_no: int, column_no: int) -> float:
    """One value of the precise path, with the exact reason when it is not a finite float32 number."""
    text = token.strip(" ")
    where = f"line {line_no} column {column_no}"
    if not text:
        raise IMSFormatError(f"{where}: empty value")
    if _NON_FINITE.fullmatch(text):
        raise IMSFormatError(f"{where}: non-finite value {text!r}")
    if not _NUMBER.fullmatch(text):
        raise IMSFormatError(f"{where}: not a number: {text!r}")
    value = float(text)
    if not np.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise IMSFormatError(f"{where}: value out of float32 range {text!r}")
    return value
