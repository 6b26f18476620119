"""Exports: an artifact repackaged for the program that runs it (Ollama, Foundry Local)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link model files when the export is on the same filesystem (no second copy)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
