"""OpenVINO IR for Intel CPUs, GPUs and NPUs through optimum-intel's exporter and NNCF.

checkpoint --optimum-intel export (stateful, KV cache inside)--> openvino_model.xml/.bin
--NNCF weight compression (int4/int8; AWQ and scale estimation on calibration text)-->
+ openvino_tokenizer/detokenizer.xml (openvino-tokenizers), what openvino-genai loads.

The exporter runs as a child process with its own pinned transformers (see
`edgeqwen.optimum_intel_tools`). Intel's NPU compiles only symmetric 4-bit weights (in
groups of 128, or one scale per channel) and 8-bit symmetric backups; `sym: false` or other
group sizes build a CPU/GPU-only model, and the manifest says so.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgeqwen import optimum_intel_tools
from edgeqwen.calibration import window_texts, windows
from edgeqwen.catalog import ModelSpec
from edgeqwen.checkpoint import chat_template
from edgeqwen.engines.base import BuildJob, Engine, EngineOptions, EngineResult, require_group_divides
from edgeqwen.engines.tool_process import run_tool
from edgeqwen.errors import EngineError, RecipeError
from edgeqwen.preflight import require_disk
from edgeqwen.progress import step
from edgeqwen.recipes import Recipe
from edgeqwen.sources import ResolvedSource

EXPORT_MODULE = "edgeqwen.engines.optimum_intel_export"
INSTALL_HINT = 'pip install -c constraints.txt "edgeqwen[openvino]"'
MODEL_FILE = "openvino_model.xml"
# Peak RSS of export + compression as a multiple of the fp32 model (0.5B sample, 2.0 GB fp32):
# 3.7 GB for int4/int8/fp16, 6.0 GB with AWQ + scale estimation, which run the model on the
# calibration samples and keep their activations.
PEAK_MEMORY_FACTOR = 2.0
DATA_AWARE_MEMORY_FACTOR = 3.2
NPU_GROUP_SIZES = (128, -1)  # what Intel's NPU plugin compiles (int4, symmetric)


class OpenVINOOptions(EngineOptions):
    # int4: weights per scale; -1 is one scale per output channel
    group_size: Literal[-1, 16, 32, 64, 128, 256] = 128
    sym: bool = True  # symmetric weights (zero point 0): the only kind Intel's NPU runs
    ratio: float = Field(default=1.0, gt=0, le=1)  # share of the layers in int4, the rest in backup
    # what stays out of int4: the embedding, the LM head and the (1 - ratio) layers
    backup_precision: Literal["int8_sym", "int8_asym", "none"] = "int8_sym"
    awq: bool = False  # activation-aware scales, fitted on the calibration text
    scale_estimation: bool = False  # scales that minimise the layer's output error on it
    seq_len: int = Field(default=256, ge=16, le=4096)  # tokens per calibration sample
    max_samples: int | None = Field(default=None, ge=1)

    @property
    def data_aware(self) -> bool:
        return self.awq or self.scale_estimation

    def quantization(self, precision: str) -> dict[str, Any] | None:
        """optimum-intel's weight quantization config (the CLI's names) for a precision."""
        if precision == "int8":
            return {"bits": 8, "sym": self.sym, "group_size": -1, "ratio": 1.0, "dtype": "int8"}
        if precision == "int4":
            return {"bits": 4, "sym": self.sym, "group_size": self.group_size, "ratio": self.ratio,
                    "dtype": "int4", "backup_precision": self.backup_precision,
                    "quant_method": "awq" if self.awq else "default",
                    "scale_estimation": self.scale_estimation or None}
        return None

    def npu_ready(self, precision: str) -> bool:
        if precision == "int4":
            return self.sym and self.group_size in NPU_GROUP_SIZES and self.backup_precision != "int8_asym"
        return precision == "fp16" or self.sym


class OpenVINOEngine(Engine):
    name = "optimum-intel"
    formats = ("openvino",)
    runtime = "openvino"
    kv_cache_type = "u8"  # OpenVINO's CPU plugin keeps the KV cache in u8 by default
    options_model = OpenVINOOptions
    packages = ("openvino", "openvino-tokenizers", "openvino-genai", "nncf")

    def validate_options(self, recipe: Recipe, origin: str = "recipe") -> OpenVINOOptions:
        options = super().validate_options(recipe, origin)
        assert isinstance(options, OpenVINOOptions)
        given = set(recipe.algorithm)
        if recipe.precision == "fp16" and given:
            raise RecipeError(f"{origin}: precision fp16 takes no algorithm options",
                              hint="remove the `algorithm` section")
        if recipe.precision == "int8" and given - {"sym"}:
            raise RecipeError(f"{origin}: int8 weights are per channel, so only algorithm.sym applies "
                              f"(got {', '.join(sorted(given - {'sym'}))})",
                              hint="use precision int4 for groups, ratio, AWQ or scale estimation")
        if not options.data_aware and given & {"seq_len", "max_samples"}:
            raise RecipeError(f"{origin}: seq_len and max_samples shape the calibration samples, "
                              "but neither awq nor scale_estimation is on",
                              hint="turn on algorithm.awq or algorithm.scale_estimation, or drop them")
        if recipe.target.device == "npu-openvino" and not options.npu_ready(recipe.precision):
            raise RecipeError(f"{origin}: target npu-openvino needs symmetric weights (sym: true), "
                              f"int4 groups of {' or '.join(map(str, NPU_GROUP_SIZES))} and int8_sym "
                              "backups: Intel's NPU compiles nothing else",
                              hint="change the options, or set target.device: cpu")
        return options

    def calibrates(self, options: EngineOptions) -> bool:
        return isinstance(options, OpenVINOOptions) and options.data_aware

    def preflight(self, source: ResolvedSource, recipe: Recipe, options: EngineOptions) -> None:
        for module in ("openvino", "openvino_genai", "openvino_tokenizers", "nncf"):
            if importlib.util.find_spec(module) is None:
                raise EngineError(f"the OpenVINO engine needs the `{module}` package, which is not "
                                  "installed", hint=INSTALL_HINT)
        assert isinstance(options, OpenVINOOptions)
        spec = source.spec_info()
        if recipe.precision == "int4" and options.group_size > 0:
            require_group_divides(source, options.group_size,
                                  hint="pick a group size that divides it, or -1 (per channel)")
        self.require_build_memory(spec, recipe, options, "the OpenVINO export")

    def build_memory(self, spec: ModelSpec, recipe: Recipe, options: EngineOptions) -> int:
        assert isinstance(options, OpenVINOOptions)
        factor = DATA_AWARE_MEMORY_FACTOR if options.data_aware else PEAK_MEMORY_FACTOR
        return int(spec.weight_bytes("fp32") * factor)

    def tool_versions(self) -> dict[str, str]:
        # The exporter's own transformers etc. are not the environment's: named apart.
        return {**super().tool_versions(), **{
            name if name.startswith("optimum") else f"{name} (exporter)": version
            for name, version in optimum_intel_tools.PACKAGES.items()}}

    def build(self, job: BuildJob) -> EngineResult:
        options: OpenVINOOptions = job.options  # type: ignore[assignment]
        recipe = job.recipe
        spec = job.source.spec_info()
        # The exporter writes an fp16 IR to scratch, NNCF rewrites it compressed beside it.
        require_disk(job.work, spec.weight_bytes("fp16") * 2, "the fp16 IR and its compressed copy")
        quantization = options.quantization(recipe.precision)
        config: dict[str, Any] = {"source": str(job.source.path), "output": str(job.out),
                                  "scratch": str(job.work / "export"), "dtype": "fp16",
                                  "quantization": quantization, "calibration": None}
        details: dict[str, Any] = {"npu_ready": options.npu_ready(recipe.precision)}
        if options.data_aware:
            assert job.calibration is not None  # the pipeline loads it for every recipe that calibrates
            tokens, n = windows(job.calibration, job.source.path, options.seq_len, options.max_samples,
                                what="calibration sample", option="algorithm.seq_len")
            config["calibration"] = window_texts(job.calibration, job.source.path, options.seq_len, n)
            details["calibration"] = job.calibration.info(tokens, n, options.seq_len)
        folder = optimum_intel_tools.exporter_dir()
        config_file = job.work / "export.json"
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        what = recipe.precision if quantization is None else _describe(recipe.precision, options)
        with step(f"optimum-intel OpenVINO export + NNCF: {what}"):
            run_tool([sys.executable, "-m", EXPORT_MODULE, str(config_file)], job.work / "export.log",
                     tool="optimum-intel's OpenVINO export", env=optimum_intel_tools.child_env(folder),
                     hint="check the source model and the recipe's algorithm options")
        if not (job.out / MODEL_FILE).is_file():
            raise EngineError(f"the OpenVINO export finished without writing {MODEL_FILE}",
                              hint=f"see its log; the config it got was {config_file}")
        template = chat_template(job.source.path)
        if template and not (job.out / "chat_template.jinja").is_file():
            (job.out / "chat_template.jinja").write_text(template, encoding="utf-8")
        details["weight_types"] = weight_types(job.out / MODEL_FILE)
        passed = {"task": "text-generation-with-past", "stateful": True, "convert_tokenizer": True,
                  **({"quantization_config": quantization} if quantization else {"dtype": "fp16"})}
        notes = [] if details["npu_ready"] else [
            "not NPU-ready: Intel's NPU needs symmetric int4 in groups of 128 or per channel"]
        return EngineResult(options_passed=passed, details=details, notes=notes)


def _describe(precision: str, options: OpenVINOOptions) -> str:
    if precision == "int8":
        return f"int8 {'sym' if options.sym else 'asym'} per channel"
    parts = [f"int4 {'sym' if options.sym else 'asym'}",
             "per channel" if options.group_size == -1 else f"group {options.group_size}",
             f"ratio {options.ratio:g}"]
    parts += [name for name in ("awq", "scale_estimation") if getattr(options, name)]
    return ", ".join(parts)


def weight_types(model_xml: Path) -> dict[str, float]:
    """Share of the IR's weight values stored in each element type (i4/u4, i8/u8, f16...):
    what NNCF really wrote, for the manifest. Scales and zero points count too; they are
    small beside the weights."""
    import math

    import openvino as ov

    counts: dict[str, int] = {}
    for op in ov.Core().read_model(str(model_xml)).get_ops():
        if op.get_type_name() == "Constant" and len(shape := op.get_output_shape(0)) >= 2:
            kind = op.get_output_element_type(0).get_type_name()
            counts[kind] = counts.get(kind, 0) + math.prod(shape)
    total = sum(counts.values()) or 1
    return {kind: round(n / total, 4) for kind, n in sorted(counts.items())}
