"""Markdown for people: Prefect artifacts and report.md files, written the same way everywhere.

The Prefect UI renders artifacts with ``marked`` and sanitises the HTML, so text that looks like markup is lost
or changed: ``<channel>_<feature>`` is taken for two HTML tags (dropped) and an underscore for emphasis. Every
piece of free text (names, descriptions, error details) goes through :func:`text` (or :func:`cell` inside a table,
:func:`code` for a literal such as a path); :func:`image` embeds a PNG as a ``data:`` URI, which the UI shows
(a relative link to a file beside the report cannot be loaded by the browser).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MARKDOWN = re.compile(r"([\\`*_\[\]|~])")


def text(value: Any) -> str:
    """``value`` as inline markdown that reads literally: HTML characters as entities, markdown ones escaped."""
    out = "".join(_HTML.get(c, c) for c in str(value))
    return _MARKDOWN.sub(r"\\\1", out)


def cell(value: Any) -> str:
    """A table cell: :func:`text` on one line (the table's ``|`` escaped too)."""
    return text(" ".join(str(value).split()))


def code(value: Any) -> str:
    """``value`` as an inline code span (shown verbatim, ``<`` included), on one line."""
    body = " ".join(str(value).split())
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table; ``columns`` and each row's values are already rendered cells."""
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    return "\n".join([head, sep, *("| " + " | ".join(row) + " |" for row in rows)])


def image(alt: str, png: str | os.PathLike[str]) -> str:
    """``png`` embedded in the markdown as a ``data:image/png;base64`` URI."""
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f"![{text(alt)}](data:image/png;base64,{data})"
