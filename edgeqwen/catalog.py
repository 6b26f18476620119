"""The Qwen models edgeqwen knows, with the facts that matter for deployment.

Architecture numbers are the values of each model's config.json on the Hugging Face Hub.
Parameter counts and sizes are derived from them, so they cannot drift from the
architecture (e.g. Qwen2.5-0.5B derives to exactly the published 494,032,768).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgeqwen.errors import SourceError

# Approximate bits per weight of each precision as our engines store it: int8/int4 carry a
# 16-bit scale per block of 32 weights (int4 also a 4-bit zero point), which is how the
# ONNX Runtime MatMulNBits and llama.cpp Q8_0/Q4 formats lay weights out.
BITS_PER_WEIGHT: dict[str, float] = {"fp32": 32.0, "fp16": 16.0, "int8": 8.5, "int4": 4.625}
KV_CACHE_BYTES_PER_VALUE = 2  # runtimes keep the KV cache in fp16

FAMILIES = ("qwen2.5", "qwen2.5-coder", "qwen2.5-math", "qwen3")
TASKS = {"chat": ("qwen2.5", "qwen3"), "code": ("qwen2.5-coder",), "math": ("qwen2.5-math",)}


# Qwen's recommended sampling per family (the models' generation_config.json on the Hub;
# Qwen3's model card gives these for thinking mode). Exports fall back on them when an
# artifact carries no generation_config.json with sampling settings.
SAMPLING: dict[str, dict[str, float]] = {
    "qwen2.5": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
    "qwen2.5-coder": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
    "qwen2.5-math": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
    "qwen3": {"temperature": 0.6, "top_p": 0.95, "top_k": 20},
}


@dataclass(frozen=True)
class ModelSpec:
    id: str
    repo_id: str
    family: str
    model_type: str  # config.json model_type: "qwen2" or "qwen3"
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    context_length: int  # config.json max_position_embeddings
    tied_embeddings: bool
    license: str
    thinking: bool
    head_dim: int | None = None  # Qwen3 sets it explicitly; Qwen2 derives hidden / heads

    @property
    def sampling(self) -> dict[str, float]:
        return dict(SAMPLING[self.family])

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def params(self) -> int:
        """Exact parameter count of the architecture (embeddings counted once when tied)."""
        d, hd = self.hidden, self.head_size
        q_out, kv_out = self.heads * hd, self.kv_heads * hd
        attn = d * q_out + 2 * d * kv_out + q_out * d
        if self.model_type == "qwen2":
            attn += q_out + 2 * kv_out  # Qwen2 has biases on q, k and v
        else:
            attn += 2 * hd  # Qwen3 normalises q and k per head instead
        mlp = 3 * d * self.intermediate
        layer = attn + mlp + 2 * d  # two RMSNorms
        embeddings = self.vocab * d * (1 if self.tied_embeddings else 2)
        return self.layers * layer + embeddings + d

    def weight_bytes(self, precision: str) -> int:
        if precision not in BITS_PER_WEIGHT:
            raise ValueError(f"unknown precision {precision!r}; use one of {list(BITS_PER_WEIGHT)}")
        return int(self.params * BITS_PER_WEIGHT[precision] / 8)

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_size * KV_CACHE_BYTES_PER_VALUE

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            head_size=self.head_size,
            params=self.params,
            kv_bytes_per_token=self.kv_bytes_per_token,
            weight_bytes={p: self.weight_bytes(p) for p in ("fp16", "int8", "int4")},
        )
        return data


def _qwen25(id_: str, repo: str, family: str, *, layers: int, hidden: int, heads: int,
            intermediate: int, context: int = 32768, license_: str = "apache-2.0") -> ModelSpec:
    return ModelSpec(id=id_, repo_id=repo, family=family, model_type="qwen2", layers=layers,
                     hidden=hidden, heads=heads, kv_heads=2, intermediate=intermediate,
                     vocab=151936, context_length=context, tied_embeddings=True,
                     license=license_, thinking=False)


def _qwen3(id_: str, repo: str, *, layers: int, hidden: int, heads: int,
           intermediate: int) -> ModelSpec:
    return ModelSpec(id=id_, repo_id=repo, family="qwen3", model_type="qwen3", layers=layers,
                     hidden=hidden, heads=heads, kv_heads=8, intermediate=intermediate,
                     vocab=151936, context_length=40960, tied_embeddings=True,
                     license="apache-2.0", thinking=True, head_dim=128)


_SIZE_05B = {"layers": 24, "hidden": 896, "heads": 14, "intermediate": 4864}
_SIZE_15B = {"layers": 28, "hidden": 1536, "heads": 12, "intermediate": 8960}
_SIZE_3B = {"layers": 36, "hidden": 2048, "heads": 16, "intermediate": 11008}

CATALOG: dict[str, ModelSpec] = {
    m.id: m
    for m in (
        _qwen25("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5", **_SIZE_05B),
        _qwen25("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", "qwen2.5", **_SIZE_15B),
        _qwen25("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct", "qwen2.5", **_SIZE_3B,
                license_="qwen-research"),
        _qwen25("qwen2.5-coder-0.5b-instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct",
                "qwen2.5-coder", **_SIZE_05B),
        _qwen25("qwen2.5-coder-1.5b-instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct",
                "qwen2.5-coder", **_SIZE_15B),
        _qwen25("qwen2.5-coder-3b-instruct", "Qwen/Qwen2.5-Coder-3B-Instruct",
                "qwen2.5-coder", **_SIZE_3B, license_="qwen-research"),
        _qwen25("qwen2.5-math-1.5b-instruct", "Qwen/Qwen2.5-Math-1.5B-Instruct",
                "qwen2.5-math", **_SIZE_15B, context=4096),
        _qwen3("qwen3-0.6b", "Qwen/Qwen3-0.6B", layers=28, hidden=1024, heads=16,
               intermediate=3072),
        _qwen3("qwen3-1.7b", "Qwen/Qwen3-1.7B", layers=28, hidden=2048, heads=16,
               intermediate=6144),
        _qwen3("qwen3-4b", "Qwen/Qwen3-4B", layers=36, hidden=2560, heads=32,
               intermediate=9728),
    )
}

SUPPORTED_MODEL_TYPES = frozenset(m.model_type for m in CATALOG.values())


def get(model_id: str) -> ModelSpec:
    """Look a model up by catalog id or Hugging Face repo id (case-insensitive)."""
    key = model_id.lower()
    for spec in CATALOG.values():
        if key in (spec.id, spec.repo_id.lower()):
            return spec
    raise SourceError(
        f"{model_id!r} is not in the edgeqwen catalog.",
        hint="run `edgeqwen models` for the supported ids, or pass a local folder or .gguf file.",
    )


def find(model_id: str) -> ModelSpec | None:
    try:
        return get(model_id)
    except SourceError:
        return None


def spec_from_config(config: dict[str, Any], *, id_: str = "custom") -> ModelSpec:
    """Describe any Qwen2/Qwen3 checkpoint from its config.json (for sizing and checks)."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SourceError(
            f"model_type {model_type!r} is not supported.",
            hint=f"edgeqwen builds Qwen2/Qwen2.5 and Qwen3 models ({sorted(SUPPORTED_MODEL_TYPES)}).",
        )
    return ModelSpec(
        id=id_, repo_id=config.get("_name_or_path", ""), family="qwen3"
        if model_type == "qwen3" else "qwen2.5", model_type=model_type,
        layers=config["num_hidden_layers"], hidden=config["hidden_size"],
        heads=config["num_attention_heads"],
        kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        intermediate=config["intermediate_size"], vocab=config["vocab_size"],
        context_length=config.get("max_position_embeddings", 0),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        license="unknown", thinking=model_type == "qwen3", head_dim=config.get("head_dim"),
    )
