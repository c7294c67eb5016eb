"""Fuzzing the IMS reader: whatever the bytes, it returns a valid snapshot or raises IMSFormatError with a reason.

Property-based (hypothesis): arbitrary bytes, truncations and single-token corruptions of valid files, huge lines
and wrong sizes. Every call runs under a wall-clock alarm, so a hang fails the test instead of stalling the suite
(hypothesis' ``deadline`` only judges calls that return). Valid files must round-trip exactly, through whichever
of the reader's paths (archive layout, pyarrow, precise) accepts them.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bearing_core.ims_reader import IMSFormatError, parse_ims_bytes, read_ims_file

N = 64  # samples per fuzzed file: small keeps ~200 examples fast; the parsing logic does not depend on it
CALL_LIMIT_S = 20  # far above any honest parse of these inputs (ms), so only a real hang trips it
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
SNAPSHOT_NAME = "2004.02.12.10.32.39"


class ReaderHang(Exception):
    """A reader call did not return within CALL_LIMIT_S."""


@contextlib.contextmanager
def time_limit(seconds: float = CALL_LIMIT_S) -> Iterator[None]:
    """Raise :class:`ReaderHang` in this (main) thread if the block runs longer than ``seconds``."""

    def _expired(signum: int, frame: object) -> None:
        raise ReaderHang(f"reader call still running after {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def parse_or_reason(raw: bytes, expected_samples: int = N, channels: int | None = None) -> np.ndarray | str:
    """The parsed samples, or the IMSFormatError reason; any other exception (or a hang) fails the test."""
    with time_limit():
        try:
            data = parse_ims_bytes(raw, expected_samples, channels)
        except IMSFormatError as exc:
            assert isinstance(exc.reason, str) and exc.reason.strip(), f"empty reason for {raw[:80]!r}"
            assert "\n" not in exc.reason
            return exc.reason
    assert data.dtype == np.float32 and data.shape[0] == expected_samples and data.shape[1] in (4, 8)
    assert np.isfinite(data).all()
    return data


def render(values: np.ndarray, newline: str = "\n", final_newline: bool = True, fmt: str = "{:.3f}") -> bytes:
    """IMS text of ``values``: tab-separated, one line per sample."""
    text = newline.join("\t".join(fmt.format(v) for v in row) for row in values)
    return (text + (newline if final_newline else "")).encode("ascii")


@st.composite
def valid_values(draw: st.DrawFn, max_abs: float = 9.999) -> np.ndarray:
    """``(N, 4|8)`` values with 3 decimals, as the archive records them."""
    channels = draw(st.sampled_from([4, 8]))
    seed = draw(st.integers(0, 2**32 - 1))
    thousandths = np.random.default_rng(seed).integers(-int(max_abs * 1000), int(max_abs * 1000) + 1, (N, channels))
    return thousandths / 1000.0


def assert_same_values(data: np.ndarray, values: np.ndarray) -> None:
    np.testing.assert_array_equal(np.round(data.astype(np.float64), 3), values)


# ------------------------------------------------------------------------------------------------ properties


@FUZZ
@given(raw=st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_with_a_reason(raw: bytes) -> None:
    assert isinstance(parse_or_reason(raw), str)  # N lines of 4/8 numbers cannot come out of 4 KiB of noise


@pytest.mark.slow
@FUZZ
@given(
    raw=st.lists(
        st.lists(
            st.sampled_from(["0.125", "-1.5", "7", "", " ", "nan", "x", "1e3", "+.5"]), min_size=1, max_size=9
        ).map("\t".join),
        min_size=N - 2,
        max_size=N + 2,
    ).map(lambda lines: ("\n".join(lines) + "\n").encode())
)
def test_near_valid_token_soup_never_crashes(raw: bytes) -> None:
    """Files made of plausible tokens in plausible shapes: accepted (then consistent) or refused with a reason."""
    result = parse_or_reason(raw)
    if not isinstance(result, str):  # the documented grammar: trailing whitespace and blank lines at the end are ok
        lines = raw.decode().rstrip(" \t\r\n").split("\n")
        reference = np.array([[float(t) for t in line.rstrip(" \t").split("\t")] for line in lines])
        np.testing.assert_array_equal(result, reference.astype(np.float32))


@FUZZ
@given(
    values=valid_values(max_abs=99.999),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    final_newline=st.booleans(),
    fmt=st.sampled_from(["{:.3f}", "{:.3f} ", "{:g}", " {:.3f}"]),
    trailing_blank_lines=st.integers(0, 3),
)
def test_valid_files_round_trip(
    values: np.ndarray, newline: str, final_newline: bool, fmt: str, trailing_blank_lines: int
) -> None:
    raw = render(values, newline, final_newline, fmt) + (newline * trailing_blank_lines).encode()
    result = parse_or_reason(raw, channels=values.shape[1])
    assert not isinstance(result, str), f"valid file refused: {result}"
    assert_same_values(result, values)


@FUZZ
@given(values=valid_values(), data=st.data())
def test_truncated_files_are_refused(values: np.ndarray, data: st.DataObject) -> None:
    raw = render(values)
    last_line_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    cut = data.draw(st.integers(0, last_line_start - 1), label="cut")  # at least the last sample is lost
    reason = parse_or_reason(raw[:cut])
    assert isinstance(reason, str)


@FUZZ
@given(
    values=valid_values(),
    line=st.integers(1, N),
    column=st.integers(1, 4),
    token=st.text(st.characters(blacklist_characters="\t\n\r", max_codepoint=0x2FF), max_size=12),
)
def test_one_corrupted_token_is_refused_at_its_line_or_read_exactly(
    values: np.ndarray, line: int, column: int, token: str
) -> None:
    lines = render(values).decode().splitlines()
    cells = lines[line - 1].split("\t")
    cells[column - 1] = token
    lines[line - 1] = "\t".join(cells)
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    result = parse_or_reason(raw, channels=values.shape[1])
    if isinstance(result, str):
        assert result.startswith((f"line {line}:", f"line {line} column {column}:")), result
    else:  # the token was a number after all (e.g. "5", "+.5", "1e-3"): that one value changes, nothing else
        expected = values.astype(np.float32)
        expected[line - 1, column - 1] = np.float32(float(token.strip(" ")))
        np.testing.assert_array_equal(result, expected)


@FUZZ
@given(
    expected=st.integers(1, 2 * N),
    actual=st.integers(0, 3 * N),
    channels=st.sampled_from([4, 8]),
)
def test_files_of_the_wrong_length_name_the_sample_count(expected: int, actual: int, channels: int) -> None:
    raw = render(np.zeros((actual, channels)))
    result = parse_or_reason(raw, expected_samples=expected)
    if actual == expected:
        assert not isinstance(result, str) and result.shape == (expected, channels)
    else:
        assert isinstance(result, str)
        if actual > 0:
            assert str(actual) in result and str(expected) in result, result


# ------------------------------------------------------------------------------------- huge and odd inputs


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"1.000" * 2_000_000, id="10MB-one-line-no-separator"),
        pytest.param(b"\t".join([b"1.0"] * 1_000_000), id="1M-columns-one-line"),
        pytest.param(b"\n" * 5_000_000, id="5M-empty-lines"),
        pytest.param(b"0.001\t0.002\t0.003\t0.004\n" * 2_000_000, id="2M-lines-of-4"),
        pytest.param(b"\x00" * 8_000_000, id="8MB-zeros"),
        pytest.param(b"9" * 5_000_000 + b"\n", id="5M-digit-number"),
    ],
)
def test_huge_inputs_are_refused_quickly_with_a_reason(raw: bytes) -> None:
    assert isinstance(parse_or_reason(raw, expected_samples=20_480), str)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reader-fuzz")


@FUZZ
@given(raw=st.binary(max_size=2048), max_bytes=st.integers(1, 4096))
def test_read_ims_file_names_the_file_and_respects_max_bytes(scratch: Path, raw: bytes, max_bytes: int) -> None:
    path = scratch / SNAPSHOT_NAME
    path.write_bytes(raw)
    with time_limit(), pytest.raises(IMSFormatError) as excinfo:
        read_ims_file(path, expected_samples=N, max_bytes=max_bytes)
    assert excinfo.value.path == path and excinfo.value.reason.strip()
    assert str(path) in str(excinfo.value)
    if len(raw) > max_bytes:
        assert excinfo.value.reason.startswith("file too large") and str(max_bytes) in excinfo.value.reason


def test_full_size_valid_file_round_trips_and_its_truncations_are_refused(scratch: Path) -> None:
    values = np.round(np.random.default_rng(3).normal(0, 0.3, (20_480, 8)), 3)
    path = scratch / SNAPSHOT_NAME
    raw = render(values, "\r\n")
    path.write_bytes(raw)
    with time_limit():
        assert_same_values(read_ims_file(path).data, values)
    for cut in (len(raw) // 3, len(raw) - 7, len(raw) - 40):
        reason = parse_or_reason(raw[:cut], expected_samples=20_480)
        assert isinstance(reason, str) and ("samples, expected 20480" in reason or reason.startswith("line ")), reason
