"""The QNN engine and runtime on tiny Qwen2/Qwen3 checkpoints: static-shape graphs traced from
the model, QDQ-quantized by onnxruntime and run on the QNN HTP backend (emulated on x86-64)
with CPU fallback disabled, measured against the transformers reference."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_tiny_model, mean_kl

from edgeqwen.artifacts import load_manifest, verify
from edgeqwen.cli import main
from edgeqwen.engines import qnn_export
from edgeqwen.errors import ArtifactError, EngineError, RecipeError, ResourceError
from edgeqwen.pipeline import build
from edgeqwen.qnn_kv import MASK_VALUE, ContextFull, GraphShape, KVCache, session_runner
from edgeqwen.recipes import load_recipe, parse_recipe
from runtimes.base import GenerationOptions
from runtimes.qnn_backend import QNNRuntime
from runtimes.transformers_backend import TransformersRuntime

TEXT = "def add(a, b):\n    return a + b\nThe quick brown fox jumps over the lazy dog. Hej verden! " * 6
TINY = {"name": "qnn-tiny", "description": "t", "format": "qnn", "precision": "a16w8",
        "algorithm": {"prefill_chunk": 32, "seq_len": 64, "max_samples": 4},
        "target": {"device": "npu-qnn", "profile": "phone"}, "context_length": 256}


@pytest.fixture(scope="module")
def sources(module_dir, qwen_tokenizer) -> dict[str, Path]:
    root = module_dir / "qnn-src"
    return {arch: make_tiny_model(root / arch, arch, tokenizer=qwen_tokenizer)
            for arch in ("qwen2", "qwen3")}


@pytest.fixture(scope="module")
def artifacts(module_dir, sources) -> dict[str, Path]:
    root = module_dir / "qnn"
    return {arch: build(parse_recipe(TINY), str(src), root / arch).path for arch, src in sources.items()}


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_traced_graphs_compute_what_transformers_does(arch, sources, tmp_path) -> None:
    """Before quantization the static graphs are the model itself: the prefill graph in chunks
    (padded last chunk, masks, positions, the host's KV cache writes) and then the decode
    graph token by token give transformers' logits."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sources[arch], dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    c = model.config
    shape = GraphShape(layers=c.num_hidden_layers, kv_heads=c.num_key_value_heads,
                       head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
                       context=96, prefill_chunk=16, vocab=c.vocab_size)
    runs = {}
    for name, chunk in (("prefill", 16), ("decode", 1)):
        qnn_export.export_graph(model, shape, chunk, tmp_path / f"{name}-traced.onnx")
        qnn_export.tidy(tmp_path / f"{name}-traced.onnx", tmp_path / f"{name}.onnx")
        runs[name] = session_runner(ort.InferenceSession(str(tmp_path / f"{name}.onnx"),
                                                         providers=["CPUExecutionProvider"]))
    ops = {n.op_type for name in runs for n in onnx.load(str(tmp_path / f"{name}.onnx")).graph.node}
    assert "SimplifiedLayerNormalization" in ops and not ops & {"GroupQueryAttention", "Shape", "Cos", "Sin"}

    ids = TransformersRuntime.load(sources[arch], threads=1).encode(TEXT)[:60]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    cache = KVCache(shape)
    got = cache.prefill(runs["prefill"], ids[:45], 16)  # 16 + 16 + 13 (padded)
    for token in ids[45:]:
        got = np.concatenate([got, cache.step(runs["decode"], [token], 1)])
    assert cache.length == 60 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_kv_cache_masks_and_limits() -> None:
    shape = GraphShape(layers=1, kv_heads=1, head_dim=2, context=8, prefill_chunk=4, vocab=5)
    cache = KVCache(shape)
    cache.length = 3
    feeds = cache.feeds([7, 8], 4)
    assert feeds["input_ids"].tolist() == [[7, 8, 0, 0]]
    assert feeds["position_ids"].tolist() == [[3, 4, 5, 6]]
    mask = feeds["attention_mask"][0, 0]
    assert mask.shape == (4, 12)
    assert (mask[:, :3] == 0).all() and (mask[:, 3:8] == MASK_VALUE).all()  # filled past only
    assert mask[1, 8:].tolist() == [0, 0, MASK_VALUE, MASK_VALUE]  # causal among the new tokens
    present = np.arange(8, dtype=np.float32).reshape(1, 1, 4, 2)
    cache.append([None, present, -present], 2)
    assert cache.length == 5
    assert cache.keys[0, 0, 0, 3:5].tolist() == [[0, 1], [2, 3]]
    assert cache.values[0, 0, 0, 4].tolist() == [-2, -3]
    with pytest.raises(ContextFull, match="9 tokens do not fit the 8-token KV cache"):
        cache.length = 5
        cache.feeds([1, 2, 3, 4], 4)
    with pytest.raises(ValueError, match="1 to 4 tokens"):
        cache.feeds([1] * 5, 4)


def test_artifact_runs_on_the_htp_backend(artifacts, sources) -> None:
    """Every node runs on QNN's HTP backend (CPU fallback is disabled, so a session would not
    load otherwise); 16-bit activations / 8-bit weights stay close to the fp32 reference and
    generation follows its greedy tokens."""
    import onnxruntime as ort

    for arch, art in artifacts.items():
        manifest = load_manifest(art)
        assert (manifest.format, manifest.runtime) == ("qnn", "qnn")
        assert manifest.engine["name"] == "onnxruntime-qnn"
        assert verify(art) == []
        config = json.loads((art / "qnn_config.json").read_text())
        assert config["shape"] == {"layers": 2, "kv_heads": 2, "head_dim": 16, "context": 256,
                                   "prefill_chunk": 32, "vocab": 151936}
        assert config["context_binary_files"] == {"prefill": "prefill.qnn.onnx", "decode": "decode.qnn.onnx"}
        assert manifest.engine["calibration"]["samples"] == 4 and manifest.tools["onnxruntime-qnn"] == "2.7.0"
        for name in ("prefill", "decode"):
            model = onnx.load(str(art / f"{name}.onnx"), load_external_data=False)
            ops = {n.op_type for n in model.graph.node}
            assert {"QuantizeLinear", "DequantizeLinear", "Gemm", "Softmax"} <= ops
            # Linear layers are Gemm (per-channel weights); the attention core stays float (fp16
            # on the HTP)
            dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
            softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
            assert len(softmax) == 2 and not any(n.input[0] in dequantized for n in softmax)
            gemm_weights = [n.input[1] for n in model.graph.node if n.op_type == "Gemm"]
            assert len(gemm_weights) == 2 * 7 + 1  # q k v o gate up down per layer + the LM head
            assert all(w.endswith("_DequantizeLinear_Output") for w in gemm_weights)
            # the compiled model is one EPContext node pointing at its own context binary
            node, = onnx.load(str(art / f"{name}.qnn.onnx")).graph.node
            binary = next(a.s.decode() for a in node.attribute if a.name == "ep_cache_context")
            assert node.op_type == "EPContext" and (art / binary).stat().st_size > 100_000
        # The weights are stored once for both graphs (both reference every large tensor).
        data = (art / "model.data").stat().st_size
        refs = sum(t.external_data[2].value and int(t.external_data[2].value)
                   for t in onnx.load(str(art / "decode.onnx"), load_external_data=False).graph.initializer
                   if t.external_data)
        assert refs <= data < refs * 1.2
        # The memory statement counts what the runtime loads: the two context binaries.
        binaries = sum((art / f"{name}.qnn_qnn.bin").stat().st_size for name in ("prefill", "decode"))
        assert manifest.memory["weights_bytes"] == binaries and manifest.memory["kv_cache_type"] == "f32"

        ref = TransformersRuntime.load(sources[arch], threads=1)
        rt = QNNRuntime.load(art)
        assert rt.info()["graphs"] == "context binaries" and rt.info()["context_length"] == 256
        ids = ref.encode(TEXT)
        assert rt.encode(TEXT) == ids and 100 < len(ids) < 256
        ref_logits, logits = ref.logits(ids), rt.logits(ids)
        agree = float(np.mean(logits.argmax(-1) == ref_logits.argmax(-1)))
        kl = mean_kl(ref_logits, logits)
        assert 0 < kl < 0.01 and agree > 0.9, (arch, kl, agree)
        # The QDQ graph compiled at load and the offline context binary compute the same.
        from edgeqwen import qnn_ep

        session = ort.InferenceSession(str(art / "prefill.onnx"), qnn_ep.session_options())
        cache = KVCache(rt.shape)
        compiled_at_load = cache.prefill(session_runner(session), ids[:40], 32)
        np.testing.assert_allclose(compiled_at_load, logits[:40], atol=0.05)

        prompt = ids[:50]
        options = GenerationOptions(max_new_tokens=10)
        assert list(rt.stream_ids(prompt, options)) == list(ref.stream_ids(prompt, options))
        with pytest.raises(ValueError, match="the context holds 256"):
            list(rt.stream_ids(list(range(300)), options))


def test_a16w4_stores_int4_weights_and_runs_on_the_htp(sources, tmp_path) -> None:
    """a16w4: every Gemm weight is a per-channel int4 initializer; the graph still runs on the
    HTP backend alone (its int4 zero points stored in the shared weights file as ONNX packs
    them), the context binary compiles, and the result stays close to the reference."""
    recipe = parse_recipe({**TINY, "name": "qnn-tiny-w4", "precision": "a16w4"})
    art = build(recipe, str(sources["qwen2"]), tmp_path / "w4").path
    assert json.loads((art / "qnn_config.json").read_text())["weights"] == "int4 per channel"
    model = onnx.load(str(art / "decode.onnx"), load_external_data=False)
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemm) == 2 * 7 + 1
    for node in gemm:
        dequant = producers[node.input[1]]
        weight, scale = initializers[dequant.input[0]], initializers[dequant.input[1]]
        assert weight.data_type == onnx.TensorProto.INT4
        assert list(scale.dims) == [weight.dims[0]]  # one scale per output channel
    assert (art / "decode.qnn_qnn.bin").stat().st_size > 100_000

    ref = TransformersRuntime.load(sources["qwen2"], threads=1)
    rt = QNNRuntime.load(art)
    ids = ref.encode(TEXT)
    ref_logits, logits = ref.logits(ids), rt.logits(ids)
    kl, agree = mean_kl(ref_logits, logits), float(np.mean(logits.argmax(-1) == ref_logits.argmax(-1)))
    assert 0 < kl < 0.01 and agree > 0.9, (kl, agree)  # measured 0.0002, 98.8%


def test_cli_validates_the_artifact(artifacts) -> None:
    art = artifacts["qwen3"]
    # 300 tokens per text: validation cuts its windows to the artifact's 256-token context.
    assert main(["validate", str(art), "--max-tokens", "300", "--greedy-tokens", "4"]) == 0
    validation = load_manifest(art).validation
    assert validation["overall"]["tokens"] == 3 * (255 + 43) and validation["overall"]["kl"] < 0.01
    assert validation["greedy_match"] is not None and len(validation["greedy"]) == 3


def test_bad_recipes_and_files_fail_clearly(sources, artifacts, tmp_path, monkeypatch) -> None:
    cases = [
        ({**TINY, "algorithm": {"prefill_chunk": 256}}, "prefill_chunk \\(256\\) must be smaller"),
        ({**TINY, "algorithm": {"htp_arch": 69}}, "algorithm.htp_arch"),
        ({**TINY, "algorithm": {"bits": 4}}, "algorithm.bits: Extra inputs"),
        ({**TINY, "precision": "int8"}, "'int8' is not allowed for format 'qnn'"),
    ]
    for data, message in cases:
        with pytest.raises(RecipeError, match=message):
            build(parse_recipe(data), str(sources["qwen2"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime_qnn" else real(name, *a))
    with pytest.raises(EngineError, match="needs the `onnxruntime-qnn` package"):
        build(parse_recipe(TINY), str(sources["qwen2"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()

    from edgeqwen import preflight

    free = type("Usage", (), {"free": 2**20})()
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: free)
    # 3.5x the 37.4 MiB of fp32 weights (the QNN build peaked at 2.95x on the sample)
    with pytest.raises(ResourceError, match=r"not enough disk for the fp32 and QDQ graphs: needs about "
                                            r"130.8 MiB in .*edgeqwen-work-.*, 1.0 MiB free(.|\n)*TMPDIR"):
        build(parse_recipe(TINY), str(sources["qwen2"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in artifacts["qwen2"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    binary = broken / "prefill.qnn_qnn.bin"
    binary.write_bytes(binary.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="cannot load prefill.qnn.onnx"):
        QNNRuntime.load(broken)
    (broken / "qnn_config.json").unlink()
    with pytest.raises(ArtifactError, match="holds no qnn_config.json"):
        QNNRuntime.load(broken)


def test_shipped_recipe_parses() -> None:
    recipe = load_recipe("npu-qnn-a16w8")
    assert (recipe.format, recipe.precision, recipe.target.device) == ("qnn", "a16w8", "npu-qnn")
    assert recipe.algorithm["htp_arch"] == 75 and recipe.context_length == 1024
