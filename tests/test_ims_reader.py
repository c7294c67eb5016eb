"""The IMS reader: exact values on real files, accepted variants, and a precise reason for every kind of bad file.

The archive-layout fast path is checked against an independent ``float()`` parse on generated files, and files
just outside that layout must give the same values through the general parsers."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from helpers.ims_files import write_ims_file
from hypothesis import given, settings
from hypothesis import strategies as st

from bearing_core.ims_reader import (
    IMSFormatError,
    _parse_archive_layout,
    _parse_precise,
    parse_ims_bytes,
    parse_snapshot_time,
    read_ims_file,
    read_raw_bytes,
)

N = 32  # samples per synthetic file: small keeps the tests fast; the logic does not depend on it


def _values(n: int = N, channels: int = 8, seed: int = 0) -> np.ndarray:
    return np.round(np.random.default_rng(seed).normal(0.0, 0.2, (n, channels)), 3)


def _text(values: np.ndarray, newline: str = "\n") -> bytes:
    return newline.join("\t".join(f"{v:.3f}" for v in row) for row in values).encode() + newline.encode()


def _lines(values: np.ndarray) -> list[str]:
    return _text(values).decode().splitlines()


def _reason(raw: bytes, **kwargs: int) -> str:
    with pytest.raises(IMSFormatError) as exc_info:
        parse_ims_bytes(raw, expected_samples=kwargs.pop("expected_samples", N), **kwargs)
    return exc_info.value.reason


def _independent_parse(path: Path) -> np.ndarray:
    """The text's values by plain string splitting: the reference the reader must reproduce."""
    return np.array([line.split("\t") for line in path.read_text().splitlines()], dtype=np.float64)


def test_real_files_read_back_exactly(shared_ims: Path) -> None:
    files = sorted((shared_ims / "raw" / "1st_test").iterdir())
    assert len(files) == 4
    for path in files:
        snapshot = read_ims_file(path)
        expected = _independent_parse(path)
        assert snapshot.data.dtype == np.float32
        assert snapshot.data.shape == (20_480, 8)
        assert snapshot.channels == ("B1_a", "B1_b", "B2_a", "B2_b", "B3_a", "B3_b", "B4_a", "B4_b")
        np.testing.assert_array_equal(np.round(snapshot.data.astype(np.float64), 3), expected)
        assert snapshot.timestamp == datetime.strptime(path.name, "%Y.%m.%d.%H.%M.%S")
    first = read_ims_file(files[0])
    assert first.timestamp == datetime(2003, 10, 22, 12, 6, 24)
    assert round(float(np.abs(first.data[:, 0].astype(np.float64)).mean()), 6) == 0.104144


def test_real_file_with_crlf_and_trailing_whitespace_reads_the_same(shared_ims: Path) -> None:
    path = shared_ims / "raw" / "1st_test" / "2003.10.22.12.06.24"
    raw = path.read_bytes()
    reference = parse_ims_bytes(raw)
    for variant in (raw.replace(b"\n", b"\r\n"), raw.replace(b"\n", b" \t\n"), raw.rstrip(b"\n")):
        np.testing.assert_array_equal(parse_ims_bytes(variant), reference)


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda t: t, id="lf"),
        pytest.param(lambda t: t.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(lambda t: t.replace(b"\n", b"\r"), id="lone-cr"),
        pytest.param(lambda t: t.rstrip(b"\n"), id="no-final-newline"),
        pytest.param(lambda t: t.replace(b"\n", b"  \n"), id="trailing-spaces"),
        pytest.param(lambda t: t.replace(b"\n", b"\t\n"), id="trailing-tab"),
        pytest.param(lambda t: t.replace(b"\n", b" \t \r\n"), id="trailing-mixed-crlf"),
        pytest.param(lambda t: t + b"\n\n", id="blank-lines-at-end"),
    ],
)
def test_accepted_variants(transform) -> None:
    values = _values()
    data = parse_ims_bytes(transform(_text(values)), expected_samples=N)
    assert data.dtype == np.float32 and data.shape == (N, 8)
    np.testing.assert_array_equal(np.round(data.astype(np.float64), 3), values)


def test_four_channel_file_and_expected_channel_count() -> None:
    values = _values(channels=4)
    data = parse_ims_bytes(_text(values), expected_samples=N)
    assert data.shape == (N, 4)
    np.testing.assert_array_equal(np.round(data.astype(np.float64), 3), values)
    assert _reason(_text(values), expected_channels=8) == "4 columns, expected 8"
    assert _reason(_text(_values()), expected_channels=4) == "8 columns, expected 4"


def test_float32_storage_round_trips_three_decimals() -> None:
    grid = np.arange(-9999, 10000, dtype=np.float64) / 1000.0  # every 3-decimal value in (-10, 10)
    values = grid[: (grid.size // 8) * 8].reshape(-1, 8)
    data = parse_ims_bytes(_text(values), expected_samples=values.shape[0])
    np.testing.assert_array_equal(np.round(data.astype(np.float64), 3), values)


def _archive_token(negative: bool, thousandths: int, style: str) -> str:
    """A value as the IMS archive writes it: ``-0.105``, or with trailing zeros dropped (``-0.05``, ``1.``, ``1``)."""
    text = f"{'-' if negative else ''}{thousandths // 1000}.{thousandths % 1000:03d}"
    if style == "short":
        text = text.rstrip("0")
    elif style == "integer" and thousandths % 1000 == 0:
        text = text[:-4]
    return text


@st.composite
def archive_files(draw: st.DrawFn) -> tuple[bytes, list[list[str]]]:
    """An IMS file in the archive's layout (any value styles, LF or CRLF, final newline or not) and its tokens."""
    channels = draw(st.sampled_from([4, 8]))
    n_samples = draw(st.integers(min_value=1, max_value=6))
    token = st.builds(
        _archive_token,
        st.booleans(),
        st.integers(min_value=0, max_value=9999),
        st.sampled_from(["fixed", "short", "integer"]),
    )
    rows = draw(st.lists(st.lists(token, min_size=channels, max_size=channels), min_size=n_samples, max_size=n_samples))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join("\t".join(row) for row in rows) + (newline if draw(st.booleans()) else "")
    return text.encode(), rows


@settings(max_examples=150, deadline=None)
@given(archive_files())
def test_archive_layout_is_parsed_by_the_fast_path_bit_for_bit(file: tuple[bytes, list[list[str]]]) -> None:
    raw, rows = file
    expected = np.array([[float(token) for token in row] for row in rows]).astype(np.float32)
    assert _parse_archive_layout(raw, len(rows), None) is not None  # the vectorised path took it
    data = parse_ims_bytes(raw, expected_samples=len(rows))
    assert data.dtype == np.float32 and data.shape == expected.shape
    np.testing.assert_array_equal(data.view(np.uint32), expected.view(np.uint32))  # same bits, -0.0 included


@settings(max_examples=300, deadline=None)
@given(
    archive_files(),
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=1, exclude_max=True), st.sampled_from(list(b"0123456789.-+e \t\r\n\x00"))
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_fast_path_never_accepts_what_the_precise_path_reads_differently(
    file: tuple[bytes, list[list[str]]], edits: list[tuple[float, int]]
) -> None:
    raw, rows = file
    mutated = bytearray(raw)
    for where, byte in edits:
        mutated[int(where * len(mutated))] = byte
    data = _parse_archive_layout(bytes(mutated), len(rows), None)
    if data is not None:
        np.testing.assert_array_equal(data, _parse_precise(bytes(mutated), len(rows), None))


@pytest.mark.parametrize("token", ["12.345", "-12.5", "+0.5", "0.1234", ".5", "1e-3", " 0.5", "100"])
def test_values_outside_the_archive_layout_give_the_same_values_through_the_general_parsers(token: str) -> None:
    v = _values()
    raw = _replace_token(v, 5, 3, token)
    assert _parse_archive_layout(raw, N, None) is None
    expected = v.copy()
    expected[5, 3] = float(token)
    np.testing.assert_array_equal(parse_ims_bytes(raw, expected_samples=N), expected.astype(np.float32))


def _replace_line(values: np.ndarray, index: int, line: str) -> bytes:
    lines = _lines(values)
    lines[index] = line
    return ("\n".join(lines) + "\n").encode()


def _replace_token(values: np.ndarray, line: int, column: int, token: str) -> bytes:
    lines = _lines(values)
    tokens = lines[line].split("\t")
    tokens[column] = token
    lines[line] = "\t".join(tokens)
    return ("\n".join(lines) + "\n").encode()


def test_bad_content_reasons() -> None:
    v = _values()
    seven = "\t".join(_lines(v)[16].split("\t")[:7])
    nul_line = _text(v)[:100].count(b"\n") + 1
    cases = {
        b"": "empty file",
        b" \n\n\t\n": "empty file",
        _replace_line(v, 16, seven): "line 17: 7 columns, expected 8",
        _replace_token(v, 4, 2, "abc"): "line 5 column 3: not a number: 'abc'",
        _replace_token(v, 8, 1, "nan"): "line 9 column 2: non-finite value 'nan'",
        _replace_token(v, 8, 1, "-Inf"): "line 9 column 2: non-finite value '-Inf'",
        _replace_token(v, 2, 0, "1e39"): "line 3 column 1: value out of float32 range '1e39'",
        _replace_token(v, 3, 5, ""): "line 4 column 6: empty value",
        _replace_token(v, 3, 5, "0,5"): "line 4 column 6: not a number: '0,5'",
        _replace_line(v, 10, ""): "line 11: empty line",
        _text(v[:-1]): f"{N - 1} samples, expected {N}",
        _text(np.vstack([v, v[:1]])): f"{N + 1} samples, expected {N}",
        _text(np.vstack([v, v, v])): f"{3 * N} lines, expected {N} samples",  # refused before splitting
        _text(v)[:-20]: f"line {N}: 5 columns, expected 8",  # truncated mid-line
        _text(v[:, :5]): "5 columns, expected 4 or 8",
        _text(v)[:100] + b"\x00\x01\x02" + _text(v)[100:]: f"line {nul_line}: binary data (byte 0x00), not IMS text",
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)): "line 1: binary data (byte 0x89), not IMS text",
    }
    for raw, reason in cases.items():
        assert _reason(raw) == reason, raw[:40]


def test_mixed_column_counts_point_at_the_first_odd_line() -> None:
    v = _values()
    lines = _lines(v)
    lines[20] = "\t".join(lines[20].split("\t")[:4])
    assert _reason(("\n".join(lines) + "\n").encode()) == "line 21: 4 columns, expected 8"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("notes", "name is not a timestamp YYYY.MM.DD.hh.mm.ss"),
        ("2004.02.12.10.32", "name is not a timestamp YYYY.MM.DD.hh.mm.ss"),
        ("2004.02.12.10.32.39.bak", "name is not a timestamp YYYY.MM.DD.hh.mm.ss"),
        ("2004.13.12.10.32.39", "name is not a valid timestamp YYYY.MM.DD.hh.mm.ss: month must be in 1..12"),
        ("2003.02.29.10.32.39", "name is not a valid timestamp YYYY.MM.DD.hh.mm.ss: day is out of range for month"),
        ("2004.02.12.24.00.00", "name is not a valid timestamp YYYY.MM.DD.hh.mm.ss: hour must be in 0..23"),
    ],
)
def test_bad_names(name: str, reason: str) -> None:
    with pytest.raises(IMSFormatError) as exc_info:
        parse_snapshot_time(name)
    assert exc_info.value.reason == reason


def test_good_name_is_parsed_with_calendar_checks() -> None:
    assert parse_snapshot_time("2004.02.29.23.59.59") == datetime(2004, 2, 29, 23, 59, 59)


def test_file_level_errors_name_the_file(tmp_path: Path) -> None:
    good = write_ims_file(tmp_path / "2004.02.12.10.32.39", _values())
    snapshot = read_ims_file(good, expected_samples=N)
    assert snapshot.timestamp == datetime(2004, 2, 12, 10, 32, 39)

    with pytest.raises(IMSFormatError) as exc_info:
        read_ims_file(good, expected_samples=N, max_bytes=100)
    assert exc_info.value.reason == f"file too large: {good.stat().st_size} bytes, limit 100"
    assert exc_info.value.path == good and str(good) in str(exc_info.value)

    folder = tmp_path / "2004.02.12.10.42.39"
    folder.mkdir()
    with pytest.raises(IMSFormatError, match="is a directory, expected a snapshot file"):
        read_ims_file(folder, expected_samples=N)

    dangling = tmp_path / "2004.02.12.10.52.39"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(IMSFormatError) as exc_info:
        read_ims_file(dangling, expected_samples=N)
    assert exc_info.value.reason == "unreadable: No such file or directory"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read files without permission")
def test_permission_denied(tmp_path: Path) -> None:
    path = write_ims_file(tmp_path / "2004.02.12.10.32.39", _values())
    path.chmod(0)
    with pytest.raises(IMSFormatError) as exc_info:
        read_raw_bytes(path)
    assert exc_info.value.reason == "unreadable: permission denied"
