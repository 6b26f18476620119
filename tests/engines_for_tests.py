"""A build engine registered by the tests (not shipped): it copies the checkpoint's weights
and tokenizer into the artifact, scaling the weights by `scale`, so pipeline behaviour can
be checked without the ONNX/GGUF toolchains."""

from __future__ import annotations

import shutil

from edgeqwen.checkpoint import TOKENIZER_FILES
from edgeqwen.engines.base import BuildJob, Engine, EngineOptions, EngineResult


class CopyOptions(EngineOptions):
    scale: float = 1.0
    fail: bool = False


class CopyEngine(Engine):
    name = "copy-test"
    formats = ("onnx",)
    runtime = "transformers"
    options_model = CopyOptions
    packages = ("safetensors",)

    def build(self, job: BuildJob) -> EngineResult:
        from safetensors.torch import load_file, save_file

        options: CopyOptions = job.options  # type: ignore[assignment]
        shutil.copy(job.source.path / "config.json", job.out / "config.json")
        for name in TOKENIZER_FILES:
            if (job.source.path / name).is_file():
                shutil.copy(job.source.path / name, job.out / name)
        tensors = load_file(job.source.path / "model.safetensors")
        save_file({k: v * options.scale for k, v in tensors.items()}, job.out / "model.safetensors")
        if options.fail:
            raise RuntimeError("the tool crashed half way")
        return EngineResult(options_passed={"scale": options.scale}, notes=["copied"],
                            details={"tensors": len(tensors)})
