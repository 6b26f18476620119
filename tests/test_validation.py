"""Validation: the metric arithmetic on runtimes with known logits, then real artifacts of the
tiny models, including one whose weights were damaged on purpose."""

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engines_for_tests import CopyEngine

from edgeqwen import registry
from edgeqwen.artifacts import load_manifest, verify
from edgeqwen.cli import main
from edgeqwen.errors import ArtifactError
from edgeqwen.pipeline import build
from edgeqwen.recipes import parse_recipe
from edgeqwen.validation import (
    PER_LANGUAGE,
    check_gates,
    compare,
    default_texts,
    per_language_texts,
    sections,
    validate_artifact,
)
from runtimes.base import GenerationOptions, Runtime


class FixedRuntime(Runtime):
    """Characters are tokens 0-3 ('a'-'d'); every position has the same next-token logits."""

    name = "fixed"

    def __init__(self, probs: Sequence[float], reply: Sequence[int] = (0, 1, 2)) -> None:
        self.row = np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)
        self.reply = list(reply)

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None, context_length: int | None = None) -> Runtime:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") for c in text if c in "abcd"]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(ord("a") + i) for i in ids)

    def render_chat(self, messages: Sequence[Any], *, add_generation_prompt: bool = True, **kw: Any) -> str:
        return "ab"

    def stream_ids(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[int]:
        yield from self.reply[: options.max_new_tokens]

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        return np.tile(self.row, (len(token_ids), 1))

    def info(self) -> dict[str, Any]:
        return {"backend": self.name}


def test_metrics_match_hand_computed_values() -> None:
    p, q = [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]
    text = "abcdabcdab"  # 10 tokens, chunked by 4: windows of 4, 4, 2 -> 3 + 3 + 1 = 7 scored
    report = compare(FixedRuntime(p), FixedRuntime(q, reply=[0, 1, 3]), {"t": text}, chunk=4,
                     prompts=["x", "y"], greedy_tokens=3)
    targets = [1, 2, 3, 1, 2, 3, 1]
    ppl_ref = math.exp(-np.mean([math.log(p[t]) for t in targets]))
    ppl = math.exp(-np.mean([math.log(q[t]) for t in targets]))
    kl = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    m = report.overall
    assert m.tokens == 7
    assert m.ppl_reference == pytest.approx(ppl_ref, rel=1e-4)
    assert m.ppl == pytest.approx(ppl, rel=1e-4)
    assert m.ppl_increase_pct == pytest.approx(100 * (ppl / ppl_ref - 1), abs=1e-3)
    assert m.kl == pytest.approx(kl, abs=1e-6)
    assert m.top1_agreement == 0.0  # argmax 0 vs argmax 3
    assert report.texts["t"] == m
    assert report.greedy_match == pytest.approx(2 / 3, abs=1e-4)  # [0, 1, 2] vs [0, 1, 3]

    same = compare(FixedRuntime(p), FixedRuntime(p), {"t": text}, chunk=4, prompts=["x"])
    assert (same.overall.kl, same.overall.top1_agreement, same.overall.ppl_increase_pct) == (0.0, 1.0, 0.0)
    assert same.greedy_match == 1.0
    skipped = compare(FixedRuntime(p), FixedRuntime(q), {"t": text}, chunk=4, prompts=["x"], greedy_tokens=0)
    assert skipped.greedy_match is None and skipped.greedy == [] and skipped.overall == m

    gates = {g.gate: g.passed for g in check_gates(report, {"max_ppl_increase_pct": 1000, "max_kl": 0.01,
                                                           "min_top1": None})}
    assert gates == {"max_ppl_increase_pct": True, "max_kl": False}


@pytest.mark.parametrize(("chunk", "y_targets"), [(8, [2, 3, 2, 3]), (4, [3, 2, 3])])
def test_labelled_paragraphs_are_scored_as_sections(chunk, y_targets) -> None:
    """Each section gets the positions that predict its own tokens; a window's first token is
    predicted by nothing (with chunk 4, Y's first `c` opens the second window)."""
    p, q = [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]
    text = "X: abab\n\nY: cdcd"  # tokens a b a b | c d c d
    report = compare(FixedRuntime(p), FixedRuntime(q), {"t": text}, chunk=chunk, prompts=[])
    parts = report.sections["t"]
    assert list(parts) == ["X", "Y"]
    for label, targets in (("X", [1, 0, 1]), ("Y", y_targets)):
        m = parts[label]
        assert m.tokens == len(targets)
        for got, probs in ((m.ppl_reference, p), (m.ppl, q)):
            assert got == pytest.approx(math.exp(-np.mean([math.log(probs[t]) for t in targets])), rel=1e-4)
        d = np.array([math.log(p[t] / q[t]) for t in targets])  # per-token log-loss increase
        se = 100 * math.exp(d.mean()) * d.std(ddof=1) / math.sqrt(len(d))
        assert m.ppl_increase_se_pct == pytest.approx(se, abs=1e-3) and se > 10
    assert parts["X"].tokens + parts["Y"].tokens == report.texts["t"].tokens
    assert "sections" in report.to_dict()  # recorded in the manifest with the rest


def test_sections_are_the_languages_of_the_multilingual_text_only() -> None:
    texts = default_texts()
    labels = [label for label, _ in sections(texts["multilingual"])]
    assert len(labels) == 18 and labels[:2] == ["Dansk", "Norsk"]
    assert "中文" in labels and "Français" in labels  # a full-width colon; a space before the colon
    assert sections(texts["english"]) == sections(texts["python"]) == []
    # code's colons end lines; a repeated label is not a section list
    assert sections("def f():\n    return 1\n\nclass A:\n    pass\n") == []
    assert sections("Note: a\n\nNote: b") == []


def test_per_language_text_continues_every_language_with_enough_tokens(qwen_tokenizer) -> None:
    from transformers import AutoTokenizer

    short, long = default_texts()["multilingual"], per_language_texts()[PER_LANGUAGE]
    assert PER_LANGUAGE not in default_texts()  # opt-in: `validate --per-language`
    assert [label for label, _ in sections(long)] == [label for label, _ in sections(short)]
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer)
    for a, b in zip(short.strip().split("\n\n"), long.strip().split("\n\n"), strict=True):
        assert b.startswith(a)  # the same paragraph, continued
        assert len(tokenizer(b)["input_ids"]) >= 220, b[:12]  # s.e. of a +3% increase ≈ ±1.5%
    # independent of the long text benchmarks/int4_headroom.py chose the INT4 default's int8 set on
    tuning = (Path(__file__).parents[1] / "benchmarks" / "texts" / "languages.txt").read_text("utf-8")
    sentences = [s for s in long.replace("。", ".").split(". ") if len(s) > 30]
    assert len(sentences) > 100 and not [s for s in sentences if s in tuning]


def test_cli_per_language_scores_each_language_and_excludes_text(tiny_qwen2_real_vocab, tmp_path,
                                                                 capsys) -> None:
    art = build("onnx-cpu-fp32", str(tiny_qwen2_real_vocab), tmp_path / "fp32").path
    code = main(["validate", str(art), "--per-language", "--max-tokens", "400", "--greedy-tokens", "0",
                 "--threads", "1", "--json", "--no-record"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and set(out["texts"]) == {PER_LANGUAGE} and out["texts"][PER_LANGUAGE]["tokens"] == 399
    assert list(out["sections"][PER_LANGUAGE]) == ["Dansk", "Norsk"]  # the first 400 tokens
    assert out["sections"][PER_LANGUAGE]["Dansk"]["kl"] < 1e-5
    text = tmp_path / "mine.txt"
    text.write_text("Hello there.", encoding="utf-8")
    code = main(["validate", str(art), "--per-language", "--text", str(text)])
    assert code != 0 and "--per-language" in capsys.readouterr().err


def test_shipped_texts_cover_prose_code_and_languages() -> None:
    texts = default_texts()
    assert set(texts) == {"english", "python", "multilingual"}
    assert "def " in texts["python"]
    assert "Українська" in texts["multilingual"] and "中文" in texts["multilingual"]
    assert all(len(t) > 2000 for t in texts.values())


def test_fp32_artifact_equals_its_reference_and_the_result_is_recorded(tiny_qwen2, tmp_path) -> None:
    art = build("onnx-cpu-fp32", str(tiny_qwen2), tmp_path / "fp32").path
    report, gates = validate_artifact(art, threads=1, max_tokens=200, chunk=64)
    assert report.overall.tokens == sum(m.tokens for m in report.texts.values()) > 400
    assert report.overall.kl < 1e-5 and report.overall.top1_agreement == 1.0
    assert abs(report.overall.ppl_increase_pct) < 0.01
    assert report.greedy_match == 1.0 and report.tokenizer_mismatches == []
    assert [g.gate for g in gates] == ["max_ppl_increase_pct", "max_kl", "min_top1"]
    assert all(g.passed for g in gates)
    recorded = load_manifest(art).validation
    assert recorded["passed"] is True and recorded["overall"]["kl"] == report.overall.kl
    assert verify(art) == []  # recording results does not touch the hashed files


def broken_artifact(tiny_qwen2: Path, tmp_path: Path, scale: float) -> Path:
    recipe = parse_recipe({"name": "copy", "description": "t", "format": "onnx", "precision": "fp32",
                           "engine": "copy-test", "algorithm": {"scale": scale},
                           "validation": {"max_ppl_increase_pct": 1, "max_kl": 0.01, "min_top1": 0.9}})
    registry.engines.register("copy-test", CopyEngine)
    try:
        return build(recipe, str(tiny_qwen2), tmp_path / f"scaled-{scale}").path
    finally:
        registry.engines.unregister("copy-test")


def test_damaged_weights_fail_the_gates_with_exit_2(tiny_qwen2, tmp_path, capsys) -> None:
    art = broken_artifact(tiny_qwen2, tmp_path, scale=3.0)  # every weight x3, norms included
    text = tmp_path / "mine.txt"
    text.write_text(default_texts()["english"], encoding="utf-8")
    code = main(["validate", str(art), "--text", str(text), "--max-tokens", "256", "--threads", "1",
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 2
    assert set(out["texts"]) == {"mine"} and out["passed"] is False
    assert out["overall"]["kl"] > 0.01 and out["overall"]["top1_agreement"] < 0.9
    assert {g["gate"] for g in out["gates"] if not g["passed"]} >= {"max_kl", "min_top1"}
    for key in ("ppl_reference", "ppl", "ppl_increase_pct", "kl", "top1_agreement"):
        assert key in out["overall"] and key in out["texts"]["mine"]
    assert load_manifest(art).validation["passed"] is False

    code = main(["validate", str(art), "--max-tokens", "64", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 2 and "FAIL" in captured.out and "quality gates failed" in captured.err
    assert "multilingual by section" in captured.out and "`--per-language` scores" in captured.out


def test_undamaged_copy_passes_and_another_artifact_can_be_the_reference(tiny_qwen2, tmp_path) -> None:
    good = broken_artifact(tiny_qwen2, tmp_path, scale=1.0)
    bad = broken_artifact(tiny_qwen2, tmp_path, scale=3.0)
    report, gates = validate_artifact(good, threads=1, max_tokens=128)
    assert report.overall.kl < 1e-6 and all(g.passed for g in gates)
    report, _ = validate_artifact(bad, reference=str(good), threads=1, max_tokens=128, record=False)
    assert report.reference == f"artifact: {good}" and report.overall.kl > 0.01
    assert load_manifest(bad).validation is None  # --no-record


def test_cli_build_validates_unless_told_not_to(tiny_qwen2, tmp_path, capsys) -> None:
    assert main(["build", "onnx-cpu-fp32", "--model", str(tiny_qwen2), "--out", str(tmp_path / "a"),
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "max_kl" in out and "pass" in out
    assert load_manifest(tmp_path / "a").validation["passed"] is True
    assert main(["build", "onnx-cpu-fp32", "--model", str(tiny_qwen2), "--out", str(tmp_path / "b"),
                 "--no-validate"]) == 0
    assert load_manifest(tmp_path / "b").validation is None


def test_missing_reference_names_the_fix(tiny_qwen2, tmp_path) -> None:
    art = broken_artifact(tiny_qwen2, tmp_path, scale=1.0)
    manifest = load_manifest(art)
    manifest.source.path = str(tmp_path / "moved-away")
    manifest.write(art)
    with pytest.raises(ArtifactError, match="not on this machine") as err:
        validate_artifact(art, threads=1)
    assert "--reference" in err.value.hint
