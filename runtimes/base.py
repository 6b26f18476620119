"""The interface every runtime backend implements.

A backend supplies the primitives (tokenize, render the chat template, stream token ids,
logits); text streaming, stop strings and chat are built on them here, once, so all
backends behave the same.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

Message = dict[str, Any]


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy, which is deterministic
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k filter
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1 and top_k >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # stop: the model ended its turn; length: max_new_tokens (or the context) ran out;
    # stop_string: a caller's stop string was found.
    finish_reason: str = "stop"


class Runtime(ABC):
    name: ClassVar[str]
    chat_template: str | None = None  # the model's Jinja chat template, set by `load`

    @classmethod
    @abstractmethod
    def load(cls, path: Path, *, threads: int | None = None,
             context_length: int | None = None) -> Runtime:
        """Load a model folder (artifact or checkpoint) this backend understands.

        `context_length` caps prompt + reply (backends size their caches to it); None means
        the artifact's own setting."""

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    **template_kwargs: Any) -> str:
        """The prompt text the model's own chat template makes of `messages`; template
        variables (`tools=`, Qwen3's `enable_thinking=`) pass through. Rendered by edgeqwen's
        transformers-compatible Jinja environment from `self.chat_template`; a backend whose
        library renders templates itself may override this."""
        from edgeqwen.chat_template import render

        if self.chat_template is None:
            raise ValueError(f"{self.name}: this model has no chat template")
        return render(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                      **template_kwargs)

    @abstractmethod
    def stream_ids(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[int]:
        """New token ids, stopping before an end-of-sequence token or at max_new_tokens."""

    @abstractmethod
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Next-token logits at every position: float32 array [len(token_ids), vocab]."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Backend, device, threads, `context_length` (prompt + reply) and memory facts for
        reports (see `process_memory`)."""

    def reset(self) -> None:  # noqa: B027 - optional: only backends that cache state override it
        """Forget cached state (e.g. a KV cache kept for a shared prompt prefix), so the next
        call starts cold; benchmarks call it before every timed run."""

    # Built on the primitives above.

    def stream(self, prompt: str, options: GenerationOptions | None = None,
               stats: GenerationStats | None = None) -> Iterator[str]:
        """Text pieces as they are generated, cut before the first stop string. `stats`, if
        given, is filled with token counts and why generation ended."""
        options = options or GenerationOptions()
        stats = stats if stats is not None else GenerationStats()
        prompt_ids = self.encode(prompt)
        stats.prompt_tokens = len(prompt_ids)
        ids: list[int] = []
        emitted = ""
        for token in self.stream_ids(prompt_ids, options):
            ids.append(token)
            stats.completion_tokens = len(ids)
            stats.finish_reason = "length" if len(ids) >= options.max_new_tokens else "stop"
            text = self.decode(ids)
            if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
                continue
            cut = _first_stop(text, options.stop)
            if cut is not None:
                stats.finish_reason = "stop_string"
                if cut > len(emitted):
                    yield text[len(emitted):cut]
                return
            # Hold back a tail that could still grow into a stop string.
            safe = len(text) - _partial_stop_len(text, options.stop)
            if safe > len(emitted):
                yield text[len(emitted):safe]
                emitted = text[:safe]
        text = self.decode(ids)
        if len(text) > len(emitted):
            yield text[len(emitted):]

    def generate(self, prompt: str, options: GenerationOptions | None = None) -> str:
        return "".join(self.stream(prompt, options))

    def chat(self, messages: Sequence[Message], options: GenerationOptions | None = None,
             **template_kwargs: Any) -> str:
        return self.generate(self.render_chat(messages, **template_kwargs), options)


class TokenizerJson:
    """`encode`/`decode` through the artifact's own tokenizer.json (the `tokenizers` library),
    for backends whose library does not tokenize (ExecuTorch, QNN)."""

    tokenizer: Any

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def read_chat_template(folder: Path) -> str | None:
    """The artifact's chat_template.jinja, if it has one."""
    template = folder / "chat_template.jinja"
    return template.read_text(encoding="utf-8") if template.is_file() else None


def artifact_recipe(path: Path) -> dict[str, Any]:
    """The recipe an artifact was built with (its manifest.json; {} for a bare model file or
    folder). Backends read the recipe's `runtime` settings and context from it."""
    import json

    path = Path(path)
    manifest = path / "manifest.json" if path.is_dir() else path.parent / "manifest.json"
    if not manifest.is_file():
        return {}
    return json.loads(manifest.read_text(encoding="utf-8")).get("recipe", {})


def runtime_settings(path: Path) -> dict[str, Any]:
    """The recipe's `runtime:` section for an artifact ({} when it has none)."""
    return artifact_recipe(path).get("runtime") or {}


def default_threads(threads: int | None, recipe_threads: int | None = None) -> int:
    """The thread count a backend uses: the caller's, else the recipe's `runtime.threads`
    (capped at this machine's cores: it describes the target device), else every core."""
    cores = os.cpu_count() or 1
    return threads or (min(recipe_threads, cores) if recipe_threads else cores)


def process_memory() -> dict[str, float]:
    """Resident and peak memory of this process in MiB, for `info()`."""
    import psutil

    return {"rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1), "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB. Linux's VmHWM belongs to the current
    program image; ru_maxrss, the fallback elsewhere, also keeps the peak of the parent a
    child was forked from, which would make every benchmark child look as big as its parent."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def reset_peak_rss() -> None:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM); a no-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(found) if found else None


def _partial_stop_len(text: str, stops: Sequence[str]) -> int:
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest
