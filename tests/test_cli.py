import json
import subprocess
import sys
from pathlib import Path

import pytest
from engines_for_tests import CopyEngine

from edgeqwen import registry
from edgeqwen.cli import main


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_json_has_real_facts(capsys) -> None:
    code, out, _ = run(capsys, "models", "--json")
    models = {m["id"]: m for m in json.loads(out)}
    assert code == 0
    m = models["qwen2.5-0.5b-instruct"]
    assert (m["repo_id"], m["layers"], m["hidden"], m["heads"], m["kv_heads"]) == (
        "Qwen/Qwen2.5-0.5B-Instruct", 24, 896, 14, 2)
    assert m["params"] == 494_032_768 and m["kv_bytes_per_token"] == 12_288
    assert set(m["weight_bytes"]) == {"fp16", "int8", "int4"}
    assert models["qwen3-4b"]["thinking"] is True


def test_models_table_lists_every_model(capsys) -> None:
    code, out, _ = run(capsys, "models")
    assert code == 0
    for model_id in ("qwen2.5-coder-1.5b-instruct", "qwen3-0.6b", "Qwen/Qwen2.5-Math-1.5B-Instruct"):
        assert model_id in out


def test_fit_explains_and_recommends(capsys) -> None:
    code, out, _ = run(capsys, "fit", "--ram", "4GB", "--task", "code")
    assert code == 0
    assert "Recommended: qwen2.5-coder-3b-instruct at int4" in " ".join(out.split())
    code, out, _ = run(capsys, "fit", "--ram", "2GB", "--task", "chat", "--context", "2048", "--json")
    data = json.loads(out)
    best = data["recommended"]
    assert best["total_bytes"] == best["weights_bytes"] + best["kv_cache_bytes"] + best["overhead_bytes"]
    assert best["total_bytes"] <= int(2 * 2**30 * 0.75)


@pytest.mark.parametrize("args", [
    ("fit", "--ram", "lots"), ("fit", "--ram", "4GB", "--task", "poetry"),
    ("fit", "--ram", "256MB"), ("nonsense",), ("build",),
])
def test_user_errors_exit_1_without_traceback(capsys, args) -> None:
    code, out, err = run(capsys, *args)
    assert code == 1
    assert "Traceback" not in out + err


def test_recipes_command_lists_shipped(capsys) -> None:
    from edgeqwen.recipes import shipped_recipes

    code, out, _ = run(capsys, "recipes", "--json")
    assert code == 0 and set(json.loads(out)) == set(shipped_recipes())


def test_build_inspect_verify_roundtrip(capsys, tiny_qwen2: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "copy.yaml"
    recipe.write_text("name: copy\ndescription: t\nformat: onnx\nprecision: fp32\n"
                      "engine: copy-test\nalgorithm: {scale: 1.0}\n")
    registry.engines.register("copy-test", CopyEngine)
    try:
        art = tmp_path / "art"
        code, _, err = run(capsys, "build", str(recipe), "--model", str(tiny_qwen2), "--out", str(art))
        assert code == 0, err
        code, _, err = run(capsys, "build", str(recipe), "--model", str(tiny_qwen2), "--out", str(art))
        assert code == 1 and "already exists" in err
    finally:
        registry.engines.unregister("copy-test")
    code, out, _ = run(capsys, "inspect", str(art), "--json")
    assert code == 0 and json.loads(out)["recipe"]["name"] == "copy"
    code, out, _ = run(capsys, "inspect", str(art))
    assert code == 0 and "model.safetensors" in out
    assert run(capsys, "verify", str(art))[0] == 0
    with (art / "config.json").open("a") as fh:
        fh.write(" ")
    code, _, err = run(capsys, "verify", str(art))
    assert code == 1 and "size changed: config.json" in err


def test_internal_errors_exit_3(capsys, monkeypatch) -> None:
    import edgeqwen.fit

    def boom(*a, **k):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(edgeqwen.fit, "plan", boom)
    code, _, err = run(capsys, "fit", "--ram", "4GB")
    assert code == 3 and "internal error: ZeroDivisionError: bug" in err


def test_help_does_not_import_torch() -> None:
    probe = ("import sys; from edgeqwen.cli import main; code = main(['--help']); "
             "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "0 False False"
    assert "build" in result.stdout and "models" in result.stdout


def test_console_script_exit_code(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("edgeqwen")
    result = subprocess.run([str(exe), "verify", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "no manifest.json" in result.stderr
