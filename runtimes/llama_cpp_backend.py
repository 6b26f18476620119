"""GGUF artifacts (or any Qwen .gguf file) run by llama-cpp-python, as an app embedding it would."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeqwen.errors import ArtifactError
from runtimes.base import GenerationOptions, Runtime, artifact_recipe, default_threads, process_memory

# OpenMP's wait policy matters on small machines (0.5B Q4_K_M, 2 threads, 2 cores, decode
# tokens/s): quiet machine: default 35, ACTIVE 40, PASSIVE 20; one core busy with another
# process: default 14, ACTIVE 15, PASSIVE 21, one thread 26. edgeqwen keeps llama.cpp's
# default; set OMP_WAIT_POLICY=PASSIVE or use fewer threads where other work shares the cores.

QWEN_ARCHITECTURES = ("qwen2", "qwen3")
DEFAULT_CONTEXT = 4096  # not the model's 32k/40k: the KV cache is allocated up front
CONTEXT_STEP = 256
GGML_KV_TYPES = {"f16": 1, "q8_0": 8}  # ggml_type ids (GGML_TYPE_F16, GGML_TYPE_Q8_0)


class LlamaCppRuntime(Runtime):
    name = "llama-cpp"

    def __init__(self, llm: Any, model_file: Path, threads: int, template: str | None,
                 settings: dict[str, Any]) -> None:
        import llama_cpp

        self.llm = llm
        self.model_file = model_file
        self.threads = threads
        self.settings = settings  # llama.cpp context parameters from the recipe
        self.chat_template = template
        self.n_ctx = int(llm.n_ctx())
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._scorer: Any = None  # a second context that keeps logits of every position

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None,
             context_length: int | None = None) -> LlamaCppRuntime:
        import llama_cpp

        model_file = _model_file(Path(path))
        recipe = artifact_recipe(Path(path))
        wanted = recipe.get("runtime") or {}
        threads = default_threads(threads, wanted.get("threads"))
        settings = _context_settings(wanted)
        n_ctx = _padded(context_length or recipe.get("context_length") or DEFAULT_CONTEXT)
        llm = _open(model_file, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, **settings)
        arch = llm.metadata.get("general.architecture")
        if arch not in QWEN_ARCHITECTURES:
            raise ArtifactError(f"{model_file} holds a {arch!r} model; this backend runs Qwen GGUFs "
                                f"({', '.join(QWEN_ARCHITECTURES)})")
        trained = int(llama_cpp.llama_model_n_ctx_train(llm.model))
        if 0 < trained < n_ctx:  # never beyond what the model was trained for (tiny test models)
            del llm
            llm = _open(model_file, n_ctx=trained, n_threads=threads, n_threads_batch=threads, **settings)
        template_file = model_file.parent / "chat_template.jinja"
        template = (template_file.read_text(encoding="utf-8") if template_file.is_file()
                    else llm.metadata.get("tokenizer.chat_template"))
        return cls(llm, model_file, threads, template, settings)

    def encode(self, text: str) -> list[int]:
        # special=True: `<|im_start|>` in a rendered chat prompt is one control token, as in HF.
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def decode(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def stream_ids(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[int]:
        import llama_cpp

        room = self.n_ctx - len(prompt_ids)
        if room < 1:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context holds {self.n_ctx}")
        if not options.greedy:
            self.llm.set_seed(options.seed if options.seed is not None else int.from_bytes(os.urandom(4)))
        tokens = self.llm.generate(list(prompt_ids), temp=options.temperature, top_p=options.top_p,
                                   top_k=options.top_k, min_p=0.0, repeat_penalty=1.0)
        for n, token in enumerate(tokens):
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                return
            yield int(token)
            if n + 1 >= min(options.max_new_tokens, room):
                return

    def reset(self) -> None:
        # llama-cpp-python keeps the KV cache of the last prompt and reuses a shared prefix.
        self.llm.reset()

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:

        # Logits of every position need a context that keeps them (n_ctx x vocab floats):
        # size it to the text, in steps, instead of the chat context.
        needed = _padded(len(token_ids))
        if self._scorer is None or self._scorer.n_ctx() < needed:
            self._scorer = None
            same = {k: v for k, v in self.settings.items() if k not in ("n_batch", "n_ubatch")}
            self._scorer = _open(self.model_file, n_ctx=needed, n_batch=min(needed, 512),
                                 n_threads=self.threads, n_threads_batch=self.threads, logits_all=True,
                                 **same)  # the KV cache type changes the logits: score with it
        self._scorer.reset()
        self._scorer.eval(list(token_ids))
        return np.array(self._scorer.scores[: len(token_ids)], dtype=np.float32)

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu", "threads": self.threads, "n_ctx": self.n_ctx,
                "context_length": self.n_ctx, **self.settings,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                "path": str(self.model_file), **process_memory()}


def _padded(n_ctx: int) -> int:
    """llama.cpp pads contexts to a multiple of 256; llama-cpp-python's buffers must agree."""
    return -(-n_ctx // CONTEXT_STEP) * CONTEXT_STEP


def _model_file(path: Path) -> Path:
    if path.is_file():
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if len(found) != 1:
        raise ArtifactError(f"{path} should be a .gguf file or a folder with exactly one "
                            f"(found {len(found)})")
    return found[0]


def _open(model_file: Path, **kwargs: Any) -> Any:
    import llama_cpp

    with model_file.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ArtifactError(f"{model_file} is not a GGUF file (it does not start with 'GGUF')")
    try:
        return llama_cpp.Llama(model_path=str(model_file), verbose=False, **kwargs)
    except ValueError as err:  # llama-cpp-python's only word for any load failure
        import resource

        cap, _ = resource.getrlimit(resource.RLIMIT_AS)
        if cap != resource.RLIM_INFINITY:
            raise ArtifactError(f"llama.cpp cannot load {model_file} within this process's memory "
                                f"limit of {cap // 2**20} MiB ({err})") from None
        raise ArtifactError(f"llama.cpp cannot load {model_file}: it is corrupt or truncated ({err})",
                            hint="`edgeqwen verify ART` tells which file changed; rebuild the "
                            "artifact or download the file again") from None


def _context_settings(runtime: dict[str, Any]) -> dict[str, Any]:
    """llama-cpp-python arguments for a recipe's `runtime` section (None: llama.cpp's default)."""
    settings: dict[str, Any] = {}
    if runtime.get("batch_size"):
        settings.update(n_batch=runtime["batch_size"], n_ubatch=runtime["batch_size"])
    if runtime.get("mmap") is not None:
        settings["use_mmap"] = bool(runtime["mmap"])
    if runtime.get("kv_cache_type"):
        kind = GGML_KV_TYPES[runtime["kv_cache_type"]]
        # llama.cpp stores a quantized V cache only with flash attention.
        settings.update(type_k=kind, type_v=kind, flash_attn=runtime["kv_cache_type"] != "f16")
    return settings
