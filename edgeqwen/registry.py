"""Plugin registries for build engines and runtime backends.

Entries come from Python entry points (groups `edgeqwen.engines` and
`edgeqwen.runtimes`), so a third-party package adds a backend by declaring one in its own
pyproject.toml, without touching edgeqwen. Entries are loaded only when asked for, so the
heavy dependencies of one backend never load for another.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from edgeqwen.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, group: str, kind: str) -> None:
        self.group = group
        self.kind = kind
        self._added: dict[str, T | Callable[[], T]] = {}
        self._loaded: dict[str, T] = {}

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def register(self, name: str, obj: T) -> None:
        """Register in-process (tests, notebooks); wins over an entry point of the same name."""
        self._added[name] = obj
        self._loaded.pop(name, None)

    def unregister(self, name: str) -> None:
        self._added.pop(name, None)
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        return sorted(set(self._entry_points()) | set(self._added))

    def get(self, name: str) -> T:
        if name in self._loaded:
            return self._loaded[name]
        if name in self._added:
            obj = self._added[name]
        else:
            ep = self._entry_points().get(name)
            if ep is None:
                raise RegistryError(
                    f"no {self.kind} named {name!r} is installed",
                    hint=f"installed {self.kind}s: {', '.join(self.names()) or 'none'} "
                    f"(entry point group {self.group!r})",
                )
            try:
                obj = ep.load()
            except ImportError as err:
                raise RegistryError(
                    f"the {self.kind} {name!r} could not be imported: {err}",
                    hint="install the optional dependencies it needs (see the README)",
                ) from err
        self._loaded[name] = obj
        return obj

    def describe(self) -> dict[str, Any]:
        eps = self._entry_points()
        return {n: (eps[n].value if n in eps and n not in self._added else "in-process")
                for n in self.names()}


engines: Registry[Any] = Registry("edgeqwen.engines", "build engine")
runtimes: Registry[Any] = Registry("edgeqwen.runtimes", "runtime backend")
