"""Content fingerprints used to key caches: same bytes in, same key out, across runs."""

import hashlib
from pathlib import Path

import numpy as np


def fingerprint_files(paths: list[Path]) -> str:
    """Hash file contents (big weight files are read in chunks)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint_arrays(arrays: list[np.ndarray], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
