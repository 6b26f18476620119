"""A local .gguf file -> a dequantized Hugging Face checkpoint (transformers' GGUF loader).

The checkpoint is cached by the GGUF's sha256, so each file is dequantized once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqwen import paths
from edgeqwen.errors import SourceError
from edgeqwen.hashing import sha256_files
from edgeqwen.preflight import require_disk, require_memory
from edgeqwen.progress import console, step

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("qwen2", "qwen3")
MARKER = "edgeqwen-source.json"
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    name: str | None
    file_type: str  # e.g. MOSTLY_Q4_K_M
    params: int
    has_chat_template: bool


def _check_magic(path: Path) -> None:
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise SourceError(f"{path} is not a GGUF file (it does not start with 'GGUF')",
                              hint="pass a .gguf produced by llama.cpp, or a Hugging Face folder")


def read_gguf_info(path: Path) -> GGUFInfo:
    """Read the header with the `gguf` package; a clear error for corrupt or foreign files."""
    from gguf import GGUFReader, LlamaFileType

    _check_magic(path)
    try:
        reader = GGUFReader(path)
    except Exception as err:  # the reader raises many types on truncated data
        raise SourceError(f"{path} is corrupt or truncated: {err}",
                          hint="download the file again and compare its sha256") from None

    def meta(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = meta("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise SourceError(f"{path} holds a {arch!r} model; edgeqwen builds Qwen models "
                          f"(GGUF architecture {' or '.join(SUPPORTED_ARCHITECTURES)})")
    ftype = meta("general.file_type")
    try:
        ftype_name = LlamaFileType(ftype).name if ftype is not None else "unknown"
    except ValueError:
        ftype_name = f"type {ftype}"
    return GGUFInfo(
        architecture=arch, name=meta("general.name"), file_type=ftype_name,
        params=sum(int(t.n_elements) for t in reader.tensors),
        has_chat_template=meta("tokenizer.chat_template") is not None,
    )


def dequantize(path: Path, *, sha256: str | None = None,
               dtype: str = "float32") -> tuple[Path, dict[str, Any]]:
    """Return (checkpoint folder, marker data) for the GGUF at `path`, building it if needed."""
    path = Path(path).absolute()
    _check_magic(path)
    sha256 = sha256 or sha256_files([path], f"hashing {path.name}")[path]
    target = paths.sources_dir() / f"gguf-{sha256[:16]}-{dtype}"
    marker = target / MARKER
    if marker.is_file():  # before reading the header: GGUFReader takes seconds on a 150k vocabulary
        return target, json.loads(marker.read_text(encoding="utf-8"))
    info = read_gguf_info(path)

    weights = info.params * _DTYPE_BYTES[dtype]
    require_disk(target.parent, int(weights * 1.1), f"the dequantized checkpoint of {path.name}")
    # transformers holds the dequantized model plus one tensor being converted and saved.
    require_memory(int(weights * 1.6), f"dequantizing {path.name}")
    console.print(
        f"[yellow]note:[/yellow] {path.name} is {info.file_type}; the checkpoint dequantized from "
        "it carries that quantization error, so every artifact built from it is bounded by it"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        with step(f"dequantizing {path.name} ({info.file_type}) to a {dtype} checkpoint"):
            _convert(path, staging, dtype)
        data = {
            "origin": str(path), "origin_sha256": sha256, "dtype": dtype,
            "architecture": info.architecture, "gguf_name": info.name,
            "gguf_file_type": info.file_type, "params": info.params,
        }
        (staging / MARKER).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, data


def _convert(path: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                 dtype=getattr(torch, dtype))
    # transformers marks GGUF-loaded models as quantized and refuses to save them, although
    # the weights are already plain tensors: drop the marks so save_pretrained writes them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
