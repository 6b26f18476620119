"""Calibration text sampled from the model: continuations of the shipped openings, seeded,
written as .jsonl that --calibration reads, and the CLI that makes it."""

import json

from edgeqwen import calibration
from edgeqwen.cli import main
from edgeqwen.engines.olive_launch import run_layer_keeping_no_head_outputs
from edgeqwen.sampled_calibration import sample_texts, write_jsonl


def test_continuations_start_with_the_openings_and_follow_the_seed(tiny_qwen2) -> None:
    first = sample_texts(tiny_qwen2, rounds=1, seed=0, new_tokens=6, threads=1)
    again = sample_texts(tiny_qwen2, rounds=1, seed=0, new_tokens=6, threads=1)
    other = sample_texts(tiny_qwen2, rounds=2, seed=0, new_tokens=6, threads=1)
    shipped = calibration.load().text
    paragraphs = [p.strip("\n") for p in shipped.split("\n\n") if len(p.strip()) > 40]
    assert len(first) == len(paragraphs)
    assert first == again and other[:len(first)] == first  # round 0 is the same in both
    assert other[len(first):] != first  # round 1 samples with seed 1
    for text, paragraph in zip(first, paragraphs, strict=True):
        if paragraph.startswith("<|im_start|>"):  # special tokens are not kept in the text
            paragraph = paragraph.removeprefix("<|im_start|>")
        assert text[:8] == paragraph[:8] and text != paragraph[:len(text)]


def test_cli_writes_jsonl_that_calibration_reads(tiny_qwen2, tmp_path) -> None:
    out = tmp_path / "mine.jsonl"
    assert main(["sample-calibration", str(tiny_qwen2), "--out", str(out), "--new-tokens", "8",
                 "--threads", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows and set(rows[0]) == {"text"}
    assert calibration.load(out).text == "\n\n".join(r["text"] for r in rows)
    # An existing file is kept unless --force.
    assert main(["sample-calibration", str(tiny_qwen2), "--out", str(out), "--new-tokens", "8"]) == 1
    write_jsonl(["a", "b"], out)
    assert calibration.load(out).text == "a\n\nb" and not out.with_name("mine.jsonl.part").exists()


def test_olive_launch_keeps_no_outputs_of_the_lm_head() -> None:
    import torch

    calls = []

    def run_layer(layer, hidden_states, layer_args, layer_kwargs, return_output):
        calls.append((type(layer).__name__, return_output))
        return [layer(h) for h in hidden_states] if return_output else None

    wrapped = run_layer_keeping_no_head_outputs(run_layer)
    states = [torch.ones(1, 3, 4)]
    assert wrapped(torch.nn.Linear(4, 50), states, return_output=True) is None
    kept = wrapped(torch.nn.LayerNorm(4), states, None, None, True)
    assert kept is not None and kept[0].shape == (1, 3, 4)
    assert calls == [("Linear", False), ("LayerNorm", True)]
