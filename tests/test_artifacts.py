import json
from pathlib import Path

import pytest

from edgeqwen.artifacts import (
    MANIFEST,
    ArtifactWriter,
    Manifest,
    SourceInfo,
    list_files,
    load_manifest,
    now_utc,
    verify,
)
from edgeqwen.errors import ArtifactError


def manifest_for(folder: Path) -> Manifest:
    return Manifest(
        name=folder.name, edgeqwen_version="test", created_utc=now_utc(), format="onnx",
        runtime="transformers", target={"device": "cpu"}, recipe={"name": "r"},
        source=SourceInfo(spec="x", kind="local", path="/x", model_type="qwen2"),
        engine={"name": "test"}, tools={}, files=list_files(folder),
    )


def write_artifact(out: Path, files: dict[str, bytes], force: bool = False) -> Path:
    writer = ArtifactWriter(out, force=force)
    with writer as staging:
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        return writer.commit(manifest_for(staging))


def test_commit_writes_manifest_with_hashes(tmp_path: Path) -> None:
    art = write_artifact(tmp_path / "art", {"model.onnx": b"abc", "sub/tok.json": b"{}"})
    m = load_manifest(art)
    assert {f.path: f.bytes for f in m.files} == {"model.onnx": 3, "sub/tok.json": 2}
    assert m.files[0].sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert verify(art) == []
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no staging left behind


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ArtifactWriter(tmp_path / "art") as staging:
        (staging / "model.onnx").write_bytes(b"half")
        raise RuntimeError("engine crashed")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_unless_forced(tmp_path: Path) -> None:
    art = write_artifact(tmp_path / "art", {"a": b"1"})
    with pytest.raises(ArtifactError, match="(?s)already exists.*--force"):
        write_artifact(art, {"a": b"2"})
    write_artifact(art, {"b": b"2"}, force=True)
    assert sorted(p.name for p in art.iterdir()) == ["b", MANIFEST]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_verify_reports_every_change(tmp_path: Path) -> None:
    art = write_artifact(tmp_path / "art", {"a": b"1111", "b": b"2", "c": b"3"})
    (art / "a").write_bytes(b"1112")  # same size, new content
    (art / "b").write_bytes(b"22")
    (art / "c").unlink()
    (art / "d").write_bytes(b"new")
    assert verify(art) == ["missing: c", "unexpected file: d", "content changed: a (sha256 differs)",
                           "size changed: b (1 -> 2 bytes)"]


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a folder"):
        load_manifest(tmp_path / "nothing")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"name": "x"}))
    with pytest.raises(ArtifactError, match="corrupt"):
        load_manifest(tmp_path)
