"""Open an artifact with the runtime backend its manifest names."""

from __future__ import annotations

from pathlib import Path

from edgeqwen import registry
from edgeqwen.artifacts import load_manifest
from runtimes.base import Runtime


def open_artifact(path: Path | str, *, threads: int | None = None,
                  context_length: int | None = None) -> Runtime:
    manifest = load_manifest(path)
    backend = registry.runtimes.get(manifest.runtime)
    return backend.load(Path(path), threads=threads, context_length=context_length)
