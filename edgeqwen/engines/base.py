"""The contract between the pipeline and a build engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgeqwen.calibration import DEFAULT as DEFAULT_CALIBRATION
from edgeqwen.calibration import CalibrationText
from edgeqwen.catalog import ModelSpec
from edgeqwen.errors import RecipeError
from edgeqwen.preflight import require_memory
from edgeqwen.recipes import Recipe
from edgeqwen.sources import ResolvedSource
from edgeqwen.units import human
from edgeqwen.versions import package_versions


class EngineOptions(BaseModel):
    """Base for an engine's algorithm options: unknown names are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class BuildJob:
    recipe: Recipe
    options: EngineOptions
    source: ResolvedSource
    out: Path  # the staging folder that becomes the artifact
    work: Path  # scratch space, deleted after the build
    calibration: CalibrationText | None = None  # set when the options calibrate: shipped or --calibration


@dataclass
class EngineResult:
    options_passed: dict[str, Any]  # exactly what the engine gave its tool, for the manifest
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # engine-specific manifest data
    # The files the runtime loads, for the memory statement; None: all of them. (A QNN artifact
    # also carries the QDQ graphs its context binaries were compiled from.)
    served_files: list[str] | None = None


def require_group_divides(source: ResolvedSource, group_size: int, hint: str) -> None:
    """Grouped weight quantization needs `algorithm.group_size` to divide every row it groups."""
    spec = source.spec_info()
    for what, width in (("hidden size", spec.hidden), ("intermediate size", spec.intermediate)):
        if width % group_size:
            raise RecipeError(f"{source.display_name}: {what} {width} is not a multiple of "
                              f"algorithm.group_size {group_size}", hint=hint)


class Engine(ABC):
    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    runtime: ClassVar[str]  # the runtime backend that loads what this engine builds
    kv_cache_type: ClassVar[str] = "f16"  # how that runtime stores the KV cache (edgeqwen.memory)
    options_model: ClassVar[type[EngineOptions]] = EngineOptions
    packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions go in the manifest

    def validate_options(self, recipe: Recipe, origin: str = "recipe") -> EngineOptions:
        try:
            return self.options_model.model_validate(recipe.algorithm)
        except ValidationError as err:
            allowed = ", ".join(self.options_model.model_fields) or "none"
            lines = [f"{origin}: the {self.name} engine rejects the algorithm options:"]
            for e in err.errors():
                where = ".".join(str(p) for p in e["loc"])
                lines.append(f"  algorithm.{where}: {e['msg']}")
            raise RecipeError("\n".join(lines), hint=f"options {self.name} reads: {allowed}") from None

    def calibrates(self, options: EngineOptions) -> bool:
        """Whether these options run a data-aware step that reads calibration text."""
        return False

    def shipped_calibration(self, options: EngineOptions) -> tuple[str, ...]:
        """The shipped calibration files (edgeqwen/texts/calibration) used without --calibration."""
        return (DEFAULT_CALIBRATION,)

    def tool_versions(self) -> dict[str, str]:
        return package_versions(self.packages)

    def build_memory(self, spec: ModelSpec, recipe: Recipe, options: EngineOptions) -> int:
        """Peak memory the build of `spec` takes (bytes, measured factors); preflight refuses
        to start without it and `edgeqwen matrix` sizes its parallel workers by it."""
        return 0

    def require_build_memory(self, spec: ModelSpec, recipe: Recipe, options: EngineOptions, tool: str,
                             precision: str = "fp32") -> None:
        """Refuse to start when this machine lacks `build_memory`; the message states the
        tool's peak as a multiple of the model's size at `precision`."""
        need = self.build_memory(spec, recipe, options)
        size = spec.weight_bytes(precision)
        require_memory(need, f"{tool} (it peaks at about {need / size:g}x the {precision} model, "
                             f"{human(size)})")

    def preflight(self, source: ResolvedSource, recipe: Recipe,  # noqa: B027
                  options: EngineOptions) -> None:
        """Refuse early (memory, disk, unsupported model) before any work starts."""

    @abstractmethod
    def build(self, job: BuildJob) -> EngineResult:
        """Write the model files into `job.out`."""
