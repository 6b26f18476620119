"""Static-shape QDQ ONNX for Qualcomm Snapdragon NPUs (QNN HTP), through ONNX Runtime's
quantization tools and its QNN execution provider (`onnxruntime-qnn`).

checkpoint --edgeqwen.engines.qnn_export (child)--> prefill.onnx + decode.onnx (QDQ, 16-bit
activations, 8- or 4-bit per-channel weights, weights once in model.data)
+ prefill.qnn.onnx / decode.qnn.onnx + one QNN context binary for the recipe's Hexagon arch
+ qnn_config.json (the graphs' static shapes, what the `qnn` runtime and an app need).

Olive's QNN recipe (ModelBuilder -> MatMulNBitsToQDQ -> ... -> EPContextBinaryGenerator) does
not run with the pinned onnxruntime-genai / plugin EP (see the README); this engine makes the
same kind of artifact with the engines underneath it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from typing import Any, Literal

from pydantic import Field

from edgeqwen import qnn_ep
from edgeqwen.calibration import token_windows, windows
from edgeqwen.catalog import ModelSpec
from edgeqwen.checkpoint import TOKENIZER_FILES, end_of_turn_ids, read_config
from edgeqwen.engines.base import BuildJob, Engine, EngineOptions, EngineResult
from edgeqwen.engines.tool_process import run_tool
from edgeqwen.errors import EngineError, RecipeError
from edgeqwen.preflight import require_disk
from edgeqwen.progress import step
from edgeqwen.qnn_kv import CONFIG_FILE, MASK_VALUE, GraphShape
from edgeqwen.recipes import Recipe
from edgeqwen.sources import ResolvedSource

EXPORT_MODULE = "edgeqwen.engines.qnn_export"
WEIGHT_BITS = {"a16w8": 8, "a16w4": 4}
# Peak RSS of the build as a multiple of the fp32 model: 11.1 GB for the 0.5B sample (2.0 GB);
# onnxruntime's quantizer holds the fp32 graph, its calibration copy and the QDQ result at once.
PEAK_MEMORY_FACTOR = 6.0


class QNNOptions(EngineOptions):
    prefill_chunk: int = Field(default=64, ge=2, le=1024)  # prompt tokens per prefill call
    # The Hexagon generation the binaries are compiled for (QNN's htp_arch): v73 Snapdragon 8 Gen 2
    # and X Elite, v75 8 Gen 3, v79 8 Elite. Older ones are left out: the attention runs in fp16
    # on the HTP (see qnn_export.attention_cores).
    htp_arch: Literal[73, 75, 79] = 75
    context_binary: bool = True  # compile QNN context binaries (else the device compiles at load)
    seq_len: int = Field(default=256, ge=16, le=4096)  # tokens per calibration window
    max_samples: int | None = Field(default=8, ge=1)  # calibration windows


class QNNEngine(Engine):
    name = "onnxruntime-qnn"
    formats = ("qnn",)
    runtime = "qnn"
    kv_cache_type = "f32"  # the graphs take and return fp32 keys/values; the host keeps them
    options_model = QNNOptions
    packages = ("onnxruntime", "onnxruntime-qnn", "onnx", "torch", "transformers")

    def validate_options(self, recipe: Recipe, origin: str = "recipe") -> QNNOptions:
        options = super().validate_options(recipe, origin)
        assert isinstance(options, QNNOptions)
        if options.prefill_chunk >= recipe.context_length:
            raise RecipeError(f"{origin}: algorithm.prefill_chunk ({options.prefill_chunk}) must be "
                              f"smaller than context_length ({recipe.context_length})")
        return options

    def calibrates(self, options: EngineOptions) -> bool:
        return True  # 16-bit activations need ranges: static quantization always calibrates

    def preflight(self, source: ResolvedSource, recipe: Recipe, options: EngineOptions) -> None:
        if importlib.util.find_spec("onnxruntime_qnn") is None:
            raise EngineError("the QNN engine needs the `onnxruntime-qnn` package (ONNX Runtime's "
                              "QNN execution provider), which is not installed", hint=qnn_ep.INSTALL_HINT)
        self.require_build_memory(source.spec_info(), recipe, options, "the QNN export")

    def build_memory(self, spec: ModelSpec, recipe: Recipe, options: EngineOptions) -> int:
        return int(spec.weight_bytes("fp32") * PEAK_MEMORY_FACTOR)

    def build(self, job: BuildJob) -> EngineResult:
        options: QNNOptions = job.options  # type: ignore[assignment]
        recipe = job.recipe
        config = read_config(job.source.path)
        spec = job.source.spec_info()
        # One fp32 graph at a time, the quantizer's copy of it and the QDQ graphs: measured
        # 2.95x the fp32 weights at the peak on the sample (5.8 GB).
        require_disk(job.work, int(spec.weight_bytes("fp32") * 3.5), "the fp32 and QDQ graphs")
        context = min(recipe.context_length, spec.context_length or recipe.context_length)
        shape = GraphShape(layers=spec.layers, kv_heads=spec.kv_heads, head_dim=spec.head_size,
                           context=context, prefill_chunk=options.prefill_chunk, vocab=spec.vocab)
        assert job.calibration is not None  # the pipeline loads it for every recipe that calibrates
        tokens, n = windows(job.calibration, job.source.path, options.seq_len, options.max_samples,
                            what="calibration window", option="algorithm.seq_len")
        provider_options = {"htp_arch": str(options.htp_arch)}
        child = {"source": str(job.source.path), "output": str(job.out), "work": str(job.work / "qnn"),
                 "shape": shape.to_dict(), "weight_bits": WEIGHT_BITS[recipe.precision],
                 "windows": token_windows(job.calibration, job.source.path, options.seq_len, n),
                 "context_binary": options.context_binary, "provider_options": provider_options}
        config_file = job.work / "qnn_export.json"
        config_file.write_text(json.dumps(child) + "\n", encoding="utf-8")
        what = f"{recipe.precision}, {context}-token KV cache, prefill {options.prefill_chunk} tokens/call"
        with step(f"QNN export (torch.onnx + onnxruntime QDQ + HTP v{options.htp_arch} compile): {what}"):
            run_tool([sys.executable, "-m", EXPORT_MODULE, str(config_file)], job.work / "qnn_export.log",
                     tool="the QNN export", hint="check the source model and the recipe's algorithm options")
        graphs = {name: f"{name}.onnx" for name in ("prefill", "decode")}
        binaries = {name: f"{name}.qnn.onnx" for name in graphs} if options.context_binary else {}
        for file in [*graphs.values(), *binaries.values()]:
            if not (job.out / file).is_file():
                raise EngineError(f"the QNN export finished without writing {file}",
                                  hint=f"see its log; the config it got was {config_file}")
        for name in TOKENIZER_FILES:  # the runtime tokenizes with the checkpoint's own files
            if (job.source.path / name).is_file():
                shutil.copyfile(job.source.path / name, job.out / name)
        qnn_config = {"shape": shape.to_dict(), "mask_value": MASK_VALUE,
                      "eos_token_ids": end_of_turn_ids(job.source.path, config),
                      "graph_files": graphs, "context_binary_files": binaries,
                      "htp_arch": options.htp_arch,
                      "activations": "uint16",
                      "weights": f"{'uint8' if recipe.precision == 'a16w8' else 'int4'} per channel"}
        (job.out / CONFIG_FILE).write_text(json.dumps(qnn_config, indent=2) + "\n", encoding="utf-8")
        passed = {k: v for k, v in child.items() if k not in ("source", "output", "work", "windows")}
        details: dict[str, Any] = {"qnn": qnn_config,
                                   "calibration": job.calibration.info(tokens, n, options.seq_len)}
        # What the runtime loads: the context binaries (each holds its graph's weights), else
        # the QDQ graphs and their shared weights.
        served = ([f"{name}.qnn_qnn.bin" for name in binaries] if binaries
                  else [*graphs.values(), "model.data"])
        return EngineResult(options_passed=passed, details=details, served_files=served)

