"""`python -m edgeqwen.engines.olive_launch run --config FILE`: Olive's CLI, with the LM head's
calibration outputs not kept.

Olive's layer-wise GPTQ (olive-ai 0.13) runs the LM head over every calibration sample with
`return_output=True` and then drops the result, so the logits of all samples are in memory
at once: samples x seq_len x vocab x 4 bytes, 13.8 GB for 89 x 256 tokens of Qwen's
151,936-token vocabulary (measured: the Olive child peaked at 18.6 GB instead of ≈5 GB).
GPTQ only needs the head's inputs, which its forward hook collects either way, so the head
is run without keeping what it returns. Every other call is Olive's own.
"""

from __future__ import annotations

import sys
from typing import Any


def run_layer_keeping_no_head_outputs(run_layer: Any) -> Any:
    """Wrap Olive's `quant_utils.run_layer`: a bare Linear (only the LM head reaches it as one;
    decoder layers and norms are their own modules) runs without its outputs kept."""
    import torch

    def wrapped(layer: Any, hidden_states: Any, layer_args: Any = None, layer_kwargs: Any = None,
                return_output: bool = False) -> Any:
        if isinstance(layer, torch.nn.Linear):
            return_output = False
        return run_layer(layer, hidden_states, layer_args, layer_kwargs, return_output)

    return wrapped


def main(argv: list[str]) -> None:
    from olive.cli.launcher import main as olive_main
    from olive.passes.pytorch import quant_utils

    quant_utils.run_layer = run_layer_keeping_no_head_outputs(quant_utils.run_layer)
    olive_main(argv, called_as_console_script=False)


if __name__ == "__main__":
    main(sys.argv[1:])
