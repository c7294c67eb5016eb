"""Console output of names that come from data (site names, file names, paths, error messages quoting them)."""

from __future__ import annotations


def printable(text: object) -> str:
    """``str(text)`` with every non-printable character escaped as in ``repr`` (``\\n``, ``\\r``, ``\\x1b``,
    ``\\u2028`` ...): a site or file name holding a newline or a terminal escape cannot forge or erase console lines.
    Printable text, including non-ASCII letters, is unchanged."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
