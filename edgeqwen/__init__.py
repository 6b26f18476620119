"""edgeqwen: a deployment compiler for small Qwen models.

Heavy dependencies (torch, transformers, engines, runtimes) are imported lazily, so that
`import edgeqwen` and `edgeqwen --help` stay fast. `edgeqwen.load(ARTIFACT)` opens an
artifact for an app (see `edgeqwen.api`).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("edgeqwen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_API = ("load", "LLM", "ReplyStream")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from edgeqwen import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeqwen' has no attribute {name!r}")
