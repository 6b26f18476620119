"""Parsing and printing byte sizes the way device specs write them."""

from __future__ import annotations

import re

from edgeqwen.errors import EdgeQwenError

GiB = 2**30
# Device specs say "4GB" for 4 GiB, so decimal and binary spellings mean the same here.
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """'4GB', '4 GiB', '1.5g', '512MB' -> bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise EdgeQwenError(f"cannot read {text!r} as a size", hint="write it like 4GB, 1.5GiB or 512MB")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise EdgeQwenError(f"size {text!r} must be positive")
    return int(value)


def human(n: float) -> str:
    """Bytes in the largest unit that keeps the number >= 1 (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
