"""The ONNX engine on tiny Qwen2/Qwen3 checkpoints: every shipped ONNX recipe builds an
artifact that onnxruntime-genai loads unmodified, and recipe options reach the graph."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeqwen.artifacts import load_manifest, verify
from edgeqwen.errors import ArtifactError, EngineError, RecipeError
from edgeqwen.pipeline import build
from edgeqwen.recipes import load_recipe, parse_recipe, shipped_recipes
from runtimes.base import GenerationOptions
from runtimes.onnxruntime_genai_backend import OnnxGenAIRuntime
from runtimes.transformers_backend import TransformersRuntime

ONNX_RECIPES = sorted(n for n, p in shipped_recipes().items() if load_recipe(p).format == "onnx")
TEXT = "def add(a, b):\n    return a + b\nThe quick brown fox"


def graph_summary(folder: Path) -> dict[str, object]:
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nbits]
    return {
        "ops": {n.op_type for n in model.graph.node},
        "nbits": sorted({a["bits"] for a in attrs}),
        "bits_by_node": {n.name: a["bits"] for n, a in zip(nbits, attrs, strict=True)},
        "block_size": sorted({a["block_size"] for a in attrs}),
        "accuracy_level": sorted({a.get("accuracy_level", 0) for a in attrs}),
        "gather_block_quantized": any(n.op_type == "GatherBlockQuantized" for n in model.graph.node),
        # MatMulNBits takes a 4th input, zero points, only for asymmetric quantization.
        "zero_points": all(len([i for i in n.input if i]) >= 4 for n in nbits) if nbits else None,
    }


@pytest.fixture(scope="module")
def built() -> dict[tuple[str, str], Path]:
    """Artifacts built so far in this module, so each recipe x architecture builds once."""
    return {}


def build_once(cache: dict, recipe: str, model: Path, root: Path, arch: str) -> Path:
    key = (recipe, arch)
    if key not in cache:
        cache[key] = build(recipe, str(model), root / f"{arch}-{recipe}").path
    return cache[key]


@pytest.fixture(scope="module")
def art_root(module_dir) -> Path:
    return module_dir / "onnx-artifacts"


@pytest.mark.parametrize("recipe", ONNX_RECIPES)
def test_shipped_recipe_builds_a_loadable_artifact(recipe, tiny_model, art_root, built) -> None:
    import onnxruntime_genai as og

    arch = json.loads((tiny_model / "config.json").read_text())["model_type"]
    art = build_once(built, recipe, tiny_model, art_root, arch)
    og.Model(str(art))  # stock onnxruntime-genai loads it as it is
    assert verify(art) == []
    manifest = load_manifest(art)
    r = load_recipe(recipe)
    assert manifest.runtime == "onnxruntime-genai" and manifest.engine["name"] == "onnxruntime-genai"
    assert manifest.engine["options"]["precision"] == r.precision
    assert manifest.tools["onnxruntime-genai"] == og.__version__
    files = {f.path for f in manifest.files}
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "chat_template.jinja"} <= files
    genai = json.loads((art / "genai_config.json").read_text())
    # The tiny model's own context is 512: the recipe's 4096 is capped to it.
    assert genai["search"]["max_length"] == 512 == manifest.engine["search_max_length"]
    summary = graph_summary(art)
    if r.precision in ("int4", "int8"):
        mixed = r.algorithm.get("matmul_mixed_precision", {})
        gptq8 = (r.algorithm.get("gptq") or {}).get("int8", [])  # modules GPTQ keeps at 8 bits
        has8 = bool(mixed or gptq8)
        assert summary["nbits"] == sorted({4 if r.precision == "int4" else 8, *([8] if has8 else [])})
        if "last_matmul" in mixed:  # the LM head is the one kept in 8 bits
            assert summary["bits_by_node"]["/lm_head/MatMul_Q8"] == 8
        # The manifest records which MatMuls got which width: the majority width by count,
        # the other by name.
        recorded = manifest.engine["matmul_bits"]
        assert sorted(recorded) == [f"int{b}" for b in summary["nbits"]]
        for bits in summary["nbits"]:
            names = sorted(n for n, b in summary["bits_by_node"].items() if b == bits)
            value = recorded[f"int{bits}"]
            assert (value == len(names)) if isinstance(value, int) else (sorted(value) == names)
        if len(summary["nbits"]) == 2:
            assert sum(isinstance(v, int) for v in recorded.values()) == 1
        # GPTQ's 8-bit modules may have their own block size (where it divides their input width)
        int8_block = (r.algorithm.get("gptq") or {}).get("int8_block_size")
        assert set(summary["block_size"]) <= {r.algorithm["block_size"], int8_block}
        assert r.algorithm["block_size"] in summary["block_size"]
        assert summary["accuracy_level"] == [r.algorithm["accuracy_level"]]
    else:
        assert "MatMulNBits" not in summary["ops"]


@pytest.mark.parametrize("recipe", ONNX_RECIPES)
def test_artifact_tracks_the_reference(recipe, tiny_model, art_root, built) -> None:
    arch = json.loads((tiny_model / "config.json").read_text())["model_type"]
    art = build_once(built, recipe, tiny_model, art_root, arch)
    onnx_rt = OnnxGenAIRuntime.load(art, threads=1)
    ref = TransformersRuntime.load(tiny_model, threads=1)
    ids = ref.encode(TEXT)
    assert onnx_rt.encode(TEXT) == ids
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert onnx_rt.render_chat(messages) == ref.render_chat(messages)
    got, want = onnx_rt.logits(ids), ref.logits(ids)
    assert got.shape == want.shape
    error = np.abs(got - want).max() / np.abs(want).max()
    limit = {"fp32": 1e-4, "int8": 0.05, "int4": 0.5}[load_recipe(recipe).precision]
    assert error < limit, f"relative logit error {error:.4f} for {recipe}"
    if load_recipe(recipe).precision == "fp32":
        greedy = GenerationOptions(max_new_tokens=8)
        assert list(onnx_rt.stream_ids(ids, greedy)) == list(ref.stream_ids(ids, greedy))


def test_options_reach_the_graph(tmp_path) -> None:
    from conftest import make_tiny_model

    # Untied embeddings (like the 0.5B sample): with tied ones the builder shares the
    # quantized LM head with the embedding whatever op_types_to_quantize says.
    untied = make_tiny_model(tmp_path / "untied", "qwen2", tied=False)
    base = {"name": "t", "description": "t", "format": "onnx", "precision": "int4"}
    a = build(parse_recipe({**base, "algorithm": {"block_size": 64, "accuracy_level": 1}}),
              str(untied), tmp_path / "a").path
    b = build(parse_recipe({**base, "algorithm": {"block_size": 16, "is_symmetric": False,
                                                   "op_types_to_quantize": ["MatMul", "Gather"]}}),
              str(untied), tmp_path / "b").path
    sa, sb = graph_summary(a), graph_summary(b)
    assert sa["block_size"] == [64] and sa["accuracy_level"] == [1]
    assert not sa["gather_block_quantized"] and sa["zero_points"] is False
    assert sb["block_size"] == [16] and sb["gather_block_quantized"] and sb["zero_points"] is True
    assert load_manifest(b).engine["options"]["extra_options"]["op_types_to_quantize"] == "MatMul/Gather"


def test_old_option_names_are_refused(tiny_qwen2, tmp_path) -> None:
    recipe = parse_recipe({"name": "t", "description": "t", "format": "onnx", "precision": "int4",
                           "algorithm": {"int4_block_size": 32}})
    with pytest.raises(RecipeError, match="algorithm.int4_block_size: Extra inputs are not permitted"):
        build(recipe, str(tiny_qwen2), tmp_path / "x")
    fp32 = parse_recipe({"name": "t", "description": "t", "format": "onnx", "precision": "fp32",
                         "algorithm": {"block_size": 32}})
    with pytest.raises(RecipeError, match="apply to int4/int8 only"):
        build(fp32, str(tiny_qwen2), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_missing_model_files_and_existing_output(tiny_qwen2, tmp_path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen2, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(EngineError, match="builder failed"):
        build("onnx-cpu-int4-rtn", str(broken), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    (tmp_path / "exists").mkdir()
    with pytest.raises(ArtifactError, match="already exists"):
        build("onnx-cpu-int4-rtn", str(tiny_qwen2), tmp_path / "exists")


def test_cli_run_and_chat(tiny_qwen2, tmp_path, capsys, monkeypatch) -> None:
    from edgeqwen.cli import main

    art = build("onnx-cpu-fp32", str(tiny_qwen2), tmp_path / "fp32").path
    ref = TransformersRuntime.load(tiny_qwen2, threads=1)
    greedy = GenerationOptions(max_new_tokens=6)
    assert main(["run", str(art), "The quick", "--raw", "-n", "6", "--threads", "1"]) == 0
    assert capsys.readouterr().out == ref.generate("The quick", greedy) + "\n"

    lines = iter(["hi", "/reset", "hi", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(art), "-n", "6", "--threads", "1"]) == 0
    reply = ref.chat([{"role": "user", "content": "hi"}], greedy)
    assert capsys.readouterr().out == f"{reply}\n{reply}\n"  # /reset: same answer twice
    info = OnnxGenAIRuntime.load(art, threads=1).info()
    assert info["threads"] == 1 and info["rss_mb"] > 0 and info["max_length"] == 512
