"""The `edgeqwen` command line. Heavy modules are imported inside commands, so `--help`
answers at once and never loads torch.

Exit codes: 0 ok, 1 user error (a message, no traceback), 2 a quality gate failed,
3 internal error (set EDGEQWEN_DEBUG=1 for the traceback), 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgeqwen.errors import EdgeQwenError
from edgeqwen.progress import console as err

try:  # typer >= 0.20 vendors click; its usage errors derive from this class
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on plain click
    from click import ClickException

EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="edgeqwen",
    help="Compile small Qwen models into validated ONNX / GGUF artifacts for CPUs, NPUs and "
    "mobile-class devices.\n\nStart with `edgeqwen models`, `edgeqwen recipes` and "
    "`edgeqwen build RECIPE --model sample`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (files, CI logs) gets room for the wide tables instead of rich's 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """List the supported Qwen models with their architecture and deployment sizes."""
    from edgeqwen.catalog import CATALOG
    from edgeqwen.units import human

    if as_json:
        _print_json([m.to_dict() for m in CATALOG.values()])
        return
    table = Table(title="edgeqwen catalog", caption="arch = layers x hidden, attention heads / "
                  "KV heads. Sizes are weights only (int8/int4 include block scales); "
                  "KV = fp16 KV-cache bytes per token of context.")
    table.add_column("id / Hugging Face repo", no_wrap=True)
    table.add_column("family")
    for col in ("params", "arch", "context", "licence", "thinking", "tied emb.",
                "fp16\nint8\nint4", "KV/token"):
        table.add_column(col, justify="right")
    for m in CATALOG.values():
        table.add_row(
            f"{m.id}\n[dim]{m.repo_id}[/dim]", m.family, f"{m.params / 1e9:.2f}B",
            f"{m.layers}x{m.hidden}\n{m.heads}/{m.kv_heads} heads", f"{m.context_length:,}",
            m.license, "yes" if m.thinking else "no", "yes" if m.tied_embeddings else "no",
            "\n".join(human(m.weight_bytes(p)) for p in ("fp16", "int8", "int4")),
            f"{m.kv_bytes_per_token / 1024:.0f} KiB",
        )
    out.print(table)


@app.command()
def fit(
    ram: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Device memory, e.g. 4GB, 1.5GiB, 512MB.")] = None,
    device: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="A device preset instead of --ram: phone-4gb, phone-6gb, phone-8gb, phone-12gb, "
        "board-2gb, board-4gb, board-8gb, laptop-8gb, laptop-16gb (sets RAM, reserve and context; "
        "--reserve/--context still override).")] = None,
    task: Annotated[Optional[str], typer.Option(  # noqa: UP045 - typer needs Optional
        help="Only models for this task: chat, code or math.")] = None,
    context: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Tokens of context to budget the KV cache for (default 4096, or the device's).")] = None,
    reserve: Annotated[Optional[float], typer.Option(  # noqa: UP045
        help="Share of RAM left to the OS and other apps, 0-0.9 (default 0.25, or the device's).")] = None,
    recipe: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Size every catalog model as this recipe builds it (a shipped name such as "
        "mobile-gguf-q4_0, or a .yaml): its precision, context, KV cache type and runtime.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Suggest the model and precision that fit a memory budget, showing the arithmetic.

    Memory = weights (params x bits/8) + KV cache (context x KV bytes/token) + runtime
    overhead, and it must stay within RAM x (1 - reserve). Context: --context, else the
    device's, else the recipe's, else 4096.
    """
    from edgeqwen import fit as fitting
    from edgeqwen.catalog import TASKS
    from edgeqwen.recipes import load_recipe
    from edgeqwen.units import human, parse_size

    if (ram is None) == (device is None):
        raise EdgeQwenError("give either --ram or --device", hint=f"devices: {', '.join(fitting.DEVICES)}")
    preset = None
    if device is not None:
        preset = fitting.DEVICES.get(device)
        if preset is None:
            raise EdgeQwenError(f"unknown device {device!r}", hint=f"devices: {', '.join(fitting.DEVICES)}")
        ram = f"{preset.ram}"
    assert ram is not None
    chosen = load_recipe(recipe) if recipe else None
    if context is None:
        context = preset.context if preset else chosen.context_length if chosen else 4096
    reserve = reserve if reserve is not None else preset.reserve if preset else 0.25
    if task is not None and task not in TASKS:
        raise EdgeQwenError(f"unknown task {task!r}", hint=f"use one of: {', '.join(TASKS)}")
    if not 0 <= reserve <= 0.9:
        raise EdgeQwenError("--reserve must be between 0 and 0.9")
    if context < 1:
        raise EdgeQwenError("--context must be positive")
    rows, best = fitting.plan(parse_size(ram), context=context, task=task, reserve=reserve, recipe=chosen)
    if as_json:
        _print_json({"ram_bytes": parse_size(ram), "context": context, "reserve": reserve,
                     "task": task, "device": preset.name if preset else None,
                     "recipe": chosen.name if chosen else None,
                     "bench_profile": preset.profile if preset else None,
                     "recommended": best.to_dict() if best else None,
                     "rows": [r.to_dict() for r in rows]})
        return
    budget = rows[0].budget
    what = f"{preset.name} ({preset.description}, {human(preset.ram)})" if preset else ram
    how = f", {chosen.name} ({chosen.precision}, {rows[0].memory.kv_cache_type} KV cache, " \
          f"{rows[0].memory.runtime})" if chosen else ""
    table = Table(title=f"memory budget {human(budget)} = {what} x (1 - {reserve:g}), "
                        f"context {context:,} tokens{how}")
    for col in ("model", "precision", "weights", "KV cache", "overhead", "total", "fits"):
        table.add_column(col, justify="left" if col in ("model", "precision") else "right")
    for r in rows:
        table.add_row(r.model.id, r.precision, human(r.weights), human(r.kv_cache),
                      human(r.overhead), human(r.total),
                      "[green]yes[/green]" if r.fits else "[red]no[/red]")
    out.print(table)
    if best is None:
        raise EdgeQwenError(f"no catalog model fits in {human(budget)} at {context:,} tokens",
                            hint="try a shorter --context, a smaller --reserve or more memory")
    out.print(
        f"Recommended: [bold]{best.model.id}[/bold] at [bold]{best.precision}[/bold]: "
        f"{human(best.weights)} weights ({best.model.params / 1e9:.2f}B params) + "
        f"{human(best.kv_cache)} KV cache ({min(context, best.model.context_length):,} tokens x "
        f"{best.kv_cache // min(context, best.model.context_length):,} B) + {human(best.overhead)} runtime "
        f"= {human(best.total)} <= {human(budget)}."
    )
    if preset:
        out.print(f"Measure it like this device: edgeqwen bench ART --profile {preset.profile}")


@app.command()
def recipes(as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """List the shipped recipes (the `recipes/` folder)."""
    from edgeqwen.recipes import load_recipe, shipped_recipes

    loaded = {name: load_recipe(path) for name, path in shipped_recipes().items()}
    if as_json:
        _print_json({n: r.model_dump(mode="json") for n, r in loaded.items()})
        return
    if not loaded:
        out.print("No recipes are shipped with this installation.")
        return
    table = Table(title="shipped recipes")
    for col in ("name", "format", "precision", "engine", "target", "gates", "description"):
        table.add_column(col)
    for r in loaded.values():
        gates = ", ".join(f"{k}={v:g}" for k, v in r.validation.model_dump().items() if v is not None)
        table.add_row(r.name, r.format, r.precision, r.engine_name,
                      f"{r.target.device}/{r.target.profile}", gates or "-", r.description)
    out.print(table)


@app.command()
def build(
    recipe: Annotated[str, typer.Argument(help="A recipe file or the name of a shipped recipe.")],
    model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--model", "-m", help="Source: `sample`, a catalog id, a Hugging Face repo id, "
        "a checkpoint folder or a .gguf file. Defaults to the recipe's model.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--out", "-o", help="Artifact folder (default: artifacts/<model>-<recipe>).")] = None,
    force: Annotated[bool, typer.Option(help="Replace the output folder if it exists.")] = False,
    validate: Annotated[bool, typer.Option(
        "--validate/--no-validate", help="Measure the artifact against its source and apply the "
        "recipe's gates (exit 2 when one fails; the artifact is kept, marked as failed).")] = True,
    threads: Threads = None,
    calibration: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--calibration", help="Calibration text for recipes that calibrate (GPTQ in onnx-cpu-int4): "
        "a UTF-8 .txt, or .jsonl with a `text` field per line. Default: the shipped files the recipe "
        "names (algorithm.gptq.calibration; onnx-cpu-int4: default.txt, English, code and 28 languages, "
        "+ sampled.jsonl, the sample's own continuations of it; see `edgeqwen sample-calibration`).")] = None,
) -> None:
    """Build an artifact from a recipe and a model source, then validate it.

    Resolves the source, converts and quantizes it with the recipe's engine, and writes the
    model files with a manifest.json. The folder appears only when the build succeeded.
    Validation (see `edgeqwen validate`) runs on the shipped texts and is recorded in the manifest.
    """
    from edgeqwen.pipeline import build as run_build

    result = run_build(recipe, model, out_dir, force=force, calibration=calibration)
    out.print(f"[green]built[/green] {result.path} "
              f"({result.manifest.size_bytes / 2**20:,.1f} MiB, "
              f"{result.manifest.build['seconds']:.0f} s)")
    if validate:
        from edgeqwen.validation import raise_if_failed, validate_artifact

        report, gates = validate_artifact(result.path, threads=threads)
        _show_validation(report, gates)
        raise_if_failed(gates)


ArtifactArg = Annotated[Path, typer.Argument(help="An artifact folder.")]
JsonReport = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]
Record = Annotated[bool, typer.Option(help="Write the results into the manifest.")]


def _show_validation(report: Any, gates: list[Any]) -> None:
    table = Table(title=f"quality vs {report.reference}")
    for col in ("text", "tokens", "ppl reference", "ppl", "ppl Δ %", "KL", "top-1"):
        table.add_column(col, justify="left" if col == "text" else "right")
    rows = [*report.texts.items(), ("overall", report.overall)]
    for name, m in rows:
        table.add_row(name, str(m.tokens), f"{m.ppl_reference:.3f}", f"{m.ppl:.3f}",
                      f"{m.ppl_increase_pct:+.2f}", f"{m.kl:.4f}", f"{m.top1_agreement:.1%}",
                      style="bold" if name == "overall" else None)
    out.print(table)
    for name, parts in report.sections.items():
        part_table = Table(title=f"{name} by section")
        for col in ("section", "tokens", "ppl Δ %", "± s.e.", "KL", "top-1"):
            part_table.add_column(col, justify="left" if col == "section" else "right")
        for label, m in parts.items():
            se = "-" if m.ppl_increase_se_pct is None else f"{m.ppl_increase_se_pct:.1f}"  # one token
            part_table.add_row(label, str(m.tokens), f"{m.ppl_increase_pct:+.2f}", se, f"{m.kl:.4f}",
                               f"{m.top1_agreement:.1%}")
        out.print(part_table)
        if any((m.ppl_increase_se_pct or 0) > 2 for m in parts.values()):
            out.print("[dim]short sections: their perplexity increase moves by the ± standard error by "
                      "chance; `--per-language` scores 230-385 tokens per language[/dim]")
    if report.greedy_match is not None:
        out.print(f"greedy continuations: {report.greedy_match:.0%} of the reference's tokens reproduced "
                  f"({len(report.greedy)} chat prompts)")
    if report.tokenizer_mismatches:
        out.print(f"[yellow]note:[/yellow] the two sides tokenize {', '.join(report.tokenizer_mismatches)} "
                  "differently; both were fed the reference's token ids")
    if not gates:
        out.print("no gates in the recipe")
        return
    gate_table = Table(title="gates")
    for col in ("gate", "limit", "measured", "result"):
        gate_table.add_column(col)
    for g in gates:
        gate_table.add_row(g.gate, f"{g.limit:g}", f"{g.value:g}",
                           "[green]pass[/green]" if g.passed else "[red]FAIL[/red]")
    out.print(gate_table)


@app.command()
def validate(
    artifact: ArtifactArg,
    reference: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="What to compare against: a checkpoint folder, `sample`, a model id (run by "
        "transformers in fp32), or another artifact. Default: the source in the manifest.")] = None,
    text: Annotated[Optional[list[Path]], typer.Option(  # noqa: UP045
        help="A UTF-8 text file to measure on (repeatable). Default: the shipped English, "
        "Python and multilingual texts.")] = None,
    per_language: Annotated[bool, typer.Option(
        "--per-language", help="Measure on the shipped long per-language text instead: the 18 "
        "languages of the multilingual text with ≈230-385 tokens each, so each language's perplexity "
        "increase is resolved to about ±1.5% (the default paragraphs hold 40-90 tokens: ±2.5-4.5%). "
        "About 4x as long as the multilingual text.")] = False,
    chunk: Annotated[int, typer.Option(help="Tokens per scored window.")] = 512,
    max_tokens: Annotated[Optional[int], typer.Option(  # noqa: UP045
        help="Score at most this many tokens of each text.")] = None,
    greedy_tokens: Annotated[int, typer.Option(
        min=0, help="Tokens of each greedy chat continuation compared (0: none; emulated NPUs "
        "decode slowly).")] = 32,
    as_json: JsonReport = False,
    record: Record = True,
    threads: Threads = None,
) -> None:
    """Measure an artifact against its reference: perplexity of both and its increase, mean KL
    divergence, top-1 agreement, greedy-continuation match; then the recipe's gates (exit 2
    when one fails)."""
    from edgeqwen.validation import (
        per_language_texts,
        raise_if_failed,
        read_texts,
        result_dict,
        validate_artifact,
    )

    if text and per_language:
        raise EdgeQwenError("--text and --per-language both choose the texts to measure on",
                            hint="pass one of them")
    texts = read_texts(text) if text else per_language_texts() if per_language else None
    report, gates = validate_artifact(artifact, reference=reference, texts=texts, threads=threads,
                                      chunk=chunk, max_tokens=max_tokens, record=record,
                                      greedy_tokens=greedy_tokens)
    if as_json:
        print(json.dumps(result_dict(report, gates), indent=2))
    else:
        _show_validation(report, gates)
    raise_if_failed(gates)


@app.command()
def bench(
    artifact: ArtifactArg,
    profile: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Device profile: desktop (all cores), mobile (2 threads, 3 GiB, 2048 context), tiny "
        "(1 thread, 1.5 GiB), phone (4 threads, 4 GiB). Default: the recipe's target profile.")] = None,
    memory_cap: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Override the profile's memory cap, e.g. 2GB (0: no cap).")] = None,
    threads: Threads = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per prompt, after one warm-up.")] = 3,
    new_tokens: Annotated[int, typer.Option(min=2, help="Tokens generated per run.")] = 64,
    as_json: JsonReport = False,
    record: Record = True,
) -> None:
    """Measure time to first token, prefill and decode speed and peak memory under a device
    profile. The run happens in a child process with the profile's thread count, context and
    memory cap applied (RLIMIT_AS); exit 1 when the artifact does not fit."""
    from edgeqwen import bench as bench_mod
    from edgeqwen.artifacts import load_manifest
    from edgeqwen.profiles import get_profile
    from edgeqwen.units import parse_size

    chosen = get_profile(profile or load_manifest(artifact).target.get("profile", "desktop"))
    cap = None if memory_cap is None else 0 if memory_cap.strip() in ("0", "none") else parse_size(memory_cap)
    report = bench_mod.run(artifact, chosen, memory_cap=cap, threads=threads, repeats=repeats,
                           new_tokens=new_tokens, record=record)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        table = Table(title=f"{artifact} · profile {chosen.name} · {report['runtime']}")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for key in ("threads", "memory_cap_mb", "context_length", "size_mb", "load_s", "ttft_s",
                    "prefill_tok_s", "prefill_long_tok_s", "decode_tok_s", "peak_rss_mb", "expected_peak_mb",
                    "os_threads"):
            if key in report:
                table.add_row(key, "-" if report[key] is None else str(report[key]))
        out.print(table)
    if not report["fits"]:
        raise EdgeQwenError(f"{artifact} does not run within profile {chosen.name} "
                            f"({report['memory_cap_mb']} MiB cap): {report['error']}",
                            hint="pick a smaller precision or model (`edgeqwen fit`), or another profile")


@app.command()
def report(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifact folders to compare.")],
    out_file: Annotated[Path, typer.Option(
        "--out", "-o", help="Where to write: .html (tables + plot, self-contained) or .md (tables).")
    ] = Path("edgeqwen-report.html"),
    profile: Annotated[str, typer.Option(
        help="Which `edgeqwen bench` profile's numbers to show.")] = "desktop",
    baseline: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Artifact name whose speed the others are compared with (ratios).")] = None,
) -> None:
    """Compare artifacts: quality (from `validate`), speed (from `bench`), size and build cost,
    with a quality-vs-size-vs-speed plot, so you can pick one at a glance."""
    from edgeqwen import report as report_mod

    rows = report_mod.collect(artifacts, profile)
    if baseline and baseline not in {r.name for r in rows}:
        raise EdgeQwenError(f"--baseline {baseline!r} is not one of the artifacts",
                            hint="names: " + ", ".join(r.name for r in rows))
    text = (report_mod.markdown(rows, baseline) if out_file.suffix == ".md"
            else report_mod.html_report(rows, baseline=baseline))
    out_file.write_text(text, encoding="utf-8")
    out.print(f"wrote {out_file} ({len(rows)} artifacts)")


@app.command()
def resolve(
    source: Annotated[str, typer.Argument(help="`sample`, a catalog id, a repo id, a folder or a .gguf.")],
) -> None:
    """Resolve a model source to a verified local checkpoint and print its folder.

    Prepares the offline sample once, or pre-downloads a hub model for offline use.
    """
    from edgeqwen.sources import resolve as run_resolve

    resolved = run_resolve(source)
    for note in resolved.notes:
        err.print(f"[yellow]note:[/yellow] {note}")
    sys.stdout.write(f"{resolved.path}\n")


@app.command("sample-calibration")
def sample_calibration(
    model: Annotated[str, typer.Argument(help="`sample`, a catalog id, a repo id, a folder or a .gguf.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The .jsonl file to write.")],
    rounds: Annotated[int, typer.Option(min=1, help="Continuations per opening (round r samples with "
                                        "seed + r).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the first round.")] = 0,
    new_tokens: Annotated[int, typer.Option(min=8, help="Tokens sampled after each 24-token opening.")] = 232,
    force: Annotated[bool, typer.Option(help="Replace the file if it exists.")] = False,
    threads: Threads = None,
) -> None:
    """Write calibration text sampled from the model itself, for GPTQ (`--calibration FILE`).

    The model continues the opening of every paragraph of the shipped calibration text
    (English, code, 28 languages) at temperature 0.8, top-p 0.95: more calibration tokens in
    the same mix, with nothing downloaded. The shipped texts/calibration/sampled.jsonl was made
    this way from `sample`. About 100 s per 16 continuations for a 0.5B model
    on 2 cores.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeqwen.sampled_calibration import sample_texts, write_jsonl
    from edgeqwen.sources import resolve as run_resolve

    if out_file.exists() and not force:
        raise EdgeQwenError(f"{out_file} exists", hint="pass --force to replace it, or another --out")
    source = run_resolve(model)
    with Progress(TextColumn("sampling calibration text"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("sample", total=None)
        texts = sample_texts(source.path, rounds=rounds, seed=seed, new_tokens=new_tokens, threads=threads,
                             on_batch=lambda done, total: bar.update(task, completed=done, total=total))
    write_jsonl(texts, out_file)
    out.print(f"wrote {out_file} ({len(texts)} samples)")


@app.command()
def inspect(
    artifact: ArtifactArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show an artifact's manifest: recipe, source, tools, files, expected memory and validation."""
    from edgeqwen.artifacts import load_manifest
    from edgeqwen.units import human

    manifest = load_manifest(artifact)
    if as_json:
        sys.stdout.write(manifest.model_dump_json(indent=2) + "\n")
        return
    out.print(f"[bold]{manifest.name}[/bold]  format={manifest.format}  runtime={manifest.runtime}  "
              f"target={manifest.target.get('device')}/{manifest.target.get('profile')}")
    out.print(f"recipe: {manifest.recipe.get('name')} (precision {manifest.recipe.get('precision')})"
              f"  engine: {manifest.engine.get('name')}")
    out.print(f"source: {manifest.source.spec} ({manifest.source.kind}) -> {manifest.source.path}")
    out.print("tools: " + ", ".join(f"{k} {v}" for k, v in manifest.tools.items()))
    out.print(f"built: {manifest.created_utc}, {manifest.build.get('seconds')} s, peak RSS "
              f"{manifest.build.get('peak_rss_mb')} MB (tools it ran: "
              f"{manifest.build.get('peak_rss_children_mb')} MB)")
    table = Table(title="files")
    table.add_column("path")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    for f in manifest.files:
        table.add_row(f.path, f"{f.bytes:,}", f.sha256[:16] + "…")
    out.print(table)
    if manifest.memory:
        m = manifest.memory
        out.print(f"expected memory at {m['context_length']:,} tokens: {human(m['total_bytes'])} = "
                  f"model files {human(m['weights_bytes'])}"
                  f"{' (memory-mapped)' if m.get('mmap') else ''} + KV cache {human(m['kv_cache_bytes'])} "
                  f"({m['kv_cache_type']}) + {m['runtime']} runtime {human(m['overhead_bytes'])}")
    for note in manifest.notes:
        out.print(f"[yellow]note:[/yellow] {note}")
    if manifest.validation:
        out.print_json(json.dumps(manifest.validation))


@app.command()
def verify(artifact: ArtifactArg) -> None:
    """Re-hash every file of an artifact against its manifest; exit 1 on any change."""
    from edgeqwen.artifacts import verify as run_verify
    from edgeqwen.errors import ArtifactError

    problems = run_verify(artifact)
    if problems:
        raise ArtifactError(f"{artifact} does not match its manifest:\n  " + "\n  ".join(problems),
                            hint="rebuild the artifact, or restore the changed files")
    out.print(f"[green]ok[/green] {artifact}: every file matches manifest.json")


MaxTokens = Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate at most.")]
Temperature = Annotated[float, typer.Option(help="0 is greedy (deterministic).")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (with temperature > 0).")]
TopK = Annotated[int, typer.Option("--top-k", help="Sample among the k likeliest tokens (0: off).")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed for sampling.")]  # noqa: UP045
Stop = Annotated[Optional[list[str]], typer.Option(help="Stop at this string (repeatable).")]  # noqa: UP045
Threads = Annotated[Optional[int], typer.Option(help="CPU threads (default: all cores).")]  # noqa: UP045
System = Annotated[Optional[str], typer.Option(help="System prompt.")]  # noqa: UP045
Context = Annotated[Optional[int], typer.Option(  # noqa: UP045
    "--context", help="Context length in tokens, prompt + reply (default: the artifact's recipe).")]


Thinking = Annotated[Optional[bool], typer.Option(  # noqa: UP045
    "--thinking/--no-thinking", help="Qwen3 only: reason before answering (default: the "
    "template's default, on). The reasoning is shown dimmed on stderr, the answer on stdout.")]


def _print_stream(pieces: Any) -> None:
    """Answer text to stdout as it streams, reasoning (Qwen3) dimmed to stderr."""
    try:
        for piece in pieces:
            if isinstance(piece, str) or piece.kind == "content":
                sys.stdout.write(piece if isinstance(piece, str) else piece.text)
                sys.stdout.flush()
            else:
                err.print(piece.text, style="dim", end="", markup=False, highlight=False)
    except ValueError as e:  # the runtimes' way of saying the prompt does not fit
        raise EdgeQwenError(str(e), hint="shorten the prompt, or pass a larger --context") from None
    sys.stdout.write("\n")


@app.command("run")
def run_prompt(
    artifact: ArtifactArg,
    prompt: Annotated[str, typer.Argument(help="The user message (or raw text with --raw).")],
    raw: Annotated[bool, typer.Option(help="Feed the prompt as is, without the chat template.")] = False,
    system: System = None, max_new_tokens: MaxTokens = 256, temperature: Temperature = 0.0,
    top_p: TopP = 1.0, top_k: TopK = 0, seed: Seed = None, stop: Stop = None, threads: Threads = None,
    context: Context = None, thinking: Thinking = None,
) -> None:
    """Answer one prompt with an artifact, streaming the reply to stdout."""
    from edgeqwen.api import generation_options, load

    llm = load(artifact, verify=False, threads=threads, context_length=context)
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                    seed=seed, stop=tuple(stop or ()))
    if raw:
        _print_stream(llm.runtime.stream(prompt, generation_options(**sampling)))
        return
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    _print_stream(llm.stream(messages, thinking=thinking, **sampling))


@app.command()
def chat(
    artifact: ArtifactArg,
    system: System = None, max_new_tokens: MaxTokens = 512, temperature: Temperature = 0.0,
    top_p: TopP = 1.0, top_k: TopK = 0, seed: Seed = None, threads: Threads = None,
    context: Context = None, thinking: Thinking = None,
) -> None:
    """Chat with an artifact in the terminal (streaming). /reset clears the history,
    /exit or Ctrl-D ends."""
    from edgeqwen.api import load

    llm = load(artifact, verify=False, threads=threads, context_length=context)
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    err.print(f"[dim]{llm.runtime.name} · {artifact} · /reset, /exit[/dim]")
    while True:
        try:
            line = input("> ")
        except EOFError:
            sys.stdout.write("\n")
            return
        if line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            history = list(start)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        stream = llm.stream(history, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            top_k=top_k, seed=seed, thinking=thinking)
        _print_stream(stream)
        assert stream.reply is not None
        history.append(stream.reply.to_message())  # the answer only: Qwen3 drops old reasoning


export_app = typer.Typer(
    help="Repackage an artifact for the program that runs it: `ollama` (GGUF) or `foundry` "
    "(ONNX, Foundry Local).", no_args_is_help=True)
app.add_typer(export_app, name="export")
ExportOut = Annotated[Path, typer.Option("--out", "-o", help="Folder to write (must not exist).")]
Force = Annotated[bool, typer.Option(help="Replace --out if it exists.")]


@export_app.command("ollama")
def export_ollama(
    artifact: ArtifactArg,
    out_dir: ExportOut,
    name: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Model name for `ollama create` (default: the artifact's name).")] = None,
    num_ctx: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--num-ctx", help="Context Ollama allocates (default: the recipe's context length).")] = None,
    template: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="Use this Go template instead of edgeqwen's Qwen one.")] = None,
    force: Force = False,
) -> None:
    """Write a Modelfile + model.gguf folder for `ollama create`.

    The Modelfile has an explicit TEMPLATE (Go) that renders conversations exactly like the
    model's Jinja chat template - system prompt, multi-turn, tools and tool results, and
    Qwen3's thinking on/off - plus stop tokens, num_ctx, the model's sampling defaults and
    its licence. The GGUF is hard-linked when possible, so the export costs no disk.
    """
    from edgeqwen.exports.ollama import export_ollama as run_export

    done = run_export(artifact, out_dir, name=name, num_ctx=num_ctx, template_file=template,
                      force=force)
    for note in done.notes:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    params = ", ".join(f"{k} {v}" for k, v in done.parameters.items())
    out.print(f"[green]wrote[/green] {done.modelfile} ({done.template.family} template; {params})",
              highlight=False)
    out.print(f"next: ollama create {done.name} -f {done.modelfile}", highlight=False, soft_wrap=True)


@export_app.command("foundry")
def export_foundry(
    artifact: ArtifactArg,
    out_dir: ExportOut,
    name: Annotated[Optional[str], typer.Option(  # noqa: UP045
        help="Model name (default: the artifact's name).")] = None,
    version: Annotated[int, typer.Option(help="Model version: the id is NAME:VERSION.")] = 1,
    publisher: Annotated[str, typer.Option(help="Publisher folder of the cache layout.")] = "edgeqwen",
    context: Context = None,
    force: Force = False,
) -> None:
    """Write an ONNX artifact as a Foundry Local model folder (cache layout).

    OUT/PUBLISHER/NAME-VERSION/ holds the model, tokenizer and chat template, a
    genai_config.json Foundry's runtime accepts (context length set, no static batching)
    and inference_model.json (Name + PromptTemplate) for Foundry's cache scanner and
    older versions. Model files are hard-linked when possible.
    """
    from edgeqwen.exports.foundry import export_foundry as run_export

    done = run_export(artifact, out_dir, name=name, version=version, publisher=publisher,
                      context_length=context, force=force)
    out.print(f"[green]wrote[/green] {done.model_dir} (model id {done.model_id})", highlight=False)
    out.print("next (foundry-local-sdk 2.x): catalog = manager.get_catalog(CatalogType.LOCAL); "
              f"catalog.register_model({str(done.model_dir)!r}, {done.model_id!r}, metadata) "
              "with metadata.set_string_property('task', 'chat-completion')  "
              f"- or: foundry cache cd {done.root}", highlight=False, soft_wrap=True)


@app.command()
def matrix(
    plan: Annotated[Path, typer.Argument(help="The plan: a YAML file listing models and recipes.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Where cells, results.json and the report go.")],
    jobs: Annotated[Optional[int], typer.Option(  # noqa: UP045
        min=1, help="Cells at once on this machine (default: its cores, fewer when the builds' "
        "memory would not fit side by side).")] = None,
    ray: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--ray", help="Run each cell as a Ray task on this cluster address (`auto`, "
        "`ray://host:10001`), or `local` for a one-machine cluster; --out must be shared.")] = None,
) -> None:
    """Build, validate and benchmark every model x recipe of a plan, then write one combined
    report. Cells whose source, recipe and tool versions are unchanged are not rebuilt, so a
    second run resumes; a failed cell is reported and the others go on (exit 1 at the end)."""
    from edgeqwen import matrix as matrix_mod

    chosen = matrix_mod.load_plan(plan)

    def show(r: matrix_mod.CellResult) -> None:
        style = {"built": "green", "cached": "cyan", "failed": "red"}[r.status]
        why = f": {r.error.splitlines()[0]}" if r.error else ""
        err.print(f"[{style}]{r.status}[/{style}] {r.name}{why}", highlight=False)

    results = matrix_mod.run(chosen, plan.resolve().parent, out_dir, jobs=jobs, ray_address=ray,
                             on_result=show)
    table = Table(title=f"matrix {chosen.name}: {len(results)} cells")
    for col in ("cell", "status", "size", "ppl Δ %", "KL", *(f"decode {p}" for p in chosen.profiles)):
        table.add_column(col)
    for r in results:
        m = r.metrics
        table.add_row(r.name, r.status, f"{m['size_bytes'] / 2**20:.0f} MiB" if m else "-",
                      f"{m['ppl_increase_pct']:+.2f}" if m.get("ppl_increase_pct") is not None else "-",
                      f"{m['kl']:.4f}" if m.get("kl") is not None else "-",
                      *(str((m.get("bench", {}).get(p) or {}).get("decode_tok_s", "-"))
                        for p in chosen.profiles))
    out.print(table)
    for profile, name in matrix_mod.recommendations(results, chosen.profiles).items():
        out.print(f"recommended for {profile}: {name or 'none fits'}")
    out.print(f"report: {out_dir / 'report.html'}, {out_dir / 'report.md'}; "
              f"data: {out_dir / matrix_mod.RESULTS}")
    failed = [r.name for r in results if r.status == "failed"]
    if failed:
        raise EdgeQwenError(f"{len(failed)} of {len(results)} cells failed: {', '.join(failed)}",
                            hint=f"see {out_dir / matrix_mod.RESULTS}; re-running resumes and retries them")


@app.command()
def plugins() -> None:
    """List the installed build engines and runtime backends (entry points)."""
    from edgeqwen import registry

    for reg in (registry.engines, registry.runtimes):
        table = Table(title=f"{reg.kind}s (entry point group {reg.group})")
        table.add_column("name")
        table.add_column("provided by")
        for name, where in reg.describe().items():
            table.add_row(name, where)
        out.print(table)


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="edgeqwen", standalone_mode=False)
    except EdgeQwenError as e:
        err.print(f"[red]error:[/red] {e.message}", highlight=False)
        if e.hint:
            err.print(f"[dim]hint:[/dim] {e.hint}", highlight=False)
        code = e.exit_code
    except ClickException as e:  # usage errors are user errors, not "gate failed"
        e.show()
        code = 1
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        code = EXIT_INTERRUPTED
    except Exception as e:
        if os.environ.get("EDGEQWEN_DEBUG"):
            traceback.print_exc()
        err.print(f"[red]internal error:[/red] {type(e).__name__}: {e}", highlight=False)
        err.print("[dim]set EDGEQWEN_DEBUG=1 for the traceback, and report it[/dim]")
        code = EXIT_INTERNAL
    return code if isinstance(code, int) else 0


def run() -> None:
    """Console-script entry point."""
    from edgeqwen.progress import quiet_library_warnings

    quiet_library_warnings()
    sys.exit(main())


if __name__ == "__main__":
    run()
