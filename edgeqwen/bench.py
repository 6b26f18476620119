"""Speed and memory of an artifact under a device profile.

The measurement runs in a child process (`python -m edgeqwen.bench WORKER-ARGS`): its
address space is capped with RLIMIT_AS before it starts, it imports only the artifact's
runtime (no torch for ONNX/GGUF), and its peak RSS is its own. An artifact that does not
fit the cap fails to load or allocate there, and the report says so instead of crashing.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeqwen.errors import EdgeQwenError
from edgeqwen.profiles import DeviceProfile

if TYPE_CHECKING:
    from collections.abc import Callable

    from runtimes.base import GenerationOptions, Runtime

SHORT_PROMPT = "Write a Python function that returns the n-th Fibonacci number."
LONG_PROMPT_TOKENS = 512
NEW_TOKENS = 64
WORKER_TIMEOUT_S = 1800


@dataclass(frozen=True)
class BenchSettings:
    artifact: str
    profile: str
    threads: int
    memory_cap: int | None
    context_length: int | None
    repeats: int = 3
    new_tokens: int = NEW_TOKENS


def run(artifact: Path | str, profile: DeviceProfile, *, memory_cap: int | None = None,
        threads: int | None = None, repeats: int = 3, new_tokens: int = NEW_TOKENS,
        record: bool = True) -> dict[str, Any]:
    """Benchmark `artifact` in a capped child process; returns the report (also recorded)."""
    from edgeqwen.artifacts import load_manifest

    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    settings = BenchSettings(
        artifact=str(artifact), profile=profile.name, threads=threads or profile.resolved_threads(),
        memory_cap=memory_cap if memory_cap is not None else profile.memory_cap,
        context_length=profile.context_length, repeats=repeats, new_tokens=new_tokens)
    cap = settings.memory_cap

    def limit() -> None:  # runs in the child, before it execs Python
        if cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeqwen.bench", json.dumps(asdict(settings))],
                          capture_output=True, text=True, errors="replace", preexec_fn=limit,
                          timeout=WORKER_TIMEOUT_S)
    report: dict[str, Any] = {
        "profile": profile.name, "threads": settings.threads,
        "memory_cap_mb": round(cap / 2**20) if cap else None,
        "context_length": settings.context_length, "runtime": manifest.runtime,
        "size_mb": round(manifest.size_bytes / 2**20, 1),
    }
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        report.update(json.loads(lines[-1]), fits=True)
    else:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        under = f" under the {round(cap / 2**20)} MiB address-space cap" if cap else ""
        report.update(fits=False,
                      error=f"the benchmark process failed{under} (exit {proc.returncode}): {tail}")
    if manifest.memory and report.get("fits"):
        context = report["runtime_info"]["context_length"]
        report["expected_peak_mb"] = expected_peak_mb(manifest.memory, context)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    if record:
        manifest.benchmarks = {**manifest.benchmarks, profile.name: report}
        manifest.write(artifact)
    return report


def expected_peak_mb(memory: dict[str, Any], context_length: int) -> float:
    """The manifest's memory statement at the context the benchmark ran with."""
    kv = memory["kv_cache_bytes"] * context_length / memory["context_length"]
    return round((memory["weights_bytes"] + kv + memory["overhead_bytes"]) / 2**20, 1)


def time_generation(rt: Runtime, prompt: list[int], options: GenerationOptions, *,
                    midway: Callable[[], None] | None = None) -> tuple[float, float | None, int]:
    """One cold generation: (time to first token, decode tokens/s after it, tokens generated).
    `midway` is called once halfway through the requested tokens."""
    rt.reset()  # cold prefill every time: no KV cache reused from the previous run
    start = time.perf_counter()
    first = last = start
    n = 0
    for _ in rt.stream_ids(prompt, options):
        last = time.perf_counter()
        if n == 0:
            first = last
        n += 1
        if midway is not None and n == options.max_new_tokens // 2:
            midway()
    return first - start, ((n - 1) / (last - first) if n > 1 and last > first else None), n


def _worker(settings: BenchSettings) -> dict[str, Any]:
    import os

    import psutil

    from edgeqwen.runner import open_artifact
    from edgeqwen.validation import default_texts
    from runtimes.base import GenerationOptions, peak_rss_mb

    t0 = time.perf_counter()
    rt = open_artifact(settings.artifact, threads=settings.threads, context_length=settings.context_length)
    load_s = time.perf_counter() - t0
    short = rt.encode(rt.render_chat([{"role": "user", "content": SHORT_PROMPT}]))
    texts = default_texts()
    room = rt.info()["context_length"] - settings.new_tokens - 1  # small test models have short contexts
    long = rt.encode(texts["english"] + "\n" + texts["python"])[:min(LONG_PROMPT_TOKENS, room)]
    options = GenerationOptions(max_new_tokens=settings.new_tokens)
    threads_seen = 0

    def count_threads() -> None:
        nonlocal threads_seen
        threads_seen = max(threads_seen, psutil.Process().num_threads())

    def timed(prompt: list[int]) -> tuple[float, float | None, int]:
        return time_generation(rt, prompt, options, midway=count_threads)

    timed(short)  # warm-up: first-call allocations and caches are not what a user waits for
    short_runs = [timed(short) for _ in range(settings.repeats)]
    long_runs = [timed(long) for _ in range(settings.repeats)]
    decode = [d for _, d, _ in short_runs + long_runs if d is not None]
    ttft = statistics.median(t for t, _, _ in short_runs)
    ttft_long = statistics.median(t for t, _, _ in long_runs)
    return {
        "load_s": round(load_s, 2),
        "ttft_s": round(ttft, 4),
        "prefill_tok_s": round(len(short) / ttft, 1),
        "prefill_long_tok_s": round(len(long) / ttft_long, 1),
        "decode_tok_s": round(statistics.median(decode), 1) if decode else None,
        "prompt_tokens": {"short": len(short), "long": len(long)},
        "generated_tokens": [n for _, _, n in short_runs + long_runs],
        "repeats": settings.repeats,
        "peak_rss_mb": peak_rss_mb(),
        "address_space_limit_mb": _limit_mb(),
        "os_threads": threads_seen,
        "runtime_info": {k: v for k, v in rt.info().items() if k not in ("path", "rss_mb", "peak_rss_mb")},
        "pid": os.getpid(),
    }


def _limit_mb() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else round(soft / 2**20)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        raise SystemExit("usage: python -m edgeqwen.bench SETTINGS-JSON (used by `edgeqwen bench`)")
    settings = BenchSettings(**json.loads(args[0]))
    try:
        result = _worker(settings)
    except MemoryError:
        print("out of memory under the cap (MemoryError)", file=sys.stderr)
        return 4
    except EdgeQwenError as err:
        print(f"{err.message}", file=sys.stderr)
        return 1
    except Exception as err:  # the parent reports it; a traceback would bury the reason
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
