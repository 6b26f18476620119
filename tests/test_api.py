"""The Python API (`edgeqwen.load`), Qwen3 thinking mode and tool calls: parsing finished and
streamed replies, rendering with the real Qwen2.5/Qwen3 templates, and real artifacts."""

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import chat_template_for

import edgeqwen
from edgeqwen.api import LLM
from edgeqwen.errors import ArtifactError, EdgeQwenError
from edgeqwen.pipeline import build
from edgeqwen.replies import Piece, ThinkingSplitter, ToolCall, parse_reply, split_thinking
from runtimes.base import GenerationOptions, Runtime
from runtimes.transformers_backend import TransformersRuntime

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
THINKING_REPLY = ("<think>\nThe user wants the weather.\nI should call the tool.\n</think>\n\n"
                  "Let me check.\n<tool_call>\n"
                  "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>")


class ScriptedRuntime(Runtime):
    """Characters are tokens; the model 'generates' a fixed script, so parsing is tested
    on known text through the real streaming path."""

    name = "scripted"

    def __init__(self, script: str, template: str) -> None:
        self.script = script
        self.chat_template = template

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None, context_length: int | None = None) -> Runtime:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def stream_ids(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[int]:
        yield from self.encode(self.script)[: options.max_new_tokens]

    def logits(self, token_ids: Sequence[int]) -> Any:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {"backend": self.name}


def test_parse_reply_splits_thinking_answer_and_tool_calls() -> None:
    reply = parse_reply(THINKING_REPLY)
    assert reply.thinking == "The user wants the weather.\nI should call the tool."
    assert reply.content == "Let me check."
    assert reply.tool_calls == [ToolCall("get_weather", {"city": "Oslo"})]
    plain = parse_reply("Hello there")
    assert (plain.thinking, plain.content, plain.tool_calls) == (None, "Hello there", [])
    cut = parse_reply("<think>\nstill thinking when max_new_tokens ran out")
    assert (cut.thinking, cut.content) == ("still thinking when max_new_tokens ran out", "")
    bad = parse_reply("<tool_call>\n{not json}\n</tool_call><tool_call>{\"name\": \"f\"}</tool_call>")
    assert bad.invalid_tool_calls == ["{not json}"] and bad.tool_calls == [ToolCall("f", {})]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 1000])
def test_streamed_pieces_equal_the_parsed_reply(size) -> None:
    for text in (THINKING_REPLY, "No think block here.", "<think>\n\n</think>\n\nEmpty thought.",
                 "<thi", "<think>\ncut off\n</thi"):
        splitter = ThinkingSplitter()
        pieces = [p for i in range(0, len(text), size) for p in splitter.feed(text[i:i + size])]
        pieces += list(splitter.flush())
        thinking = "".join(p.text for p in pieces if p.kind == "thinking")
        content = "".join(p.text for p in pieces if p.kind == "content")
        thinking_done, answer = split_thinking(text)
        assert thinking == (thinking_done or ""), (text, size)
        assert content == answer, (text, size)


def test_answer_text_is_not_held_back_after_the_think_block() -> None:
    """Content that arrives in the same piece as `</think>` streams at once, not one piece late."""
    splitter = ThinkingSplitter()
    assert list(splitter.feed("<think>\nhmm\n</think>\n\nHello")) == [
        Piece("thinking", "hmm"), Piece("content", "Hello")]
    assert list(splitter.feed(" world")) == [Piece("content", " world")]
    assert list(splitter.flush()) == []


def test_qwen3_thinking_switch_renders_like_transformers(tiny_qwen3) -> None:
    ref = TransformersRuntime.load(tiny_qwen3, threads=1)
    llm = LLM(ScriptedRuntime("", chat_template_for("qwen3")))
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
               {"role": "user", "content": "3+3?"}]
    off = llm.render(history, thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert llm.render(history, thinking=True).endswith("<|im_start|>assistant\n")
    assert "<think>" not in llm.render(history).split("3+3?")[1]  # default: the model opens it
    for thinking in (True, False):
        assert llm.render(history, thinking=thinking) == ref.render_chat(history, enable_thinking=thinking)
    assert llm.render(history, tools=TOOLS) == ref.render_chat(history, tools=TOOLS)
    # Earlier turns' reasoning is dropped from the history, as Qwen3's template specifies.
    assert "add" not in off


def test_chat_and_stream_separate_thinking_and_parse_tool_calls() -> None:
    llm = LLM(ScriptedRuntime(THINKING_REPLY, chat_template_for("qwen3")))
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    reply = llm.chat(messages, tools=TOOLS, max_new_tokens=1000)
    assert reply.thinking.startswith("The user wants") and reply.content == "Let me check."
    assert reply.tool_calls == [ToolCall("get_weather", {"city": "Oslo"})]
    assert reply.completion_tokens == len(THINKING_REPLY) and reply.finish_reason == "stop"
    assert reply.prompt_tokens == len(llm.render(messages, tools=TOOLS))

    stream = llm.stream(messages, tools=TOOLS, max_new_tokens=1000)
    pieces = list(stream)
    assert {p.kind for p in pieces} == {"thinking", "content"}
    assert "".join(p.text for p in pieces if p.kind == "thinking") == reply.thinking
    assert stream.reply.tool_calls == reply.tool_calls

    # The reply goes back into the history; the template renders the call and its result.
    follow = [*messages, reply.to_message(), {"role": "tool", "content": json.dumps({"temp_c": 4})}]
    rendered = llm.render(follow, tools=TOOLS)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in rendered
    assert "<tool_response>\n{\"temp_c\": 4}\n</tool_response>" in rendered

    short = llm.chat(messages, max_new_tokens=10)
    assert short.finish_reason == "length" and short.completion_tokens == 10
    stopped = llm.chat(messages, max_new_tokens=1000, stop=["I should"])
    assert stopped.finish_reason == "stop_string" and stopped.thinking == "The user wants the weather."


def test_bad_calls_fail_with_clear_errors() -> None:
    qwen25 = LLM(ScriptedRuntime("hi", chat_template_for("qwen2")))
    with pytest.raises(EdgeQwenError, match="no thinking mode"):
        qwen25.chat([{"role": "user", "content": "x"}], thinking=True)
    with pytest.raises(EdgeQwenError, match="messages is empty"):
        qwen25.chat([])
    with pytest.raises(EdgeQwenError, match="needs a role"):
        qwen25.chat([{"role": "robot", "content": "x"}])
    with pytest.raises(EdgeQwenError, match="max_new_tokens"):
        qwen25.chat([{"role": "user", "content": "x"}], max_new_tokens=0)


@pytest.fixture(scope="module")
def qwen3_onnx(tiny_qwen3, module_dir) -> Path:
    return build("onnx-cpu-fp32", str(tiny_qwen3), module_dir / "api" / "q3").path


def test_load_an_artifact_and_chat_like_the_reference(qwen3_onnx, tiny_qwen3) -> None:
    llm = edgeqwen.load(qwen3_onnx, threads=1)
    ref = TransformersRuntime.load(tiny_qwen3, threads=1)
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"}]
    for thinking in (True, False):
        reply = llm.chat(messages, max_new_tokens=8, thinking=thinking)
        expected = ref.chat(messages, GenerationOptions(max_new_tokens=8), enable_thinking=thinking)
        assert reply.text == expected
        assert reply.prompt_tokens == len(ref.encode(ref.render_chat(messages, enable_thinking=thinking)))
    info = llm.info()
    assert (info["backend"], info["thinking"], info["recipe"]) == ("onnxruntime-genai", True, "onnx-cpu-fp32")
    assert llm.count_tokens("Hello") == len(ref.encode("Hello"))

    # Shared between threads: calls are serialized, each gets the answer it would get alone.
    alone = llm.chat([{"role": "user", "content": "a"}], max_new_tokens=6).text
    results: list[str] = []
    workers = [threading.Thread(target=lambda: results.append(
        llm.chat([{"role": "user", "content": "a"}], max_new_tokens=6).text)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results == [alone] * 3


def test_load_verifies_the_files(qwen3_onnx, tmp_path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(qwen3_onnx, copy)
    with (copy / "genai_config.json").open("a") as fh:
        fh.write("\n")
    with pytest.raises(ArtifactError, match="does not match its manifest: size changed: genai_config.json"):
        edgeqwen.load(copy)
    assert edgeqwen.load(copy, verify=False, threads=1).info()["backend"] == "onnxruntime-genai"


def test_cli_thinking_switch(qwen3_onnx, tiny_qwen3, tiny_qwen2, tmp_path, capsys) -> None:
    from edgeqwen.cli import main

    ref = TransformersRuntime.load(tiny_qwen3, threads=1)
    expected = ref.chat([{"role": "user", "content": "hi"}], GenerationOptions(max_new_tokens=5),
                        enable_thinking=False)
    assert main(["run", str(qwen3_onnx), "hi", "--no-thinking", "-n", "5", "--threads", "1"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    qwen2 = build("onnx-cpu-fp32", str(tiny_qwen2), tmp_path / "q2").path
    assert main(["run", str(qwen2), "hi", "--thinking", "-n", "5"]) == 1
    assert "no thinking mode" in capsys.readouterr().err
