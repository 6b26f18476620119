"""Where an INT4 ONNX artifact's remaining loss sits: swap groups of its quantized MatMuls for
the reference's float weights, one group at a time, and measure on the per-language text.

    python benchmarks/int4_headroom.py ARTIFACT [--group NAME=PATTERN[,PATTERN ...] ...]
                                       [--out benchmarks/results] [--stem int4_headroom] [--threads 2]

A group is a list of fnmatch patterns over the builder's node names, with `{a-b}` for a range
of layers (`lm_head=/lm_head/*`, `mlp1-6=/model/layers.{1-6}/mlp/*`). For each group the
artifact is copied (its weights file hard-linked) with those MatMulNBits replaced by fp32
MatMuls of the checkpoint it was built from, then validated on benchmarks/texts/languages.txt
like benchmarks/languages.py. The drop in KL is the most that keeping the group at a higher
precision can buy (int8 is close to fp32), so it ranks where extra bytes pay on this very
artifact, calibration included - unlike int4_sensitivity.py, which quantizes one group at a
time with plain RTN. Writes OUT/STEM.{md,json}. ≈3 minutes per group for the 0.5B on 2 cores.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from languages import LIMIT_PCT, TEXT
from languages import measure as measure_languages

from edgeqwen.artifacts import load_manifest
from edgeqwen.validation import open_reference

# the groups measured on the previous default (README, "Why also the MLPs of layers 1–6")
DEFAULT_GROUPS = {
    "lm_head": ["/lm_head/*"],
    "mlp1-3": ["/model/layers.{1-3}/mlp/*"],
    "mlp4-6": ["/model/layers.{4-6}/mlp/*"],
    "mlp1-6": ["/model/layers.{1-6}/mlp/*"],
    "mlp7-12": ["/model/layers.{7-12}/mlp/*"],
    "mlp13-18": ["/model/layers.{13-18}/mlp/*"],
    "mlp1-18": ["/model/layers.{1-18}/mlp/*"],
}
WEIGHTS = "model.onnx.data"


def expand(pattern: str) -> list[str]:
    """`/model/layers.{1-3}/mlp/*` -> one pattern per layer."""
    found = re.search(r"\{(\d+)-(\d+)\}", pattern)
    if not found:
        return [pattern]
    first, last = int(found.group(1)), int(found.group(2))
    return [pattern.replace(found.group(0), str(i)) for i in range(first, last + 1)]


def reference_weight(weights: dict[str, np.ndarray], node_name: str) -> np.ndarray:
    """The float weight (out x in) behind a builder MatMul node, from the Hugging Face checkpoint."""
    if node_name.startswith("/lm_head/"):
        return weights.get("lm_head.weight", weights["model.embed_tokens.weight"])  # tied embeddings
    parts = node_name.split("/")  # /model/layers.N/{attn,mlp}/<proj>/MatMulNBits
    base, proj = f"model.{parts[2]}", parts[4]
    if proj == "qkv_proj":
        return np.concatenate([weights[f"{base}.self_attn.{p}_proj.weight"] for p in "qkv"])
    if proj == "o_proj":
        return weights[f"{base}.self_attn.o_proj.weight"]
    return weights[f"{base}.mlp.{proj}.weight"]


def swap_to_float(artifact: Path, out: Path, patterns: list[str], weights: dict[str, np.ndarray]) -> int:
    """Copy `artifact` to `out` with the MatMulNBits nodes `patterns` select as fp32 MatMuls;
    return how many weights were swapped."""
    for item in artifact.iterdir():
        if item.name == WEIGHTS:
            try:  # onnxruntime refuses external data outside the model's folder (so no symlink)
                os.link(item, out / item.name)
            except OSError:
                shutil.copy(item, out / item.name)
        elif item.is_file() and item.name != "model.onnx":
            shutil.copy(item, out / item.name)
    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    swapped = 0
    with open(out / "float.data", "wb") as data:
        for i, node in enumerate(model.graph.node):
            if node.op_type != "MatMulNBits" or not any(fnmatch.fnmatchcase(node.name, p) for p in patterns):
                continue
            weight = np.ascontiguousarray(reference_weight(weights, node.name).T.astype(np.float32))
            tensor = onnx.TensorProto(name=node.name.strip("/").replace("/", "_") + "_float",
                                      data_type=onnx.TensorProto.FLOAT, dims=weight.shape,
                                      data_location=onnx.TensorProto.EXTERNAL)
            offset = data.tell()
            data.write(weight.tobytes())
            for key, value in (("location", "float.data"), ("offset", offset), ("length", weight.nbytes)):
                tensor.external_data.add(key=key, value=str(value))
            model.graph.initializer.append(tensor)
            model.graph.node[i].CopyFrom(onnx.helper.make_node(
                "MatMul", [node.input[0], tensor.name], list(node.output), name=node.name + "_float"))
            swapped += weight.size
    if not swapped:
        raise SystemExit(f"no MatMulNBits node of {artifact} matches {patterns}")
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(out / "model.onnx"))
    return swapped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--group", action="append", default=[], metavar="NAME=PATTERN[,PATTERN]",
                        help="a group of MatMuls to swap (repeatable; default: the README's groups)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--stem", default="int4_headroom")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    groups = dict(g.split("=", 1) for g in args.group)
    groups = {k: v.split(",") for k, v in groups.items()} or DEFAULT_GROUPS

    checkpoint = Path(load_manifest(args.artifact).source.path)
    reference = open_reference(None, str(checkpoint), threads=args.threads)  # opened once for all groups
    # the reference already holds the checkpoint's weights in fp32: numpy views of them, no second copy
    weights = {name: t.detach().numpy() for name, t in reference[0].model.state_dict().items()}

    def measure(path: Path) -> dict:
        return measure_languages(path, threads=args.threads, reference_runtime=reference)

    results = {"(as built)": {"swapped_weights": 0, **measure(args.artifact)}}
    for name, patterns in groups.items():
        with tempfile.TemporaryDirectory(dir=args.artifact.parent, prefix=".headroom-") as tmp:
            swapped = swap_to_float(args.artifact, Path(tmp), [p for pat in patterns for p in expand(pat)],
                                    weights)
            results[name] = {"patterns": patterns, "swapped_weights": swapped, **measure(Path(tmp))}
        print(f"{name}: {results[name]['overall']['kl']:.4f}", flush=True)

    lines = [f"# INT4 headroom: `{args.artifact.name}` with groups swapped for fp32 ({TEXT.name})", "",
             "ppl Δ % ± standard error and mean KL against the checkpoint the artifact was built from; "
             f"languages above +{LIMIT_PCT:g}% by point estimate.", "",
             "| fp32 group | weights | ppl Δ % | KL | KL drop | languages > +5% | worst three |",
             "|---|---|---|---|---|---|---|"]
    base_kl = results["(as built)"]["overall"]["kl"]
    for name, r in results.items():
        o, langs = r["overall"], r["languages"]
        worst = sorted(langs, key=lambda k: -langs[k]["ppl_increase_pct"])[:3]
        lines.append(f"| {name} | {r['swapped_weights'] / 1e6:.0f}M | {o['ppl_increase_pct']:+.1f} ± "
                     f"{o['ppl_increase_se_pct']:.1f} | {o['kl']:.3f} | {base_kl - o['kl']:.3f} "
                     f"| {len(r['over_limit_point_estimate'])} | "
                     + ", ".join(f"{k} {langs[k]['ppl_increase_pct']:+.1f}" for k in worst) + " |")
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.md").write_text(md, encoding="utf-8")
    (args.out / f"{args.stem}.json").write_text(
        json.dumps({"artifact": args.artifact.name, "text": TEXT.name, "groups": results}, indent=2,
                   ensure_ascii=False) + "\n", encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
