"""The Python API for apps that embed an artifact:

    import edgeqwen
    llm = edgeqwen.load("artifacts/qwen2.5-coder-0.5b-onnx-int4")
    reply = llm.chat([{"role": "user", "content": "..."}], max_new_tokens=128)
    stream = llm.stream(messages)
    for piece in stream: print(piece.text, end="")
    stream.reply  # the parsed Reply once the stream is consumed

The backend comes from the manifest. One `LLM` may be shared between threads: calls are
serialized by a lock (one generation at a time per object); load one `LLM` per worker
thread to generate in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgeqwen.errors import ArtifactError, EdgeQwenError
from edgeqwen.replies import Piece, Reply, ThinkingSplitter, parse_reply
from runtimes.base import GenerationOptions, GenerationStats, Message, Runtime


def load(path: str | Path, *, verify: bool = True, threads: int | None = None,
         context_length: int | None = None) -> LLM:
    """Open an artifact with the runtime its manifest names. `verify=True` re-hashes every
    file against the manifest first (seconds for a 0.5B model); pass False to skip it."""
    from edgeqwen import artifacts
    from edgeqwen.runner import open_artifact

    path = Path(path)
    manifest = artifacts.load_manifest(path)
    if verify:
        problems = artifacts.verify(path)
        if problems:
            raise ArtifactError(f"{path} does not match its manifest: " + "; ".join(problems[:5]),
                                hint="rebuild the artifact, or load(..., verify=False) at your own risk")
    runtime = open_artifact(path, threads=threads, context_length=context_length)
    return LLM(runtime, path=path, manifest=manifest.model_dump(mode="json"))


def generation_options(*, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                       top_k: int = 0, seed: int | None = None,
                       stop: Sequence[str] = ()) -> GenerationOptions:
    """GenerationOptions, with a bad value reported as a user error (exit 1) instead of a crash."""
    try:
        return GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 top_k=top_k, seed=seed, stop=tuple(stop))
    except ValueError as err:
        raise EdgeQwenError(str(err)) from None


class ReplyStream:
    """Iterate for `Piece`s (kind "thinking" or "content"); `.reply` holds the parsed reply
    (tool calls, token counts) once the iteration is over."""

    def __init__(self, runtime: Runtime, prompt: str, options: GenerationOptions,
                 lock: threading.RLock) -> None:
        self._runtime, self._prompt, self._options, self._lock = runtime, prompt, options, lock
        self.reply: Reply | None = None

    def __iter__(self) -> Iterator[Piece]:
        stats = GenerationStats()
        splitter = ThinkingSplitter()
        text = []
        with self._lock:
            for chunk in self._runtime.stream(self._prompt, self._options, stats):
                text.append(chunk)
                yield from splitter.feed(chunk)
            yield from splitter.flush()
        reply = parse_reply("".join(text))
        reply.prompt_tokens, reply.completion_tokens = stats.prompt_tokens, stats.completion_tokens
        reply.finish_reason = stats.finish_reason  # type: ignore[assignment]
        self.reply = reply


class LLM:
    def __init__(self, runtime: Runtime, *, path: Path | None = None,
                 manifest: dict[str, Any] | None = None) -> None:
        self.runtime = runtime
        self.path = path
        self.manifest = manifest or {}
        self._lock = threading.RLock()

    @property
    def supports_thinking(self) -> bool:
        return "enable_thinking" in (self.runtime.chat_template or "")

    def info(self) -> dict[str, Any]:
        recipe = self.manifest.get("recipe", {})
        return {**self.runtime.info(), "artifact": str(self.path) if self.path else None,
                "format": self.manifest.get("format"), "recipe": recipe.get("name"),
                "precision": recipe.get("precision"), "thinking": self.supports_thinking}

    def count_tokens(self, text_or_messages: str | Sequence[Message], **template_kwargs: Any) -> int:
        """Tokens of a text, or of the prompt the chat template makes of a conversation."""
        text = (text_or_messages if isinstance(text_or_messages, str)
                else self.render(text_or_messages, **template_kwargs))
        return len(self.runtime.encode(text))

    def render(self, messages: Sequence[Message], *, tools: Sequence[dict[str, Any]] | None = None,
               thinking: bool | None = None) -> str:
        """The prompt the model's chat template makes of `messages` (what chat() feeds it)."""
        kwargs: dict[str, Any] = {}
        if tools:
            kwargs["tools"] = list(tools)
        if thinking is not None:
            if not self.supports_thinking:
                raise EdgeQwenError("this model has no thinking mode (its chat template has no "
                                    "enable_thinking switch)", hint="thinking= is for Qwen3 models")
            kwargs["enable_thinking"] = thinking
        _check_messages(messages)
        return self.runtime.render_chat(messages, **kwargs)

    def chat(self, messages: Sequence[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: Sequence[str] = (),
             tools: Sequence[dict[str, Any]] | None = None, thinking: bool | None = None) -> Reply:
        """Answer a conversation (system prompt, history, tool results) with one reply.
        `thinking`: Qwen3 only; None keeps the template's default (thinking on)."""
        stream = self.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, top_k=top_k, seed=seed, stop=stop, tools=tools, thinking=thinking)
        for _ in stream:
            pass
        assert stream.reply is not None
        return stream.reply

    def stream(self, messages: Sequence[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: Sequence[str] = (),
               tools: Sequence[dict[str, Any]] | None = None, thinking: bool | None = None) -> ReplyStream:
        """Like chat(), piece by piece as it is generated; thinking and content are told apart."""
        options = generation_options(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     top_k=top_k, seed=seed, stop=stop)
        return ReplyStream(self.runtime, self.render(messages, tools=tools, thinking=thinking), options,
                           self._lock)


def _check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise EdgeQwenError("messages is empty", hint='pass [{"role": "user", "content": "..."}]')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise EdgeQwenError(f"messages[{i}] needs a role of system, user, assistant or tool: {m!r}")
        if not isinstance(m.get("content", ""), str):
            raise EdgeQwenError(f"messages[{i}].content must be a string")
