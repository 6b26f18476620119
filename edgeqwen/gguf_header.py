"""Read a GGUF header with llama.cpp's own parser (ggml's `gguf_*` C functions via ctypes).

The `gguf` package's GGUFReader builds Python objects for every vocabulary entry and takes
about 10 s on Qwen's 151k-token files; ggml's parser reads the same header in milliseconds.
It comes with llama-cpp-python, so this is for GGUF artifacts (built or run with it).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgeqwen.errors import ArtifactError


@dataclass(frozen=True)
class GGUFHeader:
    architecture: str | None
    file_type: str  # e.g. MOSTLY_Q4_K_M
    context_length: int | None
    chat_template: str | None
    tensor_types: dict[str, int]  # ggml type -> tensor count, most common first
    tensor_bytes: dict[str, int]  # ggml type -> bytes


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


@lru_cache(maxsize=1)
def _ggml() -> Any:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    signatures = {
        "gguf_init_from_file": (ctypes.c_void_p, [ctypes.c_char_p, _InitParams]),
        "gguf_free": (None, [ctypes.c_void_p]),
        "gguf_get_n_tensors": (ctypes.c_int64, [ctypes.c_void_p]),
        "gguf_get_tensor_type": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_tensor_size": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_find_key": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]),
        "gguf_get_val_str": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]),
        "gguf_get_val_u32": (ctypes.c_uint32, [ctypes.c_void_p, ctypes.c_int64]),
        "ggml_type_name": (ctypes.c_char_p, [ctypes.c_int]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def read_header(path: Path) -> GGUFHeader:
    from gguf import LlamaFileType

    lib = _ggml()
    ctx = lib.gguf_init_from_file(str(path).encode(), _InitParams(True, None))
    if not ctx:
        raise ArtifactError(f"{path} is not a readable GGUF file (corrupt or truncated)",
                            hint="rebuild it, or download it again and compare its sha256")
    try:
        def string(key: str) -> str | None:
            i = lib.gguf_find_key(ctx, key.encode())
            return lib.gguf_get_val_str(ctx, i).decode("utf-8") if i >= 0 else None

        def u32(key: str) -> int | None:
            i = lib.gguf_find_key(ctx, key.encode())
            return int(lib.gguf_get_val_u32(ctx, i)) if i >= 0 else None

        counts: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for t in range(lib.gguf_get_n_tensors(ctx)):
            name = lib.ggml_type_name(lib.gguf_get_tensor_type(ctx, t)).decode().upper()
            counts[name] = counts.get(name, 0) + 1
            sizes[name] = sizes.get(name, 0) + int(lib.gguf_get_tensor_size(ctx, t))
        arch = string("general.architecture")
        ftype = u32("general.file_type")
        return GGUFHeader(
            architecture=arch,
            file_type=LlamaFileType(ftype).name if ftype is not None else "unknown",
            context_length=u32(f"{arch}.context_length") if arch else None,
            chat_template=string("tokenizer.chat_template"),
            tensor_types=dict(sorted(counts.items(), key=lambda kv: -kv[1])),
            tensor_bytes=dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        )
    finally:
        lib.gguf_free(ctx)
