"""edgeqwen: a deployment compiler for small Qwen models.

Heavy dependencies (torch, transformers, engines, runtimes) are imported lazily, so that
`import edgeqwen` and `edgeqwen --help` stay fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeqwen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
