"""Refuse a step before it starts when the machine cannot finish it."""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil

from edgeqwen.errors import ResourceError
from edgeqwen.units import human


def require_disk(folder: Path, needed: int, what: str) -> None:
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise ResourceError(
            f"not enough disk for {what}: needs about {human(needed)} in {folder}, "
            f"{human(free)} free",
            hint="free some space, or point TMPDIR (build work files), EDGEQWEN_HOME (model cache) "
                 "or --out at a disk with more room",
        )


def require_memory(needed: int, what: str) -> None:
    available = psutil.virtual_memory().available
    if available < needed:
        raise ResourceError(
            f"not enough memory for {what}: needs about {human(needed)}, "
            f"{human(available)} available",
            hint="close other programs, use a machine with more RAM, or pick a smaller model",
        )
