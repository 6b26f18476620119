"""The OpenVINO engine and runtime on tiny Qwen2/Qwen3 checkpoints: optimum-intel's export with
NNCF weight compression (in its own pinned folder), run by openvino-genai's LLMPipeline,
measured against the transformers reference."""

import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_model, mean_kl

from edgeqwen import optimum_intel_tools
from edgeqwen.artifacts import load_manifest, verify
from edgeqwen.cli import main
from edgeqwen.errors import ArtifactError, EngineError, RecipeError
from edgeqwen.pipeline import build
from edgeqwen.recipes import load_recipe, parse_recipe
from runtimes.base import GenerationOptions
from runtimes.openvino_backend import (
    DEVICE_ENV,
    OpenVINORuntime,
    choose_device,
    device_properties,
)
from runtimes.transformers_backend import TransformersRuntime

TEXT = "def add(a, b):\n    return a + b\nThe quick brown fox jumps over the lazy dog. Hej verden! " * 6
FP16 = {"name": "ov-fp16", "description": "t", "format": "openvino", "precision": "fp16",
        "context_length": 512}


@pytest.fixture(scope="module")
def sources(module_dir, qwen_tokenizer) -> dict[str, Path]:
    """Hidden size 128 (4 heads of 32), so the shipped recipes' groups of 128 apply."""
    root = module_dir / "ov-src"
    return {arch: make_tiny_model(root / arch, arch, tokenizer=qwen_tokenizer, head_dim=32)
            for arch in ("qwen2", "qwen3")}


@pytest.fixture(scope="module")
def fp16_irs(module_dir, sources) -> dict[str, Path]:
    root = module_dir / "ov"
    return {arch: build(parse_recipe(FP16), str(src), root / f"{arch}-fp16").path
            for arch, src in sources.items()}


@pytest.fixture(scope="module")
def int4_ir(module_dir, sources) -> Path:
    return build("openvino-int4", str(sources["qwen2"]), module_dir / "ov" / "int4").path


def _same_greedy_prefix(got: list[int], want: list[int]) -> int:
    pairs = enumerate(zip(got, want, strict=False))
    return next((i for i, (a, b) in pairs if a != b), min(len(got), len(want)))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_fp16_ir_computes_what_transformers_does(arch, fp16_irs, sources) -> None:
    """Uncompressed, the IR is the same function (RoPE, q/k/v biases or q/k norms, the stateful
    KV cache), up to the CPU plugin's inference precision (bf16 where the CPU has it)."""
    ref = TransformersRuntime.load(sources[arch], threads=1)
    rt = OpenVINORuntime.load(fp16_irs[arch], threads=1)
    ids = ref.encode(TEXT)
    assert rt.encode(TEXT) == ids and len(ids) > 100  # openvino-tokenizers' BPE = Qwen's tokenizer
    assert rt.decode(ids) == ref.decode(ids)
    ref_logits, logits = ref.logits(ids), rt.logits(ids)
    assert logits.shape == ref_logits.shape
    agree = float(np.mean(logits.argmax(-1) == ref_logits.argmax(-1)))
    assert mean_kl(ref_logits, logits) < 2e-3 and agree > 0.95
    info = rt.info()
    assert info["device"] == "CPU"
    assert info["properties"] == {"INFERENCE_NUM_THREADS": 1, "ATTENTION_BACKEND": "SDPA"}
    assert info["context_length"] == 512 and info["inference_precision"] in ("f32", "bf16", "f16")


def test_pipeline_generation_matches_the_logits_path(fp16_irs) -> None:
    """Greedy tokens from openvino-genai's pipeline (KV cache, its own sampler) are the argmax
    chain of the scoring path's logits, until a near-tie of a random model's flat logits."""
    rt = OpenVINORuntime.load(fp16_irs["qwen2"], threads=1)
    prompt = rt.encode(TEXT[:120])
    got = list(rt.stream_ids(prompt, GenerationOptions(max_new_tokens=12)))
    want: list[int] = []
    for _ in range(len(got)):
        want.append(int(rt.logits(prompt + want)[-1].argmax()))
    same = _same_greedy_prefix(got, want)
    assert len(got) == 12 and same >= 4
    if got != want:
        top2 = np.sort(rt.logits(prompt + want[:same])[-1])[-2:]
        assert top2[1] - top2[0] < 0.05, (same, top2)
    # A stop string cuts the text there and stops the pipeline (its thread ends).
    text = rt.generate(TEXT[:120], GenerationOptions(max_new_tokens=12))
    stop = text[4:7]
    assert stop and rt.generate(TEXT[:120], GenerationOptions(max_new_tokens=12, stop=[stop])) == \
        text[:text.index(stop)]
    sampled = [rt.generate(TEXT[:120], GenerationOptions(max_new_tokens=12, temperature=1.0, seed=7))
               for _ in range(2)]
    assert sampled[0] == sampled[1]  # seeded sampling repeats
    with pytest.raises(ValueError, match="the context holds 512"):
        list(rt.stream_ids(list(range(600)), GenerationOptions()))


def test_shipped_int4_recipe(int4_ir, fp16_irs, sources) -> None:
    manifest = load_manifest(int4_ir)
    assert (manifest.format, manifest.runtime) == ("openvino", "openvino")
    assert manifest.engine["name"] == "optimum-intel"
    assert verify(int4_ir) == []
    names = [f.path for f in manifest.files]
    for name in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml",
                 "openvino_detokenizer.xml", "chat_template.jinja"):
        assert name in names
    quant = manifest.engine["options"]["quantization_config"]
    assert (quant["bits"], quant["sym"], quant["group_size"], quant["ratio"]) == (4, True, 128, 0.8)
    assert quant["backup_precision"] == "int8_sym"
    assert manifest.engine["npu_ready"] is True and manifest.target["device"] == "npu-openvino"
    # What NNCF wrote: symmetric int4 layers, the tied embedding / LM head in int8, scales in f16.
    types = manifest.engine["weight_types"]
    # (this tiny model is 98% embedding)
    assert set(types) <= {"i4", "i8", "f16", "f32"} and types["i4"] > 0.005 and types["i8"] > 0.9
    assert manifest.recipe["runtime"]["max_prompt_len"] == 1024
    # The exporter's own transformers is recorded apart from the environment's.
    assert manifest.tools["transformers"] == importlib.metadata.version("transformers")
    assert manifest.tools["transformers (exporter)"] == optimum_intel_tools.PACKAGES["transformers"]
    assert manifest.tools["optimum-intel"] == "2.2.0" and manifest.tools["nncf"] == "3.4.0"
    # u8 KV cache at the model's trained 512 tokens (the recipe asks for 4096)
    assert manifest.memory["kv_cache_type"] == "u8"
    assert manifest.memory["kv_cache_bytes"] == 2 * 2 * 2 * 32 * 512
    fp16_bin = (fp16_irs["qwen2"] / "openvino_model.bin").stat().st_size
    assert (int4_ir / "openvino_model.bin").stat().st_size < fp16_bin * 0.6

    ref = TransformersRuntime.load(sources["qwen2"], threads=1)
    ids = ref.encode(TEXT)
    ref_logits = ref.logits(ids)
    kl_int4 = mean_kl(ref_logits, OpenVINORuntime.load(int4_ir, threads=1).logits(ids))
    kl_fp16 = mean_kl(ref_logits, OpenVINORuntime.load(fp16_irs["qwen2"], threads=1).logits(ids))
    assert kl_fp16 < kl_int4 < 0.05


def test_cli_validates_and_runs_the_ir(int4_ir, capsys) -> None:
    assert main(["validate", str(int4_ir), "--max-tokens", "128"]) == 0
    validation = load_manifest(int4_ir).validation
    assert validation["passed"] is True and validation["overall"]["tokens"] > 100
    assert main(["run", str(int4_ir), "hello world", "--raw", "-n", "6", "--threads", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed == OpenVINORuntime.load(int4_ir, threads=1).generate("hello world",
                                                                        GenerationOptions(max_new_tokens=6))


def test_calibrated_int4_records_its_data(tmp_path, sources, int4_ir) -> None:
    """AWQ + scale estimation run on the shipped calibration text and change the weights."""
    data = {**load_recipe("openvino-int4").model_dump(), "name": "ov-awq",
            "algorithm": {"group_size": 128, "awq": True, "scale_estimation": True, "seq_len": 64,
                          "max_samples": 4}}
    manifest = build(parse_recipe(data), str(sources["qwen2"]), tmp_path / "awq").manifest
    calibration = manifest.engine["calibration"]
    assert calibration["file"] == "edgeqwen/texts/calibration/default.txt"
    assert (calibration["samples"], calibration["seq_len"]) == (4, 64) and calibration["tokens"] > 5000
    quant = manifest.engine["options"]["quantization_config"]
    assert quant["quant_method"] == "awq" and quant["scale_estimation"] is True

    def digest(folder: Path) -> str:
        return hashlib.sha256((folder / "openvino_model.bin").read_bytes()).hexdigest()

    assert digest(tmp_path / "awq") != digest(int4_ir)


def test_npu_device_and_its_static_shapes(monkeypatch) -> None:
    """An npu-openvino artifact runs on the NPU when there is one, with the recipe's prompt and
    reply sizes as the pipeline's NPU properties; elsewhere on the CPU with its threads."""
    import openvino

    class WithNPU:
        available_devices = ("CPU", "GPU.0", "NPU")

    recipe = load_recipe("openvino-int4").model_dump(mode="json")
    settings = recipe["runtime"]
    assert device_properties("NPU", 2, settings) == {"MAX_PROMPT_LEN": 1024, "MIN_RESPONSE_LEN": 128}
    cpu = device_properties("CPU", 2, settings)
    assert cpu == {"INFERENCE_NUM_THREADS": 2, "ATTENTION_BACKEND": "SDPA"}
    monkeypatch.setattr(openvino, "Core", WithNPU)
    assert choose_device(recipe) == "NPU"
    assert choose_device({**recipe, "target": {"device": "cpu"}}) == "CPU"
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    assert choose_device(recipe) == "GPU"  # GPU.0 is a GPU


def test_exporter_folder_completes_what_no_deps_left_out(tmp_path) -> None:
    """The exporter folder is installed without dependencies; what its packages require and
    the environment lacks is named (merged specifiers) and installed into it; torchvision
    (CUDA wheels) never is."""
    dist = tmp_path / "fake_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-pkg\nVersion: 1.0\n"
        "Requires-Dist: edgeqwen-no-such-package>=1\nRequires-Dist: edgeqwen_no_such-package<3\n"
        "Requires-Dist: torchvision\nRequires-Dist: numpy\nRequires-Dist: fake-pkg\n"
        "Requires-Dist: edgeqwen-other; extra == 'docs'\n", encoding="utf-8")
    assert optimum_intel_tools.missing_requirements(tmp_path) == ["edgeqwen-no-such-package<3,>=1"]
    assert optimum_intel_tools.missing_requirements(optimum_intel_tools.exporter_dir()) == []


def test_bad_recipes_devices_and_files_fail_clearly(sources, int4_ir, tmp_path, monkeypatch) -> None:
    int4 = {**FP16, "precision": "int4"}
    cases = [
        ({**int4, "algorithm": {"group_size": 256}}, "hidden size 128 is not a multiple"),
        ({**FP16, "algorithm": {"sym": True}}, "precision fp16 takes no algorithm options"),
        ({**FP16, "precision": "int8", "algorithm": {"awq": True}}, "only algorithm.sym applies"),
        ({**int4, "algorithm": {"seq_len": 128}}, "neither awq nor scale_estimation is on"),
        ({**int4, "algorithm": {"bits": 3}}, "algorithm.bits: Extra inputs"),
        ({**int4, "target": {"device": "npu-openvino"}, "algorithm": {"group_size": 32}},
         "Intel's NPU compiles nothing else"),
    ]
    for data, message in cases:
        with pytest.raises(RecipeError, match=message):
            build(parse_recipe(data), str(sources["qwen2"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()

    monkeypatch.setenv(optimum_intel_tools.FOLDER_ENV, str(tmp_path))
    with pytest.raises(EngineError, match="holds no optimum-intel"):
        build(parse_recipe(int4 | {"algorithm": {"group_size": 32}}), str(sources["qwen2"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv(optimum_intel_tools.FOLDER_ENV)

    monkeypatch.setenv(DEVICE_ENV, "NPU")  # no Intel NPU on this machine
    with pytest.raises(ArtifactError, match="OpenVINO sees no such device"):
        OpenVINORuntime.load(int4_ir)
    monkeypatch.delenv(DEVICE_ENV)

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in int4_ir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = (broken / "openvino_model.bin").read_bytes()
    (broken / "openvino_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="OpenVINO cannot load"):
        OpenVINORuntime.load(broken)
    (broken / "openvino_detokenizer.xml").unlink()
    with pytest.raises(ArtifactError, match="openvino_detokenizer.xml missing"):
        OpenVINORuntime.load(broken)
