"""The GGUF engine and the llama-cpp runtime on tiny Qwen2/Qwen3 checkpoints with Qwen's real
tokenizer: every shipped GGUF recipe builds an artifact stock llama-cpp-python loads, the
numbers it computes agree with the transformers reference, and bad input fails cleanly."""

import gzip
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import mean_kl
from gguf import GGUFReader

from edgeqwen import llama_cpp_tools
from edgeqwen.artifacts import load_manifest, verify
from edgeqwen.checkpoint import chat_template
from edgeqwen.errors import ArtifactError, EngineError, RecipeError, SourceError
from edgeqwen.pipeline import build
from edgeqwen.recipes import load_recipe, parse_recipe, shipped_recipes
from runtimes.base import GenerationOptions
from runtimes.llama_cpp_backend import LlamaCppRuntime
from runtimes.transformers_backend import TransformersRuntime

GGUF_RECIPES = sorted(n for n, p in shipped_recipes().items() if load_recipe(p).format == "gguf")
# Every recipe on Qwen2; the two that matter most on Qwen3 (its q/k norms are extra tensors).
CASES = [(r, "qwen2") for r in GGUF_RECIPES] + [("gguf-q4_k_m", "qwen3"), ("gguf-f16", "qwen3")]
TEXT = "def add(a, b):\n    return a + b\nThe quick brown fox jumps over the lazy dog. Hej verden!"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hi there"}],
    "system_multi_turn": [
        {"role": "system", "content": "You answer in Danish."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hej!"},
        {"role": "user", "content": "Wie geht's? 你好"},
    ],
    "tool_call": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "{\"temp_c\": 4}"},
    ],
}


@pytest.fixture(scope="module")
def art_root(module_dir) -> Path:
    return module_dir / "gguf-artifacts"


@pytest.fixture(scope="module")
def built() -> dict[tuple[str, str], Path]:
    """Artifacts built so far in this module, so each recipe x architecture builds once."""
    return {}


@pytest.fixture(scope="module")
def references() -> dict[str, tuple[TransformersRuntime, list[int], np.ndarray]]:
    return {}


def get_artifact(request, built, art_root, recipe: str, arch: str) -> Path:
    if (recipe, arch) not in built:
        model = request.getfixturevalue(f"tiny_{arch}_real_vocab")
        built[(recipe, arch)] = build(recipe, str(model), art_root / f"{arch}-{recipe}").path
    return built[(recipe, arch)]


def get_reference(request, references, arch: str) -> tuple[TransformersRuntime, list[int], np.ndarray]:
    if arch not in references:
        ref = TransformersRuntime.load(request.getfixturevalue(f"tiny_{arch}_real_vocab"), threads=1)
        ids = ref.encode(TEXT)
        references[arch] = (ref, ids, ref.logits(ids))
    return references[arch]


@pytest.mark.parametrize(("recipe", "arch"), CASES)
def test_shipped_recipe_builds_an_artifact_stock_llama_cpp_loads(
        recipe, arch, request, built, art_root, references) -> None:
    import llama_cpp

    art = get_artifact(request, built, art_root, recipe, arch)
    source = request.getfixturevalue(f"tiny_{arch}_real_vocab")
    precision = load_recipe(recipe).precision
    manifest = load_manifest(art)
    assert (manifest.format, manifest.runtime, manifest.engine["name"]) == ("gguf", "llama-cpp", "llama-cpp")
    assert [f.path for f in manifest.files] == ["chat_template.jinja", "generation_config.json", "model.gguf"]
    assert verify(art) == []
    assert manifest.tools["llama-cpp-python"] == llama_cpp_tools.installed_version()
    steps = [s["step"] for s in manifest.build["steps"]]  # build cost per step
    assert steps[0].startswith("llama.cpp converter")
    assert len(steps) == (1 if precision.startswith(("F", "BF")) else 2)
    assert all(s["seconds"] > 0 for s in manifest.build["steps"])
    # Each tool's own peak (wait4), and the build's children peak is the largest of them.
    peaks = [s["tool_peak_rss_mb"] for s in manifest.build["steps"]]
    assert all(p > 50 for p in peaks) and manifest.build["peak_rss_children_mb"] == max(peaks)

    gguf = manifest.engine["gguf"]
    assert gguf["file_type"] == f"MOSTLY_{precision}"
    # The histogram in the manifest is the file's: 2 layers x 12 tensors (Qwen3: no q/k/v
    # biases, q/k norms: 11) + token embedding + final norm; tied embeddings, no output.weight.
    assert sum(gguf["tensor_types"].values()) == (24 if arch == "qwen3" else 26)
    assert gguf["chat_template_matches_source"] is True
    assert (art / "chat_template.jinja").read_text() == chat_template(source)

    llm = llama_cpp.Llama(model_path=str(art / "model.gguf"), n_ctx=256, verbose=False)
    assert llm.metadata["general.architecture"] == arch
    assert llm.metadata["general.name"] == source.name  # not the converter's guess from a cache path
    _, ids, ref_logits = get_reference(request, references, arch)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == ids

    logits = LlamaCppRuntime.load(art, threads=1).logits(ids)
    assert logits.shape == ref_logits.shape
    kl = mean_kl(ref_logits, logits)
    assert kl < {"F16": 1e-4, "Q8_0": 1e-3}.get(precision, 0.05), kl


def test_quantization_error_grows_as_bits_shrink(request, built, art_root, references) -> None:
    _, ids, ref_logits = get_reference(request, references, "qwen2")
    kl = {}
    for recipe in ("gguf-f16", "gguf-q8_0", "gguf-q4_0"):
        art = get_artifact(request, built, art_root, recipe, "qwen2")
        kl[recipe] = mean_kl(ref_logits, LlamaCppRuntime.load(art, threads=1).logits(ids))
    assert kl["gguf-f16"] < kl["gguf-q8_0"] < kl["gguf-q4_0"], kl


def test_f32_gguf_is_the_reference_and_cli_runs_it(tiny_qwen2_real_vocab, tmp_path, capsys,
                                                   monkeypatch) -> None:
    from edgeqwen.cli import main

    recipe = parse_recipe({"name": "f32", "description": "t", "format": "gguf", "precision": "F32"})
    art = build(recipe, str(tiny_qwen2_real_vocab), tmp_path / "f32").path
    rt = LlamaCppRuntime.load(art, threads=1)
    ref = TransformersRuntime.load(tiny_qwen2_real_vocab, threads=1)
    ids = ref.encode(TEXT)
    np.testing.assert_allclose(rt.logits(ids), ref.logits(ids), atol=2e-3, rtol=0)
    greedy = GenerationOptions(max_new_tokens=12)
    assert list(rt.stream_ids(ids, greedy)) == list(ref.stream_ids(ids, greedy))

    assert main(["run", str(art), "Hello", "-n", "6", "--threads", "1"]) == 0
    expected = ref.chat([{"role": "user", "content": "Hello"}], GenerationOptions(max_new_tokens=6))
    assert capsys.readouterr().out == expected + "\n"

    lines = iter(["Hello", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(art), "-n", "6", "--threads", "1"]) == 0
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_template_renders_exactly_as_transformers(name, request, built, art_root, references) -> None:
    rt = LlamaCppRuntime.load(get_artifact(request, built, art_root, "gguf-f16", "qwen2"), threads=1)
    ref, _, _ = get_reference(request, references, "qwen2")
    messages = CONVERSATIONS[name]
    for kwargs in ({}, {"tools": TOOLS}):
        for add in (True, False):
            ours = rt.render_chat(messages, add_generation_prompt=add, **kwargs)
            assert ours == ref.render_chat(messages, add_generation_prompt=add, **kwargs)
            assert rt.encode(ours) == ref.encode(ours)  # control tokens stay single tokens
    assert "<tool_call>" in rt.render_chat(CONVERSATIONS["tool_call"], tools=TOOLS)


def test_sampling_is_seeded_and_lengths_are_capped(request, built, art_root) -> None:
    art = get_artifact(request, built, art_root, "gguf-f16", "qwen2")
    rt = LlamaCppRuntime.load(art, threads=1)
    prompt = rt.encode(TEXT)

    def sample(seed: int) -> list[int]:
        return list(rt.stream_ids(prompt, GenerationOptions(max_new_tokens=12, temperature=1.0, seed=seed)))

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert len(sample(7)) == 12
    # Contexts: the recipe's 4096 is capped at the tiny model's trained 512; requests are
    # padded to llama.cpp's multiples of 256; a prompt that does not fit is refused.
    assert rt.n_ctx == 512 and rt.info()["n_ctx"] == 512
    small = LlamaCppRuntime.load(art, threads=1, context_length=100)
    assert small.n_ctx == 256
    with pytest.raises(ValueError, match="the context holds 256"):
        list(small.stream_ids(prompt * 10, GenerationOptions(max_new_tokens=4)))


def test_quantizer_options_reach_the_file(tiny_qwen2_real_vocab, tmp_path) -> None:
    recipe = parse_recipe({"name": "q4-emb16", "description": "t", "format": "gguf", "precision": "Q4_0",
                           "algorithm": {"token_embedding_type": "F16", "intermediate": "f32"}})
    art = build(recipe, str(tiny_qwen2_real_vocab), tmp_path / "a").path
    # Read back with the gguf package's reader, independently of the engine's header parser.
    types = {t.name: t.tensor_type.name for t in GGUFReader(art / "model.gguf").tensors}
    assert types["token_embd.weight"] == "F16"
    assert types["blk.0.attn_q.weight"] == "Q4_0"
    manifest = load_manifest(art)
    assert manifest.engine["gguf"]["tensor_types"] == dict(Counter(types.values()).most_common())
    options = manifest.engine["options"]
    assert (options["token_embedding_type"], options["converter_outtype"]) == ("F16", "f32")


def test_mobile_recipes_runtime_settings_reach_llama_cpp(request, built, art_root) -> None:
    import os

    q4_0 = get_artifact(request, built, art_root, "mobile-gguf-q4_0", "qwen2")
    rt = LlamaCppRuntime.load(q4_0)
    params = rt.llm.context_params
    assert (params.n_batch, params.n_ubatch, params.type_k, params.type_v) == (128, 128, 1, 1)
    assert rt.llm.model_params.load_mode == 0  # LLAMA_LOAD_MODE_NONE: Q4_0 is repacked at load anyway
    assert rt.threads == min(4, os.cpu_count() or 1) and rt.n_ctx == 512  # tiny model: trained 512
    assert LlamaCppRuntime.load(q4_0, threads=1).threads == 1  # the caller's choice wins
    k_m = LlamaCppRuntime.load(get_artifact(request, built, art_root, "mobile-gguf-q4_k_m", "qwen2"))
    assert k_m.llm.model_params.load_mode == 1 and k_m.info()["use_mmap"] is True  # LOAD_MODE_MMAP

    # The manifest states the memory at the recipe's context with the exact file sizes.
    manifest = load_manifest(q4_0)
    m = manifest.memory
    assert m["weights_bytes"] == manifest.size_bytes and m["weights_exact"] is True
    assert m["context_length"] == 512 and m["kv_cache_type"] == "f16" and m["mmap"] is False
    assert m["kv_cache_bytes"] == 2 * 2 * 2 * 16 * 512 * 2  # K+V x 2 layers x 2 KV heads x 16 dims
    assert m["total_bytes"] == m["weights_bytes"] + m["kv_cache_bytes"] + 128 * 2**20


def test_quantized_kv_cache_recipe(qwen_tokenizer, tmp_path) -> None:
    from conftest import make_tiny_model

    # llama.cpp quantizes K/V in blocks of 32 per head: a model with 32-dim heads.
    source = make_tiny_model(tmp_path / "src", "qwen2", tokenizer=qwen_tokenizer, head_dim=32)
    recipe = parse_recipe({"name": "q8-kv", "description": "t", "format": "gguf", "precision": "Q8_0",
                           "runtime": {"kv_cache_type": "q8_0", "batch_size": 64}})
    art = build(recipe, str(source), tmp_path / "a").path
    rt = LlamaCppRuntime.load(art, threads=1)
    params = rt.llm.context_params
    assert (params.type_k, params.type_v, params.n_batch) == (8, 8, 64)  # GGML_TYPE_Q8_0
    assert load_manifest(art).memory["kv_cache_bytes"] == 2 * 2 * 2 * 32 * 512 * 34 // 32
    ref = TransformersRuntime.load(source, threads=1)
    ids = ref.encode(TEXT)
    ref_logits, logits = ref.logits(ids), rt.logits(ids)  # scored with the quantized cache too
    plain = build(parse_recipe({**recipe.model_dump(), "name": "q8", "runtime": {}}), str(source),
                  tmp_path / "b").path
    plain_logits = LlamaCppRuntime.load(plain, threads=1).logits(ids)
    assert not np.array_equal(logits, plain_logits)  # the cache type is really applied
    assert mean_kl(ref_logits, logits) < 2e-3 and mean_kl(ref_logits, plain_logits) < 1e-3

    with pytest.raises(RecipeError, match="heads have 16"):  # the default tiny model's heads
        build(recipe, str(make_tiny_model(tmp_path / "src16", "qwen2", tokenizer=qwen_tokenizer)),
              tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_converter_rejects_a_tokenizer_llama_cpp_does_not_know(tiny_qwen2, tmp_path) -> None:
    # tiny_qwen2 carries a freshly trained 384-token BPE: llama.cpp refuses to guess its pre-tokenizer.
    with pytest.raises(EngineError, match="does not recognise the tokenizer") as err:
        build("gguf-q8_0", str(tiny_qwen2), tmp_path / "arts" / "out")
    assert list((tmp_path / "arts").iterdir()) == []  # no artifact, no staging or work folder left
    log = Path(err.value.hint.split("full log: ")[1].split(";")[0])  # the converter's log is kept
    assert "pre-tokenizer was not recognized" in log.read_text()


def test_bad_recipes_fail_before_any_work(tiny_qwen2_real_vocab, tmp_path) -> None:
    def recipe(**fields):
        return {"name": "t", "description": "t", "format": "gguf", **fields}

    with pytest.raises(RecipeError, match="'Q9_K' is not allowed for format 'gguf'"):
        parse_recipe(recipe(precision="Q9_K"))
    cases = [
        (recipe(precision="F16", algorithm={"pure": True}), "quantized types only"),
        # imatrix takes its options, not a file (the text comes from --calibration)
        (recipe(precision="Q4_K_M", algorithm={"imatrix": "calib.txt"}),
         "algorithm.imatrix: Input should be a valid dict"),
        (recipe(precision="Q4_K_M", algorithm={"output_tensor_type": "Q9"}), "algorithm.output_tensor_type"),
    ]
    for data, message in cases:
        with pytest.raises(RecipeError, match=message):
            build(parse_recipe(data), str(tiny_qwen2_real_vocab), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EngineError, match="no quantization type Q9_9"):
        llama_cpp_tools.file_type("Q9_9")


def test_corrupt_or_foreign_gguf_files(request, built, art_root, tmp_path) -> None:
    good = get_artifact(request, built, art_root, "gguf-q8_0", "qwen2") / "model.gguf"
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"PK\x03\x04" + b"\0" * 100)

    with pytest.raises(SourceError, match="corrupt or truncated"):
        build("gguf-q4_k_m", str(truncated), tmp_path / "a")
    with pytest.raises(SourceError, match="not a GGUF file"):
        build("gguf-q4_k_m", str(foreign), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        LlamaCppRuntime.load(truncated)
    with pytest.raises(ArtifactError, match="not a GGUF file"):
        LlamaCppRuntime.load(foreign)


def test_converter_is_fetched_once_and_pinned_to_the_runtime() -> None:
    script = llama_cpp_tools.converter_script()
    assert script == llama_cpp_tools.converter_script() and script.is_file()
    marker = json.loads((script.parent / llama_cpp_tools.MARKER).read_text())
    assert marker["version"] == llama_cpp_tools.installed_version()
    assert len(marker["sdist_sha256"]) == 64
    assert (script.parent / "gguf-py" / "gguf").is_dir() and (script.parent / "conversion").is_dir()
    assert not (script.parent / "src").exists()  # only what the converter needs is extracted


def test_converter_fetch_errors_name_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEQWEN_TOOLS_DIR", str(tmp_path / "tools"))
    monkeypatch.setenv(llama_cpp_tools.SDIST_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(EngineError, match="is not a file"):
        llama_cpp_tools.converter_script()

    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    monkeypatch.setenv(llama_cpp_tools.SDIST_ENV, str(junk))
    with pytest.raises(EngineError, match="not a readable llama-cpp-python sdist"):
        llama_cpp_tools.converter_script()

    empty = tmp_path / "empty.tar.gz"
    with gzip.open(empty, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("llama_cpp_python-0/README.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    monkeypatch.setenv(llama_cpp_tools.SDIST_ENV, str(empty))
    with pytest.raises(EngineError, match="has no vendor/llama.cpp/convert_hf_to_gguf.py"):
        llama_cpp_tools.converter_script()
    assert [p.name for p in (tmp_path / "tools").iterdir()] == []  # nothing half-extracted


def test_imatrix_from_calibration_text(tiny_qwen2_real_vocab, tmp_path, monkeypatch) -> None:
    """llama.cpp's llama-imatrix on the shipped calibration text, then llama-quantize with it:
    the matrix changes how the weights are rounded (on a random tiny model it cannot make them
    measurably better; the sample's numbers are in the README) and the result still tracks."""
    from edgeqwen import calibration

    base = {"name": "q4", "description": "t", "format": "gguf", "precision": "Q4_0",
            "algorithm": {"pure": True}}
    plain = build(parse_recipe(base), str(tiny_qwen2_real_vocab), tmp_path / "plain").path
    with_matrix = parse_recipe({**base, "algorithm": {"pure": True, "imatrix": {"ctx": 128, "chunks": 12}}})
    art = build(with_matrix, str(tiny_qwen2_real_vocab), tmp_path / "imatrix").path
    info = load_manifest(art).engine["imatrix"]
    assert info["engine"] == "llama-imatrix" and info["ctx"] == 128
    assert info["calibration"]["samples"] == 12
    assert info["calibration"]["file"].endswith("calibration/default.txt")
    tools = llama_cpp_tools.native_tools()
    marker = json.loads((tools / llama_cpp_tools.MARKER).read_text())
    assert marker["version"] == llama_cpp_tools.installed_version()
    assert all((tools / p).is_file() for p in llama_cpp_tools.NATIVE_TOOLS)

    def weights(folder: Path) -> bytes:
        reader = GGUFReader(folder / "model.gguf")
        return b"".join(t.data.tobytes() for t in reader.tensors if t.name.startswith("blk.0.ffn"))

    assert weights(art) != weights(plain)  # same types, other roundings
    ref = TransformersRuntime.load(tiny_qwen2_real_vocab, threads=1)
    ids = ref.encode(calibration.SHIPPED.read_text(encoding="utf-8"))[:384]
    want = ref.logits(ids)
    kl_matrix = mean_kl(want, LlamaCppRuntime.load(art, threads=1).logits(ids))
    kl_plain = mean_kl(want, LlamaCppRuntime.load(plain, threads=1).logits(ids))
    assert 0 < kl_matrix < 1.2 * kl_plain, (kl_matrix, kl_plain)

    # A text shorter than one chunk is refused before the slow steps; so is calibration for a
    # recipe that does not calibrate.
    short = tmp_path / "short.txt"
    short.write_text("hello " * 10, encoding="utf-8")
    with pytest.raises(calibration.CalibrationError, match="fewer than one imatrix chunk"):
        build(with_matrix, str(tiny_qwen2_real_vocab), tmp_path / "short", calibration=short)
    with pytest.raises(RecipeError, match="does not calibrate"):
        build(parse_recipe(base), str(tiny_qwen2_real_vocab), tmp_path / "x", calibration=short)
    assert not (tmp_path / "short").exists() and not (tmp_path / "x").exists()


def test_native_tools_need_a_toolchain(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEQWEN_TOOLS_DIR", str(tmp_path / "tools"))
    monkeypatch.setattr(llama_cpp_tools.shutil, "which", lambda name: None if name == "cmake" else "/bin/x")
    with pytest.raises(EngineError, match="needs `cmake`") as err:
        llama_cpp_tools.native_tools()
    assert "apt install g++ cmake" in err.value.hint
    assert not (tmp_path / "tools").exists() or not any((tmp_path / "tools").iterdir())
