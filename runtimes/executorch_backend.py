"""ExecuTorch `.pte` artifacts run by ExecuTorch's Python runtime (XNNPACK on this CPU), the
same program and kernels an Android/iOS app loads through ExecuTorch's C++ runtime."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeqwen.errors import ArtifactError
from runtimes.base import (
    GenerationOptions,
    Runtime,
    TokenizerJson,
    default_threads,
    process_memory,
    read_chat_template,
    runtime_settings,
)
from runtimes.sampling import decode_tokens

MODEL_FILE = "model.pte"
_threadpool_fixed = False  # set once a program has been loaded in this process


class ExecuTorchRuntime(TokenizerJson, Runtime):
    name = "executorch"

    def __init__(self, program: Any, path: Path, threads: int, tokenizer: Any, context_length: int) -> None:
        self.program = program
        self.forward = program.load_method("forward")
        self.path = path
        self.threads = threads
        self.tokenizer = tokenizer
        self.max_context = int(_constant(program, "get_max_context_len"))
        # Prompt tokens per call: the upper bound of the token input's dynamic shape (the
        # export's max_seq_length - 1).
        self.max_chunk = int(self.forward.metadata.input_tensor_meta(0).sizes()[1])
        self.context_length = min(context_length or self.max_context, self.max_context)
        self.eos_ids = frozenset(int(i) for i in _constants(program, "get_eos_ids"))
        self.chat_template = read_chat_template(path)

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None,
             context_length: int | None = None) -> ExecuTorchRuntime:
        from tokenizers import Tokenizer

        path = Path(path)
        model_file = path / MODEL_FILE if path.is_dir() else path
        if not model_file.is_file():
            raise ArtifactError(f"{path} holds no {MODEL_FILE}")
        folder = model_file.parent
        if not (folder / "tokenizer.json").is_file():
            raise ArtifactError(f"{folder} has no tokenizer.json beside {model_file.name}")
        threads = default_threads(threads, runtime_settings(folder).get("threads"))
        program = _load_program(model_file, threads)
        threads = _threadpool_size()  # what the program really runs with (see _load_program)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        return cls(program, folder, threads, tokenizer, context_length or 0)

    def _run(self, ids: Sequence[int], start: int) -> Any:
        """Logits (torch, [vocab]) after feeding `ids` at positions start.. into the KV cache."""
        import torch

        out = self.forward.execute([torch.tensor([list(ids)], dtype=torch.long),
                                    torch.tensor([start], dtype=torch.long)])
        return out[0].reshape(-1)

    def _prefill(self, ids: Sequence[int]) -> Any:
        logits = None
        for start in range(0, len(ids), self.max_chunk):
            logits = self._run(ids[start:start + self.max_chunk], start)
        return logits

    def stream_ids(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[int]:
        yield from decode_tokens(prompt_ids, options, context_length=self.context_length,
                                 eos_ids=self.eos_ids, prefill=self._prefill,
                                 step=lambda token, position: self._run([token], position))

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        # The program returns the last position's logits only (what an app needs, and cheaper
        # prefill), so every position is fed one at a time through the KV cache.
        if len(token_ids) > self.max_context:
            raise ValueError(f"{len(token_ids)} tokens exceed the program's KV cache ({self.max_context})")
        rows = [self._run([t], i).numpy().copy() for i, t in enumerate(token_ids)]
        return np.stack(rows).astype(np.float32)

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu (XNNPACK)", "threads": self.threads,
                "context_length": self.context_length, "max_context_length": self.max_context,
                "prefill_chunk": self.max_chunk, "path": str(self.path / MODEL_FILE), **process_memory()}


def _load_program(model_file: Path, threads: int) -> Any:
    # The custom SDPA / KV-cache ops and the quantized kernels the LLM export emits are
    # registered with the runtime when these modules are imported.
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from executorch.extension.pybindings import portable_lib
    from executorch.kernels import quantized  # noqa: F401
    from executorch.runtime import Runtime as ETRuntime

    with model_file.open("rb") as fh:
        head = fh.read(8)
    if head[4:6] != b"ET":  # flatbuffer file identifier of ExecuTorch programs (ET12, ...)
        raise ArtifactError(f"{model_file} is not an ExecuTorch program (no ExecuTorch file identifier)")
    global _threadpool_fixed
    # The XNNPACK delegate of a loaded program keeps using the process-wide threadpool;
    # resizing it under a live program deadlocks its next call (seen with ExecuTorch 1.5.1).
    # So the first program of a process sets the size and later ones share it.
    if not _threadpool_fixed:
        portable_lib._unsafe_reset_threadpool(threads)
        _threadpool_fixed = True
    try:
        return ETRuntime.get().load_program(str(model_file))
    except Exception as err:  # the runtime raises RuntimeError/ValueError with a status code
        raise ArtifactError(f"ExecuTorch cannot load {model_file}: it is corrupt or truncated ({err})",
                            hint="`edgeqwen verify ART` tells which file changed; rebuild the "
                            "artifact") from None


def _threadpool_size() -> int:
    from executorch.extension.pybindings import portable_lib

    return int(portable_lib._threadpool_get_thread_count())


def _constants(program: Any, method: str) -> list[Any]:
    return list(program.load_method(method).execute([]))


def _constant(program: Any, method: str) -> Any:
    return _constants(program, method)[0]
