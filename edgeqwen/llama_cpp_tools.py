"""llama.cpp's own converter and quantizer, pinned to the installed llama-cpp-python.

- The quantizer is in the binding (`llama_cpp.llama_model_quantize`). It runs in a child
  process (`python -m edgeqwen.llama_cpp_tools quantize ...`) like every engine tool.
- The Hugging Face -> GGUF converter is not in the wheel, but the sdist of the same
  version vendors llama.cpp with `convert_hf_to_gguf.py`. It is fetched once with pip into
  the tools cache (only the converter, its `conversion/` package, `gguf-py/` and the
  licence) and run from there, so converter and runtime come from one llama.cpp. It must
  import the `gguf-py` beside it: PyPI's `gguf` release lags the converter.
- Importance matrices need two native programs the wheel does not ship, `llama-imatrix`
  and `llama-quantize` (the binding's quantizer takes an imatrix only as a C++ map). They are
  built once from the same sdist with cmake into the tools cache (`native_tools()`), so they
  read and write the same GGUF version as the runtime.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from edgeqwen import paths
from edgeqwen.engines.tool_process import ToolFailed, run_tool
from edgeqwen.errors import EngineError
from edgeqwen.hashing import sha256_files
from edgeqwen.progress import step

PACKAGE = "llama-cpp-python"
INSTALL_HINT = ('pip install -c constraints.txt "edgeqwen[gguf]"  '
                "(builds llama.cpp from source: about 5-12 minutes on 2 cores, once)")
SDIST_ENV = "EDGEQWEN_LLAMA_CPP_SDIST"
CONVERTER = "convert_hf_to_gguf.py"
# What the converter imports at run time; nothing else of llama.cpp is extracted.
CONVERTER_PARTS = (CONVERTER, "conversion/", "gguf-py/", "LICENSE")
MARKER = "edgeqwen-tool.json"
NATIVE_TOOLS = ("llama-imatrix", "llama-quantize")
FLOAT_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}  # written by the converter itself


def installed_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise EngineError("GGUF builds and runs need llama-cpp-python, which is not installed",
                          hint=INSTALL_HINT) from None


def file_type(precision: str) -> int:
    """llama.cpp's file type number for a recipe precision (Q4_K_M, Q8_0, F16...)."""
    import llama_cpp

    name = "LLAMA_FTYPE_ALL_F32" if precision == "F32" else f"LLAMA_FTYPE_MOSTLY_{precision}"
    if not hasattr(llama_cpp, name):
        raise EngineError(f"llama-cpp-python {installed_version()} has no quantization type {precision}",
                          hint="pick another precision (see `edgeqwen recipes`)")
    return int(getattr(llama_cpp, name))


def converter_script() -> Path:
    """The converter of the installed llama-cpp-python version, fetched on first use."""
    version = installed_version()
    folder = paths.tools_dir() / f"llama.cpp-convert-{version}"
    if (folder / MARKER).is_file():
        return folder / CONVERTER
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as tmp:
        sdist = _sdist(version, Path(tmp))
        staging = Path(tmp) / "converter"
        _extract(sdist, staging, CONVERTER_PARTS)
        if not (staging / CONVERTER).is_file():
            raise EngineError(f"{sdist} has no vendor/llama.cpp/{CONVERTER}",
                              hint="use the sdist of the llama-cpp-python version that is installed")
        digest = sha256_files([sdist], f"hashing {sdist.name}")[sdist]
        (staging / MARKER).write_text(json.dumps(
            {"package": PACKAGE, "version": version, "sdist": sdist.name, "sdist_sha256": digest},
            indent=2) + "\n", encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / MARKER).is_file():  # not a concurrent fetch that won the race
                raise
    return folder / CONVERTER


def _sdist(version: str, tmp: Path) -> Path:
    if env := os.environ.get(SDIST_ENV):
        path = Path(env).expanduser()
        if not path.is_file():
            raise EngineError(f"{SDIST_ENV}={env} is not a file",
                              hint=f"point it at llama_cpp_python-{version}.tar.gz")
        return path
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"{PACKAGE}=={version}", "-d", str(tmp)]
    with step(f"fetching llama.cpp's sources (the {PACKAGE} {version} sdist, about 75 MB) with pip"):
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    found = sorted(tmp.glob("*.tar.gz"))
    if proc.returncode != 0 or not found:
        last = "\n    ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise EngineError(
            f"could not fetch llama.cpp's sources with pip:\n    {last}",
            hint=f"on a machine with network run `pip download --no-deps --no-binary :all: "
            f"{PACKAGE}=={version}` and set {SDIST_ENV} to the .tar.gz it saves",
        )
    return found[0]


def _extract(sdist: Path, staging: Path, parts: tuple[str, ...]) -> None:
    """Extract the files of the sdist's vendor/llama.cpp whose paths start with `parts`."""
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                _, sep, rel = m.name.partition("/vendor/llama.cpp/")
                if sep and (m.isfile() or m.isdir()) and rel.startswith(parts):
                    m.name = rel
                    members.append(m)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **kwargs)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise EngineError(f"{sdist} is not a readable llama-cpp-python sdist: {err}",
                          hint=f"delete it and fetch it again (or unset {SDIST_ENV})") from None


def native_tools() -> Path:
    """The folder holding `llama-imatrix` and `llama-quantize` of the installed llama-cpp-python
    version, built from its sdist on first use (a few minutes on 2 cores)."""
    version = installed_version()
    folder = paths.tools_dir() / f"llama.cpp-bin-{version}"
    if (folder / MARKER).is_file():
        return folder
    for program in ("cmake", "c++"):
        if shutil.which(program) is None:
            raise EngineError(f"building llama.cpp's imatrix tools needs `{program}`, which is not on PATH",
                              hint="install a C++ toolchain and cmake (Debian: apt install g++ cmake; "
                                   "or pip install cmake)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=folder.parent) as tmp:
        sdist = _sdist(version, Path(tmp))
        source, build = Path(tmp) / "llama.cpp", Path(tmp) / "build"
        _extract(sdist, source, ("",))
        configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                     "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                     "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON"]
        compile_ = ["cmake", "--build", str(build), "--target", *NATIVE_TOOLS, "-j", str(os.cpu_count() or 1)]
        hint = "the sdist's llama.cpp did not build here; see the log"
        with step(f"building llama.cpp {version}'s {' and '.join(NATIVE_TOOLS)} (once, a few minutes)"):
            run_tool(configure, Path(tmp) / "cmake-configure.log", tool="cmake (llama.cpp)", hint=hint)
            run_tool(compile_, Path(tmp) / "cmake-build.log", tool="cmake --build (llama.cpp)", hint=hint)
        staging = Path(tmp) / "bin"
        staging.mkdir()
        for program in NATIVE_TOOLS:
            shutil.copy2(build / "bin" / program, staging / program)
        shutil.copy2(source / "LICENSE", staging / "LICENSE")
        (staging / MARKER).write_text(json.dumps(
            {"package": PACKAGE, "version": version, "sdist": sdist.name, "programs": list(NATIVE_TOOLS)},
            indent=2) + "\n", encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / MARKER).is_file():
                raise
    return folder


def imatrix(model: Path, text: Path, out: Path, log: Path, *, threads: int, ctx: int,
            chunks: int | None) -> None:
    """llama.cpp's importance matrix of `model` (an f16/f32 GGUF) over the text in `text`."""
    cmd = [str(native_tools() / "llama-imatrix"), "-m", str(model), "-f", str(text), "-o", str(out),
           "-c", str(ctx), "-b", str(ctx), "-t", str(threads), "--no-ppl"]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    with step(f"llama.cpp imatrix: {chunks or 'all'} chunks of {ctx} tokens ({threads} threads)"):
        run_tool(cmd, log, tool="llama.cpp's llama-imatrix",
                 hint="the calibration text may be shorter than one chunk (algorithm.imatrix.ctx)")


def convert(checkpoint: Path, out: Path, outtype: str, log: Path, *, model_name: str) -> None:
    """Hugging Face checkpoint -> GGUF with llama.cpp's converter, in a child process.

    `model_name` becomes `general.name` (else the converter derives it from the folder name)."""
    script = converter_script()
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # use the gguf-py beside it
    cmd = [sys.executable, str(script), str(checkpoint), "--outfile", str(out), "--outtype", outtype,
           "--model-name", model_name]
    try:
        with step(f"llama.cpp converter: {checkpoint.name} -> GGUF {outtype}"):
            run_tool(cmd, log, tool="llama.cpp's HF-to-GGUF converter", env=env,
                     hint="check that the source is a complete Qwen2/Qwen3 checkpoint")
    except ToolFailed as err:
        if "pre-tokenizer was not recognized" in err.output:
            raise EngineError(
                f"llama.cpp's converter does not recognise the tokenizer of {checkpoint}: llama.cpp "
                "only converts tokenizers whose pre-tokenizer it knows, and this one is not the "
                "original Qwen tokenizer", hint=f"full log: {err.log}; keep the model's original "
                "tokenizer files (tokenizer.json, tokenizer_config.json) in the checkpoint",
            ) from None
        raise


def quantize(src: Path, dst: Path, precision: str, log: Path, *, threads: int,
             output_tensor_type: str | None = None, token_embedding_type: str | None = None,
             pure: bool = False, leave_output_tensor: bool = False, imatrix: Path | None = None) -> None:
    """Quantize with the binding's quantizer, or with `llama-quantize` when an imatrix is given
    (same llama.cpp version, same flags)."""
    flags = []
    if output_tensor_type:
        flags += ["--output-tensor-type", output_tensor_type]
    if token_embedding_type:
        flags += ["--token-embedding-type", token_embedding_type]
    flags += ["--pure"] * pure + ["--leave-output-tensor"] * leave_output_tensor
    if imatrix is None:
        cmd = [sys.executable, "-m", "edgeqwen.llama_cpp_tools", "quantize", str(src), str(dst), precision,
               "--threads", str(threads), *flags]
    else:
        cmd = [str(native_tools() / "llama-quantize"), "--imatrix", str(imatrix), *flags,
               str(src), str(dst), precision, str(threads)]
    with step(f"llama.cpp quantizer: {precision}{' with imatrix' if imatrix else ''} ({threads} threads)"):
        run_tool(cmd, log, tool="llama.cpp's quantizer",
                 hint="the intermediate GGUF may be damaged, or the type unsupported for this model")


def _quantize_main(args: argparse.Namespace) -> int:
    import llama_cpp
    from gguf import GGMLQuantizationType

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type(args.precision)
    params.nthread = args.threads
    params.pure = args.pure
    params.quantize_output_tensor = not args.leave_output_tensor
    if args.output_tensor_type:
        params.output_tensor_type = GGMLQuantizationType[args.output_tensor_type].value
    if args.token_embedding_type:
        params.token_embedding_type = GGMLQuantizationType[args.token_embedding_type].value
    code = llama_cpp.llama_model_quantize(str(args.src).encode(), str(args.dst).encode(),
                                          ctypes.byref(params))
    if code != 0:
        print(f"llama_model_quantize returned {code}", file=sys.stderr)
    return 1 if code != 0 else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeqwen.llama_cpp_tools")
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="quantize a GGUF with llama.cpp (used by the GGUF engine)")
    q.add_argument("src", type=Path)
    q.add_argument("dst", type=Path)
    q.add_argument("precision")
    q.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    q.add_argument("--output-tensor-type")
    q.add_argument("--token-embedding-type")
    q.add_argument("--pure", action="store_true")
    q.add_argument("--leave-output-tensor", action="store_true")
    args = parser.parse_args(argv)
    return _quantize_main(args)


if __name__ == "__main__":
    sys.exit(main())
