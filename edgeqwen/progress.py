"""Progress display for long steps (hashing, reassembling, converting), on stderr."""

from __future__ import annotations

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


@contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner for a step whose length we cannot measure; prints a ✓ line when done."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        bar.add_task(description, total=None)
        yield
    console.print(f"[green]✓[/green] {description}")
