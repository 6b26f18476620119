from pathlib import Path

import pytest
from engines_for_tests import CopyEngine

from edgeqwen import registry
from edgeqwen.artifacts import load_manifest, verify
from edgeqwen.errors import ArtifactError, RecipeError, RegistryError
from edgeqwen.pipeline import build
from edgeqwen.recipes import parse_recipe

RECIPE = {"name": "copy-fp32", "description": "test", "format": "onnx", "precision": "fp32",
          "engine": "copy-test"}


@pytest.fixture(autouse=True)
def copy_engine():
    registry.engines.register("copy-test", CopyEngine)
    yield
    registry.engines.unregister("copy-test")


def test_build_writes_complete_manifest(tiny_model: Path, tmp_path: Path) -> None:
    result = build(parse_recipe(RECIPE), str(tiny_model), tmp_path / "art")
    m = load_manifest(result.path)
    assert m.recipe["name"] == "copy-fp32" and m.format == "onnx"
    assert m.runtime == "transformers" and m.engine == {"name": "copy-test", "options": {"scale": 1.0},
                                                         "tensors": m.engine["tensors"]}
    assert m.source.kind == "local" and m.source.path == str(tiny_model)
    assert m.source.files["config.json"] == next(
        f.sha256 for f in m.files if f.path == "config.json")  # copied as is
    assert {"python", "edgeqwen", "torch", "transformers", "safetensors"} <= set(m.tools)
    assert m.build["seconds"] >= 0 and m.build["peak_rss_mb"] > 0
    assert m.notes == ["copied"]
    assert verify(result.path) == []


def test_engine_failure_leaves_no_artifact(tiny_qwen2: Path, tmp_path: Path) -> None:
    recipe = parse_recipe({**RECIPE, "algorithm": {"fail": True}})
    with pytest.raises(RuntimeError, match="half way"):
        build(recipe, str(tiny_qwen2), tmp_path / "art")
    assert list(tmp_path.iterdir()) == []


def test_unknown_algorithm_option_is_an_error(tiny_qwen2: Path, tmp_path: Path) -> None:
    recipe = parse_recipe({**RECIPE, "algorithm": {"scale": 2, "int4_block_size": 32}})
    with pytest.raises(RecipeError, match=r"algorithm.int4_block_size: Extra inputs.*") as err:
        build(recipe, str(tiny_qwen2), tmp_path / "art")
    assert "options copy-test reads: scale, fail" in str(err.value)


def test_format_the_engine_does_not_build(tiny_qwen2: Path, tmp_path: Path) -> None:
    recipe = parse_recipe({**RECIPE, "format": "gguf", "precision": "Q8_0"})
    with pytest.raises(RecipeError, match="does not build"):
        build(recipe, str(tiny_qwen2), tmp_path / "art")


def test_unknown_engine_lists_installed(tiny_qwen2: Path, tmp_path: Path) -> None:
    recipe = parse_recipe({**RECIPE, "engine": "nope"})
    expected = "(?s)no build engine named 'nope'.*installed build engines: copy-test"
    with pytest.raises(RegistryError, match=expected):
        build(recipe, str(tiny_qwen2), tmp_path / "art")


def test_existing_output_refused_before_source_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "art").mkdir()
    # The source does not exist: the output check must come first and say so.
    with pytest.raises(ArtifactError, match="already exists"):
        build(parse_recipe(RECIPE), "./missing-model", tmp_path / "art")


def test_recipe_without_model(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="pins no model"):
        build(parse_recipe(RECIPE), None, tmp_path / "art")


def test_default_output_folder(tiny_qwen2: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = build(parse_recipe(RECIPE), str(tiny_qwen2))
    assert result.path == (tmp_path / "artifacts" / "qwen2-copy-fp32").absolute()
