"""Which catalog model and precision fit a device's memory budget, with the arithmetic shown."""

from __future__ import annotations

from dataclasses import dataclass

from edgeqwen.catalog import CATALOG, TASKS, ModelSpec
from edgeqwen.units import GiB

# Runtime libraries, tokenizer, scratch buffers and the logits of one step, measured as the
# RSS of onnxruntime-genai / llama.cpp processes serving a 0.5B model minus weights and KV.
RUNTIME_OVERHEAD_BYTES = 400 * 2**20
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
    weights: int
    kv_cache: int
    overhead: int
    budget: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model.id, "precision": self.precision, "weights_bytes": self.weights,
            "kv_cache_bytes": self.kv_cache, "overhead_bytes": self.overhead,
            "total_bytes": self.total, "budget_bytes": self.budget, "fits": self.fits,
        }


def plan(ram: int, *, context: int = 4096, task: str | None = None,
         reserve: float = 0.25) -> tuple[list[FitRow], FitRow | None]:
    """Every (model, precision) for the task with its memory bill, and the recommendation.

    `reserve` is the share of RAM left to the OS and the app. The recommendation is the
    largest model that fits at any precision, at the best precision that fits: a bigger
    model in 4 bits usually beats a smaller one in 16.
    """
    if not 0 <= reserve < 1:
        raise ValueError("reserve must be in [0, 1)")
    budget = int(ram * (1 - reserve))
    families = TASKS[task] if task else None
    rows = [
        FitRow(model=m, precision=p, weights=m.weight_bytes(p),
               kv_cache=m.kv_bytes_per_token * min(context, m.context_length),
               overhead=RUNTIME_OVERHEAD_BYTES, budget=budget)
        for m in CATALOG.values() if families is None or m.family in families
        for p in PRECISIONS
    ]
    fitting = [r for r in rows if r.fits]
    best = max(fitting, key=lambda r: (r.model.params, -PRECISIONS.index(r.precision)),
               default=None)
    return rows, best
