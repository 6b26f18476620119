import json

import pytest

from edgeqwen import catalog
from edgeqwen.errors import SourceError

# Published numbers (model cards / config.json on the Hub).
PUBLISHED_PARAMS = {
    "qwen2.5-0.5b-instruct": 494_032_768,
    "qwen2.5-1.5b-instruct": 1_543_714_304,
    "qwen2.5-3b-instruct": 3_085_938_688,
    "qwen3-0.6b": 596_049_920,
    "qwen3-4b": 4_022_468_096,
}


@pytest.mark.parametrize(("model_id", "params"), PUBLISHED_PARAMS.items())
def test_parameter_counts_match_published(model_id: str, params: int) -> None:
    assert catalog.get(model_id).params == params


def test_config_facts_of_a_few_models() -> None:
    m = catalog.get("Qwen/Qwen2.5-Coder-0.5B-Instruct")  # by repo id, any case
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.vocab) == (24, 896, 14, 2, 151936)
    assert m.context_length == 32768 and m.tied_embeddings and not m.thinking
    q3 = catalog.get("qwen3-1.7b")
    assert (q3.layers, q3.hidden, q3.heads, q3.kv_heads, q3.head_size) == (28, 2048, 16, 8, 128)
    assert q3.thinking and q3.context_length == 40960
    assert catalog.get("qwen2.5-math-1.5b-instruct").context_length == 4096
    assert catalog.get("qwen2.5-3b-instruct").license == "qwen-research"
    assert catalog.get("qwen2.5-coder-3b-instruct").license == "qwen-research"


def test_catalog_covers_required_models() -> None:
    required = {"qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-3b-instruct",
                "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct",
                "qwen2.5-coder-3b-instruct", "qwen2.5-math-1.5b-instruct", "qwen3-0.6b",
                "qwen3-1.7b", "qwen3-4b"}
    assert required <= set(catalog.CATALOG)
    assert {m.family for m in catalog.CATALOG.values()} == set(catalog.FAMILIES)


def test_kv_cache_and_sizes() -> None:
    m = catalog.get("qwen2.5-0.5b-instruct")
    # 2 (K and V) x 24 layers x 2 KV heads x 64 head dim x 2 bytes (fp16)
    assert m.kv_bytes_per_token == 12_288
    assert catalog.get("qwen3-4b").kv_bytes_per_token == 2 * 36 * 8 * 128 * 2
    assert m.weight_bytes("fp16") == m.params * 2
    assert m.weight_bytes("fp16") > m.weight_bytes("int8") > m.weight_bytes("int4")
    with pytest.raises(ValueError):
        m.weight_bytes("int3")


def test_unknown_id_names_the_fix() -> None:
    with pytest.raises(SourceError, match="not in the edgeqwen catalog") as err:
        catalog.get("llama-3-8b")
    assert "edgeqwen models" in str(err.value)


def test_spec_from_config_matches_catalog_arithmetic(tiny_qwen2, tiny_qwen3) -> None:
    import torch
    from safetensors.torch import load_file

    for folder in (tiny_qwen2, tiny_qwen3):
        config = json.loads((folder / "config.json").read_text())
        spec = catalog.spec_from_config(config)
        weights = load_file(folder / "model.safetensors")
        assert spec.params == sum(t.numel() for t in weights.values() if t.dtype != torch.bool)
    with pytest.raises(SourceError, match="not supported"):
        catalog.spec_from_config({"model_type": "llama"})
