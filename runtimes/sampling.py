"""Choosing the next token from logits (greedy, temperature, top-k, top-p) for backends whose
library hands out logits rather than sampling itself (transformers, ExecuTorch)."""

from __future__ import annotations

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
