"""Expected memory of a model served by a runtime: weights + KV cache + runtime overhead.

Artifacts state it in their manifest (exact weight bytes, the recipe's context and KV cache
type); `edgeqwen fit --recipe` states it for every catalog model (weights estimated from
the precision). `edgeqwen bench` measures the real peak to compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgeqwen import catalog
from edgeqwen.catalog import BITS_PER_WEIGHT, ModelSpec

# Bytes per cached K/V value: fp32 (ONNX Runtime GenAI and ExecuTorch CPU exports), fp16
# (llama.cpp's default), or llama.cpp's Q8_0 (32 int8 values + one fp16 scale).
# OpenVINO's CPU plugin: u8 values with a per-token scale and zero point (about 1 byte).
KV_CACHE_BYTES_PER_VALUE: dict[str, float] = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "u8": 1.0}

# Peak RSS minus model files minus KV cache, measured by `edgeqwen bench --profile phone` on
# the 0.5B sample at a 2048-token context, in the benchmark's Python process:
# - llama-cpp-python, 128-token batches: ~100-150 MiB (512-token batches: +33 MiB of compute
#   buffers); Q4_0 with mmap off measured 559 MiB vs 561 stated, Q4_K_M mapped 645 vs 621.
# - ExecuTorch: 490 MiB, of which ~330 MiB is torch and ExecuTorch's Python bindings (a
#   native app does not carry them) and the rest XNNPACK's repacked weights and buffers.
# - onnxruntime-genai: 400 MiB.
# - openvino (openvino-genai pipeline + the compiled model, desktop profile, 2 threads): 475 MiB
#   for openvino-int4, 590 MiB for openvino-int8 (the CPU plugin repacks weights at compile).
# - qnn (onnxruntime + the QNN HTP backend emulated on x86-64, both context binaries loaded):
#   peak 2,355 MiB for npu-qnn-a16w8 = 1,480 MiB of binaries + 24 MiB KV + ~850 MiB; on a
#   Snapdragon the binaries go to the NPU's memory and the host part is smaller.
# Compute buffers grow with the model's width, so larger models need somewhat more.
RUNTIME_OVERHEAD_BYTES: dict[str, int] = {
    "llama-cpp": 128 * 2**20,
    "onnxruntime-genai": 400 * 2**20,
    "executorch": 480 * 2**20,
    "openvino": 512 * 2**20,
    "qnn": 850 * 2**20,
}
DEFAULT_OVERHEAD_BYTES = 400 * 2**20

# Bits per weight of each recipe precision: ONNX (the catalog's numbers), llama.cpp's types
# (block formats incl. scales; k-quant mixtures as llama.cpp's quantize tool states them) and
# ExecuTorch's 8da4w (4-bit weights, an fp32 scale per group of 32).
BITS_PER_WEIGHT_BY_PRECISION: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56,
    "Q5_K_M": 5.7, "Q5_K_S": 5.5, "Q5_0": 5.5, "Q5_1": 6.0, "Q4_K_M": 4.85, "Q4_K_S": 4.58,
    "Q4_0": 4.5, "Q4_1": 5.0, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5, "Q2_K": 2.96,
    "IQ4_NL": 4.5, "IQ4_XS": 4.25, "8da4w": 5.0, "a16w8": 8.0, "a16w4": 4.0,
}
# Below 8 bits, llama.cpp and ExecuTorch keep the token embedding / LM head at 8 bits.
EMBEDDING_BITS = 8.5


@dataclass(frozen=True)
class MemoryEstimate:
    context_length: int
    kv_cache_type: str
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    runtime: str
    weights_exact: bool  # True: the artifact's file sizes; False: estimated from the precision
    mmap: bool | None = None  # weights mapped from the file (llama.cpp): reclaimable pages

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def kv_cache_bytes(spec: ModelSpec, tokens: int, kv_cache_type: str = "f16") -> int:
    """K and V of every layer for `tokens` positions (capped at the trained context)."""
    tokens = min(tokens, spec.context_length or tokens)
    per_value = KV_CACHE_BYTES_PER_VALUE[kv_cache_type] / catalog.KV_CACHE_BYTES_PER_VALUE
    return int(spec.kv_bytes_per_token * tokens * per_value)


def estimated_weight_bytes(spec: ModelSpec, precision: str) -> int:
    """Weight bytes of `spec` stored at a recipe precision (see BITS_PER_WEIGHT_BY_PRECISION);
    the generic classes (int4, int8, fp16, fp32) count every weight alike, as `fit` does."""
    if precision in BITS_PER_WEIGHT:
        return spec.weight_bytes(precision)
    try:
        bits = BITS_PER_WEIGHT_BY_PRECISION[precision]
    except KeyError:
        raise ValueError(f"no size model for precision {precision!r}") from None
    if bits >= EMBEDDING_BITS:
        return int(spec.params * bits / 8)
    embeddings = spec.vocab * spec.hidden * (1 if spec.tied_embeddings else 2)
    return int((spec.params - embeddings) * bits / 8 + embeddings * EMBEDDING_BITS / 8)


def estimate(spec: ModelSpec, *, runtime: str, context_length: int, weights_bytes: int | None = None,
             precision: str | None = None, kv_cache_type: str = "f16",
             mmap: bool | None = None) -> MemoryEstimate:
    """Memory of `spec` served by `runtime` at `context_length`; give the artifact's
    `weights_bytes` when known, else the `precision` to estimate them from."""
    if weights_bytes is None:
        if precision is None:
            raise ValueError("give weights_bytes or precision")
        weights = estimated_weight_bytes(spec, precision)
    else:
        weights = weights_bytes
    return MemoryEstimate(
        context_length=min(context_length, spec.context_length or context_length),
        kv_cache_type=kv_cache_type, weights_bytes=weights,
        kv_cache_bytes=kv_cache_bytes(spec, context_length, kv_cache_type),
        overhead_bytes=RUNTIME_OVERHEAD_BYTES.get(runtime, DEFAULT_OVERHEAD_BYTES),
        runtime=runtime, weights_exact=weights_bytes is not None, mmap=mmap)
