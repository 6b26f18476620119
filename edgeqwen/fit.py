"""Which catalog model and precision fit a device's memory budget, with the arithmetic shown."""

from __future__ import annotations

from dataclasses import dataclass

from edgeqwen.catalog import CATALOG, TASKS, ModelSpec
from edgeqwen.memory import MemoryEstimate, estimate
from edgeqwen.recipes import Recipe
from edgeqwen.units import GiB

PRECISIONS = ("fp16", "int8", "int4")  # best first


@dataclass(frozen=True)
class Device:
    """A class of device: its RAM, the share the OS and other apps keep, the context to
    budget for, and the `edgeqwen bench` profile that imitates it."""

    name: str
    ram: int
    reserve: float
    context: int
    profile: str
    description: str


# Phones: Android and iOS keep roughly half of the RAM for the system and other apps, and a
# foreground app that takes more is killed. Boards run little else.
DEVICES: dict[str, Device] = {d.name: d for d in (
    Device("phone-4gb", 4 * GiB, 0.5, 2048, "phone", "entry-level phone"),
    Device("phone-6gb", 6 * GiB, 0.5, 2048, "phone", "mid-range phone"),
    Device("phone-8gb", 8 * GiB, 0.5, 2048, "phone", "recent phone"),
    Device("phone-12gb", 12 * GiB, 0.5, 4096, "phone", "high-end phone"),
    Device("board-2gb", 2 * GiB, 0.3, 2048, "tiny", "single-board computer, 2 GB"),
    Device("board-4gb", 4 * GiB, 0.3, 2048, "mobile", "single-board computer, 4 GB"),
    Device("board-8gb", 8 * GiB, 0.3, 4096, "mobile", "single-board computer, 8 GB"),
    Device("laptop-8gb", 8 * GiB, 0.5, 4096, "desktop", "laptop running other apps"),
    Device("laptop-16gb", 16 * GiB, 0.5, 4096, "desktop", "laptop running other apps"),
)}


@dataclass(frozen=True)
class FitRow:
    model: ModelSpec
    precision: str
    memory: MemoryEstimate
    budget: int

    @property
    def weights(self) -> int:
        return self.memory.weights_bytes

    @property
    def kv_cache(self) -> int:
        return self.memory.kv_cache_bytes

    @property
    def overhead(self) -> int:
        return self.memory.overhead_bytes

    @property
    def total(self) -> int:
        return self.memory.total_bytes

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model.id, "precision": self.precision, "weights_bytes": self.weights,
            "kv_cache_bytes": self.kv_cache, "kv_cache_type": self.memory.kv_cache_type,
            "overhead_bytes": self.overhead, "runtime": self.memory.runtime,
            "total_bytes": self.total, "budget_bytes": self.budget, "fits": self.fits,
        }


def plan(ram: int, *, context: int = 4096, task: str | None = None, reserve: float = 0.25,
         recipe: Recipe | None = None) -> tuple[list[FitRow], FitRow | None]:
    """Every (model, precision) for the task with its memory bill, and the recommendation.

    `reserve` is the share of RAM left to the OS and the app. Without a recipe the precisions
    are the generic fp16/int8/int4 with a runtime-neutral overhead; with one, its precision,
    KV cache type and runtime. The recommendation is the largest model that fits at any
    precision, at the best precision that fits: a bigger model in 4 bits usually beats a
    smaller one in 16.
    """
    if not 0 <= reserve < 1:
        raise ValueError("reserve must be in [0, 1)")
    budget = int(ram * (1 - reserve))
    families = TASKS[task] if task else None
    from edgeqwen.pipeline import serving

    precisions = (recipe.precision,) if recipe else PRECISIONS
    runtime, kv_type = serving(recipe) if recipe else ("any", "f16")
    rows = [
        FitRow(model=m, precision=p, budget=budget,
               memory=estimate(m, runtime=runtime, context_length=context, precision=p,
                               kv_cache_type=kv_type))
        for m in CATALOG.values() if families is None or m.family in families
        for p in precisions
    ]
    fitting = [r for r in rows if r.fits]
    best = max(fitting, key=lambda r: (r.model.params, -precisions.index(r.precision)),
               default=None)
    return rows, best

