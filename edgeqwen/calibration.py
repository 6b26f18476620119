"""Calibration text for data-aware quantization (GPTQ): the shipped file or the user's own.

Nothing is downloaded at build time. The shipped `texts/calibration/default.txt` is written for
edgeqwen (English prose, Python/SQL/JavaScript code and short paragraphs in 28 languages)
and shares no passage with the validation texts, so validation does not score the model on
what it was calibrated with. `texts/calibration/sampled.jsonl` holds the sample model's own
continuations of its paragraphs (`edgeqwen.sampled_calibration`); a recipe names the shipped
files it calibrates with when the user passes none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeqwen.errors import EdgeQwenError
from edgeqwen.hashing import sha256_file

SHIPPED_DIR = Path(__file__).parent / "texts" / "calibration"
DEFAULT = "default.txt"
SHIPPED = SHIPPED_DIR / DEFAULT
FILE_HINT = "pass a UTF-8 .txt file, or a .jsonl file with one {\"text\": ...} object per line"


class CalibrationError(EdgeQwenError):
    """A calibration file that is missing, empty, not text, or too short."""


@dataclass(frozen=True)
class CalibrationText:
    path: Path
    text: str
    sha256: str  # of the file; of the joined text when several shipped files make it
    shipped: bool
    names: tuple[str, ...] = ()  # the shipped files, in order

    def info(self, tokens: int, samples: int, seq_len: int) -> dict:
        """What the manifest records: enough to rebuild with the same data."""
        file = f"edgeqwen/texts/calibration/{'+'.join(self.names)}" if self.shipped else str(self.path)
        return {"file": file, "sha256": self.sha256, "chars": len(self.text), "tokens": tokens,
                "samples": samples, "seq_len": seq_len}


def load(path: str | Path | None = None, shipped: Sequence[str] = (DEFAULT,)) -> CalibrationText:
    """The calibration text at `path` (.txt whole, or .jsonl `text` fields joined), else the
    shipped files named in `shipped`, joined in that order."""
    if path is not None:
        file = Path(path)
        return CalibrationText(path=file, text=_read(file), sha256=sha256_file(file), shipped=False)
    files = [SHIPPED_DIR / name for name in shipped]
    for file in files:
        if not file.is_file():
            known = ", ".join(sorted(p.name for p in SHIPPED_DIR.iterdir() if p.suffix in (".txt", ".jsonl")))
            raise CalibrationError(f"no shipped calibration file {file.name!r}", hint=f"shipped: {known}")
    text = "\n\n".join(_read(file) for file in files)
    sha = sha256_file(files[0]) if len(files) == 1 else hashlib.sha256(text.encode("utf-8")).hexdigest()
    return CalibrationText(path=files[0], text=text, sha256=sha, shipped=True, names=tuple(shipped))


def _read(file: Path) -> str:
    if not file.is_file():
        raise CalibrationError(f"calibration file {file} does not exist", hint=FILE_HINT)
    try:
        raw = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CalibrationError(f"calibration file {file} is not UTF-8 text", hint=FILE_HINT) from None
    text = _jsonl_text(file, raw) if file.suffix == ".jsonl" else raw
    if not text.strip():
        raise CalibrationError(f"calibration file {file} holds no text", hint=FILE_HINT)
    return text


def _jsonl_text(file: Path, raw: str) -> str:
    texts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CalibrationError(f"{file}:{number} is not JSON ({err.msg})", hint=FILE_HINT) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CalibrationError(f"{file}:{number} has no string field \"text\"", hint=FILE_HINT)
        texts.append(record["text"])
    return "\n\n".join(texts)


def count_tokens(checkpoint: Path, text: str) -> int:
    """Tokens of `text` under the checkpoint's own tokenizer (no special tokens added)."""
    return len(_tokenizer(checkpoint)(text, add_special_tokens=False)["input_ids"])


def window_texts(text: CalibrationText, checkpoint: Path, seq_len: int, count: int) -> list[str]:
    """The first `count` full `seq_len`-token windows of the text, decoded back to strings, for
    tools that take calibration samples as a list of texts (optimum-intel)."""
    tokenizer = _tokenizer(checkpoint)
    return [tokenizer.decode(ids) for ids in _cut(tokenizer, text, seq_len, count)]


def token_windows(text: CalibrationText, checkpoint: Path, seq_len: int, count: int) -> list[list[int]]:
    """The first `count` full `seq_len`-token windows of the text as token ids."""
    return _cut(_tokenizer(checkpoint), text, seq_len, count)


def _cut(tokenizer: Any, text: CalibrationText, seq_len: int, count: int) -> list[list[int]]:
    ids = tokenizer(text.text, add_special_tokens=False)["input_ids"]
    return [ids[i * seq_len:(i + 1) * seq_len] for i in range(count)]


def _tokenizer(checkpoint: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoint))


def samples(token_count: int, seq_len: int, max_samples: int | None) -> int:
    """How many full `seq_len` windows the text gives (the tail shorter than one is dropped)."""
    n = token_count // seq_len
    return min(n, max_samples) if max_samples else n


def windows(text: CalibrationText, checkpoint: Path, seq_len: int, max_samples: int | None, *,
            what: str, option: str) -> tuple[int, int]:
    """(tokens, windows) of `text` under the checkpoint's tokenizer; refuses a text shorter than
    one window, naming the recipe option (`option`) that sets its length."""
    tokens = count_tokens(checkpoint, text.text)
    n = samples(tokens, seq_len, max_samples)
    if n == 0:
        raise CalibrationError(
            f"the calibration text has {tokens} tokens, fewer than one {what} of {seq_len} ({option})",
            hint="pass a longer --calibration file (a few thousand tokens is typical)")
    return tokens, n
