"""Foundry Local export: an ONNX Runtime GenAI folder Foundry Local loads, in its cache layout.

Written: `<out>/<publisher>/<name>-<version>/` with the model, tokenizer and chat template
(hard-linked when possible), `genai_config.json` adjusted for Foundry's runtime, and
`inference_model.json`. Two ways in:
- foundry-local-sdk 2.x: `Catalog(LOCAL).register_model(folder, "<name>:<version>", metadata)`
  - the chat template comes from the tokenizer files through ORT GenAI;
- Foundry Local's cache (`foundry cache cd <out>`, or `Configuration(model_cache_dir=<out>)`):
  its scanner takes folders under a publisher folder that hold `genai_config.json` and an
  `inference_model.json` with a `Name`; older versions apply its `PromptTemplate`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqwen.artifacts import ArtifactWriter, load_manifest
from edgeqwen.chat_template import render
from edgeqwen.errors import ArtifactError
from edgeqwen.exports import link_or_copy

GENAI_CONFIG = "genai_config.json"
INFERENCE_MODEL = "inference_model.json"
# What the artifact keeps for provenance only; Foundry does not read it.
SKIPPED = {"manifest.json"}
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class FoundryExport:
    root: Path  # the cache folder: `foundry cache cd` / model_cache_dir
    model_dir: Path  # the model folder: register_model(path=...)
    model_id: str  # "<name>:<version>"


def genai_config_for_foundry(config: dict[str, Any], context_length: int | None) -> dict[str, Any]:
    """Foundry's runtime needs a context length and refuses static batching."""
    config = json.loads(json.dumps(config))  # deep copy
    model = config.setdefault("model", {})
    search = config.setdefault("search", {})
    if context_length:
        search["max_length"] = min(context_length, model.get("context_length") or context_length)
    if not model.get("context_length") and not search.get("max_length"):
        raise ArtifactError("genai_config.json has neither model.context_length nor search.max_length, "
                            "and Foundry Local needs one", hint="pass --context N")
    engine = config.get("engine")
    if isinstance(engine, dict) and "static_batching" in engine:
        del engine["static_batching"]
        engine.setdefault("dynamic_batching", {})
    return config


def prompt_template(jinja: str) -> dict[str, str]:
    """The legacy PromptTemplate: each role around `{Content}`, and the one-turn prompt the
    Jinja template renders (with its default system prompt, if it has one)."""
    prompt = render(jinja, [{"role": "user", "content": "{Content}"}], add_generation_prompt=True)
    roles = {role: f"<|im_start|>{role}\n{{Content}}<|im_end|>" for role in ("system", "user", "assistant")}
    return {**roles, "prompt": prompt}


def export_foundry(artifact: Path | str, out: Path | str, *, name: str | None = None,
                   version: int = 1, publisher: str = "edgeqwen", context_length: int | None = None,
                   force: bool = False) -> FoundryExport:
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    if manifest.format != "onnx":
        raise ArtifactError(f"{artifact} is a {manifest.format} artifact; Foundry Local runs ONNX "
                            "Runtime GenAI models", hint="build an ONNX artifact, e.g. "
                            "`edgeqwen build onnx-cpu-int4 --model ...`")
    name = (name or manifest.name).lower()
    for label, value in (("name", name), ("publisher", publisher)):
        if not NAME.match(value):
            raise ArtifactError(f"{value!r} is not a valid Foundry Local model {label}",
                                hint="use lower-case letters, digits, '.', '_' and '-'")
    if version < 0:
        raise ArtifactError(f"version {version} is negative", hint="pass --version 1 or higher")
    config_path = artifact / GENAI_CONFIG
    jinja_path = artifact / "chat_template.jinja"
    for needed in (config_path, jinja_path):
        if not needed.is_file():
            raise ArtifactError(f"{artifact} has no {needed.name}", hint="rebuild the artifact")
    config = genai_config_for_foundry(json.loads(config_path.read_text(encoding="utf-8")),
                                      context_length or manifest.recipe.get("context_length"))
    model_id = f"{name}:{version}"
    descriptor = {"Name": model_id, "PromptTemplate": prompt_template(jinja_path.read_text(encoding="utf-8"))}
    relative = Path(publisher) / f"{name}-{version}"
    writer = ArtifactWriter(out, force=force)
    with writer as staging:
        target = staging / relative
        target.mkdir(parents=True)
        for file in sorted(artifact.iterdir()):
            if file.is_file() and file.name not in SKIPPED | {GENAI_CONFIG}:
                link_or_copy(file, target / file.name)
        (target / GENAI_CONFIG).write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
        (target / INFERENCE_MODEL).write_text(json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
        root = writer.commit()
    return FoundryExport(root=root, model_dir=root / relative, model_id=model_id)
