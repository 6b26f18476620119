"""GPTQ on CPU through Olive's `Gptq` pass, as a step before the ONNX Runtime GenAI builder.

Olive quantizes the checkpoint layer by layer with Hessians from the calibration text and
saves it in its own quantized Hugging Face format (`quant_method: olive`), which the builder
reads and packs into MatMulNBits as is; the builder quantizes only what GPTQ left in float
(the LM head, unless `lm_head` is set). This is the first half of Olive's published Qwen
recipes (SelectiveMixedPrecision -> GPTQ -> RTN 8-bit head -> ModelBuilder) minus the
search, with every input local: the calibration text is a file, the dataset loader is the
`json` builder of `datasets`, and the hubs are switched off for the child.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeqwen import calibration
from edgeqwen.calibration import DEFAULT as DEFAULT_CALIBRATION
from edgeqwen.calibration import CalibrationText
from edgeqwen.engines.tool_process import run_tool
from edgeqwen.errors import EngineError, RecipeError
from edgeqwen.progress import step

# MatMulNBits block sizes the builder packs (the recipe's block_size and GPTQ's int8 modules)
BlockSize = Literal[16, 32, 64, 128, 256]
INSTALL_HINT = 'pip install -c constraints.txt "edgeqwen[onnx]"  (olive-ai and datasets)'
# Peak RSS of a GPTQ build: Olive holds the fp32 model and its quantized copy, the Hessians
# and every calibration sample's activations for the current layer; the builder after it
# only packs (≈3 GB). Measured (ru_maxrss) with the default's 89 x 256 calibration tokens and
# the LM head in GPTQ: 0.5B sample (1.98 GB fp32) 7,182-7,896 MiB (8.3 GB), 1.5B sample
# (6.2 GB fp32) 16,816 MiB (17.6 GB). A multiple of the model alone (8x fp16 fits the 0.5B)
# would ask 24.7 GB for the 1.5B, so: 2.4x the fp32 model plus a fixed 3.8 GB, ≈5% over both
# (8.5 GB for the 0.5B, 18.6 GB for the 1.5B). The LM head's logits would add samples x
# seq_len x vocab x 4 bytes; olive_launch keeps none.
FP32_MODEL_COPIES = 2.4
FIXED_PEAK_BYTES = 3_800_000_000


def peak_memory(fp32_weight_bytes: int) -> int:
    """Planned peak RSS of a GPTQ build (Olive, then the builder) of a model this size."""
    return int(FP32_MODEL_COPIES * fp32_weight_bytes + FIXED_PEAK_BYTES)


class GptqOptions(BaseModel):
    """`algorithm.gptq` in a recipe: calibrate the body with GPTQ before the builder runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq_len: int = Field(256, ge=32, le=4096)  # tokens per calibration sample
    max_samples: int | None = Field(None, ge=1)  # None: every full window of the text
    damp_percent: float = Field(0.01, gt=0, lt=1)
    lm_head: bool = False  # GPTQ for the LM head too (else the builder quantizes it)
    # Hugging Face module names (fnmatch patterns) GPTQ keeps at 8 bits, e.g. "*.self_attn.*"
    int8: list[str] = Field(default_factory=list)
    # block size of those 8-bit modules (None: the recipe's block_size). Int8 rounding error is
    # ~16x below int4's, so coarser blocks cost little accuracy and save the fp32 scale per
    # 32 weights that makes an int8 block-32 weight 1.16 bytes; decode reads every one of them.
    int8_block_size: BlockSize | None = None
    # shipped files (edgeqwen/texts/calibration) joined as the calibration text without --calibration
    calibration: list[str] = Field(default_factory=lambda: [DEFAULT_CALIBRATION], min_length=1)


def run_gptq(checkpoint: Path, work: Path, text: CalibrationText, options: GptqOptions, *,
             bits: int, group_size: int, symmetric: bool) -> tuple[Path, dict]:
    """Quantize `checkpoint` with Olive's Gptq pass; return the quantized checkpoint and what
    the manifest records about the calibration."""
    tokens, n = calibration.windows(text, checkpoint, options.seq_len, options.max_samples,
                                    what="GPTQ sample", option="algorithm.gptq.seq_len")
    widths = linear_modules(checkpoint)
    int8 = int8_modules(checkpoint, options.int8, widths)
    int8_overrides = {m: {"bits": 8,
                          "group_size": int8_group_size(widths[m], options.int8_block_size, group_size)}
                      for m in int8}
    data = work / "calibration.jsonl"
    data.write_text(json.dumps({"text": text.text}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = work / "gptq"
    config = {
        "input_model": {"type": "HfModel", "model_path": str(checkpoint), "task": "text-generation"},
        "systems": {"local": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{
            "name": "calibration", "type": "HuggingfaceContainer",
            "load_dataset_config": {"data_name": "json", "data_files": str(data), "split": "train"},
            "pre_process_data_config": {"strategy": "join", "max_seq_len": options.seq_len,
                                        "max_samples": n, "add_special_tokens": False},
        }],
        "passes": {"gptq": {"type": "Gptq", "bits": bits, "group_size": group_size, "sym": symmetric,
                            "lm_head": options.lm_head, "damp_percent": options.damp_percent,
                            "overrides": int8_overrides or None,
                            "data_config": "calibration"}},
        "engine": {"target": "local", "output_dir": str(out), "cache_dir": str(work / "olive-cache"),
                   "log_severity_level": 1},
    }
    config_path = work / "olive-gptq.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "HF_DATASETS_CACHE": str(work / "datasets-cache")}
    with step(f"Olive GPTQ: {n} x {options.seq_len} calibration tokens, int{bits} block {group_size}"):
        run_tool([sys.executable, "-m", "edgeqwen.engines.olive_launch", "run", "--config", str(config_path)],
                 work / "olive.log", tool="Olive's GPTQ pass", env=env,
                 hint="check the calibration text and the recipe's algorithm.gptq options")
    model = _output_model(out)
    return model, {"algorithm": "gptq", "engine": "olive Gptq pass", **options.model_dump(),
                   "int8_modules": int8,
                   "int8_block_sizes": sorted({o["group_size"] for o in int8_overrides.values()}),
                   "calibration": text.info(tokens, n, options.seq_len)}


def require_packages() -> None:
    """Olive and `datasets` are needed before any work starts (the preflight calls this)."""
    import importlib.util

    for module in ("olive", "datasets"):
        if importlib.util.find_spec(module) is None:
            raise EngineError(f"GPTQ needs the `{module}` package, which is not installed", hint=INSTALL_HINT)


def linear_modules(checkpoint: Path) -> dict[str, int]:
    """The checkpoint's 2-D weights inside the decoder layers (what GPTQ quantizes): module
    name -> in_features."""
    from safetensors import safe_open

    modules = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = fh.get_slice(key).get_shape()
                if ".layers." in key and key.endswith(".weight") and len(shape) == 2:
                    modules[key.removesuffix(".weight")] = shape[1]
    return dict(sorted(modules.items()))


def int8_group_size(in_features: int, wanted: int | None, group_size: int) -> int:
    """`wanted` where it divides the module's input width (MatMulNBits needs whole blocks),
    else the recipe's block size."""
    return wanted if wanted is not None and in_features % wanted == 0 else group_size


def int8_modules(checkpoint: Path, patterns: list[str], modules: dict[str, int] | None = None) -> list[str]:
    """The modules `patterns` select among `modules` (default: `linear_modules(checkpoint)`); a
    pattern that selects nothing is a recipe error.
    `.layers.-N.` counts from the last layer, so one recipe names "the last three layers" of
    models of any depth; one that reaches before the first layer (a shallower model than the
    recipe had in mind) selects nothing, without error."""
    from fnmatch import fnmatchcase

    if not patterns:
        return []
    names = list(modules if modules is not None else linear_modules(checkpoint))
    layers = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    chosen = []
    for pattern in patterns:
        back = re.search(r"\.layers\.-(\d+)\.", pattern)
        if back:
            if int(back.group(1)) > layers:
                continue
            pattern = pattern.replace(back.group(0), f".layers.{layers - int(back.group(1))}.")
        hits = [m for m in names if fnmatchcase(m, pattern)]
        if not hits:
            raise RecipeError(f"algorithm.gptq.int8 pattern {pattern!r} matches no layer of the model",
                              hint=f"module names look like {names[0]!r}" if names else None)
        chosen += hits
    return sorted(set(chosen))


def _output_model(out: Path) -> Path:
    """Olive writes the final model under its output folder; find the checkpoint in it."""
    configs = sorted(out.rglob("config.json"))
    for config in configs:
        quant = json.loads(config.read_text(encoding="utf-8")).get("quantization_config") or {}
        if quant.get("quant_method") == "olive":
            return config.parent
    raise EngineError(f"Olive finished but left no quantized checkpoint under {out}",
                      hint="see olive.log in the build's work folder (kept under ~/.cache/edgeqwen/logs "
                           "when the tool fails)")
