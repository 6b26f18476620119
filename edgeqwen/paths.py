"""Where edgeqwen keeps its cache (samples, dequantized checkpoints, hub downloads, tools)."""

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


def tools_dir() -> Path:
    """Third-party tools fetched on first use (llama.cpp's converter): `EDGEQWEN_TOOLS_DIR`,
    else `<home>/tools`. Separate so tests with a throw-away home can share one copy."""
    if env := os.environ.get("EDGEQWEN_TOOLS_DIR"):
        return Path(env).expanduser()
    return home() / "tools"
