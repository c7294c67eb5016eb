"""Write the SHA-256 of every pinned distribution into requirements.lock (pip's hash-checking mode).

Run: ``.venv/bin/python scripts/hash_lock.py`` after changing a pin. Reads the lock's ``name==version`` lines (any
hashes already there are replaced), downloads each pinned distribution without dependencies from the configured
indexes into a temporary directory (the same files `make install` will pick on this platform and Python, torch's
from the local CPU wheels) and rewrites the lock atomically as ``name==version --hash=sha256:...``. `make install`
then installs with ``--require-hashes``: a file that is not the one hashed here (another build, a CUDA torch, a
tampered mirror) stops the install.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"


def pins(text: str) -> list[tuple[str, str]]:
    """(name, version) of every ``name==version`` requirement, continuation lines and hashes ignored."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        requirement = line.split("#", 1)[0].split()
        if requirement and "==" in requirement[0]:
            name, version = requirement[0].split("==", 1)
            out.append((name, version))
    return out


def main() -> int:
    from packaging.utils import canonicalize_name, parse_wheel_filename

    sys.path.insert(0, str(REPO))
    from bearing_core.io import write_text_atomic

    locked = pins(LOCK.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp]
            + [f"{name}=={version}" for name, version in locked],
            check=True,
        )
        digests: dict[str, str] = {}
        for path in Path(tmp).iterdir():
            if path.suffix != ".whl":
                raise SystemExit(f"hash_lock: {path.name} is not a wheel: pin a version with a wheel for this platform")
            name = canonicalize_name(parse_wheel_filename(path.name)[0])
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    lines = [f"{name}=={version} \\\n    --hash=sha256:{digests[canonicalize_name(name)]}" for name, version in locked]
    write_text_atomic(LOCK, "\n".join(lines) + "\n")
    print(f"hash_lock: {len(lines)} pins hashed in {LOCK.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
