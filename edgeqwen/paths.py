"""Where edgeqwen keeps its cache (reassembled samples, dequantized checkpoints, hub downloads)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """`EDGEQWEN_HOME`, else `$XDG_CACHE_HOME/edgeqwen`, else `~/.cache/edgeqwen`."""
    if env := os.environ.get("EDGEQWEN_HOME"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgeqwen"


def sources_dir() -> Path:
    return home() / "sources"


def hub_dir() -> Path:
    return home() / "hub"
