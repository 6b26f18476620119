"""GGUF through llama.cpp: its HF-to-GGUF converter, then its quantizer.

checkpoint --convert_hf_to_gguf.py--> intermediate GGUF (f16 by default) --llama_model_quantize-->
model.gguf. Float precisions (F32/F16/BF16) are written by the converter directly. With
`algorithm.imatrix`, llama.cpp's `llama-imatrix` first measures which weights matter on the
calibration text and `llama-quantize --imatrix` uses it. All tools come from the installed
llama-cpp-python (see `edgeqwen.llama_cpp_tools`), the runtime that loads the artifact, so
the file and its reader always agree.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeqwen import calibration
from edgeqwen import llama_cpp_tools as tools
from edgeqwen.catalog import ModelSpec
from edgeqwen.checkpoint import chat_template
from edgeqwen.engines.base import BuildJob, Engine, EngineOptions, EngineResult
from edgeqwen.errors import EngineError, RecipeError
from edgeqwen.gguf_header import read_header
from edgeqwen.preflight import require_disk
from edgeqwen.recipes import Recipe
from edgeqwen.sources import ResolvedSource
from runtimes.base import default_threads

MODEL_FILE = "model.gguf"
GGMLType = Literal["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q5_1", "Q4_K", "Q4_0", "Q4_1",
                   "Q3_K", "Q2_K", "IQ4_NL", "IQ4_XS"]
# Peak RSS of the converter (lazy, tensor by tensor) as a multiple of the fp16 model,
# measured on the 0.5B sample: 1.2 GB for a 1 GB fp16 model.
CONVERTER_MEMORY_FACTOR = 1.5
# Tensor types of llama.cpp's k-quant mixtures; anything else in a k-quant file is a fallback.
K_TYPES = frozenset({"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "F32", "F16", "BF16"})


class ImatrixOptions(BaseModel):
    """`algorithm.imatrix` in a GGUF recipe: an importance matrix from the calibration text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ctx: int = Field(512, ge=32, le=8192)  # tokens per chunk
    chunks: int | None = Field(None, ge=1)  # None: every full chunk of the text


class LlamaCppOptions(EngineOptions):
    intermediate: Literal["f16", "bf16", "f32"] = "f16"  # what the converter writes for the quantizer
    output_tensor_type: GGMLType | None = None  # type of the LM head (output.weight)
    token_embedding_type: GGMLType | None = None
    pure: bool = False  # one type for every tensor, no k-quant mixture
    leave_output_tensor: bool = False  # keep the LM head unquantized
    imatrix: ImatrixOptions | None = None


class LlamaCppEngine(Engine):
    name = "llama-cpp"
    formats = ("gguf",)
    runtime = "llama-cpp"
    options_model = LlamaCppOptions
    packages = ("llama-cpp-python", "sentencepiece")

    def validate_options(self, recipe: Recipe, origin: str = "recipe") -> LlamaCppOptions:
        options = super().validate_options(recipe, origin)
        if recipe.precision in tools.FLOAT_TYPES and recipe.algorithm:
            raise RecipeError(f"{origin}: algorithm options apply to quantized types only; "
                              f"{recipe.precision} is written by the converter directly",
                              hint="remove the `algorithm` section")
        return options  # type: ignore[return-value]

    def calibrates(self, options: EngineOptions) -> bool:
        return isinstance(options, LlamaCppOptions) and options.imatrix is not None

    def tool_versions(self) -> dict[str, str]:
        return {**super().tool_versions(), "llama.cpp converter": f"llama-cpp-python sdist "
                f"{tools.installed_version()}"}

    def preflight(self, source: ResolvedSource, recipe: Recipe, options: EngineOptions) -> None:
        tools.installed_version()
        if recipe.precision not in tools.FLOAT_TYPES:
            tools.file_type(recipe.precision)
        spec = source.spec_info()
        if recipe.runtime.kv_cache_type == "q8_0" and spec.head_size % 32:
            raise RecipeError(f"runtime.kv_cache_type q8_0: llama.cpp quantizes the KV cache in blocks "
                              f"of 32 values per head, and this model's heads have {spec.head_size}",
                              hint="use kv_cache_type f16 for this model")
        self.require_build_memory(spec, recipe, options, "llama.cpp's converter", precision="fp16")

    def build_memory(self, spec: ModelSpec, recipe: Recipe, options: EngineOptions) -> int:
        return int(spec.weight_bytes("fp16") * CONVERTER_MEMORY_FACTOR)

    def build(self, job: BuildJob) -> EngineResult:
        options: LlamaCppOptions = job.options  # type: ignore[assignment]
        precision = job.recipe.precision
        out = job.out / MODEL_FILE
        spec = job.source.spec_info()
        passed: dict[str, object] = {"precision": precision}
        details: dict = {}
        if precision in tools.FLOAT_TYPES:
            require_disk(job.out, spec.weight_bytes("fp32") // (2 if precision != "F32" else 1),
                         f"the {precision} GGUF")
            tools.convert(job.source.path, out, tools.FLOAT_TYPES[precision], job.work / "convert.log",
                          model_name=job.source.display_name)
            passed["converter_outtype"] = tools.FLOAT_TYPES[precision]
        else:
            intermediate = job.work / f"intermediate-{options.intermediate}.gguf"
            per_weight = 4 if options.intermediate == "f32" else 2
            require_disk(job.work, spec.params * per_weight + spec.weight_bytes("int8"),
                         f"the intermediate {options.intermediate} GGUF and the {precision} GGUF")
            tools.convert(job.source.path, intermediate, options.intermediate, job.work / "convert.log",
                          model_name=job.source.display_name)
            threads = default_threads(None)
            matrix = None
            if options.imatrix is not None:
                matrix, details["imatrix"] = _imatrix(job, intermediate, options.imatrix, threads)
            tools.quantize(intermediate, out, precision, job.work / "quantize.log", threads=threads,
                           output_tensor_type=options.output_tensor_type,
                           token_embedding_type=options.token_embedding_type, pure=options.pure,
                           leave_output_tensor=options.leave_output_tensor, imatrix=matrix)
            intermediate.unlink()
            passed.update(converter_outtype=options.intermediate, quantizer_threads=threads,
                          **options.model_dump(exclude={"intermediate", "imatrix"}))

        info = read_header(out)
        expected = chat_template(job.source.path)
        if info.chat_template is None and expected is not None:
            raise EngineError("llama.cpp's converter wrote no chat template although the source has one",
                              hint="report this with the build log; the artifact would chat wrongly")
        if info.chat_template is not None:
            (job.out / "chat_template.jinja").write_text(info.chat_template, encoding="utf-8")
        generation_config = job.source.path / "generation_config.json"
        if generation_config.is_file():  # sampling defaults for exports (Ollama PARAMETERs)
            shutil.copyfile(generation_config, job.out / generation_config.name)
        notes = []
        fallbacks = {t: n for t, n in info.tensor_types.items() if t not in K_TYPES}
        if "_K" in precision and fallbacks:
            notes.append(
                f"{sum(fallbacks.values())} tensors are not k-quants but "
                + ", ".join(f"{t} ({n})" for t, n in fallbacks.items())
                + ": llama.cpp falls back where a row length is not a multiple of 256"
            )
        return EngineResult(
            options_passed=passed, notes=notes,
            details={**details, "gguf": {
                "file": MODEL_FILE, "file_type": info.file_type, "tensor_types": info.tensor_types,
                "tensor_bytes": info.tensor_bytes, "context_length_trained": info.context_length,
                "chat_template_matches_source": info.chat_template == expected,
            }},
        )


def _imatrix(job: BuildJob, model: Path, options: ImatrixOptions, threads: int) -> tuple[Path, dict]:
    """Run llama-imatrix over the calibration text; return the matrix and what the manifest keeps."""
    text = job.calibration
    assert text is not None  # the pipeline loads it for every recipe that calibrates
    tokens, chunks = calibration.windows(text, job.source.path, options.ctx, options.chunks,
                                         what="imatrix chunk", option="algorithm.imatrix.ctx")
    plain = job.work / "calibration.txt"
    plain.write_text(text.text, encoding="utf-8")
    matrix = job.work / "imatrix.gguf"
    tools.imatrix(model, plain, matrix, job.work / "imatrix.log", threads=threads, ctx=options.ctx,
                  chunks=chunks)
    return matrix, {"engine": "llama-imatrix", **options.model_dump(),
                    "calibration": text.info(tokens, chunks, options.ctx)}
