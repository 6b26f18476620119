"""`edgeqwen bench`: device profiles are applied for real (threads, context, address-space cap
in the child process), the speed report has its keys, and an artifact that does not fit is
reported as such."""

import json
import os
import typing
from pathlib import Path

import pytest

from edgeqwen import bench
from edgeqwen.artifacts import load_manifest
from edgeqwen.cli import main
from edgeqwen.pipeline import build
from edgeqwen.profiles import PROFILES, get_profile
from edgeqwen.recipes import Target


@pytest.fixture(scope="module")
def gguf_art(tiny_qwen2_real_vocab, module_dir) -> Path:
    return build("gguf-q8_0", str(tiny_qwen2_real_vocab), module_dir / "bench" / "q8").path


@pytest.fixture(scope="module")
def onnx_art(tiny_qwen2, module_dir) -> Path:
    return build("onnx-cpu-fp32", str(tiny_qwen2), module_dir / "bench" / "fp32").path


def test_recipe_profiles_are_the_bench_profiles() -> None:
    assert set(typing.get_args(Target.model_fields["profile"].annotation)) == set(PROFILES)


def test_mobile_profile_runs_with_two_threads_and_the_memory_cap(gguf_art) -> None:
    report = bench.run(gguf_art, get_profile("mobile"), repeats=1, new_tokens=8)
    assert report["fits"] is True
    assert (report["profile"], report["threads"], report["memory_cap_mb"]) == ("mobile", 2, 3072)
    assert report["address_space_limit_mb"] == 3072  # what the benchmark process itself saw
    assert report["runtime_info"]["threads"] == 2
    assert report["runtime_info"]["n_ctx"] == 512  # profile's 2048, capped at the model's trained 512
    assert report["os_threads"] >= 2
    assert report["generated_tokens"] == [8, 8]
    assert report["ttft_s"] > 0 and report["decode_tok_s"] > 0 and report["prefill_long_tok_s"] > 0
    assert 0 < report["peak_rss_mb"] < 3072
    assert report["pid"] != os.getpid()
    assert load_manifest(gguf_art).benchmarks["mobile"]["decode_tok_s"] == report["decode_tok_s"]


def test_tiny_profile_uses_one_thread(onnx_art) -> None:
    report = bench.run(onnx_art, get_profile("tiny"), repeats=1, new_tokens=4, record=False)
    assert report["fits"] is True and report["threads"] == 1 and report["runtime_info"]["threads"] == 1
    assert report["address_space_limit_mb"] == 1536
    assert load_manifest(onnx_art).benchmarks == {}  # record=False


def test_an_artifact_that_does_not_fit_is_reported(gguf_art, capsys) -> None:
    report = bench.run(gguf_art, get_profile("mobile"), memory_cap=150 * 2**20, repeats=1, new_tokens=4,
                       record=False)
    # Python, numpy and llama.cpp cannot start in 150 MiB of address space: the child fails
    # (a MemoryError, or an abort in a native library) and the parent reports why.
    assert report["fits"] is False and "under the 150 MiB address-space cap" in report["error"]
    code = main(["bench", str(gguf_art), "--profile", "mobile", "--memory-cap", "150MB", "--no-record"])
    assert code == 1 and "does not run within profile mobile" in capsys.readouterr().err


def test_cli_json_has_the_documented_keys(onnx_art, capsys) -> None:
    code = main(["bench", str(onnx_art), "--json", "--repeats", "1", "--new-tokens", "4", "--no-record"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("ttft_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb", "threads", "profile", "size_mb"):
        assert key in report
    assert report["profile"] == "desktop" and report["threads"] == os.cpu_count()
    assert report["memory_cap_mb"] is None and report["address_space_limit_mb"] is None
    assert main(["bench", str(onnx_art), "--profile", "laptop"]) == 1
