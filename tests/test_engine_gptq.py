"""Calibrated INT4 (Olive's GPTQ before the ONNX Runtime GenAI builder) on tiny checkpoints:
GPTQ beats plain RTN on the calibration data, the 8-bit module set reaches the graph and the
manifest, the calibration text is recorded, and bad inputs are refused before any work."""

import json
from pathlib import Path

import pytest
from conftest import make_tiny_model, mean_kl

from edgeqwen import calibration
from edgeqwen.artifacts import load_manifest
from edgeqwen.calibration import CalibrationError
from edgeqwen.errors import RecipeError
from edgeqwen.pipeline import build
from edgeqwen.recipes import parse_recipe
from runtimes.onnxruntime_genai_backend import OnnxGenAIRuntime
from runtimes.transformers_backend import TransformersRuntime

BASE = {"name": "t", "description": "t", "format": "onnx", "precision": "int4"}
BODY = {"algo_config": "rtn", "is_symmetric": False, "block_size": 32}
GPTQ = {"seq_len": 64, "max_samples": 16}


def recipe(**algorithm: object):
    return parse_recipe({**BASE, "algorithm": {**BODY, **algorithm}})


@pytest.fixture(scope="module")
def untied(module_dir) -> Path:
    # Untied embeddings: the LM head is its own MatMul, as in the 0.5B sample.
    return make_tiny_model(module_dir / "gptq" / "qwen2", "qwen2", tied=False, seed=3)


@pytest.fixture(scope="module")
def calib_file(module_dir) -> Path:
    path = module_dir / "mine.txt"
    path.write_text(calibration.SHIPPED.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gptq_art(untied, calib_file, module_dir) -> Path:
    r = recipe(matmul_mixed_precision={"last_matmul": "int8"}, gptq={**GPTQ, "int8": ["*.self_attn.o_proj"]})
    return build(r, str(untied), module_dir / "a" / "gptq", calibration=calib_file).path


def test_gptq_beats_rtn_on_the_calibration_text(untied, calib_file, gptq_art, tmp_path) -> None:
    rtn = build(recipe(matmul_mixed_precision={"last_matmul": "int8"}), str(untied), tmp_path / "rtn").path
    ref = TransformersRuntime.load(untied, threads=1)
    ids = ref.encode(calib_file.read_text(encoding="utf-8"))[:256]
    want = ref.logits(ids)
    kl_gptq = mean_kl(want, OnnxGenAIRuntime.load(gptq_art, threads=1).logits(ids))
    kl_rtn = mean_kl(want, OnnxGenAIRuntime.load(rtn, threads=1).logits(ids))
    assert 0 < kl_gptq < 0.8 * kl_rtn, (kl_gptq, kl_rtn)


def test_manifest_records_calibration_and_8_bit_set(gptq_art, calib_file) -> None:
    engine = load_manifest(gptq_art).engine
    gptq = engine["gptq"]
    assert gptq["engine"] == "olive Gptq pass" and gptq["int8"] == ["*.self_attn.o_proj"]
    assert gptq["int8_modules"] == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
    calib = gptq["calibration"]
    assert calib["file"] == str(calib_file) and calib["seq_len"] == 64
    assert calib["samples"] == min(16, calib["tokens"] // 64) == 16
    assert calib["sha256"] == calibration.load(calib_file).sha256
    # The graph has exactly those (and the LM head) at 8 bits; everything else GPTQ made 4-bit.
    assert sorted(engine["matmul_bits"]["int8"]) == sorted([
        "/lm_head/MatMul_Q8", *(f"/model/layers.{i}/attn/o_proj/MatMulNBits" for i in (0, 1))])
    # 2 layers x (qkv, gate, up, down): gate and up stay apart once GPTQ has packed them
    assert engine["matmul_bits"]["int4"] == 8
    assert json.loads((gptq_art / "genai_config.json").read_text())["search"]["max_length"] == 512


def test_shipped_calibration_files_int4_head_and_layers_counted_from_the_end(untied, tmp_path) -> None:
    """The default recipe's shape: the shipped files it names, GPTQ for the LM head (run by
    olive_launch, which keeps none of the head's outputs), INT8 in blocks of 128 for the last
    layer's MLP."""
    import onnx

    r = recipe(gptq={**GPTQ, "lm_head": True, "int8": ["*.layers.-1.mlp.*"], "int8_block_size": 128,
                     "calibration": ["default.txt", "sampled.jsonl"]})
    art = build(r, str(untied), tmp_path / "a").path
    engine = load_manifest(art).engine
    gptq = engine["gptq"]
    assert gptq["calibration"]["file"] == "edgeqwen/texts/calibration/default.txt+sampled.jsonl"
    assert gptq["calibration"]["sha256"] == calibration.load(shipped=("default.txt", "sampled.jsonl")).sha256
    assert gptq["int8_modules"] == [f"model.layers.1.mlp.{m}_proj" for m in ("down", "gate", "up")]
    bits = engine["matmul_bits"]
    mlp = ("down", "gate", "up")
    assert sorted(bits["int8"]) == [f"/model/layers.1/mlp/{m}_proj/MatMulNBits" for m in mlp]
    # 2 x qkv, 2 x o, layer 0's gate/up/down and the LM head, all GPTQ INT4
    assert bits["int4"] == 8
    # down_proj reads the 128-wide MLP: one block of 128; gate/up read the 64-wide hidden state,
    # which 128 does not divide, so they keep the recipe's 32
    graph = onnx.load(str(art / "model.onnx"), load_external_data=False).graph
    blocks = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
              for n in graph.node if n.op_type == "MatMulNBits"}
    assert {name: (b["bits"], b["block_size"]) for name, b in blocks.items() if "layers.1/mlp" in name} == {
        "/model/layers.1/mlp/down_proj/MatMulNBits": (8, 128),
        "/model/layers.1/mlp/gate_proj/MatMulNBits": (8, 32),
        "/model/layers.1/mlp/up_proj/MatMulNBits": (8, 32)}
    assert gptq["int8_block_sizes"] == [32, 128]
    others = {(b["bits"], b["block_size"]) for name, b in blocks.items() if "layers.1/mlp" not in name}
    assert others == {(4, 32)}


def test_layers_counted_from_the_end_beyond_a_shallow_model_select_nothing(untied) -> None:
    from edgeqwen.engines.olive_gptq import int8_modules

    # The tiny model has 2 layers: -3 is before the first (the default recipe on a small model)
    assert int8_modules(untied, ["*.layers.-3.mlp.*", "*.layers.-1.mlp.down_proj"]) == [
        "model.layers.1.mlp.down_proj"]
    assert int8_modules(untied, ["*.layers.-2.self_attn.o_proj"]) == ["model.layers.0.self_attn.o_proj"]


def test_recipe_combinations_that_cannot_work_are_refused(untied, tmp_path) -> None:
    with pytest.raises(RecipeError, match="mixed_layers does not apply"):
        build(recipe(matmul_mixed_precision={"mixed_layers": "int8"}, gptq=GPTQ), str(untied), tmp_path / "a")
    with pytest.raises(RecipeError, match="nothing left to change"):
        build(recipe(matmul_mixed_precision={"last_matmul": "int8"}, gptq={**GPTQ, "lm_head": True}),
              str(untied), tmp_path / "b")
    with pytest.raises(RecipeError, match="matches no layer"):
        build(recipe(gptq={**GPTQ, "int8": ["*.attention.*"]}), str(untied), tmp_path / "c")
    with pytest.raises(RecipeError, match="gptq.seq_len"):
        build(recipe(gptq={"seq_len": 8}), str(untied), tmp_path / "d")
    # a block size MatMulNBits cannot pack fails at the recipe, not minutes into Olive
    with pytest.raises(RecipeError, match="gptq.int8_block_size"):
        build(recipe(gptq={**GPTQ, "int8": ["*.self_attn.o_proj"], "int8_block_size": 100}), str(untied),
              tmp_path / "e")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_calibration_input_errors(untied, tmp_path) -> None:
    # A recipe without GPTQ has no use for calibration text: say so rather than ignore it.
    with pytest.raises(RecipeError, match="does not calibrate"):
        build(recipe(), str(untied), tmp_path / "a", calibration=calibration.SHIPPED)
    # A bad file fails before the slow steps, with what to pass instead.
    with pytest.raises(CalibrationError, match="does not exist"):
        build(recipe(gptq=GPTQ), str(untied), tmp_path / "b", calibration=tmp_path / "missing.txt")
    short = tmp_path / "short.txt"
    short.write_text("def add(a, b): return a + b", encoding="utf-8")
    with pytest.raises(CalibrationError, match="fewer than one GPTQ sample") as err:
        build(recipe(gptq=GPTQ), str(untied), tmp_path / "c", calibration=short)
    assert "--calibration" in err.value.hint
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_cli_passes_the_calibration_file(untied, tmp_path, capsys) -> None:
    from edgeqwen.cli import main

    (tmp_path / "r.yaml").write_text(json.dumps({**BASE, "algorithm": BODY}), encoding="utf-8")
    code = main(["build", str(tmp_path / "r.yaml"), "-m", str(untied), "-o", str(tmp_path / "out"),
                 "--calibration", str(calibration.SHIPPED), "--no-validate"])
    assert code == 1 and "does not calibrate" in capsys.readouterr().err


def test_memory_plan_covers_the_measured_peaks_and_lets_the_1_5b_build_on_24_gib() -> None:
    from edgeqwen import catalog
    from edgeqwen.engines.olive_gptq import peak_memory

    def plan(model_id: str) -> int:
        return peak_memory(catalog.CATALOG[model_id].weight_bytes("fp32"))

    # measured Olive peaks (89 x 256 tokens, GPTQ head): 0.5B up to 7,896 MiB, 1.5B 16,816 MiB
    assert 7_896 * 2**20 < plan("qwen2.5-coder-0.5b-instruct") < 9e9
    assert 16_816 * 2**20 < plan("qwen2.5-coder-1.5b-instruct") < 0.8 * 24 * 2**30
    assert plan("qwen2.5-coder-3b-instruct") > 24 * 2**30  # refused here, with the numbers
