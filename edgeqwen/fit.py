"""Which catalog model and precision fit a device's memory budget, with the arithmetic shown."""

from __future__ import annotations

from dataclasses import dataclass

from edgeqwen.catalog import CATALOG, TASKS, ModelSpec

# Runtime libraries, tokenizer, scratch buffers and the logits of one step, measured as the
# RSS of onnxruntime-genai / llama.cpp processes serving a 0.5B model minus weights and KV.
RUNTIME_OVERHEAD_BYTES = 400 * 2**20
PRECISIONS = ("fp16", "int8", "int4")  # best first


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
