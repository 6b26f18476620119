from pathlib import Path

import pytest
import yaml

from edgeqwen.errors import RecipeError
from edgeqwen.recipes import load_recipe, parse_recipe, shipped_recipes

REPO = Path(__file__).resolve().parents[1]
GOOD = {
    "name": "onnx-test-int4",
    "description": "a test recipe",
    "format": "onnx",
    "precision": "INT4",
    "algorithm": {"block_size": 32},
    "target": {"device": "cpu", "profile": "desktop"},
    "validation": {"max_ppl_increase_pct": 5, "max_kl": 0.05, "min_top1": 0.9},
}


def write(tmp_path: Path, data: object, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_good_recipe_loads_with_defaults(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path, GOOD))
    assert r.precision == "int4"  # normalised
    assert r.engine_name == "onnxruntime-genai"  # format default
    assert r.context_length == 4096
    assert r.validation.min_top1 == 0.9 and r.model is None
    gguf = load_recipe(write(tmp_path, {**GOOD, "format": "gguf", "precision": "q4_k_m"}))
    assert gguf.precision == "Q4_K_M" and gguf.engine_name == "llama-cpp"
    assert gguf.runtime.model_dump() == {"threads": None, "batch_size": None, "mmap": None,
                                         "kv_cache_type": None, "max_prompt_len": None,
                                         "min_response_len": None}  # the backend's defaults
    pte = load_recipe(write(tmp_path, {**GOOD, "format": "pte", "precision": "8DA4W", "algorithm": {},
                                       "runtime": {"threads": 4}}))
    assert (pte.precision, pte.engine_name, pte.runtime.threads) == ("8da4w", "executorch", 4)


@pytest.mark.parametrize(("change", "expected"), [
    ({"precision": "int3"}, r"field 'precision'.*'int3' is not allowed for format 'onnx'.*int4, int8"),
    ({"format": "gguf", "precision": "int4"}, r"'INT4' is not allowed for format 'gguf'.*Q4_K_M"),
    ({"format": "tflite"},
     r"field 'format'.*'tflite' is not allowed.*'onnx', 'gguf', 'pte', 'openvino' or 'qnn'"),
    ({"format": "openvino", "precision": "Q4_0"},
     r"'q4_0' is not allowed for format 'openvino'.*int4, int8, fp16"),
    ({"runtime": {"max_prompt_len": 512}},
     r"runtime settings max_prompt_len are read by the OpenVINO runtime only \(format openvino\)"),
    ({"format": "pte", "precision": "int4"}, r"'int4' is not allowed for format 'pte'.*8da4w, fp32"),
    ({"runtime": {"mmap": False}}, r"runtime settings mmap are read by the llama.cpp runtime only"),
    ({"format": "gguf", "precision": "Q4_0", "runtime": {"kv_cache_type": "q4_0"}},
     r"field 'runtime.kv_cache_type'.*'q4_0' is not allowed"),
    ({"format": "gguf", "precision": "Q4_0", "runtime": {"batch_size": 8}},
     r"field 'runtime.batch_size'.*greater than or equal to 16"),
    ({"runtime": {"threads": 4, "cores": 2}},
     r"field 'runtime.cores'.*allowed fields here: threads, batch_size"),
    ({"precison": "int4"}, r"field 'precison'.*unknown field; allowed fields here: schema_version, name"),
    ({"validation": {"min_top1": 1.5}}, r"field 'validation.min_top1'.*less than or equal to 1"),
    ({"validation": {"max_kl": 0.1, "max_perplexity": 3}},
     r"validation.max_perplexity'.*allowed fields here: max_ppl_increase_pct"),
    ({"target": {"device": "gpu"}}, r"field 'target.device'.*'gpu' is not allowed"),
    ({"name": "Bad Name"}, r"field 'name'.*should match pattern"),
    ({"context_length": 16}, r"field 'context_length'.*greater than or equal to 128"),
    ({"schema_version": 2}, r"field 'schema_version'"),
])
def test_bad_recipes_name_file_field_and_allowed(tmp_path: Path, change: dict, expected: str) -> None:
    path = write(tmp_path, {**GOOD, **change})
    with pytest.raises(RecipeError, match=expected) as err:
        load_recipe(path)
    assert str(path) in str(err.value)


def test_missing_required_field(tmp_path: Path) -> None:
    data = {k: v for k, v in GOOD.items() if k != "format"}
    with pytest.raises(RecipeError, match=r"field 'format': Field required"):
        load_recipe(write(tmp_path, data))


def test_not_yaml_and_not_mapping(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: [unclosed"))
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(write(tmp_path, "- just\n- a list\n"))


def test_unknown_recipe_name_lists_shipped() -> None:
    with pytest.raises(RecipeError, match="neither a file nor a shipped recipe"):
        load_recipe("no-such-recipe")


def test_shipped_recipes_are_the_repo_folder_and_all_valid() -> None:
    shipped = shipped_recipes()
    assert set(shipped) == {p.stem for p in (REPO / "recipes").glob("*.yaml")}
    for name, path in shipped.items():
        recipe = load_recipe(path)
        assert recipe.name == name, f"{path}: name must match the file name"
        assert load_recipe(name) == recipe


def test_parse_recipe_is_frozen() -> None:
    r = parse_recipe(GOOD)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen
        r.precision = "int8"  # type: ignore[misc]
