"""OpenVINO IR artifacts run by openvino-genai's LLMPipeline, as an app embedding it would.

Generation goes through `LLMPipeline` (its tokenizer, sampler and KV cache); logits for
validation come from the same IR compiled with OpenVINO's core API on the same device with
the same settings, since the pipeline does not hand them out.

Device: `EDGEQWEN_OPENVINO_DEVICE` if set (CPU, GPU, NPU), else the NPU when the artifact
targets `npu-openvino` and this machine has one, else the CPU. On an NPU the recipe's
`runtime.max_prompt_len` / `min_response_len` become the pipeline's static shapes.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeqwen.errors import ArtifactError
from runtimes.base import GenerationOptions, Runtime, artifact_recipe, default_threads, process_memory

DEVICE_ENV = "EDGEQWEN_OPENVINO_DEVICE"
MODEL_FILE = "openvino_model.xml"
REQUIRED = (MODEL_FILE, "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml")
DEFAULT_CONTEXT = 4096
PIPELINE_ONLY = ("ATTENTION_BACKEND",)  # read by openvino-genai, refused by the plugins
_END = object()  # queue sentinel: generation finished


class OpenVINORuntime(Runtime):
    name = "openvino"

    def __init__(self, pipeline: Any, path: Path, device: str, properties: dict[str, Any],
                 threads: int, context_length: int, trained_context: int) -> None:
        self.pipeline = pipeline
        self.tokenizer = pipeline.get_tokenizer()
        self.path = path
        self.device = device
        self.properties = properties
        self.threads = threads
        self.context_length = context_length
        self.trained_context = trained_context
        config = pipeline.get_generation_config()
        self.eos_ids = frozenset({int(config.eos_token_id), *map(int, config.stop_token_ids)} - {-1})
        template = path / "chat_template.jinja"
        self.chat_template = template.read_text(encoding="utf-8") if template.is_file() else None
        self._scorer: Any = None  # a compiled model that returns logits of every position

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None,
             context_length: int | None = None) -> OpenVINORuntime:
        import openvino_genai

        folder = Path(path)
        folder = folder.parent if folder.is_file() else folder
        missing = [name for name in REQUIRED if not (folder / name).is_file()]
        if missing:
            raise ArtifactError(f"{folder} is not an OpenVINO LLM folder: {', '.join(missing)} missing",
                                hint="build one with an openvino-* recipe (tokenizer models come from "
                                "openvino-tokenizers)")
        recipe = artifact_recipe(folder)
        settings = recipe.get("runtime") or {}
        threads = default_threads(threads, settings.get("threads"))
        device = choose_device(recipe)
        properties = device_properties(device, threads, settings)
        try:
            pipeline = openvino_genai.LLMPipeline(str(folder), device, **properties)
        except RuntimeError as err:
            raise ArtifactError(f"OpenVINO cannot load {folder} on {device}: {_first_line(err)}",
                                hint="`edgeqwen verify ART` tells which file changed; rebuild the "
                                "artifact") from None
        trained = _trained_context(folder)
        context = min(context_length or recipe.get("context_length") or DEFAULT_CONTEXT, trained)
        return cls(pipeline, folder, device, properties, threads, context, trained)

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def stream_ids(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[int]:
        import openvino as ov
        import openvino_genai

        room = self.context_length - len(prompt_ids)
        if room < 1 or not prompt_ids:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context holds "
                             f"{self.context_length}")
        config = self.pipeline.get_generation_config()
        config.max_new_tokens = min(options.max_new_tokens, room)
        config.do_sample = not options.greedy
        if not options.greedy:
            config.temperature, config.top_p, config.top_k = options.temperature, options.top_p, options.top_k
            config.rng_seed = options.seed or 0
        ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        tokens: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()

        class Streamer(openvino_genai.StreamerBase):
            def write(self, token: Any) -> Any:
                for t in token if isinstance(token, list) else [token]:
                    tokens.put(int(t))
                return openvino_genai.StreamingStatus.STOP if stop.is_set() else \
                    openvino_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        def run() -> None:
            try:
                self.pipeline.generate(inputs, config, Streamer())
            except Exception as err:  # handed to the consumer, raised there
                tokens.put(err)
            tokens.put(_END)

        # The pipeline generates in a thread so tokens reach the caller as they come; a caller
        # that stops early (a stop string) makes the streamer ask the pipeline to stop.
        worker = threading.Thread(target=run, name="openvino-generate", daemon=True)
        worker.start()
        try:
            while (item := tokens.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                if item in self.eos_ids:
                    break
                yield item
        finally:
            stop.set()
            worker.join()

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        # Scoring allocates its cache per call, so only the trained context bounds it.
        if len(token_ids) > self.trained_context:
            raise ValueError(f"{len(token_ids)} tokens exceed the model's context ({self.trained_context})")
        request = self._scoring_request()
        request.reset_state()
        ids = np.asarray([list(token_ids)], dtype=np.int64)
        request.infer({"input_ids": ids, "attention_mask": np.ones_like(ids),
                       "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None],
                       "beam_idx": np.zeros(1, dtype=np.int32)})
        return np.asarray(request.get_tensor("logits").data[0], dtype=np.float32)

    def _scoring_request(self) -> Any:
        if self._scorer is None:
            import openvino as ov

            # An NPU compiles static shapes for the pipeline only; logits are scored on the CPU.
            device = "CPU" if self.device == "NPU" else self.device
            props = {k: v for k, v in device_properties(device, self.threads, {}).items()
                     if k not in PIPELINE_ONLY}
            compiled = ov.Core().compile_model(str(self.path / MODEL_FILE), device, props)
            self._scorer = compiled.create_infer_request()
        return self._scorer

    def info(self) -> dict[str, Any]:
        import openvino as ov

        core = ov.Core()
        # The CPU plugin computes in bf16 where the CPU has it, else f32 (its default hint).
        precision = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name() \
            if self.device == "CPU" else None
        return {"backend": self.name, "device": self.device, "threads": self.threads,
                "context_length": self.context_length, "inference_precision": precision,
                "properties": self.properties, "available_devices": list(core.available_devices),
                "path": str(self.path / MODEL_FILE), **process_memory()}


def choose_device(recipe: dict[str, Any]) -> str:
    import openvino as ov

    available = ov.Core().available_devices  # e.g. ["CPU", "GPU.0", "NPU"]
    if env := os.environ.get(DEVICE_ENV):
        device = env.upper()
        if not any(d == device or d.startswith(f"{device}.") for d in available):
            raise ArtifactError(f"{DEVICE_ENV}={env}, but OpenVINO sees no such device here "
                                f"(it sees {', '.join(available)})",
                                hint=f"unset {DEVICE_ENV} to run on the CPU, or install the device's driver")
        return device
    if (recipe.get("target") or {}).get("device") == "npu-openvino" and "NPU" in available:
        return "NPU"
    return "CPU"


def device_properties(device: str, threads: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's properties on `device`: CPU threads, or the NPU's static prompt/reply sizes.

    On the CPU the stateful SDPA backend, not openvino-genai's default paged attention with
    prefix caching: a repeated prompt would reuse its cached KV blocks (measured on the sample:
    a 500-token prefill 2.0 s cold, 0.03 s repeated), so benchmarks would time the cache, and
    `reset()` could not make the next call cold. SDPA keeps the KV cache in the model's state
    for one call, like the other runtimes, and was as fast cold (2.0 s vs 2.1 s)."""
    if device == "CPU":
        return {"INFERENCE_NUM_THREADS": threads, "ATTENTION_BACKEND": "SDPA"}
    if device == "NPU":
        return {key: int(settings[name]) for key, name in (("MAX_PROMPT_LEN", "max_prompt_len"),
                                                           ("MIN_RESPONSE_LEN", "min_response_len"))
                if settings.get(name)}
    return {}


def _trained_context(folder: Path) -> int:
    """The model's trained context (config.json), the most a caller may ask for."""
    config = folder / "config.json"
    trained = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings") \
        if config.is_file() else None
    return int(trained) if trained else DEFAULT_CONTEXT


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
