"""The static KV cache that edgeqwen's QNN graphs are built around, kept by the host.

QNN's HTP backend compiles graphs with fixed shapes, so each graph takes a fixed number of
new tokens (`chunk`: the prefill graph takes many, the decode graph one), the past keys and
values of every layer as inputs of a fixed length (`context`) and an additive attention mask
that hides the past slots not filled yet. It returns the logits and the new tokens' keys and
values, which the host writes into its buffers. The build's calibration and the `qnn`
runtime both drive the graphs through `KVCache`, so they feed them the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# The artifact's description of its graphs (GraphShape, mask value, files): written by the
# engine, read by the runtime.
CONFIG_FILE = "qnn_config.json"
# What the mask adds to the scores of hidden positions. Not -inf: the mask and the masked
# scores are quantized to 16 bits, and a huge value would spend the whole 16-bit range on it
# (exp(-100) is 4e-44: nothing leaks through the softmax).
MASK_VALUE = -100.0

Run = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


@dataclass(frozen=True)
class GraphShape:
    layers: int
    kv_heads: int
    head_dim: int
    context: int  # KV cache slots: prompt + reply tokens the graphs can hold
    prefill_chunk: int  # new tokens per prefill call (the decode graph takes 1)
    vocab: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def input_names(layers: int) -> list[str]:
    return ["input_ids", "position_ids", "attention_mask"] + [
        f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def output_names(layers: int) -> list[str]:
    return ["logits"] + [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


class ContextFull(ValueError):
    """More tokens than the graphs' KV cache holds."""


class KVCache:
    """The past keys/values of every layer and how many slots are filled."""

    def __init__(self, shape: GraphShape) -> None:
        self.shape = shape
        size = (shape.layers, 1, shape.kv_heads, shape.context, shape.head_dim)
        self.keys = np.zeros(size, np.float32)
        self.values = np.zeros(size, np.float32)
        self.length = 0

    def reset(self) -> None:
        self.length = 0  # stale slots stay masked until they are written again

    def feeds(self, ids: Sequence[int], chunk: int) -> dict[str, np.ndarray]:
        """Inputs for a graph that takes `chunk` new tokens: `ids` padded to that length."""
        n, real, context = self.length, len(ids), self.shape.context
        if not 0 < real <= chunk:
            raise ValueError(f"a call takes 1 to {chunk} tokens, got {real}")
        if n + real > context:
            raise ContextFull(f"{n + real} tokens do not fit the {context}-token KV cache of the QNN graphs")
        tokens = np.zeros((1, chunk), np.int64)
        tokens[0, :real] = ids
        mask = np.full((1, 1, chunk, context + chunk), MASK_VALUE, np.float32)
        mask[..., :n] = 0.0  # every new token sees the filled past
        mask[0, 0, :, context:] = np.where(np.tril(np.ones((chunk, chunk), bool)), 0.0, MASK_VALUE)
        feeds = {"input_ids": tokens, "position_ids": np.arange(n, n + chunk, dtype=np.int64)[None],
                 "attention_mask": mask}
        for i in range(self.shape.layers):
            feeds[f"past_key_{i}"] = self.keys[i]
            feeds[f"past_value_{i}"] = self.values[i]
        return feeds

    def append(self, outputs: Sequence[np.ndarray], real: int) -> None:
        """Write the first `real` new tokens' keys and values (graph outputs 1..) into the cache."""
        n = self.length
        for i in range(self.shape.layers):
            self.keys[i][:, :, n:n + real] = outputs[1 + 2 * i][:, :, :real]
            self.values[i][:, :, n:n + real] = outputs[2 + 2 * i][:, :, :real]
        self.length = n + real

    def step(self, run: Run, ids: Sequence[int], chunk: int) -> np.ndarray:
        """Feed `ids` (at most `chunk`) through a graph: their logits [len(ids), vocab]."""
        outputs = run(self.feeds(ids, chunk))
        self.append(outputs, len(ids))
        return np.asarray(outputs[0][0, :len(ids)], np.float32)

    def prefill(self, run: Run, ids: Sequence[int], chunk: int) -> np.ndarray:
        """Feed `ids` in `chunk`-token calls: logits at every position [len(ids), vocab]."""
        rows = [self.step(run, ids[i:i + chunk], chunk) for i in range(0, len(ids), chunk)]
        return np.concatenate(rows) if rows else np.zeros((0, self.shape.vocab), np.float32)


def session_runner(session: Any) -> Run:
    """An onnxruntime session as a `Run`."""
    return lambda feeds: session.run(None, feeds)
