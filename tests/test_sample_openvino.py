"""Slow tier: the real sample through optimum-intel's OpenVINO export and NNCF, run by
openvino-genai on this CPU and validated with `edgeqwen validate` (issue 8's "done when" for
Intel NPU recipes: they build from the sample and validate through the common command)."""

from pathlib import Path

import pytest

from edgeqwen.artifacts import load_manifest
from edgeqwen.cli import main
from edgeqwen.pipeline import build
from runtimes.base import GenerationOptions
from runtimes.openvino_backend import OpenVINORuntime

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "Write a python function that reverses a string."}]


@pytest.fixture(scope="module")
def sample_irs(module_dir) -> dict[str, Path]:
    return {name: build(f"openvino-{name}", "sample", module_dir / name).path for name in ("int8", "int4")}


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_validation_passes_the_recipe_gates(name, sample_irs) -> None:
    """`edgeqwen validate` on every shipped text, through the CLI; the gates are the recipe's."""
    assert main(["validate", str(sample_irs[name]), "--threads", "2"]) == 0
    manifest = load_manifest(sample_irs[name])
    validation, gates = manifest.validation, manifest.recipe["validation"]
    assert validation["passed"] is True and validation["overall"]["tokens"] > 2700
    assert validation["overall"]["kl"] <= gates["max_kl"]
    assert manifest.engine["npu_ready"] is True
    if name == "int8":  # near-lossless: what is left is the CPU plugin's bf16 arithmetic
        assert validation["overall"]["kl"] < 0.01 and validation["overall"]["top1_agreement"] > 0.95


def test_int4_answers_the_question(sample_irs) -> None:
    rt = OpenVINORuntime.load(sample_irs["int4"], threads=2)
    assert rt.info()["device"] == "CPU"  # no Intel NPU here: the npu-openvino artifact runs on the CPU
    answer = rt.chat(QUESTION, GenerationOptions(max_new_tokens=60))
    assert "```python\ndef reverse_string(" in answer  # a Python function, as asked
    size = {name: (path / "openvino_model.bin").stat().st_size for name, path in sample_irs.items()}
    assert size["int4"] < 0.85 * size["int8"]  # 490 vs 622 MiB: 20% of the layers stay int8
