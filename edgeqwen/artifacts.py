"""Artifacts: one folder of model files plus `manifest.json`, written atomically.

A build writes into a hidden temporary sibling of the output folder and renames it into
place only when everything succeeded, so an interrupted or failed build never leaves a
folder that looks like an artifact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgeqwen.errors import ArtifactError
from edgeqwen.hashing import sha256_files

MANIFEST = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1


class FileEntry(BaseModel):
    path: str
    bytes: int
    sha256: str


class SourceInfo(BaseModel):
    spec: str  # what the user typed: `sample`, a repo id, a path
    kind: str  # sample | hub | local | gguf
    path: str  # the resolved checkpoint folder
    catalog_id: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    model_type: str
    files: dict[str, str] = Field(default_factory=dict)  # name -> sha256 of the checkpoint
    origin_sha256: str | None = None  # the .gguf a checkpoint was dequantized from
    notes: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    edgeqwen_version: str
    created_utc: str
    format: str
    runtime: str  # the runtime backend that loads this artifact
    target: dict[str, Any]
    recipe: dict[str, Any]
    source: SourceInfo
    engine: dict[str, Any]  # name + the exact options passed to the tool
    tools: dict[str, str]
    files: list[FileEntry]
    build: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] | None = None
    benchmarks: dict[str, Any] = Field(default_factory=dict)  # device profile -> `edgeqwen bench` report
    # Expected memory at the recipe's context (edgeqwen.memory.MemoryEstimate.to_dict()).
    memory: dict[str, Any] | None = None
    matrix_key: str | None = None  # set by `edgeqwen matrix`: the cell's content key (cache)
    notes: list[str] = Field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        """Bytes of every file of the artifact (the manifest itself excluded)."""
        return sum(f.bytes for f in self.files)

    def write(self, folder: Path) -> None:
        _atomic_write_text(folder / MANIFEST, self.model_dump_json(indent=2) + "\n")


def now_utc() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; artifacts are shared files
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _payload_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def list_files(folder: Path, description: str = "hashing artifact files") -> list[FileEntry]:
    hashes = sha256_files(_payload_files(folder), description)
    return [FileEntry(path=p.relative_to(folder).as_posix(), bytes=p.stat().st_size, sha256=h)
            for p, h in hashes.items()]


def load_manifest(folder: Path | str) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder", hint="pass the folder `edgeqwen build --out` wrote")
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST}, so it is not an edgeqwen artifact",
                            hint="build one with `edgeqwen build RECIPE --model SRC --out DIR`")
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ArtifactError(f"{path} is corrupt: {err}".splitlines()[0],
                            hint="rebuild the artifact") from None


def verify(folder: Path | str) -> list[str]:
    """Re-hash the artifact; return the problems (empty when it is exactly as built)."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    expected = {f.path: f for f in manifest.files}
    actual = {p.relative_to(folder).as_posix(): p for p in _payload_files(folder)}
    problems = [f"missing: {name}" for name in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected file: {name}" for name in sorted(actual.keys() - expected.keys())]
    common = sorted(expected.keys() & actual.keys())
    hashes = sha256_files([actual[n] for n in common], "verifying")
    for name in common:
        entry, path = expected[name], actual[name]
        if path.stat().st_size != entry.bytes:
            problems.append(f"size changed: {name} ({entry.bytes} -> {path.stat().st_size} bytes)")
        elif hashes[path] != entry.sha256:
            problems.append(f"content changed: {name} (sha256 differs)")
    return problems


class ArtifactWriter:
    """Context manager: `with ArtifactWriter(out, force) as staging:` write into `staging`,
    then `commit(manifest)`. Leaving the block without a commit removes the staging folder."""

    def __init__(self, out: Path | str, *, force: bool = False) -> None:
        self.out = Path(out).absolute()
        self.force = force
        self.staging: Path | None = None
        self._committed = False

    def check_target(self) -> None:
        if self.out.exists() and not self.force:
            raise ArtifactError(f"output folder {self.out} already exists",
                                hint="choose another --out, or pass --force to replace it")

    def __enter__(self) -> Path:
        self.check_target()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        os.chmod(self.staging, 0o777 & ~_umask())  # readable by a model server running as another user
        return self.staging

    def commit(self, manifest: Manifest | None = None) -> Path:
        """Move the staged folder into place (exports have no manifest of their own)."""
        assert self.staging is not None, "commit() outside the with-block"
        if manifest is not None:
            manifest.write(self.staging)
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.staging, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._committed = True
        return self.out

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._committed and self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
