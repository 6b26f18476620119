"""Foundry Local export, checked with Foundry Local's own runtime: foundry-local-sdk 2.2.1
(its native library runs in-process) registers the exported folder offline and answers a
chat, and the answer equals edgeqwen's own greedy answer from the same artifact.

The SDK pins onnxruntime 1.31.0 (edgeqwen uses 1.32.0), so it lives in its own virtual
environment under the edgeqwen test cache, made once per machine from PyPI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import chat_template_for, run_foundry
from typer.testing import CliRunner

import edgeqwen
from edgeqwen.chat_template import render
from edgeqwen.cli import app
from edgeqwen.errors import ArtifactError
from edgeqwen.exports.foundry import export_foundry, genai_config_for_foundry
from edgeqwen.pipeline import build

MESSAGES = [{"role": "user", "content": "Write a Python function that adds two numbers."}]


@pytest.fixture(scope="module")
def onnx_artifact(module_dir, tiny_qwen2_real_vocab: Path) -> Path:
    return build("onnx-cpu-fp32", str(tiny_qwen2_real_vocab),
                 module_dir / "foundry" / "tiny-qwen2-fp32").path


def test_export_writes_foundry_cache_layout(onnx_artifact: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "foundry", str(onnx_artifact), "--out",
                                      str(tmp_path / "foundry"), "--name", "tiny-qwen2", "--version", "3"])
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "foundry" / "edgeqwen" / "tiny-qwen2-3"
    assert "register_model(" in result.output and "tiny-qwen2:3" in result.output
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["chat_template.jinja", "genai_config.json", "inference_model.json", "model.onnx",
                     "model.onnx.data", "tokenizer.json", "tokenizer_config.json"]
    descriptor = json.loads((model_dir / "inference_model.json").read_text())
    assert descriptor["Name"] == "tiny-qwen2:3"
    # The legacy one-turn prompt is what the Jinja template renders, default system prompt included.
    template = descriptor["PromptTemplate"]
    one_turn = [{"role": "user", "content": "{Content}"}]
    assert template["prompt"] == render(chat_template_for("qwen2"), one_turn)
    assert template["prompt"].startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert template["user"] == "<|im_start|>user\n{Content}<|im_end|>"
    config = json.loads((model_dir / "genai_config.json").read_text())
    original = json.loads((onnx_artifact / "genai_config.json").read_text())
    assert config["search"]["max_length"] == min(4096, original["model"]["context_length"])
    assert (model_dir / "model.onnx.data").stat().st_ino == (onnx_artifact / "model.onnx.data").stat().st_ino


def test_genai_config_rules() -> None:
    config = {"model": {"context_length": 32768}, "engine": {"static_batching": {"max_batch_size": 1}},
              "search": {"max_length": 32768}}
    fixed = genai_config_for_foundry(config, 4096)
    assert fixed["engine"] == {"dynamic_batching": {}}
    assert fixed["search"]["max_length"] == 4096
    assert config["engine"] == {"static_batching": {"max_batch_size": 1}}  # input untouched
    with pytest.raises(ArtifactError, match="neither model.context_length nor search.max_length"):
        genai_config_for_foundry({"model": {}, "search": {}}, None)


def test_export_refuses_bad_input_and_leaves_nothing(onnx_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a valid Foundry Local model name"):
        export_foundry(onnx_artifact, tmp_path / "a", name="Bad Name!")
    export_foundry(onnx_artifact, tmp_path / "b")
    with pytest.raises(ArtifactError, match="already exists"):
        export_foundry(onnx_artifact, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_foundry_local_registers_the_export_offline_and_answers_like_edgeqwen(
        onnx_artifact: Path, tmp_path: Path, foundry_python: Path) -> None:
    done = export_foundry(onnx_artifact, tmp_path / "foundry", name="tiny-qwen2")
    result, _ = run_foundry(foundry_python, mode="register", model_dir=str(done.model_dir),
                            model_id=done.model_id, root=str(tmp_path / "empty-cache"),
                            app_dir=str(tmp_path / "app"), messages=MESSAGES, max_tokens=24)
    assert result["models"] == ["tiny-qwen2:1"]
    assert result["context_length"] == json.loads(
        (onnx_artifact / "genai_config.json").read_text())["model"]["context_length"]
    # Same model, greedy: the same text as edgeqwen's runtime (the random tiny model only
    # writes newlines; the slow tier compares a real answer of the sample model).
    expected = edgeqwen.load(onnx_artifact).chat(MESSAGES, max_new_tokens=24, temperature=0.0)
    assert result["reply"] == expected.text


def test_foundry_cache_scanner_finds_the_export(onnx_artifact: Path, tmp_path: Path,
                                                foundry_python: Path) -> None:
    """Foundry's cache scanner recognises the layout; SDK 2.2.1 then lists only models whose
    metadata its online catalog returns, so offline the list stays empty (see README)."""
    done = export_foundry(onnx_artifact, tmp_path / "foundry")
    result, log = run_foundry(foundry_python, mode="scan", root=str(done.root),
                              app_dir=str(tmp_path / "app"))
    assert "Found 1 locally cached models" in log
    assert result["cached"] == []
    _, log = run_foundry(foundry_python, mode="scan", root=str(tmp_path / "nothing"),
                             app_dir=str(tmp_path / "app2"))
    assert "Found 0 locally cached models" in log

