"""Build matrices on tiny Qwen2/Qwen3 models: 2 models x 3 recipes locally, again (nothing
rebuilt), and through a local Ray cluster on loopback with identical results."""

import json
from pathlib import Path

import pytest
import yaml

from edgeqwen import matrix
from edgeqwen.artifacts import load_manifest
from edgeqwen.cli import main
from edgeqwen.errors import EdgeQwenError, RecipeError

RECIPES = ["gguf-q8_0", "gguf-q4_0", "onnx-cpu-int4-rtn"]


def write_plan(folder: Path, models: list[str], **extra) -> Path:
    plan = {"name": "tiny", "models": models, "recipes": RECIPES, "profiles": ["desktop"],
            "validate": {"max_tokens": 64}, "bench": {"repeats": 1, "new_tokens": 4}, **extra}
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.fixture(scope="module")
def models(module_dir, tiny_qwen2_real_vocab, tiny_qwen3_real_vocab) -> Path:
    import shutil

    folder = module_dir / "matrix"
    shutil.copytree(tiny_qwen2_real_vocab, folder / "qwen2")
    shutil.copytree(tiny_qwen3_real_vocab, folder / "qwen3")
    return folder


@pytest.fixture(scope="module")
def local_run(models) -> tuple[Path, list[matrix.CellResult]]:
    plan_path = write_plan(models, ["qwen2", "qwen3"])
    out = models / "out-local"
    return out, matrix.run(matrix.load_plan(plan_path), models, out, jobs=2)


def test_a_plan_of_two_models_and_three_recipes_runs_locally(local_run) -> None:
    out, results = local_run
    assert [r.name for r in results] == [f"{m}__{r}" for m in ("qwen2", "qwen3") for r in RECIPES]
    assert all(r.status == "built" for r in results), [r.error for r in results]
    for r in results:
        manifest = load_manifest(r.artifact)
        assert manifest.matrix_key == r.key and len(r.key) == 64  # the cache key is in the manifest
        assert manifest.validation["passed"] is True and "desktop" in manifest.benchmarks
        assert r.metrics["files"] == {f.path: f.sha256 for f in manifest.files}
        assert r.metrics["bench"]["desktop"]["fits"] is True
    data = json.loads((out / matrix.RESULTS).read_text())
    assert [c["name"] for c in data["cells"]] == [r.name for r in results]
    report = (out / "report.md").read_text()
    picks = matrix.recommendations(results, ["desktop"])
    assert picks["desktop"] in {r.name for r in results}
    assert f"- `desktop`: `{picks['desktop']}`" in report
    assert all(r.name in report for r in results) and (out / "report.html").stat().st_size > 1000


def test_a_second_run_rebuilds_nothing(local_run, models) -> None:
    out, first = local_run
    stamps = {r.name: (Path(r.artifact) / "manifest.json").stat().st_mtime_ns for r in first}
    again = matrix.run(matrix.load_plan(models / "plan.yaml"), models, out)
    assert [r.status for r in again] == ["cached"] * 6
    assert [r.key for r in again] == [r.key for r in first]
    assert {r.name: (Path(r.artifact) / "manifest.json").stat().st_mtime_ns for r in again} == stamps
    assert [r.metrics for r in again] == [r.metrics for r in first]


def test_the_same_plan_on_a_local_ray_cluster_gives_identical_results(local_run, models) -> None:
    import ray

    _, local = local_run
    # A one-node head on this machine with 2 CPUs and no dashboard. (Ray 2.60 on Linux turns a
    # requested 127.0.0.1 into the machine's own address, so no loopback-only option exists.)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert len(ray.nodes()) == 1 and ray.cluster_resources()["CPU"] == 2
        remote = matrix.run(matrix.load_plan(models / "plan.yaml"), models, models / "out-ray",
                            ray_address="local")
    finally:
        ray.shutdown()
    assert [r.status for r in remote] == ["built"] * 6, [r.error for r in remote]
    for a, b in zip(local, remote, strict=True):
        assert a.key == b.key
        assert a.metrics["files"] == b.metrics["files"]  # byte-identical artifacts
        for metric in ("ppl_increase_pct", "kl", "top1", "gates_passed", "size_bytes"):
            assert a.metrics[metric] == b.metrics[metric], (a.name, metric)


def test_the_key_changes_with_source_recipe_and_tools(local_run, models, monkeypatch) -> None:
    from edgeqwen.engines.llama_cpp import LlamaCppEngine

    plan = matrix.load_plan(models / "plan.yaml")
    cell = matrix.cells(plan, models)[0]
    key = matrix.cell_key(cell, plan, {"model.safetensors": "aa"})
    assert key == matrix.cell_key(cell, plan, {"model.safetensors": "aa"})
    assert key != matrix.cell_key(cell, plan, {"model.safetensors": "ab"})
    other = matrix.Cell(cell.model, cell.recipe.model_copy(update={"context_length": 2048}), cell.name)
    assert key != matrix.cell_key(other, plan, {"model.safetensors": "aa"})
    monkeypatch.setattr(LlamaCppEngine, "tool_versions", lambda self: {"llama-cpp-python": "9.9.9"})
    assert key != matrix.cell_key(cell, plan, {"model.safetensors": "aa"})


def test_a_failed_cell_is_reported_and_the_rest_go_on(models, tmp_path, capsys) -> None:
    plan = write_plan(tmp_path, [str(models / "qwen2"), str(tmp_path / "no-such-model")],
                      recipes=["gguf-q8_0"])
    assert main(["matrix", str(plan), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 cells failed: no-such-model__gguf-q8_0" in captured.err
    cells = {c["name"]: c for c in json.loads((tmp_path / "out" / matrix.RESULTS).read_text())["cells"]}
    assert cells["qwen2__gguf-q8_0"]["status"] == "built"
    assert cells["no-such-model__gguf-q8_0"]["status"] == "failed"
    assert "no-such-model" in cells["no-such-model__gguf-q8_0"]["error"]
    assert "recommended for desktop: qwen2__gguf-q8_0" in captured.out


def test_bad_plans_name_the_problem(tmp_path) -> None:
    with pytest.raises(RecipeError, match="'onnx-gpu-\\*' matches no shipped recipe"):
        matrix.cells(matrix.load_plan(write_plan(tmp_path, ["sample"], recipes=["onnx-gpu-*"])), tmp_path)
    with pytest.raises(EdgeQwenError, match="field 'models'"):
        matrix.load_plan(write_plan(tmp_path, []))
    with pytest.raises(EdgeQwenError, match="field 'modles'"):
        matrix.load_plan(write_plan(tmp_path, ["sample"], modles=["x"]))
    globbed = matrix.cells(matrix.load_plan(write_plan(tmp_path, ["sample"], recipes=["mobile-gguf-*"])),
                           tmp_path)
    assert [c.recipe.name for c in globbed] == ["mobile-gguf-q4_0", "mobile-gguf-q4_k_m"]


def test_workers_are_sized_to_memory(monkeypatch) -> None:
    import psutil

    cells = [(object(), 8 * 2**30), (object(), 2 * 2**30), (object(), 2 * 2**30)]
    available = type("vm", (), {"available": 12 * 2**30})()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: available)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert matrix.workers_for(cells, None) == 1  # two 8 GB conversions do not fit in 12 GB
    assert matrix.workers_for(cells[1:], None) == 2  # bounded by the cells, not the 8 cores
    assert matrix.workers_for(cells[1:], 1) == 1
