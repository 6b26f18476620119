"""ONNX for CPU through the ONNX Runtime GenAI model builder.

The builder runs as a child process (`python -m onnxruntime_genai.models.builder`, see
`tool_process`).

Option names are those builder 0.18 reads. Older names (`int4_block_size`,
`int4_accuracy_level`, ...) are refused here, because builder 0.18 ignores them silently.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgeqwen.catalog import ModelSpec
from edgeqwen.checkpoint import chat_template
from edgeqwen.engines import olive_gptq
from edgeqwen.engines.base import BuildJob, Engine, EngineOptions, EngineResult
from edgeqwen.engines.olive_gptq import BlockSize, GptqOptions
from edgeqwen.engines.tool_process import run_tool
from edgeqwen.errors import EngineError, RecipeError
from edgeqwen.preflight import require_memory
from edgeqwen.progress import step
from edgeqwen.recipes import Recipe
from edgeqwen.sources import ResolvedSource
from edgeqwen.units import human

BUILDER_MODULE = "onnxruntime_genai.models.builder"
INSTALL_HINT = 'pip install -c constraints.txt "edgeqwen[onnx]"'
QUANTIZED = ("int4", "int8")
# Peak RSS of the builder as a multiple of the model's fp16 size, measured on the 0.5B
# sample with builder 0.18 (see the recipe docs in the README). k_quant holds extra
# per-block search state for every weight.
PEAK_MEMORY_FACTOR = {"default": 7.0, "rtn": 7.0, "k_quant": 12.0, "fp16": 4.0, "fp32": 5.0}


class OnnxGenAIOptions(EngineOptions):
    block_size: BlockSize = 32
    accuracy_level: Literal[1, 2, 3, 4] = 4
    is_symmetric: bool = True
    algo_config: Literal["default", "rtn", "k_quant"] = "default"
    # selector -> quant type, e.g. {last_matmul: int8, mixed_layers: int8}
    matmul_mixed_precision: dict[Literal["last_matmul", "mixed_layers"], Literal["int4", "int8"]] = Field(
        default_factory=dict)
    op_types_to_quantize: list[Literal["MatMul", "Gather"]] = Field(default_factory=lambda: ["MatMul"])
    nodes_to_exclude: list[str] = Field(default_factory=list)
    # Olive's GPTQ on the calibration text before the builder (absent: the builder quantizes all)
    gptq: GptqOptions | None = None

    def extra_options(self) -> dict[str, str]:
        """The builder's KEY=VALUE options, every one of them explicit."""
        extra = {
            "block_size": str(self.block_size),
            "accuracy_level": str(self.accuracy_level),
            "is_symmetric": str(self.is_symmetric).lower(),
            "algo_config": self.algo_config,
            "op_types_to_quantize": "/".join(self.op_types_to_quantize),
        }
        if self.matmul_mixed_precision:
            extra["matmul_mixed_precision"] = ",".join(
                f"{k}:{v}" for k, v in self.matmul_mixed_precision.items())
        if self.nodes_to_exclude:
            extra["nodes_to_exclude"] = ",".join(self.nodes_to_exclude)
        return extra


class OnnxGenAIEngine(Engine):
    name = "onnxruntime-genai"
    formats = ("onnx",)
    runtime = "onnxruntime-genai"
    kv_cache_type = "f32"  # CPU exports keep inputs/outputs and the KV cache in fp32
    options_model = OnnxGenAIOptions
    packages = ("onnxruntime-genai", "onnxruntime", "onnx", "onnx-ir", "olive-ai")

    def validate_options(self, recipe: Recipe, origin: str = "recipe") -> OnnxGenAIOptions:
        options = super().validate_options(recipe, origin)
        if recipe.precision not in QUANTIZED and recipe.algorithm:
            raise RecipeError(f"{origin}: algorithm options apply to int4/int8 only; "
                              f"precision {recipe.precision} takes none",
                              hint="remove the `algorithm` section")
        assert isinstance(options, OnnxGenAIOptions)
        if options.gptq is not None:
            # GPTQ hands the builder packed 4-bit layers: the builder cannot re-quantize them
            if "mixed_layers" in options.matmul_mixed_precision:
                raise RecipeError(f"{origin}: matmul_mixed_precision.mixed_layers does not apply to "
                                  "layers GPTQ already quantized",
                                  hint="use last_matmul only, or drop algorithm.gptq")
            if options.gptq.lm_head and "last_matmul" in options.matmul_mixed_precision:
                raise RecipeError(f"{origin}: algorithm.gptq.lm_head quantizes the LM head with GPTQ, "
                                  "so matmul_mixed_precision.last_matmul has nothing left to change",
                                  hint="set gptq.lm_head: false to keep the head at the builder's width")
        return options

    def calibrates(self, options: EngineOptions) -> bool:
        return isinstance(options, OnnxGenAIOptions) and options.gptq is not None

    def shipped_calibration(self, options: EngineOptions) -> tuple[str, ...]:
        assert isinstance(options, OnnxGenAIOptions) and options.gptq is not None
        return tuple(options.gptq.calibration)

    def preflight(self, source: ResolvedSource, recipe: Recipe, options: EngineOptions) -> None:
        if importlib.util.find_spec("onnxruntime_genai") is None:
            raise EngineError("the ONNX engine needs onnxruntime-genai, which is not installed",
                              hint=INSTALL_HINT)
        assert isinstance(options, OnnxGenAIOptions)
        if options.gptq is not None:
            olive_gptq.require_packages()
        key = "GPTQ + builder" if options.gptq is not None else _memory_key(recipe, options)
        spec = source.spec_info()
        need = self.build_memory(spec, recipe, options)
        require_memory(need, f"the ONNX Runtime GenAI builder ({recipe.precision}, {key}; it peaks at "
                             f"about {need / spec.weight_bytes('fp16'):.0f}x the fp16 model, "
                             f"{human(spec.weight_bytes('fp16'))})")

    def build_memory(self, spec: ModelSpec, recipe: Recipe, options: EngineOptions) -> int:
        assert isinstance(options, OnnxGenAIOptions)
        if options.gptq is not None:  # covers Olive and the builder, which run one after the other
            return olive_gptq.peak_memory(spec.weight_bytes("fp32"))
        return int(spec.weight_bytes("fp16") * PEAK_MEMORY_FACTOR[_memory_key(recipe, options)])

    def build(self, job: BuildJob) -> EngineResult:
        options: OnnxGenAIOptions = job.options  # type: ignore[assignment]
        recipe = job.recipe
        extra = options.extra_options() if recipe.precision in QUANTIZED else {}
        details: dict = {}
        checkpoint = job.source.path
        if options.gptq is not None:
            assert job.calibration is not None  # the pipeline loads it for every recipe that calibrates
            checkpoint, details["gptq"] = olive_gptq.run_gptq(
                job.source.path, job.work, job.calibration, options.gptq,
                bits=4 if recipe.precision == "int4" else 8, group_size=options.block_size,
                symmetric=options.is_symmetric)
        cmd = [sys.executable, "-m", BUILDER_MODULE, "-i", str(checkpoint), "-o", str(job.out),
               "-p", recipe.precision, "-e", "cpu", "-c", str(job.work / "builder-cache")]
        if extra:
            cmd += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
        log = job.work / "builder.log"
        with step(f"ONNX Runtime GenAI builder: {recipe.precision} {extra.get('algo_config', '')}"):
            run_tool(cmd, log, tool="the ONNX Runtime GenAI builder",
                     hint="check the source model and the recipe's algorithm options")
        config = _set_context_length(job.out / "genai_config.json", recipe.context_length)
        template = chat_template(job.source.path)
        if template and not (job.out / "chat_template.jinja").is_file():
            (job.out / "chat_template.jinja").write_text(template, encoding="utf-8")
        details["search_max_length"] = config["search"]["max_length"]
        if recipe.precision in QUANTIZED:
            details["matmul_bits"] = matmul_bits(job.out / "model.onnx")
        return EngineResult(
            options_passed={"precision": recipe.precision, "execution_provider": "cpu",
                            "extra_options": extra},
            details=details,
        )


def _memory_key(recipe: Recipe, options: OnnxGenAIOptions) -> str:
    return options.algo_config if recipe.precision in QUANTIZED else recipe.precision


def matmul_bits(model_path: Path) -> dict[str, list[str] | int]:
    """Which quantized MatMuls got which bit width: the body's count, and by name the MatMuls
    a mixed-precision recipe kept at the other width (the set the manifest records)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    by_bits: dict[int, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            bits = next(a.i for a in node.attribute if a.name == "bits")
            by_bits.setdefault(bits, []).append(node.name)
    if not by_bits:
        return {}
    body = max(by_bits, key=lambda b: len(by_bits[b]))
    return {f"int{b}": (len(names) if b == body else names) for b, names in sorted(by_bits.items())}


def _set_context_length(path: Path, context_length: int) -> dict:
    """Cap what runtimes allocate: the builder copies the model's full 32k/40k context."""
    config = json.loads(path.read_text(encoding="utf-8"))
    model_max = config["model"].get("context_length") or context_length
    config["search"]["max_length"] = min(context_length, model_max)
    path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    return config
