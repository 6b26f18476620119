"""optimum-intel, the OpenVINO exporter, in its own folder beside edgeqwen's environment.

optimum-intel 2.2.0 pins `transformers<5.6` and `huggingface-hub<1.22`, and it requires
`torchvision`, whose PyPI wheels are CUDA builds: next to the CPU build of torch they
break every `transformers` model import. So the exporter is not a dependency of edgeqwen.
It is installed once with `pip install --no-deps --target` into the tools cache together
with the transformers / huggingface-hub / tokenizers / datasets releases it supports, and
the export runs as a child process with that folder first on `PYTHONPATH`: those packages
shadow the environment's newer ones for the child only, while torch, NNCF and OpenVINO
come from the environment (`edgeqwen[openvino]`).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeqwen import paths
from edgeqwen.errors import EngineError
from edgeqwen.progress import step

# The exporter and the releases it was tested with here (exact: the child imports them).
PACKAGES = {
    "optimum-intel": "2.2.0",
    "optimum": "2.3.0",
    "transformers": "5.5.4",
    "huggingface_hub": "1.21.0",
    "tokenizers": "0.22.2",
    "datasets": "5.0.1",
}
# optimum-intel requires torchvision, but only its vision-language models import it, and
# PyPI's CUDA build would break the CPU torch: left out.
NOT_NEEDED = {"torchvision"}
MARKER = "edgeqwen-tool.json"
FOLDER_ENV = "EDGEQWEN_OPTIMUM_INTEL_DIR"  # a prepared folder (machines without an index)


def requirements() -> list[str]:
    return [f"{name}=={version}" for name, version in PACKAGES.items()]


def exporter_dir() -> Path:
    """The folder to put first on the export child's PYTHONPATH, installed on first use."""
    if env := os.environ.get(FOLDER_ENV):
        folder = Path(env).expanduser()
        if not (folder / "optimum" / "intel").is_dir():
            raise EngineError(f"{FOLDER_ENV}={env} holds no optimum-intel",
                              hint=f"fill it with `pip install --no-deps --target {env} "
                              f"{' '.join(requirements())}`")
        _require_complete(folder)
        return folder
    folder = paths.tools_dir() / f"optimum-intel-{PACKAGES['optimum-intel']}"
    if (folder / MARKER).is_file():
        _complete(folder)  # the environment may have lost a package the folder relied on
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as tmp:
        staging = Path(tmp) / "packages"
        with step("installing the OpenVINO exporter (optimum-intel and the transformers it "
                  "supports, about 125 MB) into the tools cache with pip, once"):
            _pip_target(staging, requirements())
            _complete(staging)
        installed = {d.metadata["Name"]: d.version
                     for d in importlib.metadata.distributions(path=[str(staging)])}
        (staging / MARKER).write_text(json.dumps({"packages": PACKAGES, "installed": installed}, indent=2)
                                      + "\n", encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / MARKER).is_file():  # not a concurrent install that won the race
                raise
    return folder


def missing_requirements(folder: Path) -> list[str]:
    """Requirements of the folder's packages that neither the folder nor this environment has
    (the --no-deps install leaves them to the environment), e.g. `httpx` for the older
    huggingface-hub where the environment's newer one no longer needs it."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    dists = list(importlib.metadata.distributions(path=[str(folder)]))
    inside = {_canonical(d.metadata["Name"]) for d in dists}
    missing: dict[str, SpecifierSet] = {}
    for dist in dists:
        for text in dist.requires or []:
            req = Requirement(text)
            name = _canonical(req.name)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            if name in inside or name in NOT_NEEDED:
                continue
            try:
                importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                missing[name] = missing.get(name, SpecifierSet()) & req.specifier
    return [f"{name}{spec}" for name, spec in sorted(missing.items())]


def _complete(folder: Path, rounds: int = 4) -> None:
    """Install what `missing_requirements` names into the folder, until nothing is missing."""
    for _ in range(rounds):
        missing = missing_requirements(folder)
        if not missing:
            return
        _pip_target(folder, missing)
    _require_complete(folder)


def _require_complete(folder: Path) -> None:
    if missing := missing_requirements(folder):
        raise EngineError(f"the OpenVINO exporter in {folder} lacks {', '.join(missing)}",
                          hint=f"pip install --no-deps --target {folder} {' '.join(missing)}")


def _pip_target(folder: Path, requirements: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--upgrade",
           "--target", str(folder), *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0 or not (folder / "optimum" / "intel").is_dir():
        last = "\n    ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise EngineError(
            f"could not install the OpenVINO exporter's packages with pip:\n    {last}",
            hint=f"on a machine with a package index run `pip install --no-deps --target DIR "
            f"{' '.join(requirements)}`, copy DIR here and set {FOLDER_ENV}=DIR")


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def child_env(folder: Path) -> dict[str, str]:
    """The export child's environment: the exporter first on the path, hubs off."""
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
