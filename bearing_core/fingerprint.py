"""Content fingerprints: the cache keys of the pipeline come from what the data *is*, not from run ids."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (streamed in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """One digest over several files (missing files count as such, so deleting an output changes the key)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(str(p.name).encode())
        h.update(sha256_file(p).encode() if p.is_file() else b"<missing>")
    return h.hexdigest()


def tree_fingerprint(root: str | os.PathLike[str]) -> str:
    """A cheap fingerprint of a directory tree: relative path, size and mtime of every file, sorted.

    Used to decide whether a raw directory changed since the last run (a stat per file, no reading).
    """
    root = Path(root)
    h = hashlib.sha256()
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}")
    for e in sorted(entries):
        h.update(e.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()
