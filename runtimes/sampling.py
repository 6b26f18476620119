"""Choosing the next token from logits (greedy, temperature, top-k, top-p) for backends whose
library hands out logits rather than sampling itself (transformers, ExecuTorch, QNN), and the
generation loop of those that run the model one call at a time."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from runtimes.base import GenerationOptions


def pick_token(logits: Any, options: GenerationOptions, generator: Any) -> int:
    """A token id from a 1-D torch tensor of logits; `generator` is a seeded torch.Generator."""
    import torch

    if options.greedy:
        return int(torch.argmax(logits))
    logits = logits / options.temperature
    if options.top_k:
        kth = torch.topk(logits, min(options.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < options.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def decode_tokens(prompt_ids: Sequence[int], options: GenerationOptions, *, context_length: int,
                  eos_ids: Collection[int], prefill: Callable[[Sequence[int]], Any],
                  step: Callable[[int, int], Any]) -> Iterator[int]:
    """The generation loop of backends that run the model call by call: `prefill(prompt)` gives
    the last position's logits (1-D torch tensor or numpy array), then pick a token, stop before
    an end-of-turn id, and feed it back with `step(token, position)` until max_new_tokens or the
    context runs out."""
    import torch

    room = context_length - len(prompt_ids)
    if room < 1 or not prompt_ids:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context holds {context_length}")
    generator = torch.Generator().manual_seed(options.seed if options.seed is not None else 0)
    logits = prefill(prompt_ids)
    limit = min(options.max_new_tokens, room)
    for n in range(limit):
        token = pick_token(torch.as_tensor(logits).float(), options, generator)
        if token in eos_ids:
            return
        yield token
        if n + 1 < limit:
            logits = step(token, len(prompt_ids) + n)
