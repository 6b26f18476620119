"""The build pipeline: source -> recipe -> engine -> artifact (manifest).

Each arrow is one call here; each box is one module. Validation plugs in after packaging.
"""

from __future__ import annotations

import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgeqwen import __version__, memory, progress, registry, sources
from edgeqwen import calibration as calibration_text
from edgeqwen.artifacts import ArtifactWriter, FileEntry, Manifest, list_files, now_utc
from edgeqwen.engines.base import BuildJob, Engine
from edgeqwen.errors import RecipeError
from edgeqwen.recipes import Recipe, load_recipe
from edgeqwen.versions import package_versions
from runtimes.base import peak_rss_mb, reset_peak_rss

CORE_PACKAGES = ("torch", "transformers", "huggingface_hub", "gguf")


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: Manifest


def engine_for(recipe: Recipe) -> Engine:
    engine_cls = registry.engines.get(recipe.engine_name)
    engine: Engine = engine_cls()
    if recipe.format not in engine.formats:
        raise RecipeError(
            f"recipe {recipe.name!r} asks for format {recipe.format!r}, which the "
            f"{engine.name} engine does not build (it builds {', '.join(engine.formats)})"
        )
    return engine


def serving(recipe: Recipe, engine: Engine | None = None) -> tuple[str, str]:
    """(runtime backend, KV cache type) that will serve what the recipe builds."""
    engine = engine or engine_for(recipe)
    return engine.runtime, recipe.runtime.kv_cache_type or engine.kv_cache_type


def expected_memory(recipe: Recipe, engine: Engine, source: sources.ResolvedSource,
                    files_bytes: int) -> memory.MemoryEstimate:
    """What serving the artifact takes at the recipe's context, for the manifest."""
    runtime, kv_cache_type = serving(recipe, engine)
    mmap = recipe.runtime.mmap
    if mmap is None and recipe.format == "gguf":
        mmap = True  # llama.cpp's default
    return memory.estimate(source.spec_info(), runtime=runtime, context_length=recipe.context_length,
                           weights_bytes=files_bytes, kv_cache_type=kv_cache_type, mmap=mmap)


def served_bytes(files: list[FileEntry], served: list[str] | None) -> int:
    """Bytes of the files the runtime loads (all when the engine does not say)."""
    return sum(f.bytes for f in files if served is None or f.path in served)


def default_out(recipe: Recipe, source: sources.ResolvedSource) -> Path:
    stem = source.catalog_id or source.path.name
    return Path("artifacts") / f"{stem}-{recipe.name}"


def build(recipe_ref: str | Path | Recipe, model: str | None = None,
          out: str | Path | None = None, *, force: bool = False,
          calibration: str | Path | None = None) -> BuildResult:
    recipe = recipe_ref if isinstance(recipe_ref, Recipe) else load_recipe(recipe_ref)
    spec = model or recipe.model
    if not spec:
        raise RecipeError(f"recipe {recipe.name!r} pins no model",
                          hint="pass --model (a catalog id, repo id, folder, .gguf or `sample`)")
    engine = engine_for(recipe)
    options = engine.validate_options(recipe, f"recipe {recipe.name!r}")
    if calibration is not None and not engine.calibrates(options):
        raise RecipeError(f"recipe {recipe.name!r} does not calibrate, so a calibration text "
                          "has nothing to change",
                          hint="use a calibrated recipe (onnx-cpu-int4) or drop --calibration")
    # Loaded (and a bad file refused) once, here, before the slow steps.
    text = (calibration_text.load(calibration, engine.shipped_calibration(options))
            if engine.calibrates(options) else None)
    if out is not None:  # refuse an existing folder before the slow steps, not after
        ArtifactWriter(out, force=force).check_target()
    source = sources.resolve(spec)
    engine.preflight(source, recipe, options)
    out_path = Path(out) if out else default_out(recipe, source)

    started = time.perf_counter()
    progress.timings.clear()
    reset_peak_rss()  # this build's peak, not that of earlier work in a long-lived process
    writer = ArtifactWriter(out_path, force=force)
    with writer as staging, tempfile.TemporaryDirectory(prefix="edgeqwen-work-") as work:
        result = engine.build(BuildJob(recipe=recipe, options=options, source=source,
                                       out=staging, work=Path(work),
                                       calibration=text))
        files = list_files(staging)
        expected = expected_memory(recipe, engine, source, served_bytes(files, result.served_files))
        seconds = time.perf_counter() - started
        tool_peaks = [float(t["tool_peak_rss_mb"]) for t in progress.timings if "tool_peak_rss_mb" in t]
        children = max(tool_peaks, default=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        manifest = Manifest(
            name=out_path.name, edgeqwen_version=__version__, created_utc=now_utc(),
            format=recipe.format, runtime=engine.runtime, target=recipe.target.model_dump(),
            recipe=recipe.model_dump(mode="json"), source=source.info(),
            engine={"name": engine.name, "options": result.options_passed, **result.details},
            tools={"python": platform.python_version(), "edgeqwen": __version__,
                   **package_versions(CORE_PACKAGES), **engine.tool_versions()},
            files=files,
            build={"seconds": round(seconds, 2), "peak_rss_mb": peak_rss_mb(),
                   "peak_rss_children_mb": round(children, 1), "steps": list(progress.timings)},
            memory=expected.to_dict(),
            notes=[*source.notes, *result.notes],
        )
        final = writer.commit(manifest)
    return BuildResult(path=final, manifest=manifest)
