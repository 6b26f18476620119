"""Build matrices: models x recipes, each cell built, validated and benchmarked, on this
machine (worker processes sized to its memory) or as Ray tasks on a cluster.

A cell's key is the sha256 of what determines its artifact and measurements: the source's
file hashes, the resolved recipe, the engine's tool versions and the plan's validation and
benchmark settings. The key goes in the artifact's manifest (`matrix_key`); a cell whose
artifact already carries its key and its measurements is not rebuilt, so re-running a plan
resumes where it stopped. A failed cell is recorded and the others go on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeqwen import __version__
from edgeqwen.artifacts import Manifest
from edgeqwen.catalog import ModelSpec
from edgeqwen.errors import EdgeQwenError, RecipeError
from edgeqwen.recipes import Recipe, load_recipe, shipped_recipes

RESULTS = "results.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidateSettings(_Strict):
    max_tokens: int | None = Field(default=256, ge=16)  # per text; None: whole texts


class BenchSettings(_Strict):
    repeats: int = Field(default=1, ge=1)
    new_tokens: int = Field(default=32, ge=2)


class Plan(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    models: list[str] = Field(min_length=1)  # catalog ids, repo ids, folders, .gguf files, `sample`
    recipes: list[str] = Field(min_length=1)  # shipped names, globs over them, or .yaml paths
    profiles: list[str] = Field(default_factory=lambda: ["desktop"])  # `edgeqwen bench` profiles
    validate_cells: ValidateSettings | None = Field(default_factory=ValidateSettings, alias="validate")
    bench: BenchSettings = Field(default_factory=BenchSettings)


@dataclass(frozen=True)
class Cell:
    model: str
    recipe: Recipe
    name: str  # folder name under OUT/cells


@dataclass
class CellResult:
    name: str
    model: str
    recipe: str
    key: str
    status: str  # built | cached | failed
    seconds: float = 0.0
    error: str | None = None
    artifact: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def load_plan(path: Path | str) -> Plan:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise EdgeQwenError(f"cannot read plan {path}: {err}") from None
    try:
        return Plan.model_validate(data)
    except ValidationError as err:
        lines = [f"{path} is not a valid matrix plan:"]
        for e in err.errors():
            lines.append(f"  field {'.'.join(str(p) for p in e['loc']) or '(plan)'!r}: {e['msg']}")
        raise EdgeQwenError("\n".join(lines), hint="see the README section 'Build matrices'") from None


def expand_recipes(refs: Sequence[str], base: Path) -> list[Recipe]:
    """Recipe references in plan order: a shipped name, a glob over shipped names
    (`gguf-*`), or a .yaml path (relative to the plan's folder)."""
    shipped = shipped_recipes()
    found: dict[str, Recipe] = {}
    for ref in refs:
        path = base / ref
        if ref.endswith((".yaml", ".yml")) and path.is_file():
            recipe = load_recipe(path)
            found[recipe.name] = recipe
            continue
        names = sorted(fnmatch.filter(shipped, ref)) if any(c in ref for c in "*?[") else [ref]
        if not names:
            raise RecipeError(f"recipe pattern {ref!r} matches no shipped recipe",
                              hint=f"shipped recipes: {', '.join(shipped)}")
        for name in names:
            found[name] = load_recipe(name)
    return list(found.values())


def cells(plan: Plan, base: Path) -> list[Cell]:
    recipes = expand_recipes(plan.recipes, base)
    out = []
    for model in plan.models:
        spec = str((base / model).resolve()) if (base / model).exists() else model
        for recipe in recipes:
            out.append(Cell(model=spec, recipe=recipe, name=f"{_slug(model)}__{recipe.name}"))
    return out


def _slug(model: str) -> str:
    name = Path(model).name if os.sep in model or model.endswith(".gguf") else model
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name.lower()).strip("-")


def cell_key(cell: Cell, plan: Plan, source_files: dict[str, str]) -> str:
    """sha256 over everything that determines the cell's artifact and measurements."""
    from edgeqwen.pipeline import engine_for

    identity = {
        "source": source_files, "recipe": cell.recipe.model_dump(mode="json"),
        "tools": {"edgeqwen": __version__, "python": platform.python_version(),
                  **engine_for(cell.recipe).tool_versions()},
        "validate": plan.validate_cells.model_dump() if plan.validate_cells else None,
        "bench": plan.bench.model_dump(), "profiles": plan.profiles,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def cached(artifact: Path, key: str, plan: Plan) -> Manifest | None:
    """The artifact's manifest when it carries this key and every measurement the plan asks
    for, else None (the cell must run)."""
    from edgeqwen.artifacts import load_manifest

    if not (artifact / "manifest.json").is_file():
        return None
    try:
        manifest = load_manifest(artifact)
    except EdgeQwenError:
        return None
    complete = (manifest.matrix_key == key and (not plan.validate_cells or manifest.validation)
                and all(p in manifest.benchmarks for p in plan.profiles))
    return manifest if complete else None


def run_cell(cell: Cell, plan: Plan, key: str, out: Path) -> CellResult:
    """Build, validate and benchmark one cell into OUT/cells/NAME (in a worker process)."""
    from edgeqwen import bench as bench_mod
    from edgeqwen.artifacts import load_manifest
    from edgeqwen.pipeline import build
    from edgeqwen.profiles import get_profile
    from edgeqwen.progress import quiet_library_warnings
    from edgeqwen.validation import validate_artifact

    quiet_library_warnings()  # a worker process does not inherit the CLI's logging setup
    started = time.perf_counter()
    artifact = out / "cells" / cell.name
    result = CellResult(name=cell.name, model=cell.model, recipe=cell.recipe.name, key=key, status="built",
                        artifact=str(artifact))
    try:
        build(cell.recipe, cell.model, artifact, force=True)
        manifest = load_manifest(artifact)
        manifest.matrix_key = key
        manifest.write(artifact)
        if plan.validate_cells:
            validate_artifact(artifact, max_tokens=plan.validate_cells.max_tokens)
        for profile in plan.profiles:
            bench_mod.run(artifact, get_profile(profile), repeats=plan.bench.repeats,
                          new_tokens=plan.bench.new_tokens)
        result.metrics = metrics(load_manifest(artifact))
    except EdgeQwenError as err:
        result.status, result.error = "failed", err.message
    except Exception as err:  # a cell's crash is its own result; the matrix goes on
        result.status = "failed"
        result.error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def metrics(m: Manifest) -> dict[str, Any]:
    """The numbers a matrix compares, from an artifact's manifest."""
    overall = (m.validation or {}).get("overall") or {}
    return {
        "size_bytes": m.size_bytes, "files": {f.path: f.sha256 for f in m.files},
        "ppl_increase_pct": overall.get("ppl_increase_pct"), "kl": overall.get("kl"),
        "top1": overall.get("top1_agreement"), "gates_passed": (m.validation or {}).get("passed"),
        "build_s": m.build.get("seconds"),
        "bench": {p: {k: b.get(k) for k in ("fits", "decode_tok_s", "ttft_s", "peak_rss_mb")}
                  for p, b in m.benchmarks.items()},
    }


def build_memory(cell: Cell, spec: ModelSpec) -> int:
    from edgeqwen.pipeline import engine_for

    engine = engine_for(cell.recipe)
    return engine.build_memory(spec, cell.recipe, engine.validate_options(cell.recipe))


def workers_for(todo: Sequence[tuple[Cell, int]], jobs: int | None) -> int:
    """Parallel cells this machine can take: at most `jobs` (default: its cores), and no more
    than the available memory holds of the hungriest cell's build, so two large conversions
    never run side by side on a machine that holds one."""
    import psutil

    if not todo:
        return 1
    cores = os.cpu_count() or 1
    wanted = min(jobs or cores, len(todo))
    need = max(memory for _, memory in todo)
    by_memory = psutil.virtual_memory().available // max(need, 1)
    return max(1, min(wanted, int(by_memory)))


def run(plan: Plan, base: Path, out: Path, *, jobs: int | None = None, ray_address: str | None = None,
        on_result: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    """Run every cell of the plan into OUT; write OUT/results.json and the combined report."""
    from edgeqwen import sources

    out.mkdir(parents=True, exist_ok=True)
    all_cells = cells(plan, base)
    resolved: dict[str, sources.ResolvedSource] = {}
    files: dict[str, dict[str, str]] = {}
    results: dict[str, CellResult] = {}
    todo: list[tuple[Cell, str, int]] = []
    for cell in all_cells:
        try:
            if cell.model not in resolved:  # once per model: resolving may download or hash
                resolved[cell.model] = sources.resolve(cell.model)
                files[cell.model] = dict(resolved[cell.model].info().files)
            key = cell_key(cell, plan, files[cell.model])
            memory = build_memory(cell, resolved[cell.model].spec_info())
        except EdgeQwenError as err:
            results[cell.name] = CellResult(cell.name, cell.model, cell.recipe.name, key="", status="failed",
                                            error=err.message)
            continue
        artifact = out / "cells" / cell.name
        manifest = cached(artifact, key, plan)
        if manifest is not None:
            results[cell.name] = CellResult(cell.name, cell.model, cell.recipe.name, key, "cached",
                                            artifact=str(artifact), metrics=metrics(manifest))
        else:
            todo.append((cell, key, memory))
    for r in results.values():
        if on_result:
            on_result(r)

    def finished(r: CellResult) -> None:
        results[r.name] = r
        if on_result:
            on_result(r)

    if ray_address is not None:
        _run_on_ray(todo, plan, out, ray_address, finished)
    else:
        _run_locally(todo, plan, out, workers_for([(c, m) for c, _, m in todo], jobs), finished)
    ordered = [results[c.name] for c in all_cells]
    (out / RESULTS).write_text(json.dumps({"plan": plan.model_dump(mode="json", by_alias=True),
                                           "cells": [asdict(r) for r in ordered]}, indent=2) + "\n",
                               encoding="utf-8")
    write_report(plan, ordered, out)
    return ordered


def _run_locally(todo: list[tuple[Cell, str, int]], plan: Plan, out: Path, workers: int,
                 finished: Callable[[CellResult], None]) -> None:
    if not todo:
        return
    # Spawned, not forked: the parent may hold torch and native runtimes that do not survive a fork.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_cell, cell, plan, key, out) for cell, key, _ in todo]
        for future in as_completed(futures):  # report each cell as it ends
            finished(future.result())


def _run_on_ray(todo: list[tuple[Cell, str, int]], plan: Plan, out: Path, address: str,
                finished: Callable[[CellResult], None]) -> None:
    """Each cell is a Ray task asking for the CPUs and memory its build needs; OUT must be a
    path every worker sees (a shared filesystem)."""
    if not todo:
        return
    try:
        import ray
    except ImportError:
        raise EdgeQwenError("--ray needs Ray, which is not installed",
                            hint='pip install -c constraints.txt "edgeqwen[ray]"') from None
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":  # a one-machine cluster, no dashboard
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(run_cell)
        refs = []
        for cell, key, memory in todo:
            refs.append(task.options(num_cpus=1, memory=max(memory, 2**28)).remote(cell, plan, key, out))
        pending = list(refs)
        while pending:  # report each cell as it ends
            ready, pending = ray.wait(pending, num_returns=1)
            finished(ray.get(ready[0]))
    finally:
        if started_here:
            ray.shutdown()


def recommendations(results: Sequence[CellResult], profiles: Sequence[str]) -> dict[str, str | None]:
    """Per device profile: among cells that passed their gates and fit the profile, the most
    faithful one (lowest KL against the reference; unvalidated cells last), then the fastest
    decoder - the same rule as `edgeqwen fit`: the best quality the device holds."""
    best: dict[str, str | None] = {}
    for profile in profiles:
        fitting = [r for r in results if r.status != "failed" and r.metrics.get("gates_passed") is not False
                   and (r.metrics.get("bench", {}).get(profile) or {}).get("fits")]

        def rank(r: CellResult, profile: str = profile) -> tuple[float, float]:
            kl = r.metrics.get("kl")
            return (kl if kl is not None else float("inf"),
                    -(r.metrics["bench"][profile].get("decode_tok_s") or 0))

        pick = min(fitting, key=rank, default=None)
        best[profile] = pick.name if pick else None
    return best


def write_report(plan: Plan, results: Sequence[CellResult], out: Path) -> None:
    from edgeqwen import report

    built = [Path(r.artifact) for r in results if r.status != "failed" and r.artifact]
    picks = recommendations(results, plan.profiles)
    lines = [f"# Matrix {plan.name}", "", "| cell | status | this run s | build s | note |",
             "|---|---|---|---|---|"]
    for r in results:
        note = (r.error or "").splitlines()[0][:200] if r.error else ""
        lines.append(f"| {r.name} | {r.status} | {r.seconds:g} | {r.metrics.get('build_s', '-')} | {note} |")
    lines += ["", "Recommended per device profile (gates passed, fits; lowest KL, then fastest decode):", ""]
    lines += [f"- `{p}`: {f'`{n}`' if n else 'none fits'}" for p, n in picks.items()]
    body = "\n".join(lines) + "\n"
    for profile in plan.profiles:
        rows = report.collect(built, profile=profile)
        body += f"\n## Profile {profile}\n\n" + report.markdown(rows)
    (out / "report.md").write_text(body, encoding="utf-8")
    rows = report.collect(built, profile=plan.profiles[0] if plan.profiles else "desktop")
    (out / "report.html").write_text(report.html_report(rows, title=f"edgeqwen matrix {plan.name}",
                                                        note=" · ".join(f"{p}: {n or 'none fits'}"
                                                                        for p, n in picks.items())),
                                     encoding="utf-8")
