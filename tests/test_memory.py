"""The memory statement: KV cache and weight arithmetic, per recipe and per catalog model."""

import json

import pytest

from edgeqwen import catalog, memory
from edgeqwen.cli import main
from edgeqwen.fit import plan
from edgeqwen.recipes import load_recipe

MiB = 2**20


def test_kv_cache_per_type_and_capped_at_trained_context() -> None:
    m = catalog.get("qwen2.5-coder-0.5b-instruct")  # 24 layers x 2 KV heads x 64 dims x K and V
    assert memory.kv_cache_bytes(m, 2048) == 2 * 24 * 2 * 64 * 2048 * 2 == 24 * MiB
    assert memory.kv_cache_bytes(m, 2048, "f32") == 48 * MiB
    assert memory.kv_cache_bytes(m, 2048, "q8_0") == 24 * MiB * 17 // 32
    math = catalog.get("qwen2.5-math-1.5b-instruct")  # trained for 4096 tokens
    assert memory.kv_cache_bytes(math, 100_000) == memory.kv_cache_bytes(math, 4096)


def test_four_bit_formats_keep_embeddings_at_eight_bits() -> None:
    m = catalog.get("qwen2.5-0.5b-instruct")
    embeddings = 151936 * 896  # tied: stored once
    q4_0 = memory.estimated_weight_bytes(m, "Q4_0")
    assert q4_0 == int((m.params - embeddings) * 4.5 / 8 + embeddings * 8.5 / 8)
    assert memory.estimated_weight_bytes(m, "Q8_0") == int(m.params * 8.5 / 8)
    assert memory.estimated_weight_bytes(m, "int4") == m.weight_bytes("int4")  # generic class: flat
    assert memory.estimated_weight_bytes(m, "Q4_0") < memory.estimated_weight_bytes(m, "Q4_K_M") \
        < memory.estimated_weight_bytes(m, "Q5_K_M") < memory.estimated_weight_bytes(m, "Q8_0")
    with pytest.raises(ValueError, match="no size model"):
        memory.estimated_weight_bytes(m, "Q1_Z")


def test_estimate_adds_up_and_names_the_runtime() -> None:
    m = catalog.get("qwen3-4b")
    est = memory.estimate(m, runtime="llama-cpp", context_length=2048, precision="Q4_K_M",
                          kv_cache_type="q8_0", mmap=True)
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.overhead_bytes
    assert est.overhead_bytes == memory.RUNTIME_OVERHEAD_BYTES["llama-cpp"] and not est.weights_exact
    exact = memory.estimate(m, runtime="executorch", context_length=2048, weights_bytes=123)
    assert exact.weights_bytes == 123 and exact.weights_exact
    assert exact.to_dict()["total_bytes"] == exact.total_bytes


@pytest.mark.parametrize(("recipe", "runtime", "kv"), [
    ("mobile-gguf-q4_0", "llama-cpp", "f16"), ("mobile-gguf-q4_k_m", "llama-cpp", "f16"),
    ("mobile-executorch-8da4w", "executorch", "f32"), ("onnx-cpu-int4", "onnxruntime-genai", "f32"),
])
def test_fit_with_a_recipe_sizes_every_catalog_model_as_it_builds_them(recipe, runtime, kv, capsys) -> None:
    r = load_recipe(recipe)
    rows, _ = plan(6 * 2**30, context=r.context_length, reserve=0.5, recipe=r)
    assert len(rows) == len(catalog.CATALOG)
    assert {(row.precision, row.memory.runtime, row.memory.kv_cache_type) for row in rows} == {
        (r.precision, runtime, kv)}
    assert main(["fit", "--ram", "6GB", "--reserve", "0.5", "--recipe", recipe, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipe"] == recipe and data["context"] == r.context_length  # the recipe's context
    row = next(x for x in data["rows"] if x["model"] == "qwen3-4b")
    m = catalog.get("qwen3-4b")
    assert row["kv_cache_bytes"] == memory.kv_cache_bytes(m, r.context_length, kv)
    assert row["weights_bytes"] == memory.estimated_weight_bytes(m, r.precision)


def test_fit_on_a_phone_with_the_mobile_recipe(capsys) -> None:
    assert main(["fit", "--device", "phone-4gb", "--recipe", "mobile-gguf-q4_k_m", "--task", "chat"]) == 0
    out = capsys.readouterr().out
    # 4 GiB x 0.5 = 2 GiB at 2048 tokens: the 3B at Q4_K_M needs 1.9 GiB + 72 MiB KV + 128 MiB,
    # just over; Qwen3-1.7B (1.0 GiB + 224 MiB KV + 128 MiB) fits.
    assert "mobile-gguf-q4_k_m (Q4_K_M, f16 KV cache, llama-cpp)" in out
    assert "Recommended: qwen3-1.7b at Q4_K_M" in out
    assert main(["fit", "--device", "phone-4gb", "--recipe", "no-such-recipe"]) == 1
    assert "neither a file nor a shipped recipe" in capsys.readouterr().err
