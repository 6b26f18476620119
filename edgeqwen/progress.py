"""Progress display for long steps (hashing, reassembling, converting), on stderr."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

console = Console(stderr=True, soft_wrap=True)


@contextmanager
def byte_progress(description: str, total: int) -> Iterator[Progress]:
    """A bar in bytes; yields the Progress whose single task id is 0."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeElapsedColumn(), console=console,
                  transient=True, disable=not console.is_terminal) as bar:
        bar.add_task(description, total=total)
        yield bar


# Finished steps (description, seconds, peak RSS of the tools run inside) since the last
# `timings.clear()`; the pipeline records them in the manifest as the build's cost per step.
timings: list[dict[str, object]] = []
_tool_peaks: list[float] = []  # child peaks recorded during the running step


def record_tool_peak(peak_mb: float) -> None:
    _tool_peaks.append(round(peak_mb, 1))


@contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner for a step whose length we cannot measure; prints a ✓ line when done."""
    started = time.perf_counter()
    _tool_peaks.clear()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        bar.add_task(description, total=None)
        yield
    seconds = time.perf_counter() - started
    entry: dict[str, object] = {"step": description, "seconds": round(seconds, 2)}
    if _tool_peaks:
        entry["tool_peak_rss_mb"] = max(_tool_peaks)
    timings.append(entry)
    console.print(f"[green]✓[/green] {description} [dim]({seconds:.0f} s)[/dim]")


# Warnings that reach users of every command without being theirs to act on: torchao (pulled
# in by transformers and ExecuTorch) failing to load its CUDA-only kernels on a CPU machine,
# and torch deprecating a registration torchao still makes.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_library_warnings() -> None:
    """Silence QUIET_LOGGERS below errors (the CLI and `edgeqwen matrix` workers call it)."""
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
