"""sha256 of files, with one progress bar over all bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from edgeqwen.progress import byte_progress

_CHUNK = 8 * 2**20


def sha256_file(path: Path, *, on_bytes: object = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if callable(on_bytes):
                on_bytes(len(chunk))
    return digest.hexdigest()


def sha256_files(paths: Iterable[Path], description: str = "hashing") -> dict[Path, str]:
    paths = list(paths)
    total = sum(p.stat().st_size for p in paths)
    with byte_progress(description, total) as bar:
        return {p: sha256_file(p, on_bytes=lambda n: bar.advance(0, n)) for p in paths}
