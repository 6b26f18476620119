"""Every shipped recipe on the offline sample: build cost, quality and speed, side by side.

    python benchmarks/sample_suite.py [--out benchmarks/results] [--recipes gguf-q4_k_m ...]
                                      [--threads 2] [--repeats 3] [--max-tokens N] [--rebuild]
                                      [--stem sample]

1. builds each recipe's artifact from `sample` (kept under OUT/artifacts, reused unless
   --rebuild), recording wall time and peak RAM of the build;
2. validates every artifact against the fp32 reference on the shipped texts (the reference
   is loaded once and its logits are cached across artifacts), plus a peer users would
   otherwise pick: the official Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF the sample comes
   from, run by llama.cpp as it is;
3. benchmarks speed one artifact after another in this run, same threads and prompts
   (`edgeqwen bench`, desktop profile with --threads), with llama.cpp Q4_K_M
   (`gguf-q4_k_m`) as the baseline column.

Writes OUT/STEM.json, OUT/STEM.md (tables) and OUT/STEM.html (tables and plot; STEM = sample), and
prints the tables. Takes about an hour on 2 cores; needs ~12 GB RAM for the ONNX k_quant build.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeqwen import __version__, bench, report, sample, sources
from edgeqwen.artifacts import FileEntry, Manifest, load_manifest, now_utc
from edgeqwen.pipeline import build
from edgeqwen.profiles import get_profile
from edgeqwen.recipes import shipped_recipes
from edgeqwen.validation import validate_artifact
from edgeqwen.versions import package_versions
from runtimes.base import GenerationOptions, Runtime
from runtimes.transformers_backend import TransformersRuntime

PEER = "peer-official-q4_k_m"
BASELINE = "sample-gguf-q4_k_m"


class CachedReference(Runtime):
    """The reference runtime with logits and greedy replies memoized: every artifact is
    compared on the same token ids, so the fp32 model runs once per window, not per artifact."""

    name = "transformers-cached"

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self._logits: dict[tuple[int, ...], np.ndarray] = {}
        self._replies: dict[tuple[Any, ...], list[int]] = {}

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None, context_length: int | None = None) -> Runtime:
        return cls(TransformersRuntime.load(path, threads=threads))

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(ids)

    def render_chat(self, messages: Sequence[Any], *, add_generation_prompt: bool = True, **kw: Any) -> str:
        return self.inner.render_chat(messages, add_generation_prompt=add_generation_prompt, **kw)

    def stream_ids(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[int]:
        key = (tuple(prompt_ids), options.max_new_tokens)
        if not options.greedy:
            yield from self.inner.stream_ids(prompt_ids, options)
            return
        if key not in self._replies:
            self._replies[key] = list(self.inner.stream_ids(prompt_ids, options))
        yield from self._replies[key]

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        key = tuple(token_ids)
        if key not in self._logits:
            self._logits[key] = self.inner.logits(token_ids)
        return self._logits[key]

    def info(self) -> dict[str, Any]:
        return self.inner.info()


def peer_artifact(folder: Path, source: sources.ResolvedSource) -> Path:
    """The official GGUF as a folder the runtimes and `bench` accept, marked as a peer."""
    if (folder / "manifest.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    gguf = sample.assemble()
    target = folder / "model.gguf"
    if not target.exists():
        os.symlink(gguf, target)
    manifest = Manifest(
        name=PEER, edgeqwen_version=__version__, created_utc=now_utc(), format="gguf", runtime="llama-cpp",
        target={"device": "cpu", "profile": "desktop"},
        recipe={"name": PEER, "precision": "Q4_K_M (official)", "context_length": 4096, "validation": {}},
        source=source.info(), engine={"name": "none: the official file, not built by edgeqwen"},
        tools=package_versions(("llama-cpp-python",)),
        files=[FileEntry(path="model.gguf", bytes=gguf.stat().st_size, sha256=sample.SAMPLE_SHA256)],
        notes=["peer: the official Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, which the reference was "
               "dequantized from (so its quality figures measure the dequantization, ~0)"],
    )
    manifest.write(folder)
    return folder


def measure(paths: list[Path], source: sources.ResolvedSource, out: Path, stem: str, title: str,
            baseline: str, *, threads: int, repeats: int, max_tokens: int | None,
            profile_name: str = "desktop", rounds: int = 1) -> str:
    """Validate every artifact against the fp32 reference (computed once), bench them one
    after another (`rounds` times in turn, each recording the round with its median decode
    speed: a shared machine drifts by more than the gaps being measured), and write
    OUT/STEM.{md,html,json}. Returns the markdown."""
    reference = CachedReference(TransformersRuntime.load(source.path, threads=threads))
    ref_desc = f"transformers fp32: {source.path}"
    for art in paths:
        print(f"== validate {art.name}", flush=True)
        validate_artifact(art, threads=threads, max_tokens=max_tokens,
                          reference_runtime=(reference, ref_desc))
    del reference

    profile = get_profile(profile_name)
    runs: dict[Path, list[dict]] = {art: [] for art in paths}
    for round_ in range(rounds):
        for art in paths:
            print(f"== bench {art.name} (round {round_ + 1} of {rounds})", flush=True)
            runs[art].append(bench.run(art, profile, threads=threads, repeats=repeats, record=False))
    def decode(r: dict) -> float:
        return r.get("decode_tok_s") or 0.0  # None: the run failed

    for art, reports in runs.items():
        decodes = [decode(r) for r in reports]
        median = sorted(reports, key=decode)[(len(reports) - 1) // 2]
        manifest = load_manifest(art)
        recorded = {**median, "decode_tok_s_rounds": decodes}
        manifest.benchmarks = {**manifest.benchmarks, profile.name: recorded}
        manifest.write(art)

    rows = report.collect(paths, profile_name)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}, "
               f"Python {platform.python_version()}, edgeqwen {__version__}, {time.strftime('%Y-%m-%d')}; "
               f"{threads} threads")
    title_of = {smp.catalog_id: smp.title for smp in sample.SAMPLES.values()}
    model = title_of.get(source.catalog_id or "", source.spec)
    note = (f"Sample: {model} (reference = fp32 checkpoint dequantized from the official "
            f"Q4_K_M). Machine: {machine}.")
    out.mkdir(parents=True, exist_ok=True)
    md = f"# {title}\n\n{note}\n\n" + report.markdown(rows, baseline)
    (out / f"{stem}.md").write_text(md, encoding="utf-8")
    (out / f"{stem}.html").write_text(report.html_report(rows, title, baseline, note), encoding="utf-8")
    data = {"machine": machine, "note": note, "baseline": baseline,
            "artifacts": {p.name: {k: v for k, v in load_manifest(p).model_dump(mode="json").items()
                                   if k in ("recipe", "engine", "build", "validation", "benchmarks", "files")}
                          for p in paths}}
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(md)
    return md


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--recipes", nargs="*", default=sorted(shipped_recipes()))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=None, help="validation tokens per text")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--stem", default="sample", help="output file stem (a subset of recipes: "
                        "name it, so the full suite's results are not overwritten)")
    args = parser.parse_args()

    arts_dir = args.out / "artifacts"
    source = sources.resolve("sample")
    paths: list[Path] = []
    for name in args.recipes:
        art = arts_dir / f"sample-{name}"
        if args.rebuild or not (art / "manifest.json").is_file():
            print(f"== build {name}", flush=True)
            build(name, "sample", art, force=True)
        paths.append(art)
    paths.append(peer_artifact(arts_dir / PEER, source))

    measure(paths, source, args.out, args.stem, "edgeqwen sample suite", BASELINE, threads=args.threads,
            repeats=args.repeats, max_tokens=args.max_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
