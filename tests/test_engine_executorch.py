"""The ExecuTorch engine and runtime on tiny Qwen2/Qwen3 checkpoints: ExecuTorch's LLM export
(XNNPACK, KV cache) with the pinned torch, run by ExecuTorch's Python runtime, measured
against the transformers reference."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import mean_kl

from edgeqwen.artifacts import load_manifest, verify
from edgeqwen.cli import main
from edgeqwen.errors import ArtifactError, RecipeError
from edgeqwen.pipeline import build
from edgeqwen.recipes import parse_recipe
from runtimes.base import GenerationOptions
from runtimes.executorch_backend import ExecuTorchRuntime
from runtimes.transformers_backend import TransformersRuntime

TEXT = "def add(a, b):\n    return a + b\nThe quick brown fox jumps over the lazy dog. Hej verden! " * 6
FP32 = {"name": "pte-fp32", "description": "t", "format": "pte", "precision": "fp32", "context_length": 512}


@pytest.fixture(scope="module")
def fp32_programs(module_dir, tiny_qwen2_real_vocab, tiny_qwen3_real_vocab) -> dict[str, Path]:
    root = module_dir / "pte"
    return {arch: build(parse_recipe(FP32), str(src), root / f"{arch}-fp32").path
            for arch, src in (("qwen2", tiny_qwen2_real_vocab), ("qwen3", tiny_qwen3_real_vocab))}


@pytest.fixture(scope="module")
def int4_program(module_dir, tiny_qwen2_real_vocab) -> Path:
    return build("mobile-executorch-8da4w", str(tiny_qwen2_real_vocab),
                 module_dir / "pte" / "8da4w").path


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_fp32_program_computes_what_transformers_does(arch, fp32_programs, request) -> None:
    """Unquantized, the exported program must be the same function: this checks the weight
    renaming, RoPE, q/k/v biases (Qwen2), q/k norms (Qwen3), the KV cache and chunked prefill."""
    ref = TransformersRuntime.load(request.getfixturevalue(f"tiny_{arch}_real_vocab"), threads=1)
    rt = ExecuTorchRuntime.load(fp32_programs[arch], threads=1)
    assert not (Path.cwd() / "outputs").exists()  # the export's hydra log stayed in the work dir
    ids = ref.encode(TEXT)
    assert rt.encode(TEXT) == ids and len(ids) > 100
    ref_logits, logits = ref.logits(ids), rt.logits(ids)
    assert logits.shape == ref_logits.shape
    np.testing.assert_allclose(logits, ref_logits, atol=2e-4)
    # Greedy decoding through the KV cache follows the reference until a near-tie: a random
    # tiny model's logits are almost flat, so 1e-5 of float noise may pick the other token.
    options = GenerationOptions(max_new_tokens=24)
    got, want = list(rt.stream_ids(ids, options)), list(ref.stream_ids(ids, options))
    pairs = enumerate(zip(got, want, strict=False))
    same = next((i for i, (a, b) in pairs if a != b), min(len(got), len(want)))
    assert same >= 5
    if got != want:
        top2 = np.sort(ref.logits(ids + want[:same])[-1])[-2:]
        assert top2[1] - top2[0] < 1e-3, (same, top2)
    assert rt.info()["context_length"] == 512 and rt.info()["prefill_chunk"] == 511


def test_shipped_8da4w_recipe(int4_program, fp32_programs, tiny_qwen2_real_vocab) -> None:
    manifest = load_manifest(int4_program)
    assert (manifest.format, manifest.runtime, manifest.engine["name"]) == ("pte", "executorch", "executorch")
    assert [f.path for f in manifest.files] == ["chat_template.jinja", "generation_config.json", "model.pte",
                                                "tokenizer.json", "tokenizer_config.json"]
    assert verify(int4_program) == []
    options = manifest.engine["options"]
    assert options["quantization"] == {"qmode": "8da4w", "group_size": 32, "embedding_quantize": "8,0"}
    assert options["export"]["max_seq_length"] == 128 and options["export"]["max_context_length"] == 512
    # <|im_end|> from config.json, <|endoftext|> added from generation_config.json
    assert json.loads(options["base"]["metadata"])["get_eos_ids"] == [151645, 151643]
    assert manifest.tools["executorch"] == "1.5.1" and "torchao" in manifest.tools
    memory = manifest.memory
    assert memory["kv_cache_type"] == "f32" and memory["kv_cache_bytes"] == 2 * 2 * 2 * 16 * 512 * 4
    assert memory["weights_bytes"] == manifest.size_bytes
    fp32_size = (fp32_programs["qwen2"] / "model.pte").stat().st_size
    assert (int4_program / "model.pte").stat().st_size < fp32_size * 0.5

    ref = TransformersRuntime.load(tiny_qwen2_real_vocab, threads=1)
    ids = ref.encode(TEXT)
    ref_logits = ref.logits(ids)
    rt = ExecuTorchRuntime.load(int4_program, threads=3)
    # One threadpool per process: the first program (threads=1 above) fixed it, and resizing
    # it under a live program would deadlock, so later loads share it and say so.
    assert rt.threads == 1 and rt.info()["threads"] == 1
    fresh = subprocess.run([sys.executable, "-c", "from runtimes.executorch_backend import "
                            f"ExecuTorchRuntime as R; print(R.load({str(int4_program)!r}).threads)"],
                           capture_output=True, text=True, check=True)
    assert int(fresh.stdout.split()[-1]) == min(4, os.cpu_count() or 1)  # the recipe's 4, capped
    assert rt.max_chunk == 127 and len(ids) > 127  # the prompt below is prefilled in two calls
    logits = rt.logits(ids)
    kl_int4 = mean_kl(ref_logits, logits)
    kl_fp32 = mean_kl(ref_logits, ExecuTorchRuntime.load(fp32_programs["qwen2"], threads=1).logits(ids))
    assert kl_fp32 < 1e-6 < kl_int4 < 0.05
    # Chunked prefill (128 + the rest) lands on the same last-position logits as feeding one by one.
    last = rt._prefill(ids).numpy()
    np.testing.assert_allclose(last, logits[-1], atol=1e-3)


def test_cli_validates_and_runs_the_program(int4_program, capsys) -> None:
    assert main(["validate", str(int4_program), "--max-tokens", "128"]) == 0
    validation = load_manifest(int4_program).validation
    assert validation["passed"] is True and validation["overall"]["tokens"] > 100
    assert main(["run", str(int4_program), "hello world", "--raw", "-n", "6", "--threads", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    rt = ExecuTorchRuntime.load(int4_program, threads=1)
    assert printed == rt.generate("hello world", GenerationOptions(max_new_tokens=6))


def test_bad_recipes_and_files_fail_clearly(tiny_qwen2_real_vocab, int4_program, tmp_path) -> None:
    cases = [
        ({**FP32, "precision": "8da4w", "algorithm": {"group_size": 256}},
         "hidden size 64 is not a multiple"),
        ({**FP32, "algorithm": {"group_size": 32}}, "algorithm options apply to 8da4w only"),
        ({**FP32, "precision": "8da4w", "algorithm": {"max_seq_length": 4096}}, "max_seq_length must be"),
        ({**FP32, "precision": "8da4w", "algorithm": {"bits": 3}}, "algorithm.bits: Extra inputs"),
    ]
    for data, message in cases:
        with pytest.raises(RecipeError, match=message):
            build(parse_recipe(data), str(tiny_qwen2_real_vocab), tmp_path / "out")
    assert not (tmp_path / "out").exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in int4_program.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = (broken / "model.pte").read_bytes()
    (broken / "model.pte").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        ExecuTorchRuntime.load(broken)
    (broken / "model.pte").write_bytes(b"GGUF\x03\x00\x00\x00" + data[8:])  # a GGUF header
    with pytest.raises(ArtifactError, match="not an ExecuTorch program"):
        ExecuTorchRuntime.load(broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="no tokenizer.json"):
        ExecuTorchRuntime.load(broken)
