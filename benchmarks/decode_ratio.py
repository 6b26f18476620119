"""Decode speed of artifacts relative to a baseline, interleaved in one process.

    python benchmarks/decode_ratio.py BASELINE ARTIFACT [ARTIFACT ...] [--rounds 60] [--tokens 96]
                                      [--threads 2] [--seed 0] [--out benchmarks/results]
                                      [--stem decode_ratio]

Benchmark processes run one after another (`edgeqwen bench`, the suites' `--rounds`) see the
host at different moments, and on a shared VM its speed drifts by more than the ±10% being
judged (plain INT4 on the 0.5B sample decoded at 64, 89 and 110 tok/s in different sessions).
Here every artifact is loaded at once and each round generates the same greedy reply (cold
prefill, `--tokens` new tokens) with each of them in a shuffled order; each artifact's decode
rate is divided by the baseline's in the same round, so drift cancels. Reports the median
ratio with a bootstrap 95% interval over rounds, and writes OUT/STEM.{md,json}. One warm-up
round is not counted. ≈1 s per artifact and round for the 0.5B on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path

import numpy as np

from edgeqwen.bench import SHORT_PROMPT, time_generation
from edgeqwen.runner import open_artifact
from runtimes.base import GenerationOptions

BOOTSTRAP = 2000


def median_interval(values: list[float], *, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of the median of `values` (resampled with replacement)."""
    rng = np.random.default_rng(seed)
    data = np.asarray(values)
    medians = np.median(data[rng.integers(0, len(data), (BOOTSTRAP, len(data)))], axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def measure(paths: list[Path], *, rounds: int, tokens: int, threads: int, seed: int) -> dict:
    """Decode tok/s of every artifact in `rounds` shuffled rounds; paths[0] is the baseline."""
    runtimes = {p.name: open_artifact(p, threads=threads) for p in paths}
    baseline = paths[0].name
    first = runtimes[baseline]
    prompt = first.encode(first.render_chat([{"role": "user", "content": SHORT_PROMPT}]))
    options = GenerationOptions(max_new_tokens=tokens)
    order = list(runtimes)
    shuffle = random.Random(seed)
    measured: list[dict[str, float]] = []  # per round: artifact -> decode tok/s
    generated: dict[str, set[int]] = {name: set() for name in order}
    for r in range(rounds + 1):
        shuffle.shuffle(order)
        this_round = {}
        for name in order:
            _, rate, n = time_generation(runtimes[name], prompt, options)
            generated[name].add(n)
            if rate is not None:
                this_round[name] = rate
        if r and len(this_round) == len(order):  # round 0 warms every artifact up
            measured.append(this_round)
    if not measured:
        raise SystemExit("no round produced two tokens with every artifact")
    rates = {name: [m[name] for m in measured] for name in runtimes}
    results = {}
    for name in runtimes:
        ratios = [a / b for a, b in zip(rates[name], rates[baseline], strict=True)]
        low, high = median_interval(ratios, seed=seed)
        results[name] = {"decode_tok_s": round(statistics.median(rates[name]), 1),
                         "ratio": round(statistics.median(ratios), 3),
                         "ratio_95": [round(low, 3), round(high, 3)],
                         "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
                         "generated_tokens": sorted(generated[name]),
                         "rates": [round(x, 2) for x in rates[name]]}
    return {"baseline": baseline, "rounds": len(measured), "tokens": tokens, "threads": threads,
            "prompt_tokens": len(prompt), "artifacts": results}


def table(data: dict) -> str:
    lines = [f"# Decode speed vs {data['baseline']} ({data['rounds']} interleaved rounds, "
             f"{data['tokens']} tokens, {data['threads']} threads)", "",
             "| artifact | decode tok/s (median) | ratio (median of rounds) | 95% interval | min – max |",
             "|---|---|---|---|---|"]
    for name, r in data["artifacts"].items():
        lines.append(f"| {name} | {r['decode_tok_s']:.1f} | {r['ratio']:.3f}× | {r['ratio_95'][0]:.3f}–"
                     f"{r['ratio_95'][1]:.3f} | {r['ratio_min']:.2f}–{r['ratio_max']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path)
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--stem", default="decode_ratio")
    args = parser.parse_args()
    if args.rounds < 2 or args.tokens < 2:
        parser.error("need at least 2 rounds and 2 tokens")
    paths = [args.baseline, *args.artifacts]
    if len({p.name for p in paths}) < len(paths):
        parser.error("the artifacts' folder names must differ (they label the table)")

    data = measure(paths, rounds=args.rounds, tokens=args.tokens,
                   threads=args.threads, seed=args.seed)
    md = table(data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.md").write_text(md, encoding="utf-8")
    (args.out / f"{args.stem}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
