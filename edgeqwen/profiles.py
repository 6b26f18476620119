"""Device profiles: the thread count, memory cap and context a class of device gives a model.

`edgeqwen bench` applies them for real: the runtime gets the thread count and context, and
the benchmark runs in a child process whose address space is capped (RLIMIT_AS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from edgeqwen.errors import EdgeQwenError
from edgeqwen.units import GiB


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    threads: int | None  # None: every core of this machine
    memory_cap: int | None  # bytes of address space; None: no cap
    context_length: int | None  # None: the artifact's own

    def resolved_threads(self) -> int:
        cores = os.cpu_count() or 1
        return min(self.threads, cores) if self.threads else cores


PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile("desktop", "a laptop or desktop CPU: every core, no cap", None, None, None),
    DeviceProfile("mobile", "a mobile-class board: 2 threads, 3 GiB, 2048-token context", 2, 3 * GiB, 2048),
    DeviceProfile("tiny", "a small board: 1 thread, 1.5 GiB, 2048-token context", 1, 3 * GiB // 2, 2048),
    DeviceProfile("phone", "a phone's big cores: 4 threads (fewer if this machine has fewer), "
                  "4 GiB, 2048-token context", 4, 4 * GiB, 2048),
)}


def get_profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise EdgeQwenError(f"unknown device profile {name!r}",
                            hint=f"profiles: {', '.join(PROFILES)}") from None
