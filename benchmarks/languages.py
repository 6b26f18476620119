"""Per-language quality of artifacts on a long per-language text.

    python benchmarks/languages.py ARTIFACT [ARTIFACT ...] [--text FILE | --shipped]
                                   [--out benchmarks/results] [--stem languages] [--threads 2]

Validates each artifact against the checkpoint in its manifest (nothing recorded in the
manifest) on one ≈210-430-token paragraph per language, and writes OUT/STEM.{md,json}: per
language and artifact the perplexity increase with its standard error and the KL divergence,
and which languages are more than two standard errors above issue #7's +5%.
The text is benchmarks/texts/languages.txt (what int4_headroom.py measures on; the INT4
default's int8 set was chosen on it), `--text FILE`, or with `--shipped` the long per-language
text edgeqwen ships (`edgeqwen validate --per-language`), written independently of that choice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edgeqwen.validation import per_language_texts, read_texts, validate_artifact

TEXT = Path(__file__).parent / "texts" / "languages.txt"
LIMIT_PCT = 5.0  # issue #7: no language worse than +5% perplexity


def clearly_over(metrics: dict, limit_pct: float = LIMIT_PCT) -> bool:
    """A language's perplexity increase exceeds `limit_pct` by more than two standard errors
    (its paragraph is short: a point estimate above the limit can be chance)."""
    return metrics["ppl_increase_pct"] - 2 * metrics["ppl_increase_se_pct"] > limit_pct


def measure(artifact: Path, *, threads: int | None, reference_runtime: tuple | None = None,
            text: dict[str, str] | None = None) -> dict:
    """`artifact` against its reference on `text` ({name: text}, default languages.txt): overall
    and per-language metrics, and which languages are over the limit (by point estimate, and by
    more than two s.e.)."""
    text = text or read_texts([TEXT])
    report, _ = validate_artifact(artifact, texts=text, threads=threads, record=False,
                                  greedy_tokens=0, reference_runtime=reference_runtime)
    languages = {label: m.__dict__ for label, m in report.sections[next(iter(text))].items()}
    return {
        "overall": report.overall.__dict__,
        "languages": languages,
        "clearly_over_limit": sorted(label for label, m in languages.items() if clearly_over(m)),
        "over_limit_point_estimate": sorted(label for label, m in languages.items()
                                            if m["ppl_increase_pct"] > LIMIT_PCT),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--stem", default="languages")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", type=Path, default=TEXT, help="a text of labelled paragraphs")
    source.add_argument("--shipped", action="store_true", help="edgeqwen's own long per-language text")
    args = parser.parse_args()
    text = per_language_texts() if args.shipped else read_texts([args.text])
    title = f"edgeqwen/texts/languages/{next(iter(text))}.txt" if args.shipped else args.text.name

    results = {art.name: measure(art, threads=args.threads, text=text) for art in args.artifacts}
    names = list(results)
    labels = list(results[names[0]]["languages"])
    lines = [f"# Per-language quality ({title}, {results[names[0]]['overall']['tokens']} tokens)", "",
             "ppl Δ % ± standard error, KL; reference = the checkpoint each artifact was built from.", "",
             "| language | tokens | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for label in labels:
        cells = [f"{results[n]['languages'][label]['ppl_increase_pct']:+.1f} ± "
                 f"{results[n]['languages'][label]['ppl_increase_se_pct']:.1f}, "
                 f"{results[n]['languages'][label]['kl']:.3f}" for n in names]
        tokens = results[names[0]]["languages"][label]["tokens"]
        lines.append(f"| {label} | {tokens} | " + " | ".join(cells) + " |")
    overall = [results[n]["overall"] for n in names]
    totals = [f"**{o['ppl_increase_pct']:+.1f} ± {o['ppl_increase_se_pct']:.1f}, {o['kl']:.3f}**"
              for o in overall]
    lines.append(f"| **all** | {overall[0]['tokens']} | " + " | ".join(totals) + " |")
    lines += ["", f"Above +{LIMIT_PCT:g}%: " + "; ".join(
        f"{n}: {', '.join(results[n]['over_limit_point_estimate']) or 'none'} "
        f"(by more than two s.e.: {', '.join(results[n]['clearly_over_limit']) or 'none'})" for n in names)]
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.md").write_text(md, encoding="utf-8")
    (args.out / f"{args.stem}.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
