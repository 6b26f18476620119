"""The QNN build child: `python -m edgeqwen.engines.qnn_export CONFIG.json`.

checkpoint --torch.onnx (TorchScript exporter), static shapes--> prefill + decode fp32 graphs
--onnxruntime basic optimizations (constant folding), symbolic shape inference-->
--onnxruntime.quantization, QNN's QDQ config, calibrated on the given token windows-->
QDQ graphs (16-bit activations, 8-bit per-channel weights), weights stored once for both
--onnxruntime's compile API on the QNN HTP backend--> EP-context models + QNN context binaries

Why not the ONNX Runtime GenAI model builder: its graphs use GroupQueryAttention and
SkipSimplifiedLayerNormalization, which the HTP backend does not run. Here the model's own
layers (eager attention) are traced with the KV cache as inputs and outputs (the layout of
`edgeqwen.qnn_kv`), RMSNorm exported as SimplifiedLayerNormalization (which QNN runs as its
RmsNorm op) and RoPE's cos/sin as tables gathered by position, so every node is one the HTP
runs. A child process, so the export's peak memory ends with it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeqwen.qnn_kv import GraphShape, KVCache, input_names, output_names, session_runner

GRAPHS = ("prefill", "decode")
WEIGHTS_FILE = "model.data"
OPSET = 21  # 16-bit QDQ needs opset 21
IR_VERSION = 10  # what onnxruntime 1.2x-1.3x and the plugin load
ALIGN = 4096  # external data offsets on page boundaries, so onnxruntime can map them


def log(message: str) -> None:
    print(f"[qnn {time.strftime('%H:%M:%S')}] {message}", flush=True)


def export_graph(model: Any, shape: GraphShape, chunk: int, path: Path) -> None:
    """Trace the model as one static-shape graph taking `chunk` new tokens."""
    import torch

    class RMSNorm(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
            return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

        @staticmethod
        def symbolic(g: Any, x: Any, weight: Any, eps: float) -> Any:
            return g.op("SimplifiedLayerNormalization", x, weight, axis_i=-1, epsilon_f=eps)

    def linear_2d(m: torch.nn.Linear) -> Any:
        # A 2-D input with a bias traces to Gemm, which QNN quantizes per output channel; the
        # MatMul a Linear layer traces to otherwise gets one scale per tensor (QNN has no
        # per-channel MatMul), which cost the 0.5B sample +25% perplexity at 8 bits.
        bias = m.bias if m.bias is not None else torch.zeros(m.out_features)
        return lambda x: torch.nn.functional.linear(x.reshape(-1, x.shape[-1]), m.weight, bias).reshape(
            *x.shape[:-1], m.out_features)

    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = (lambda m: lambda x: RMSNorm.apply(x, m.weight, m.variance_epsilon))(module)
        elif isinstance(module, torch.nn.Linear):
            module.forward = linear_2d(module)

    class Past:
        """What the model's attention layers call `update` on: returns past + new, keeps new."""

        def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
            self.past, self.new = past, {}

        def update(self, key: torch.Tensor, value: torch.Tensor, layer: int, *args: Any, **kw: Any) -> Any:
            self.new[layer] = (key, value)
            past_key, past_value = self.past[layer]
            return torch.cat([past_key, key], 2), torch.cat([past_value, value], 2)

        def get_seq_length(self, layer: int = 0) -> int:
            return 0

    class Static(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule, so its weights export as initializers
            positions = torch.arange(shape.context + chunk)[None]
            cos, sin = model.model.rotary_emb(torch.zeros(1, 1, 1), positions)
            self.register_buffer("cos", cos[0].contiguous())
            self.register_buffer("sin", sin[0].contiguous())

        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                    *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
            cache = Past([(past[2 * i], past[2 * i + 1]) for i in range(shape.layers)])
            body = self.model.model
            hidden = body.embed_tokens(input_ids)
            rope = (self.cos[position_ids], self.sin[position_ids])
            for layer in body.layers:
                hidden = layer(hidden, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=cache, position_embeddings=rope)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            outputs = [self.model.lm_head(body.norm(hidden))]
            for i in range(shape.layers):
                outputs += cache.new[i]
            return tuple(outputs)

    kv = (1, shape.kv_heads, shape.context, shape.head_dim)
    args = (torch.zeros(1, chunk, dtype=torch.int64), torch.arange(chunk)[None],
            torch.zeros(1, 1, chunk, shape.context + chunk),
            *[torch.zeros(kv) for _ in range(2 * shape.layers)])
    with torch.no_grad():
        torch.onnx.export(Static(), args, str(path), input_names=input_names(shape.layers),
                          output_names=output_names(shape.layers), opset_version=17, dynamo=False)


def tidy(src: Path, dst: Path) -> None:
    """Fold the traced shape arithmetic (static shapes make it constant), raise the opset for
    16-bit QDQ and record every tensor's type (the quantizer only calibrates typed tensors)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     dst.name + ".data")
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(dst), load_external_data=False)
    _untie_lookup(model)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = OPSET
    model = SymbolicShapeInference.infer_shapes(model, auto_merge=False)
    onnx.save(model, str(dst))


def _untie_lookup(model: Any) -> None:
    """Give a Gemm that shares its weight with a Gather (tied embedding / LM head) its own
    initializer, pointing at the same bytes: the quantizer would quantize the one tensor once,
    per output channel for the Gemm, and the HTP backend refuses such a token lookup."""
    import onnx

    initializers = {t.name: t for t in model.graph.initializer}
    looked_up = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    for node in model.graph.node:
        if node.op_type == "Gemm" and node.input[1] in looked_up and node.input[1] in initializers:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[1]])
            copy.name = f"{node.input[1]}.{node.name.strip('/').replace('/', '.')}"
            model.graph.initializer.append(copy)
            node.input[1] = copy.name


class Feeds:
    """onnxruntime's CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def calibration_feeds(prefill: Path, shape: GraphShape,
                      windows: list[list[int]]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Run the fp32 prefill graph over each window, chunk by chunk, and keep each call's real
    inputs (with the KV cache the window built up so far); the decode graph gets the first
    token of each chunk at the same state."""
    import onnxruntime as ort

    run = session_runner(ort.InferenceSession(str(prefill), providers=["CPUExecutionProvider"]))
    chunk, found = shape.prefill_chunk, {"prefill": [], "decode": []}
    for ids in windows:
        cache = KVCache(shape)
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            for graph, size in (("prefill", chunk), ("decode", 1)):
                feeds = cache.feeds(part[:size], size)
                found[graph].append({k: v.copy() for k, v in feeds.items()})
            cache.step(run, part, chunk)
    return found


def attention_cores(model: Any) -> list[str]:
    """The nodes from each attention's score MatMul (Q·Kᵀ) through scale, mask and Softmax to
    the MatMul with V. On the HTP backend these ran in 16-bit integers lose far more than the
    quantization itself (sample, first 64 multilingual tokens: KL 0.43 on the HTP vs 0.006
    for the same QDQ graph simulated on the CPU); left as float they run in fp16 on the HTP
    (KL 0.014), still with no CPU fallback."""
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names: list[str] = []
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        names.append(softmax.name)
        node = producer.get(softmax.input[0])
        while node is not None and node.op_type in ("Add", "Mul", "Div"):
            names.append(node.name)
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "MatMul":
            names.append(node.name)
        names += [c.name for c in consumers.get(softmax.output[0], []) if c.op_type == "MatMul"]
    return names


def quantize_graph(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], weight_bits: int) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    weights = {8: QuantType.QUInt8, 4: QuantType.QInt4}[weight_bits]
    float_nodes = attention_cores(onnx.load(str(src), load_external_data=False))
    config = get_qnn_qdq_config(str(src), Feeds(feeds), activation_type=QuantType.QUInt16,
                                weight_type=weights, per_channel=True, nodes_to_exclude=float_nodes)
    config.use_external_data_format = True
    quantize(str(src), str(dst), config)
    model = onnx.load(str(dst), load_external_data=False)
    model.ir_version = min(model.ir_version, IR_VERSION)
    onnx.save(model, str(dst))


def save_shared(sources: dict[str, Path], out: Path) -> dict[str, int]:
    """Write the graphs into `out` with every large initializer in one data file, stored once
    however many graphs use it (the prefill and decode graphs share their weights). Returns the
    bytes each graph references."""
    import onnx
    from onnx import numpy_helper

    stored: dict[str, tuple[int, int]] = {}
    used: dict[str, int] = {}
    with (out / WEIGHTS_FILE).open("wb") as data:
        for name, src in sources.items():
            model = onnx.load(str(src))  # external data loaded into memory
            used[name] = 0
            for tensor in model.graph.initializer:
                # Typed fields (int4 zero points come in int32_data) to ONNX's raw layout: packed
                # nibbles for 4-bit types, which `ndarray.tobytes()` would not give.
                raw = tensor.raw_data or numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data
                if len(raw) < 1024:
                    continue
                key = hashlib.sha256(raw + repr((tensor.data_type, list(tensor.dims))).encode()).hexdigest()
                if key not in stored:
                    offset = -data.tell() % ALIGN + data.tell()
                    data.seek(offset)
                    data.write(raw)
                    stored[key] = (offset, len(raw))
                offset, length = stored[key]
                for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                              "uint64_data"):
                    tensor.ClearField(field)
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v
                used[name] += length
            onnx.save(model, str(out / f"{name}.onnx"))
    return used


def compile_context(out: Path, provider_options: dict[str, str]) -> None:
    """A QNN context binary per graph (onnxruntime's compile API on the HTP backend): what a
    Snapdragon app loads without compiling on the device. Each binary holds its own copy of
    the weights: QNN's weight sharing across graphs (`enable_htp_weight_sharing`) compiles
    here, but the x86 HTP backend cannot load such a context (QNN_COMMON_ERROR_NOT_SUPPORTED),
    so nothing built that way could be validated."""
    import onnxruntime as ort

    from edgeqwen import qnn_ep

    for name in GRAPHS:
        compiler = ort.ModelCompiler(qnn_ep.session_options(provider_options), str(out / f"{name}.onnx"),
                                     embed_compiled_data_into_model=False)
        compiler.compile_to_file(str(out / f"{name}.qnn.onnx"))


def fp32_graph(source: str, shape: GraphShape, name: str, work: Path) -> Path:
    """Trace one graph from the checkpoint and tidy it; returns the fp32 graph. The model is
    loaded per graph so it is not held in memory while the other graph is quantized."""
    import torch
    from transformers import AutoModelForCausalLM

    chunk = shape.prefill_chunk if name == "prefill" else 1
    log(f"exporting the {name} graph ({chunk} new tokens, {shape.context} cached)")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    # The TorchScript exporter writes a >2 GB model as one file per tensor: in its own folder.
    traced, fp32 = work / name / "traced" / "model.onnx", work / name / "fp32.onnx"
    traced.parent.mkdir(parents=True, exist_ok=True)
    export_graph(model, shape, chunk, traced)
    del model
    tidy(traced, fp32)
    shutil.rmtree(traced.parent)
    return fp32


def remove_graph(path: Path) -> None:
    """Delete a graph and its external data (tidy writes it as `<name>.data`)."""
    for file in (path, path.with_name(path.name + ".data")):
        file.unlink(missing_ok=True)


def build(config: dict[str, Any]) -> None:
    out, work = Path(config["output"]), Path(config["work"])
    shape = GraphShape(**config["shape"])
    # One graph's fp32 weights on disk at a time (plus the quantizer's working copy, which
    # tempfile puts in the work folder): each fp32 graph is deleted once its QDQ copy exists.
    work.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(work)
    qdq: dict[str, Path] = {}
    feeds: dict[str, list[dict[str, np.ndarray]]] = {}
    for name in GRAPHS:
        fp32 = fp32_graph(config["source"], shape, name, work)
        if name == "prefill":  # comes first: its fp32 graph calibrates both graphs
            log(f"calibrating on {len(config['windows'])} windows")
            feeds = calibration_feeds(fp32, shape, config["windows"])
        log(f"quantizing the {name} graph ({len(feeds[name])} calibration calls)")
        qdq[name] = work / name / "qdq.onnx"
        quantize_graph(fp32, qdq[name], feeds.pop(name), config["weight_bits"])
        remove_graph(fp32)
    out.mkdir(parents=True, exist_ok=True)
    used = save_shared(qdq, out)
    for path in qdq.values():
        shutil.rmtree(path.parent)
    log("weights referenced: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in used.items()))
    if config["context_binary"]:
        log("compiling QNN context binaries on the HTP backend")
        compile_context(out, config["provider_options"])
    log("done")


if __name__ == "__main__":
    build(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
