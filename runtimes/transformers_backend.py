"""The reference backend: the Hugging Face checkpoint run by transformers in fp32 on CPU.

Validation compares every artifact against this backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import GenerationOptions, Message, Runtime, default_threads, process_memory
from runtimes.sampling import pick_token


class TransformersRuntime(Runtime):
    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, path: Path, threads: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.threads = threads
        self.chat_template = tokenizer.chat_template  # rendered by transformers itself (render_chat)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None,
             context_length: int | None = None) -> TransformersRuntime:
        # The reference allocates its cache as it goes: context_length needs no sizing here.
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from edgeqwen.checkpoint import check_checkpoint

        path = Path(path)
        check_checkpoint(path)  # refuses remote code and pickles before transformers sees it
        threads = default_threads(threads)
        torch.set_num_threads(threads)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()
        return cls(model, tokenizer, path, threads)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    **template_kwargs: Any) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )

    def stream_ids(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[int]:
        import torch

        generator = torch.Generator().manual_seed(options.seed if options.seed is not None else 0)
        inputs = torch.tensor([list(prompt_ids)], dtype=torch.long)
        past = None
        with torch.inference_mode():
            for _ in range(options.max_new_tokens):
                out = self.model(input_ids=inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = pick_token(out.logits[0, -1].float(), options, generator)
                if token in self.eos_ids:
                    return
                yield token
                inputs = torch.tensor([[token]], dtype=torch.long)

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([list(token_ids)], dtype=torch.long))
        return out.logits[0].float().numpy()

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu", "dtype": "float32", "threads": self.threads,
                "context_length": self.model.config.max_position_embeddings, "path": str(self.path),
                **process_memory()}

