"""Slow tier: the real sample through the QNN engine (static graphs, 16-bit activation QDQ,
context binaries for Hexagon v75), run on the QNN HTP backend that onnxruntime-qnn emulates
on x86-64, and validated with `edgeqwen validate` on a short text (issue 8: emulation runs a
64-token prefill call of the 0.5B in about a minute and a decode step in about 30 s)."""

from pathlib import Path

import pytest

from edgeqwen import sources
from edgeqwen.artifacts import load_manifest
from edgeqwen.cli import main
from edgeqwen.pipeline import build
from runtimes.base import GenerationOptions
from runtimes.qnn_backend import QNNRuntime
from runtimes.transformers_backend import TransformersRuntime

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "Write a python function that reverses a string."}]


@pytest.fixture(scope="module")
def sample_qnn(module_dir) -> Path:
    return build("npu-qnn-a16w8", "sample", module_dir / "a16w8").path


def test_validation_on_a_short_text_passes_the_gates(sample_qnn) -> None:
    assert main(["validate", str(sample_qnn), "--max-tokens", "64", "--greedy-tokens", "0"]) == 0
    manifest = load_manifest(sample_qnn)
    validation, gates = manifest.validation, manifest.recipe["validation"]
    assert validation["passed"] is True and validation["overall"]["tokens"] == 3 * 63
    assert validation["overall"]["kl"] <= gates["max_kl"]
    assert manifest.engine["qnn"]["htp_arch"] == 75
    assert manifest.memory["kv_cache_type"] == "f32" and manifest.memory["context_length"] == 1024


def test_the_reply_starts_like_the_reference(sample_qnn) -> None:
    """Prefill on the prefill graph, then decode steps on the decode graph (both context
    binaries) give the reference's first greedy tokens of a chat reply."""
    rt = QNNRuntime.load(sample_qnn)
    ref = TransformersRuntime.load(sources.resolve("sample").path, threads=2)
    prompt = rt.encode(rt.render_chat(QUESTION))
    options = GenerationOptions(max_new_tokens=3)
    assert list(rt.stream_ids(prompt, options)) == list(ref.stream_ids(prompt, options))
