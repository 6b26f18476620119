"""Which MatMuls of a Qwen model suffer most from 4-bit weights: a per-group sensitivity sweep.

    python benchmarks/int4_sensitivity.py [--model sample] [--tokens 1024] [--block 32] [--threads 2]

For every group of weights (each layer's attention q/k/v, o_proj, gate/up, down_proj, and the
LM head) the weights of that group alone are rounded to 4 bits the way ONNX Runtime's
MatMulNBits RTN stores them (symmetric, one fp scale per block of `--block` input values)
while everything else stays fp32; the mean KL(fp32 || that model) over the shipped
validation texts (`--tokens` per text) measures the group's sensitivity. Groups sorted by KL
tell which MatMuls a mixed-precision INT4 recipe should keep in 8 bits (issue #7).

Writes OUT/int4_sensitivity.{md,json} and prints the table. A few minutes for the 0.5B
sample on 2 cores (one forward pass per group).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from edgeqwen import sources
from edgeqwen.validation import default_texts

GROUPS = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "o_proj": ("self_attn.o_proj",), "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
          "down_proj": ("mlp.down_proj",)}


def rtn_int4(weight: torch.Tensor, block: int) -> torch.Tensor:
    """Symmetric 4-bit round-to-nearest with a scale per `block` inputs (nn.Linear: [out, in])."""
    out_features, in_features = weight.shape
    pad = (-in_features) % block
    w = torch.nn.functional.pad(weight, (0, pad)).reshape(out_features, -1, block)
    scale = w.abs().amax(dim=-1, keepdim=True) / 7.0
    scale[scale == 0] = 1.0
    q = torch.clamp(torch.round(w / scale), -8, 7) * scale
    return q.reshape(out_features, -1)[:, :in_features]


def mean_kl(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> float:
    total, count = 0.0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        p = torch.log_softmax(ref, -1)
        q = torch.log_softmax(cand, -1)
        total += float((p.exp() * (p - q)).sum(-1).sum())
        count += ref.shape[0]
    return total / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sample")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per validation text")
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = sources.resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    # The ONNX builder keeps the embedding as an fp32 Gather and quantizes a separate LM head:
    # untie them so rounding the head leaves the embedding alone.
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    batches = [torch.tensor([tokenizer.encode(text)[: args.tokens]]) for text in default_texts().values()]

    layers = model.model.layers
    with torch.no_grad():
        outputs = [model(ids, output_hidden_states=True) for ids in batches]
    reference = [o.logits[0, :-1] for o in outputs]
    # hidden_states[i] is the input of layer i: a group in layer i only needs layers i.. rerun.
    inputs = [[h.detach() for h in o.hidden_states[:-1]] for o in outputs]
    del outputs

    @torch.no_grad()
    def logits_from(first: int) -> list[torch.Tensor]:
        model.model.layers = torch.nn.ModuleList(layers[first:])
        try:
            return [model(inputs_embeds=h[first]).logits[0, :-1] for h in inputs]
        finally:
            model.model.layers = layers

    targets: dict[str, tuple[int, list[torch.nn.Linear]]] = {}
    for i, layer in enumerate(layers):
        for group, names in GROUPS.items():
            targets[f"layer {i:02d} {group}"] = (i, [layer.get_submodule(n) for n in names])
    targets["lm_head"] = (len(layers) - 1, [model.lm_head])

    results = {}
    start = time.time()
    for name, (first, modules) in targets.items():
        saved = [m.weight.data.clone() for m in modules]
        with torch.no_grad():
            for m in modules:
                m.weight.data = rtn_int4(m.weight.data, args.block)
        results[name] = mean_kl(reference, logits_from(first))
        for m, w in zip(modules, saved, strict=True):
            m.weight.data = w
        print(f"{name:24s} KL {results[name]:.5f}", flush=True)
    ranked = sorted(results.items(), key=lambda kv: -kv[1])
    lines = ["| rank | group | KL (only this group int4) |", "|---|---|---|"]
    lines += [f"| {r} | {n} | {kl:.5f} |" for r, (n, kl) in enumerate(ranked, 1)]
    by_kind = {g: sum(results[f"layer {i:02d} {g}"] for i in range(len(layers))) for g in GROUPS}
    md = (f"# INT4 sensitivity ({args.model}, RTN sym block {args.block}, {args.tokens} tokens per text)\n\n"
          + "\n".join(lines) + "\n\nSum over layers by kind: "
          + ", ".join(f"{g} {v:.4f}" for g, v in by_kind.items()) + f"; lm_head {results['lm_head']:.4f}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int4_sensitivity.md").write_text(md, encoding="utf-8")
    (args.out / "int4_sensitivity.json").write_text(json.dumps(
        {"model": args.model, "block": args.block, "tokens": args.tokens,
         "seconds": round(time.time() - start), "kl": results}, indent=2) + "\n", encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
