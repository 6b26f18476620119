"""ONNX artifacts run by ONNX Runtime GenAI, exactly as an app embedding it would."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import GenerationOptions, Runtime, default_threads, process_memory, runtime_settings


class OnnxGenAIRuntime(Runtime):
    name = "onnxruntime-genai"

    def __init__(self, model: Any, tokenizer: Any, path: Path, threads: int, max_length: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.threads = threads
        self.max_length = max_length
        self.eos_ids = frozenset(int(i) for i in tokenizer.eos_token_ids)
        template = path / "chat_template.jinja"
        self.chat_template = template.read_text(encoding="utf-8") if template.is_file() else None

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None,
             context_length: int | None = None) -> OnnxGenAIRuntime:
        import onnxruntime_genai as og

        path = Path(path)
        genai_config = json.loads((path / "genai_config.json").read_text(encoding="utf-8"))
        threads = default_threads(threads, runtime_settings(path).get("threads"))
        config = og.Config(str(path))
        # onnxruntime-genai uses one core unless told otherwise.
        config.overlay(json.dumps(
            {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        model = og.Model(config)
        max_length = genai_config["search"]["max_length"]
        return cls(model, og.Tokenizer(model), path, threads, min(context_length or max_length, max_length))

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(np.asarray(ids, dtype=np.int32))

    def _generator(self, prompt_ids: Sequence[int], max_length: int, **search: Any) -> Any:
        import onnxruntime_genai as og

        if max_length > self.max_length:
            raise ValueError(f"{max_length} tokens exceed the artifact's context "
                             f"(search.max_length {self.max_length})")
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, **search)
        generator = og.Generator(self.model, params)
        generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
        return generator

    def stream_ids(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[int]:
        search: dict[str, Any] = {"do_sample": not options.greedy}
        if not options.greedy:
            search.update(temperature=options.temperature, top_p=options.top_p,
                          top_k=options.top_k or 0, random_seed=options.seed or 0)
        limit = min(len(prompt_ids) + options.max_new_tokens, self.max_length)
        generator = self._generator(prompt_ids, limit, **search)
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self.eos_ids:
                return
            yield token

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        generator = self._generator(token_ids, len(token_ids))
        return np.asarray(generator.get_output("logits"), dtype=np.float32)[0]

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu", "threads": self.threads,
                "max_length": self.max_length, "context_length": self.max_length, "path": str(self.path),
                **process_memory()}
