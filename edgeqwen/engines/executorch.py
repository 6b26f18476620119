"""ExecuTorch `.pte` for phones through ExecuTorch's own LLM export path (XNNPACK, KV cache).

checkpoint --rename--> ExecuTorch's Llama-layout state dict (.pth) + params.json
--python -m executorch.extension.llm.export.export_llm--> model.pte

The export tool runs as a child process with an LlmConfig written here: the model is
ExecuTorch's Llama transformer with Hugging Face RoPE, q/k/v biases (Qwen2) or q/k norms
(Qwen3), its KV cache and custom SDPA op, torchao's 8-bit dynamic activation / 4-bit weight
quantization (8da4w) and the XNNPACK partitioner. ExecuTorch's own `convert_weights` for
Qwen imports torchtune, whose released versions import modules torchao 0.18 no longer has,
so the rename (key names only, no arithmetic) is done here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

import yaml

from edgeqwen.catalog import ModelSpec
from edgeqwen.checkpoint import TOKENIZER_FILES, end_of_turn_ids, read_config
from edgeqwen.engines.base import BuildJob, Engine, EngineOptions, EngineResult, require_group_divides
from edgeqwen.engines.tool_process import run_tool
from edgeqwen.errors import EngineError, RecipeError, SourceError
from edgeqwen.preflight import require_disk
from edgeqwen.progress import step
from edgeqwen.recipes import Recipe
from edgeqwen.sources import ResolvedSource

EXPORT_MODULE = "executorch.extension.llm.export.export_llm"
INSTALL_HINT = 'pip install -c constraints.txt "edgeqwen[executorch]"'
MODEL_FILE = "model.pte"
# Peak RSS of the export as a multiple of the fp32 model: 5.8 GB for the 0.5B sample (2 GB).
EXPORT_MEMORY_FACTOR = 3.0

# Hugging Face Qwen2/Qwen3 parameter names -> ExecuTorch's Llama transformer names.
_GLOBAL_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
                 "lm_head.weight": "output.weight"}
_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attention.wq.weight", "self_attn.q_proj.bias": "attention.wq.bias",
    "self_attn.k_proj.weight": "attention.wk.weight", "self_attn.k_proj.bias": "attention.wk.bias",
    "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.v_proj.bias": "attention.wv.bias",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "self_attn.q_norm.weight": "attention.q_norm_fn.weight",
    "self_attn.k_norm.weight": "attention.k_norm_fn.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
}
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
# The ExecuTorch model class per model type (both are its Llama transformer; the name picks
# the example module and nothing size-specific).
_MODEL_CLASS = {"qwen2": "qwen2_5_0_5b", "qwen3": "qwen3_0_6b"}


class ExecuTorchOptions(EngineOptions):
    group_size: Literal[32, 64, 128, 256] = 32  # weights per 4-bit scale (8da4w)
    embedding_bits: Literal[4, 8] | None = 8  # the token embedding table, per channel; None: fp32
    max_seq_length: int | None = None  # prompt tokens per forward call; default: the context


class ExecuTorchEngine(Engine):
    name = "executorch"
    formats = ("pte",)
    runtime = "executorch"
    kv_cache_type = "f32"  # CPU exports keep inputs/outputs and the KV cache in fp32
    options_model = ExecuTorchOptions
    packages = ("executorch", "torchao")

    def validate_options(self, recipe: Recipe, origin: str = "recipe") -> ExecuTorchOptions:
        options = super().validate_options(recipe, origin)
        assert isinstance(options, ExecuTorchOptions)
        if recipe.precision == "fp32" and recipe.algorithm:
            raise RecipeError(f"{origin}: algorithm options apply to 8da4w only; fp32 takes none",
                              hint="remove the `algorithm` section")
        if options.max_seq_length is not None and not 1 <= options.max_seq_length <= recipe.context_length:
            raise RecipeError(f"{origin}: algorithm.max_seq_length must be between 1 and the "
                              f"context length ({recipe.context_length})")
        return options

    def preflight(self, source: ResolvedSource, recipe: Recipe, options: EngineOptions) -> None:
        if importlib.util.find_spec("executorch") is None:
            raise EngineError("the ExecuTorch engine needs executorch, which is not installed",
                              hint=INSTALL_HINT)
        assert isinstance(options, ExecuTorchOptions)
        spec = source.spec_info()
        if recipe.precision == "8da4w":
            require_group_divides(source, options.group_size,
                                  hint="pick a group size that divides it (32 divides every Qwen)")
        self.require_build_memory(spec, recipe, options, "the ExecuTorch export")

    def build_memory(self, spec: ModelSpec, recipe: Recipe, options: EngineOptions) -> int:
        return int(spec.weight_bytes("fp32") * EXPORT_MEMORY_FACTOR)

    def build(self, job: BuildJob) -> EngineResult:
        options: ExecuTorchOptions = job.options  # type: ignore[assignment]
        recipe = job.recipe
        config = read_config(job.source.path)
        spec = job.source.spec_info()
        context = min(recipe.context_length, spec.context_length or recipe.context_length)
        require_disk(job.work, spec.weight_bytes("fp32") * 2, "the renamed checkpoint and the .pte")

        model_args = executorch_params(config)
        params = job.work / "params.json"
        params.write_text(json.dumps(model_args), encoding="utf-8")
        checkpoint = job.work / "checkpoint.pth"
        with step("rename the checkpoint for ExecuTorch's Llama transformer"):
            write_checkpoint(job.source.path, checkpoint)
        llm_config = export_config(config, checkpoint=checkpoint, params=params, out=job.out / MODEL_FILE,
                                   precision=recipe.precision, options=options, context=context,
                                   eos_ids=end_of_turn_ids(job.source.path, config))
        config_file = job.work / "llm_config.yaml"
        config_file.write_text(yaml.safe_dump(llm_config, sort_keys=False), encoding="utf-8")
        with step(f"ExecuTorch LLM export: {recipe.precision}, XNNPACK, KV cache {context} tokens"):
            run_tool([sys.executable, "-m", EXPORT_MODULE, "--config", str(config_file)],
                     job.work / "export.log", tool="ExecuTorch's LLM export",
                     hint="check the source model and the recipe's algorithm options",
                     cwd=job.work)  # hydra writes an `outputs/` folder into the current one
        if not (job.out / MODEL_FILE).is_file():
            raise EngineError(f"ExecuTorch's LLM export finished without writing {MODEL_FILE}",
                              hint=f"see its log; the config it got was {config_file}")
        checkpoint.unlink()
        for name in TOKENIZER_FILES:  # the runtime tokenizes with the checkpoint's own files
            if (job.source.path / name).is_file():
                shutil.copyfile(job.source.path / name, job.out / name)
        passed = {k: v for k, v in llm_config.items() if k != "base"}
        passed["base"] = {k: v for k, v in llm_config["base"].items() if k not in ("checkpoint", "params")}
        return EngineResult(options_passed=passed,
                            details={"pte": {"file": MODEL_FILE, "max_context_length": context,
                                             "params": model_args}})


def executorch_params(config: dict[str, Any]) -> dict[str, Any]:
    """ExecuTorch's ModelArgs for a Qwen2/Qwen3 config.json."""
    qwen3 = config["model_type"] == "qwen3"
    rope = config.get("rope_parameters") or {}
    params: dict[str, Any] = {
        "dim": config["hidden_size"], "hidden_dim": config["intermediate_size"],
        "n_heads": config["num_attention_heads"],
        "n_kv_heads": config.get("num_key_value_heads", config["num_attention_heads"]),
        "n_layers": config["num_hidden_layers"], "vocab_size": config["vocab_size"],
        "norm_eps": config.get("rms_norm_eps", 1e-6),
        "rope_theta": rope.get("rope_theta", config.get("rope_theta", 1_000_000.0)),
        "ffn_dim_multiplier": 1, "use_scaled_rope": False, "use_hf_rope": True,
        "attention_qkv_bias": not qwen3,
    }
    if qwen3:
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        params.update(head_dim=head_dim, use_qk_norm=True, qk_norm_before_rope=True)
    if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
        raise SourceError("the ExecuTorch engine exports models with plain RoPE only; this config "
                          f"asks for {rope.get('rope_type') or config.get('rope_scaling')}")
    return params


def rename_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face names -> ExecuTorch Llama names; tied models get the embedding as output."""
    renamed = {}
    for key, tensor in state.items():
        layer = _LAYER_KEY.fullmatch(key)
        try:
            name = f"layers.{layer[1]}.{_LAYER_NAMES[layer[2]]}" if layer else _GLOBAL_NAMES[key]
        except KeyError:
            raise SourceError(f"unexpected parameter {key!r} in the checkpoint: not a Qwen2/Qwen3 "
                              "weight the ExecuTorch export knows") from None
        renamed[name] = tensor
    renamed.setdefault("output.weight", renamed["tok_embeddings.weight"])
    return renamed


def write_checkpoint(source: Path, out: Path) -> None:
    import torch
    from safetensors.torch import load_file

    shards = sorted(source.glob("*.safetensors"))
    if not shards:
        raise SourceError(f"{source} has no .safetensors weights", hint="save the model with safetensors")
    state: dict[str, Any] = {}
    for shard in shards:
        state.update(load_file(shard))
    torch.save(rename_state_dict(state), out)


def export_config(config: dict[str, Any], *, checkpoint: Path, params: Path, out: Path, precision: str,
                  options: ExecuTorchOptions, context: int, eos_ids: list[int]) -> dict[str, Any]:
    """ExecuTorch's LlmConfig (as YAML data) for this build."""
    llm: dict[str, Any] = {
        "base": {"model_class": _MODEL_CLASS[config["model_type"]], "checkpoint": str(checkpoint),
                 "params": str(params),
                 "metadata": json.dumps({"get_bos_id": config.get("bos_token_id") or 0,
                                         "get_eos_ids": eos_ids})},
        "model": {"use_kv_cache": True, "use_sdpa_with_kv_cache": True, "dtype_override": "fp32"},
        "export": {"max_seq_length": options.max_seq_length or context, "max_context_length": context,
                   "output_name": str(out)},
        "backend": {"xnnpack": {"enabled": True, "extended_ops": True}},
    }
    if precision == "8da4w":
        llm["quantization"] = {"qmode": "8da4w", "group_size": options.group_size}
        if options.embedding_bits:
            llm["quantization"]["embedding_quantize"] = f"{options.embedding_bits},0"
    return llm
