import pytest

from edgeqwen import fit, memory
from edgeqwen.catalog import get
from edgeqwen.errors import EdgeQwenError
from edgeqwen.units import parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("4GB", 4 * 2**30), ("4 GiB", 4 * 2**30), ("1.5g", int(1.5 * 2**30)), ("512MB", 512 * 2**20),
    ("2048", 2048),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "four gigs", "4XB", "-1GB", "0GB"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(EdgeQwenError):
        parse_size(bad)


def test_arithmetic_of_a_row() -> None:
    rows, _ = fit.plan(4 * 2**30, context=2048, task="code")
    row = next(r for r in rows if r.model.id == "qwen2.5-coder-0.5b-instruct" and r.precision == "int4")
    m = get("qwen2.5-coder-0.5b-instruct")
    assert row.weights == m.weight_bytes("int4")
    assert row.kv_cache == 2048 * 12_288
    assert row.total == row.weights + row.kv_cache + memory.DEFAULT_OVERHEAD_BYTES
    assert row.budget == 3 * 2**30  # 25% reserve


def test_recommends_largest_model_at_best_precision_that_fits() -> None:
    _, best = fit.plan(4 * 2**30, task="code")
    assert (best.model.id, best.precision) == ("qwen2.5-coder-3b-instruct", "int4")
    _, best = fit.plan(16 * 2**30, task="chat")
    assert (best.model.id, best.precision) == ("qwen3-4b", "fp16")
    _, best = fit.plan(1 * 2**30, task="math")
    assert best is None  # a 1.5B model needs more than 768 MiB even at int4


def test_kv_cache_capped_at_model_context() -> None:
    rows, _ = fit.plan(64 * 2**30, context=100_000, task="math")
    assert all(r.kv_cache == 4096 * r.model.kv_bytes_per_token for r in rows)


def test_tasks_filter_families() -> None:
    rows, _ = fit.plan(8 * 2**30, task="math")
    assert {r.model.family for r in rows} == {"qwen2.5-math"}


def test_device_presets(capsys) -> None:
    import json

    from edgeqwen.cli import main

    assert main(["fit", "--device", "phone-6gb", "--task", "code", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # 6 GiB x (1 - 0.5) = 3 GiB at 2048 tokens: the 3B coder at int4 (1.7 GiB + 72 MiB KV + 400 MiB).
    assert (data["ram_bytes"], data["reserve"], data["context"]) == (6 * 2**30, 0.5, 2048)
    assert data["recommended"]["model"] == "qwen2.5-coder-3b-instruct"
    assert data["recommended"]["precision"] == "int4" and data["bench_profile"] == "phone"
    assert main(["fit", "--device", "board-2gb", "--json"]) == 0
    small = json.loads(capsys.readouterr().out)["recommended"]
    assert small["total_bytes"] <= 2 * 2**30 * 0.7 and small["model"] != "qwen3-4b"
    assert main(["fit", "--device", "phone-6gb", "--context", "8192", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["context"] == 8192  # explicit options win
    assert main(["fit", "--device", "toaster"]) == 1
    assert "unknown device" in capsys.readouterr().err
    assert main(["fit"]) == 1
    assert "either --ram or --device" in capsys.readouterr().err
