"""Checks that a folder is a Hugging Face checkpoint edgeqwen can build from, safely."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeqwen.catalog import SUPPORTED_MODEL_TYPES
from edgeqwen.errors import SourceError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "chat_template.jinja", "special_tokens_map.json", "generation_config.json")


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise SourceError(f"{folder} has no config.json, so it is not a Hugging Face checkpoint",
                          hint="pass a folder saved with save_pretrained(), a .gguf file, "
                          "a catalog id, or `sample`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SourceError(f"{path} is not valid JSON: {err}") from None


def check_checkpoint(folder: Path) -> dict[str, Any]:
    """Return config.json after checking model type, weights format and tokenizer."""
    config = read_config(folder)
    if "auto_map" in config:
        # auto_map means transformers would import Python code shipped with the weights.
        raise SourceError(
            f"{folder}/config.json asks for custom code (auto_map); edgeqwen never runs "
            "code from a model repository (trust_remote_code is refused)",
            hint="Qwen2/Qwen2.5/Qwen3 need no custom code: use the official checkpoint",
        )
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SourceError(
            f"{folder} holds a {model_type!r} model; edgeqwen builds Qwen models "
            f"(model_type {', '.join(sorted(SUPPORTED_MODEL_TYPES))})",
            hint="run `edgeqwen models` for the supported models",
        )
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        raise SourceError(
            f"{folder} has no .safetensors weights"
            + (f" (found {', '.join(pickles)}: pickle files can run code and are refused)"
               if pickles else ""),
            hint="convert the weights with save_pretrained(..., safe_serialization=True)",
        )
    if not (folder / "tokenizer.json").is_file() and not (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    ):
        raise SourceError(f"{folder} has no tokenizer (tokenizer.json or vocab.json + merges.txt)",
                          hint="save the tokenizer next to the model with tokenizer.save_pretrained()")
    return config


def chat_template(folder: Path) -> str | None:
    """The chat template as transformers stores it (own file, or in tokenizer_config.json)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def end_of_turn_ids(source: Path, config: dict[str, Any]) -> list[int]:
    """Every id that ends a reply: config.json's and generation_config.json's eos_token_id."""
    ids: list[int] = []
    generation = source / "generation_config.json"
    extra = json.loads(generation.read_text(encoding="utf-8")) if generation.is_file() else {}
    for eos in (config.get("eos_token_id"), extra.get("eos_token_id")):
        for i in eos if isinstance(eos, list) else [eos]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids
