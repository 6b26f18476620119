"""QNN artifacts (static-shape QDQ ONNX graphs for Snapdragon NPUs) run through ONNX Runtime's
QNN execution provider on its HTP backend, with CPU fallback disabled.

On a Snapdragon device the HTP backend is the NPU; on x86-64 Linux `onnxruntime-qnn` emulates
it, so outputs here are what the NPU computes (bit-exact integer kernels), only slower. The
host side (KV cache buffers, masks, chunking) is `edgeqwen.qnn_kv`, shared with the build's
calibration.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeqwen.errors import ArtifactError, EdgeQwenError
from edgeqwen.qnn_kv import CONFIG_FILE, GraphShape, KVCache, session_runner
from runtimes.base import GenerationOptions, Runtime, TokenizerJson, process_memory, read_chat_template
from runtimes.sampling import decode_tokens


class QNNRuntime(TokenizerJson, Runtime):
    name = "qnn"

    def __init__(self, path: Path, config: dict[str, Any], sessions: dict[str, Any], tokenizer: Any,
                 context_length: int, graphs: str) -> None:
        self.path = path
        self.shape = GraphShape(**config["shape"])
        self.sessions = sessions
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.graphs = graphs
        self.eos_ids = frozenset(int(i) for i in config["eos_token_ids"])
        self.cache = KVCache(self.shape)
        self.chat_template = read_chat_template(path)

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None,
             context_length: int | None = None) -> QNNRuntime:
        from tokenizers import Tokenizer

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        if not (folder / CONFIG_FILE).is_file():
            raise ArtifactError(f"{folder} holds no {CONFIG_FILE}: not a QNN artifact")
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if not (folder / "tokenizer.json").is_file():
            raise ArtifactError(f"{folder} has no tokenizer.json")
        # The context-binary models when the build compiled them (what a device loads),
        # else the QDQ graphs, which the QNN EP compiles at load.
        files = config["context_binary_files"] or config["graph_files"]
        graphs = "context binaries" if config["context_binary_files"] else "QDQ graphs (compiled at load)"
        sessions = {name: _session(folder / file) for name, file in files.items()}
        limit = config["shape"]["context"]
        return cls(folder, config, sessions, Tokenizer.from_file(str(folder / "tokenizer.json")),
                   min(context_length or limit, limit), graphs)

    def _prefill(self, ids: Sequence[int]) -> np.ndarray:
        if len(ids) > self.context_length:
            raise ValueError(f"{len(ids)} tokens exceed the artifact's context ({self.context_length})")
        self.cache.reset()
        return self.cache.prefill(session_runner(self.sessions["prefill"]), ids, self.shape.prefill_chunk)

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        return self._prefill(token_ids)

    def stream_ids(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[int]:
        decode = session_runner(self.sessions["decode"])
        yield from decode_tokens(prompt_ids, options, context_length=self.context_length,
                                 eos_ids=self.eos_ids, prefill=lambda ids: self._prefill(ids)[-1],
                                 step=lambda token, _position: self.cache.step(decode, [token], 1)[-1])

    def info(self) -> dict[str, Any]:
        from edgeqwen import qnn_ep

        return {"backend": self.name, "device": "npu (QNN HTP backend; emulated on x86-64)",
                "graphs": self.graphs, "threads": None, "context_length": self.context_length,
                "prefill_chunk": self.shape.prefill_chunk, **qnn_ep.versions(),
                "path": str(self.path), **process_memory()}


def _session(model: Path) -> Any:
    import onnxruntime as ort

    from edgeqwen import qnn_ep

    if not model.is_file():
        raise ArtifactError(f"the QNN artifact lacks {model.name}", hint="rebuild the artifact")
    try:
        return ort.InferenceSession(str(model), qnn_ep.session_options())
    except EdgeQwenError:
        raise
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        raise ArtifactError(f"the QNN HTP backend cannot load {model.name}: {str(err)[:500]}",
                            hint="`edgeqwen verify ART` tells whether a file changed; rebuild the "
                            "artifact") from None

