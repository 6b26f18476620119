"""Compare artifacts at a glance: quality, speed, size and build cost from their manifests.

Writes one self-contained HTML file (tables + a quality/size/speed plot embedded as PNG) or
markdown tables. Nothing is measured here: run `edgeqwen validate` and `edgeqwen bench`
first; missing numbers show as "-".
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqwen.artifacts import Manifest, load_manifest


@dataclass(frozen=True)
class Row:
    name: str
    format: str
    precision: str
    size_mb: float
    ppl_increase_pct: float | None
    kl: float | None
    top1: float | None
    greedy_match: float | None
    gates_passed: bool | None
    decode_tok_s: float | None
    prefill_tok_s: float | None
    ttft_s: float | None
    peak_rss_mb: float | None
    bench_profile: str | None
    build_s: float | None
    build_peak_mb: float | None
    build_steps: str  # "llama.cpp converter 12 s, llama.cpp quantizer 3 s"


def row(path: Path, manifest: Manifest, profile: str) -> Row:
    v = manifest.validation or {}
    overall = v.get("overall") or {}
    benches = manifest.benchmarks or {}
    chosen = profile if profile in benches else next(iter(benches), None)
    b = benches.get(chosen, {}) if chosen else {}
    build = manifest.build or {}
    peak = max(build.get("peak_rss_mb") or 0, build.get("peak_rss_children_mb") or 0) or None
    return Row(
        name=manifest.name or path.name, format=manifest.format,
        precision=str(manifest.recipe.get("precision")),
        size_mb=round(manifest.size_bytes / 2**20, 1),
        ppl_increase_pct=overall.get("ppl_increase_pct"), kl=overall.get("kl"),
        top1=overall.get("top1_agreement"),
        greedy_match=v.get("greedy_match"), gates_passed=v.get("passed"),
        decode_tok_s=b.get("decode_tok_s"), prefill_tok_s=b.get("prefill_long_tok_s"), ttft_s=b.get("ttft_s"),
        peak_rss_mb=b.get("peak_rss_mb"), bench_profile=chosen if b else None,
        build_s=build.get("seconds"), build_peak_mb=peak,
        build_steps=", ".join(f"{str(st['step']).split(':')[0]} {float(st['seconds']):.0f} s"
                              for st in build.get("steps") or []) or "-",
    )


def collect(paths: list[Path], profile: str = "desktop") -> list[Row]:
    return [row(Path(p), load_manifest(p), profile) for p in paths]


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    return format(value, spec) if spec else str(value)


def tables(rows: list[Row], baseline: str | None = None) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Quality, speed and build tables as (header, rows) of strings. `baseline` names the row
    whose decode/prefill speed the others are divided by."""
    base = next((r for r in rows if r.name == baseline), None)

    def ratio(value: float | None, ref: float | None) -> str:
        return f"{value / ref:.2f}×" if value and ref else "-"

    quality = (["artifact", "format", "precision", "size MiB", "ppl Δ %", "KL", "top-1", "greedy", "gates"],
               [[r.name, r.format, r.precision, _fmt(r.size_mb, ".1f"), _fmt(r.ppl_increase_pct, "+.2f"),
                 _fmt(r.kl, ".4f"), _fmt(r.top1, ".1%"), _fmt(r.greedy_match, ".0%"), _fmt(r.gates_passed)]
                for r in rows])
    speed_head = ["artifact", "profile", "TTFT s", "prefill tok/s (512)", "decode tok/s", "peak RSS MiB"]
    if base:
        speed_head += [f"decode vs {base.name}", f"prefill vs {base.name}"]
    speed_rows = []
    for r in rows:
        cells = [r.name, _fmt(r.bench_profile), _fmt(r.ttft_s, ".3f"), _fmt(r.prefill_tok_s, ".0f"),
                 _fmt(r.decode_tok_s, ".1f"), _fmt(r.peak_rss_mb, ".0f")]
        if base:
            cells += [ratio(r.decode_tok_s, base.decode_tok_s), ratio(r.prefill_tok_s, base.prefill_tok_s)]
        speed_rows.append(cells)
    build = (["artifact", "build s", "build peak RSS MiB", "steps"],
             [[r.name, _fmt(r.build_s, ".0f"), _fmt(r.build_peak_mb, ".0f"), r.build_steps] for r in rows])
    return {"quality": quality, "speed": (speed_head, speed_rows), "build cost": build}


def markdown(rows: list[Row], baseline: str | None = None) -> str:
    parts = []
    for title, (head, body) in tables(rows, baseline).items():
        parts.append(f"### {title}\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
                     + "\n".join("| " + " | ".join(cells) + " |" for cells in body) + "\n")
    return "\n".join(parts)


def plot_png(rows: list[Row]) -> bytes | None:
    """Size (x) vs perplexity increase (y), marker area by decode speed; None without data."""
    points = [r for r in rows if r.ppl_increase_pct is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    fastest = max((r.decode_tok_s or 0) for r in points) or 1
    for r in points:
        area = 40 + 400 * (r.decode_tok_s or 0) / fastest
        ax.scatter(r.size_mb, r.ppl_increase_pct, s=area, alpha=0.6,
                   color="tab:blue" if r.format == "gguf" else "tab:orange")
        ax.annotate(r.name, (r.size_mb, r.ppl_increase_pct), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel("size on disk (MiB)")
    ax.set_ylabel("perplexity increase vs reference (%)")
    ax.set_title("quality vs size (marker area: decode tokens/s; blue GGUF, orange ONNX)")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def html_report(rows: list[Row], title: str = "edgeqwen artifacts", baseline: str | None = None,
                note: str = "") -> str:
    def table(head: list[str], body: list[list[str]]) -> str:
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
                      for cells in body)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"

    png = plot_png(rows)
    data = base64.b64encode(png).decode() if png else ""
    img = (f'<img alt="quality vs size vs speed" src="data:image/png;base64,{data}">' if png
           else "<p>No validation results yet: run <code>edgeqwen validate</code>.</p>")
    sections = "".join(f"<h2>{html.escape(t)}</h2>{table(h, b)}"
                       for t, (h, b) in tables(rows, baseline).items())
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
             "table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(note)}</p>{img}{sections}</body></html>\n")
