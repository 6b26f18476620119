"""Ollama export: a folder with `Modelfile` + `model.gguf` that `ollama create` takes.

Ollama renders prompts with Go templates, not Jinja, and only recognises templates it
already knows, so the Modelfile carries an explicit TEMPLATE written for each Qwen chat
template family (`ollama_templates/*.gotmpl`). tests/test_export_ollama.py renders
conversations through both the Go template (Go's text/template, fed the way Ollama feeds
it) and the Jinja template and requires the same prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edgeqwen import catalog
from edgeqwen.artifacts import ArtifactWriter, Manifest, load_manifest
from edgeqwen.chat_template import render
from edgeqwen.errors import ArtifactError
from edgeqwen.exports import link_or_copy

MODELFILE = "Modelfile"
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
DEFAULT_NUM_CTX = 4096
# sha256 of each official Qwen Jinja template with its default system prompt taken out
# (Qwen2.5, Qwen2.5-Coder and Qwen2.5-Math differ only there): the templates our Go
# templates are proven against.
KNOWN_TEMPLATES = {
    "576ca4dc24e9d4d38d89baf0c3b2ee4d5931dea9aa71a0d90ddd15de428a6a3c": "qwen2.5",
    "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5": "qwen3",
}
# What `ollama create` accepts as a model name: name[:tag].
NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*(:[a-zA-Z0-9][a-zA-Z0-9._-]*)?$")
# generation_config.json key -> Modelfile PARAMETER
PARAMETERS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
              "min_p": "min_p", "repetition_penalty": "repeat_penalty"}


@dataclass(frozen=True)
class GoTemplate:
    family: str  # which .gotmpl it came from
    text: str
    default_system: str | None  # what the Jinja template says when no system message is given
    known: bool  # the Jinja template is one of the official ones the Go template was proven on


@dataclass(frozen=True)
class OllamaExport:
    folder: Path
    modelfile: Path
    name: str
    template: GoTemplate
    parameters: dict[str, Any]
    notes: list[str]


def default_system_prompt(jinja: str) -> str | None:
    """The system prompt the Jinja template adds when the conversation has none."""
    probe = "\x00probe"
    text = render(jinja, [{"role": "user", "content": probe}], add_generation_prompt=False)
    head = "<|im_start|>system\n"
    tail = f"<|im_end|>\n<|im_start|>user\n{probe}"
    if text.startswith(head) and tail in text:
        return text[len(head):text.index(tail)]
    return None


def go_template(jinja: str) -> GoTemplate:
    """Pick the Go template equivalent to a Qwen Jinja chat template."""
    default = default_system_prompt(jinja)
    stripped = jinja
    if default:  # as written in a Jinja string literal: backslashes escaped
        stripped = stripped.replace(default.replace("\\", "\\\\"), "").replace(default, "")
    known = KNOWN_TEMPLATES.get(hashlib.sha256(stripped.encode("utf-8")).hexdigest())
    if known:
        family = known
    elif "<think>" in jinja and "<|im_start|>" in jinja:
        family = "qwen3"
    elif "<tool_call>" in jinja and "<|im_start|>" in jinja:
        family = "qwen2.5"
    else:
        raise ArtifactError(
            "the artifact's chat template is not a Qwen ChatML template, so edgeqwen has no "
            "Ollama template proven equivalent to it",
            hint="pass your own Go template with --template FILE",
        )
    text = resources.files("edgeqwen.exports").joinpath(f"ollama_templates/{family}.gotmpl")
    body = text.read_text(encoding="utf-8").rstrip("\n")
    if family == "qwen2.5":
        if default is None:
            raise ArtifactError("this Qwen2.5-style chat template has no default system prompt, "
                                "unlike the official ones",
                                hint="pass your own Go template with --template FILE")
        # A Go string literal; JSON's escapes are valid Go escapes for these characters.
        body = body.replace("__DEFAULT_SYSTEM__", json.dumps(default, ensure_ascii=False))
    return GoTemplate(family=family, text=body, default_system=default, known=known is not None)


def sampling_parameters(artifact: Path, manifest: Manifest) -> tuple[dict[str, Any], str]:
    """Sampling defaults: the artifact's generation_config.json, else Qwen's recommended ones."""
    config_path = artifact / "generation_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        found = {PARAMETERS[k]: v for k, v in config.items() if k in PARAMETERS and v is not None}
        if found:
            return found, "the model's generation_config.json"
    spec_id = manifest.source.catalog_id
    if spec_id:
        spec = catalog.get(spec_id)
        return ({PARAMETERS[k]: v for k, v in spec.sampling.items()},
                f"Qwen's recommended settings for {spec.family}")
    return {}, "Ollama's defaults (the model has no sampling settings)"


def license_text(manifest: Manifest) -> str | None:
    source_license = Path(manifest.source.path) / "LICENSE"
    if source_license.is_file():
        return source_license.read_text(encoding="utf-8", errors="replace")
    if not manifest.source.catalog_id:
        return None
    spec = catalog.get(manifest.source.catalog_id)
    if spec.license == "apache-2.0":
        return resources.files("edgeqwen.exports").joinpath("licenses/apache-2.0.txt").read_text(
            encoding="utf-8")
    return f"{spec.license}: https://huggingface.co/{spec.repo_id}/blob/main/LICENSE"


def _quoted(keyword: str, text: str) -> str:
    if '"""' in text:
        raise ArtifactError(f'the {keyword} text contains """, which ends a Modelfile block',
                            hint=f"remove the triple quotes from the {keyword} text")
    return f'{keyword} """{text}"""\n'


def modelfile(template: GoTemplate, parameters: dict[str, Any], num_ctx: int,
              license_: str | None, header: str) -> str:
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    parts = ["\n".join(lines) + "\n", "FROM ./model.gguf\n", _quoted("TEMPLATE", template.text)]
    parts += [f'PARAMETER stop "{stop}"\n' for stop in STOP_TOKENS]
    parts.append(f"PARAMETER num_ctx {num_ctx}\n")
    parts += [f"PARAMETER {key} {value}\n" for key, value in parameters.items()]
    if license_:
        parts.append(_quoted("LICENSE", license_.strip("\n")))
    return "".join(parts)


def export_ollama(artifact: Path | str, out: Path | str, *, name: str | None = None,
                  num_ctx: int | None = None, template_file: Path | None = None,
                  force: bool = False) -> OllamaExport:
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    if manifest.format != "gguf":
        raise ArtifactError(f"{artifact} is a {manifest.format} artifact; Ollama runs GGUF files",
                            hint="build a GGUF artifact, e.g. `edgeqwen build gguf-q4_k_m --model ...`")
    model = artifact / manifest.engine.get("gguf", {}).get("file", "model.gguf")
    if not model.is_file():
        raise ArtifactError(f"{artifact} has no {model.name}", hint="rebuild the artifact")
    notes: list[str] = []
    jinja_path = artifact / "chat_template.jinja"
    if template_file is not None:
        template = GoTemplate(family="custom", text=Path(template_file).read_text(encoding="utf-8"),
                              default_system=None, known=False)
    elif not jinja_path.is_file():
        raise ArtifactError(f"{artifact} has no chat_template.jinja, so the chat format is unknown",
                            hint="pass a Go template with --template FILE")
    else:
        template = go_template(jinja_path.read_text(encoding="utf-8"))
        if not template.known:
            notes.append(f"the chat template is not one of the official Qwen templates; the "
                         f"{template.family} Ollama template was chosen by its markers - check "
                         f"that prompts render as the model expects")
    parameters, parameters_from = sampling_parameters(artifact, manifest)
    trained = manifest.engine.get("gguf", {}).get("context_length_trained")
    num_ctx = num_ctx or manifest.recipe.get("context_length") or DEFAULT_NUM_CTX
    if trained and num_ctx > trained:
        notes.append(f"num_ctx {num_ctx} capped at the trained context {trained}")
        num_ctx = trained
    name = name or manifest.name
    if not NAME.match(name):
        raise ArtifactError(f"{name!r} is not a valid Ollama model name",
                            hint="use letters, digits, '.', '_' and '-', optionally NAME:TAG")
    header = (f"Ollama Modelfile for {manifest.name}, exported by edgeqwen {manifest.edgeqwen_version}\n"
              f"source: {manifest.source.repo_id or manifest.source.catalog_id or manifest.source.spec}, "
              f"recipe {manifest.recipe.get('name')} ({manifest.recipe.get('precision')})\n"
              f"TEMPLATE: edgeqwen's {template.family} Go template, equivalent to the model's Jinja "
              f"chat template\nsampling PARAMETERs: {parameters_from}\n"
              f"use: ollama create {name} -f Modelfile")
    text = modelfile(template, parameters, num_ctx, license_text(manifest), header)
    writer = ArtifactWriter(out, force=force)
    with writer as staging:
        link_or_copy(model, staging / "model.gguf")
        (staging / MODELFILE).write_text(text, encoding="utf-8")
        folder = writer.commit()
    return OllamaExport(folder=folder, modelfile=folder / MODELFILE, name=name, template=template,
                        parameters={"num_ctx": num_ctx, **parameters}, notes=notes)
