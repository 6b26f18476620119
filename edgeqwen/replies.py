"""What a Qwen model's reply text means: Qwen3's `<think>…</think>` reasoning, Qwen2.5/Qwen3
`<tool_call>{json}</tool_call>` blocks, and the answer itself.

`parse_reply` splits a finished reply; `ThinkingSplitter` does the same for a stream of text
pieces, holding back only the few characters that could still become a tag.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]

    def to_message(self) -> dict[str, Any]:
        """The form chat templates take back in an assistant message's `tool_calls`."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Reply:
    content: str
    thinking: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[str] = field(default_factory=list)  # <tool_call> bodies that were not JSON
    text: str = ""  # the raw generated text
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length", "stop_string"] = "stop"

    def to_message(self) -> dict[str, Any]:
        """The assistant message to append to the history for the next turn."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [c.to_message() for c in self.tool_calls]
        return message


@dataclass(frozen=True)
class Piece:
    kind: Literal["thinking", "content"]
    text: str


def split_thinking(text: str) -> tuple[str | None, str]:
    """(thinking, answer) of a reply; thinking is None when the reply has no think block."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_OPEN):
        return None, text
    body = stripped[len(THINK_OPEN):]
    if THINK_CLOSE not in body:  # cut off while thinking (max_new_tokens)
        return body.strip("\n"), ""
    thinking, answer = body.split(THINK_CLOSE, 1)
    return thinking.strip("\n"), answer.lstrip("\n")


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], list[str]]:
    """(text without the tool-call blocks, calls, bodies that could not be parsed)."""
    calls, invalid = [], []
    for body in TOOL_CALL.findall(text):
        try:
            data = json.loads(body)
            calls.append(ToolCall(name=str(data["name"]), arguments=dict(data.get("arguments") or {})))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            invalid.append(body)
    return TOOL_CALL.sub("", text).strip(), calls, invalid


def parse_reply(text: str) -> Reply:
    thinking, answer = split_thinking(text)
    content, calls, invalid = parse_tool_calls(answer)
    return Reply(content=content, thinking=thinking, tool_calls=calls, invalid_tool_calls=invalid, text=text)


class ThinkingSplitter:
    """Feed text pieces as they stream; get (kind, text) pieces with the think tags removed."""

    def __init__(self) -> None:
        self._mode: Literal["start", "thinking", "after_think", "content"] = "start"
        self._buffer = ""
        self._thought = False  # some thinking text was emitted

    def feed(self, text: str) -> Iterator[Piece]:
        self._buffer += text
        while self._buffer:
            if self._mode == "start":
                head = self._buffer.lstrip()
                if head.startswith(THINK_OPEN):
                    self._buffer = head[len(THINK_OPEN):].lstrip("\n")
                    self._mode = "thinking"
                elif THINK_OPEN.startswith(head):  # "", "<", "<th"...: wait for more
                    return
                else:
                    self._mode = "content"
            elif self._mode == "thinking":
                if not self._thought:  # newlines right after <think> are not part of the thought
                    self._buffer = self._buffer.lstrip("\n")
                    if not self._buffer:
                        return
                if THINK_CLOSE in self._buffer:
                    before, self._buffer = self._buffer.split(THINK_CLOSE, 1)
                    if before.rstrip("\n"):
                        yield Piece("thinking", before.rstrip("\n"))
                    self._mode = "after_think"
                    continue
                keep = _held_tail(self._buffer, THINK_CLOSE)
                ready = self._buffer[: len(self._buffer) - keep]
                if ready:
                    self._thought = True
                    yield Piece("thinking", ready)
                self._buffer = self._buffer[len(ready):]
                return
            elif self._mode == "after_think":  # newlines after </think> are not part of the answer
                self._buffer = self._buffer.lstrip("\n")
                if self._buffer:
                    self._mode = "content"
            else:
                yield Piece("content", self._buffer)
                self._buffer = ""

    def flush(self) -> Iterator[Piece]:
        """The held-back tail at the end of the stream."""
        if self._buffer and self._mode in ("thinking", "start"):
            text = self._buffer.rstrip("\n") if self._mode == "thinking" else self._buffer
            if text:
                yield Piece("thinking" if self._mode == "thinking" else "content", text)
        elif self._buffer:
            yield Piece("content", self._buffer)
        self._buffer = ""


def _held_tail(text: str, tag: str) -> int:
    """How many trailing characters might still turn out to be `tag` (a proper prefix of it at
    the end, and the newlines before that, which a finished reply strips)."""
    n = next((k for k in range(min(len(tag) - 1, len(text)), 0, -1) if text.endswith(tag[:k])), 0)
    rest = text[: len(text) - n]
    return n + len(rest) - len(rest.rstrip("\n"))
