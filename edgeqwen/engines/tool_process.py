"""Run an external conversion tool as a child process, keeping its log.

Engines run their tools in children: the tool's peak memory is released when it exits and
shows up as the children's peak RSS in the manifest, and a crash inside it (a native abort,
an out-of-memory kill) cannot take edgeqwen down with a half-written artifact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import deque
from pathlib import Path

from edgeqwen import paths, progress
from edgeqwen.errors import EngineError


class ToolFailed(EngineError):
    """A tool exited non-zero; `output` holds its last lines for callers that explain it."""

    def __init__(self, message: str, *, hint: str | None, output: str, log: Path) -> None:
        super().__init__(message, hint=hint)
        self.output = output
        self.log = log


def run_tool(cmd: list[str], log: Path, *, tool: str, hint: str,
             env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    """Run `cmd` (with `env` as its whole environment and `cwd` as its folder, if given),
    writing everything it prints to `log`; raise ToolFailed on a non-zero exit."""
    tail: deque[str] = deque(maxlen=25)
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, cwd=cwd)
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            tail.append(line.rstrip())
        # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN is the max over every child
        # this process ever had, useless in a process that builds many artifacts).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
    progress.record_tool_peak(usage.ru_maxrss / 1024)
    if code == 0:
        return
    slug = "".join(c if c.isalnum() else "-" for c in tool.lower())
    kept = paths.home() / "logs" / f"{slug}-{int(time.time())}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(log, kept)
    output = "\n".join(line for line in tail if line.strip())
    if code < 0:
        reason = f"was killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
    else:
        reason = f"failed (exit {code})"
    last = "\n    ".join(line[-300:] for line in output.splitlines())
    raise ToolFailed(f"{tool} {reason}; last output:\n    {last}",
                     hint=f"full log: {kept}; {hint}", output=output, log=kept)
