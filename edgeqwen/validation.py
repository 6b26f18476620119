"""Quality of an artifact measured against its reference, and the recipe's gates.

Both sides are fed the same token ids (the reference's tokenization), chunk by chunk:
perplexity of each, mean KL divergence KL(reference || artifact) of the next-token
distributions, top-1 agreement; then greedy continuations of a few chat prompts, compared
token by token. Everything goes through the common runtime interface, so any backend can
be either side.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgeqwen.errors import EdgeQwenError
from runtimes.base import GenerationOptions, Runtime

DEFAULT_CHUNK = 512
GREEDY_TOKENS = 32
# Chat prompts for the greedy-continuation check: code, explanation, non-English.
PROMPTS = (
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain in three sentences why the sky is blue.",
    "Skriv en kort hilsen til en kollega, der har fødselsdag.",
)
ROW_BLOCK = 128  # logits rows scored at once: bounds the float64 temporaries to ~150 MB
PER_LANGUAGE = "multilingual-long"  # edgeqwen/texts/languages/<this>.txt (`validate --per-language`)
# A paragraph that opens with a short label and a colon ("Dansk: ...", "中文：...") is a section
# of its text (multilingual.txt: one per language); code's "def f():" ends its line instead.
SECTION_LABEL = re.compile(r"([^\n:：]{1,30}?)\s*(?::|：)(?: |(?<=：))")


@dataclass(frozen=True)
class Metrics:
    tokens: int  # scored positions
    ppl_reference: float
    ppl: float
    ppl_increase_pct: float
    kl: float
    top1_agreement: float
    # standard error of ppl_increase_pct from the spread of the per-token log-loss differences
    # (tokens treated as independent): how far a short text's figure moves by chance
    ppl_increase_se_pct: float | None = None


@dataclass(frozen=True)
class GateResult:
    gate: str
    metric: str
    value: float
    limit: float
    passed: bool


@dataclass
class Report:
    reference: str
    candidate: str
    chunk: int
    texts: dict[str, Metrics]
    overall: Metrics
    # mean fraction of the reference's greedy tokens reproduced in order; None: none were run
    greedy_match: float | None
    greedy: list[dict[str, Any]] = field(default_factory=list)
    tokenizer_mismatches: list[str] = field(default_factory=list)  # texts the two sides tokenize differently
    # text -> section label -> metrics, for texts made of labelled paragraphs (one per language
    # in the multilingual text). Few tokens each (≈40-150): a section's perplexity moves by
    # several percent by chance, its KL much less.
    sections: dict[str, dict[str, Metrics]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Sums:
    """Running sums over scored positions, so overall figures weight every token equally."""

    def __init__(self) -> None:
        self.n = 0
        self.nll_reference = 0.0
        self.nll = 0.0
        self.kl = 0.0
        self.top1 = 0
        self.diff_squares = 0.0  # sum over tokens of (candidate NLL - reference NLL)^2

    def add(self, other: _Sums) -> None:
        self.n += other.n
        self.nll_reference += other.nll_reference
        self.nll += other.nll
        self.kl += other.kl
        self.top1 += other.top1
        self.diff_squares += other.diff_squares

    def add_rows(self, rows: np.ndarray) -> None:
        """Per-position scores [n, 4] from `row_scores`."""
        self.n += len(rows)
        nll_reference, nll, kl, top1 = rows.sum(0)
        self.nll_reference += float(nll_reference)
        self.nll += float(nll)
        self.kl += float(kl)
        self.top1 += int(top1)
        self.diff_squares += float(((rows[:, 1] - rows[:, 0]) ** 2).sum())

    def metrics(self) -> Metrics:
        n = max(self.n, 1)
        ppl_ref, ppl = math.exp(self.nll_reference / n), math.exp(self.nll / n)
        se = None
        if self.n > 1:
            mean = (self.nll - self.nll_reference) / n
            variance = max(self.diff_squares - n * mean * mean, 0.0) / (n - 1)
            se = round(100 * (ppl / ppl_ref) * math.sqrt(variance / n), 3)  # delta method
        return Metrics(tokens=self.n, ppl_reference=round(ppl_ref, 4), ppl=round(ppl, 4),
                       ppl_increase_pct=round(100 * (ppl / ppl_ref - 1), 3), kl=round(self.kl / n, 6),
                       top1_agreement=round(self.top1 / n, 4), ppl_increase_se_pct=se)


def row_scores(reference: np.ndarray, candidate: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Logits [n, vocab] of both sides at the positions that predict `targets` [n] -> per
    position: reference NLL, candidate NLL, KL(reference || candidate), top-1 agreement."""
    out = np.empty((len(targets), 4))
    for start in range(0, len(targets), ROW_BLOCK):
        rows = slice(start, start + ROW_BLOCK)
        ref, cand, tgt = _log_softmax(reference[rows]), _log_softmax(candidate[rows]), targets[rows]
        idx = np.arange(len(tgt))
        out[rows, 0] = -ref[idx, tgt]
        out[rows, 1] = -cand[idx, tgt]
        out[rows, 2] = (np.exp(ref) * (ref - cand)).sum(-1)
        out[rows, 3] = ref.argmax(-1) == cand.argmax(-1)
    return out


def sections(text: str) -> list[tuple[str, int]]:
    """(label, character offset) of every paragraph when each paragraph of `text` opens with
    its own label and a colon; [] otherwise."""
    found, labels = [], set()
    for match in re.finditer(r"(?:^|\n\n)(?=\S)", text):
        start = match.end()
        label = SECTION_LABEL.match(text, start)
        if not label or label.group(1) in labels or "\n" in text[start:label.end()]:
            return []
        labels.add(label.group(1))
        found.append((label.group(1), start))
    return found if len(found) > 1 else []


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def default_texts() -> dict[str, str]:
    """The shipped texts: English prose, Python code, 18 languages (see edgeqwen/texts)."""
    folder = resources.files("edgeqwen") / "texts"
    return {e.name.removesuffix(".txt"): e.read_text(encoding="utf-8")
            for e in sorted(folder.iterdir(), key=lambda e: e.name) if e.name.endswith(".txt")}


def per_language_texts() -> dict[str, str]:
    """The shipped long per-language text: the paragraphs of multilingual.txt continued to
    ≈230-385 tokens per language (≈5,100 in all), so that each language's perplexity increase
    is resolved to about ±1.5% instead of ±2.5-4.5%. Not a default text: scoring it takes about
    4x as long as the short one, and the default texts' figures stay comparable over time."""
    entry = resources.files("edgeqwen") / "texts" / "languages" / f"{PER_LANGUAGE}.txt"
    return {PER_LANGUAGE: entry.read_text(encoding="utf-8")}


def read_texts(files: Sequence[Path]) -> dict[str, str]:
    texts = {}
    for f in files:
        path = Path(f)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise EdgeQwenError(f"cannot read validation text {path}: {err}",
                                hint="pass UTF-8 text files with --text") from None
        if not text.strip():
            raise EdgeQwenError(f"validation text {path} is empty")
        texts[path.stem] = text
    return texts


def compare(reference: Runtime, candidate: Runtime, texts: dict[str, str], *,
            chunk: int = DEFAULT_CHUNK, max_tokens: int | None = None,
            prompts: Sequence[str] = PROMPTS, greedy_tokens: int = GREEDY_TOKENS,
            reference_name: str = "reference", candidate_name: str = "artifact") -> Report:
    from edgeqwen.progress import step

    if chunk < 2:
        raise EdgeQwenError("the chunk length must be at least 2 tokens")
    # Windows no longer than the artifact's context (static-shape NPU graphs hold few tokens).
    chunk = min(chunk, candidate.info().get("context_length") or chunk)
    started = time.perf_counter()
    per_text: dict[str, Metrics] = {}
    per_section: dict[str, dict[str, Metrics]] = {}
    total = _Sums()
    mismatches = []
    for name, text in texts.items():
        ids = reference.encode(text)[:max_tokens]
        if candidate.encode(text)[: len(ids)] != ids:
            mismatches.append(name)
        scores, predicted = [], []
        with step(f"scoring {name} ({len(ids)} tokens) on both sides"):
            for start in range(0, len(ids) - 1, chunk):
                window = ids[start:start + chunk]
                if len(window) < 2:
                    break
                targets = np.asarray(window[1:])
                scores.append(row_scores(reference.logits(window)[:-1], candidate.logits(window)[:-1],
                                         targets))
                predicted.append(np.arange(start + 1, start + len(window)))
        rows = np.concatenate(scores) if scores else np.empty((0, 4))
        positions = np.concatenate(predicted) if predicted else np.empty(0, dtype=int)  # of each row's target
        sums = _Sums()
        sums.add_rows(rows)
        per_text[name] = sums.metrics()
        total.add(sums)
        if labelled := sections(text):
            # a section's tokens: from the count of its preceding text's tokens on
            bounds = [len(reference.encode(text[:offset])) for _, offset in labelled] + [len(ids)]
            per_section[name] = {}
            for (label, _), first, end in zip(labelled, bounds, bounds[1:], strict=False):
                part = _Sums()
                part.add_rows(rows[(positions >= first) & (positions < end)])
                if part.n:
                    per_section[name][label] = part.metrics()

    greedy = []
    prompts = prompts if greedy_tokens else ()  # 0 tokens: no continuations (slow emulated NPUs)
    options = GenerationOptions(max_new_tokens=max(greedy_tokens, 1))
    with step(f"greedy continuations of {len(prompts)} chat prompts on both sides"):
        for prompt in prompts:
            prompt_ids = reference.encode(reference.render_chat([{"role": "user", "content": prompt}]))
            want = list(reference.stream_ids(prompt_ids, options))
            got = list(candidate.stream_ids(prompt_ids, options))
            same = _common_prefix(want, got)
            greedy.append({"prompt": prompt, "reference_tokens": len(want), "matching_prefix": same})
    shares = [g["matching_prefix"] / max(g["reference_tokens"], 1) for g in greedy]
    match = round(float(np.mean(shares)), 4) if shares else None

    return Report(reference=reference_name, candidate=candidate_name, chunk=chunk, texts=per_text,
                  overall=total.metrics(), sections=per_section, greedy_match=match, greedy=greedy,
                  tokenizer_mismatches=mismatches, seconds=round(time.perf_counter() - started, 2))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


GATES = {  # recipe gate -> (metric, kind)
    "max_ppl_increase_pct": ("ppl_increase_pct", "max"),
    "max_kl": ("kl", "max"),
    "min_top1": ("top1_agreement", "min"),
}


def check_gates(report: Report, gates: dict[str, float | None]) -> list[GateResult]:
    results = []
    for gate, (metric, kind) in GATES.items():
        limit = gates.get(gate)
        if limit is None:
            continue
        value = getattr(report.overall, metric)
        passed = value <= limit if kind == "max" else value >= limit
        results.append(GateResult(gate=gate, metric=metric, value=value, limit=limit, passed=passed))
    return results


def open_reference(spec: str | None, recorded_source: str | None, *,
                   threads: int | None) -> tuple[Runtime, str]:
    """The reference runtime: another artifact, a model source (run by transformers in fp32),
    or by default the checkpoint the artifact was built from."""
    from edgeqwen import sources
    from edgeqwen.errors import ArtifactError
    from edgeqwen.runner import open_artifact
    from runtimes.transformers_backend import TransformersRuntime

    if spec is None:
        if not recorded_source or not Path(recorded_source).is_dir():
            raise ArtifactError(
                f"the checkpoint this artifact was built from ({recorded_source}) is not on this machine",
                hint="pass --reference SRC: a checkpoint folder, `sample`, a model id, or another artifact")
        runtime = TransformersRuntime.load(Path(recorded_source), threads=threads)
        return runtime, f"transformers fp32: {recorded_source}"
    if (Path(spec) / "manifest.json").is_file():
        return open_artifact(spec, threads=threads), f"artifact: {spec}"
    source = sources.resolve(spec)
    return TransformersRuntime.load(source.path, threads=threads), f"transformers fp32: {source.path}"


def validate_artifact(path: Path | str, *, reference: str | None = None, texts: dict[str, str] | None = None,
                      threads: int | None = None, chunk: int = DEFAULT_CHUNK, max_tokens: int | None = None,
                      record: bool = True, reference_runtime: tuple[Runtime, str] | None = None,
                      greedy_tokens: int = GREEDY_TOKENS) -> tuple[Report, list[GateResult]]:
    """Measure an artifact against its reference and the recipe's gates; record both in its
    manifest. `reference_runtime` (runtime, description) reuses an open reference."""
    from edgeqwen.artifacts import load_manifest
    from edgeqwen.runner import open_artifact

    path = Path(path)
    manifest = load_manifest(path)
    candidate = open_artifact(path, threads=threads)
    ref, ref_name = reference_runtime or open_reference(reference, manifest.source.path, threads=threads)
    report = compare(ref, candidate, texts or default_texts(), chunk=chunk, max_tokens=max_tokens,
                     greedy_tokens=greedy_tokens, reference_name=ref_name,
                     candidate_name=f"{manifest.runtime}: {path}")
    gates = check_gates(report, manifest.recipe.get("validation") or {})
    if record:
        manifest.validation = result_dict(report, gates)
        manifest.write(path)
    return report, gates


def result_dict(report: Report, gates: list[GateResult]) -> dict[str, Any]:
    """The report with its gate results: what the manifest records and `--json` prints."""
    return {**report.to_dict(), "gates": [asdict(g) for g in gates], "passed": all(g.passed for g in gates)}


def raise_if_failed(gates: list[GateResult]) -> None:
    from edgeqwen.errors import GateFailed

    failed = [g for g in gates if not g.passed]
    if failed:
        raise GateFailed("quality gates failed: " + ", ".join(
            f"{g.metric} {g.value:g} (limit {g.limit:g})" for g in failed),
            hint="use a higher-precision recipe or a better algorithm; the numbers are in the manifest")
