"""Calibration text: the shipped file, user files (.txt / .jsonl), and errors that name the fix."""

import json

import pytest

from edgeqwen import calibration
from edgeqwen.calibration import CalibrationError
from edgeqwen.hashing import sha256_file
from edgeqwen.validation import default_texts, per_language_texts


def test_shipped_text_is_separate_from_the_validation_texts() -> None:
    shipped = calibration.load()
    assert shipped.shipped and shipped.path == calibration.SHIPPED
    assert shipped.sha256 == sha256_file(calibration.SHIPPED)
    # Validation must not score the model on what GPTQ was calibrated with.
    assert "calibration" not in default_texts() and "default" not in default_texts()
    paragraphs = [p for p in shipped.text.split("\n\n") if len(p) > 80]
    for name, text in {**default_texts(), **per_language_texts()}.items():
        assert not any(p in text for p in paragraphs), name
    # English, code and the languages the validation texts cover.
    for marker in ("def ", "SELECT ", "Dansk:", "Suomi:", "Slovenščina:", "Українська:", "中文："):
        assert marker in shipped.text
    info = shipped.info(tokens=100, samples=3, seq_len=32)
    assert info["file"] == "edgeqwen/texts/calibration/default.txt" and info["samples"] == 3


def test_user_txt_and_jsonl(tmp_path) -> None:
    txt = tmp_path / "mine.txt"
    txt.write_text("Hei maailma. " * 10, encoding="utf-8")
    loaded = calibration.load(txt)
    assert not loaded.shipped and loaded.text == txt.read_text(encoding="utf-8")
    assert loaded.info(1, 1, 1)["file"] == str(txt)
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second", "id": 2}) + "\n",
                     encoding="utf-8")
    assert calibration.load(jsonl).text == "first\n\nsecond"


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    (b"  \n", "holds no text"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
    (b'{"text": "ok"}\nnot json\n', ":2 is not JSON"),
    (b'{"body": "no text field"}\n', ':1 has no string field "text"'),
])
def test_bad_files_are_refused_with_a_hint(tmp_path, content, message) -> None:
    suffix = ".jsonl" if content and content.startswith(b"{") else ".txt"
    path = tmp_path / f"calib{suffix}"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CalibrationError) as err:
        calibration.load(path)
    assert message in err.value.message and "jsonl" in err.value.hint


def test_samples_counts_full_windows() -> None:
    assert calibration.samples(1000, 256, None) == 3
    assert calibration.samples(1000, 256, 2) == 2
    assert calibration.samples(255, 256, None) == 0


def test_shipped_files_join_in_the_order_a_recipe_names_them() -> None:
    both = calibration.load(shipped=("default.txt", "sampled.jsonl"))
    default = calibration.load()
    sampled = [json.loads(line)["text"] for line in
               (calibration.SHIPPED_DIR / "sampled.jsonl").read_text(encoding="utf-8").splitlines()]
    assert both.text == "\n\n".join([default.text, *sampled])
    assert both.shipped and both.names == ("default.txt", "sampled.jsonl") and both.sha256 != default.sha256
    assert both.info(1, 1, 1)["file"] == "edgeqwen/texts/calibration/default.txt+sampled.jsonl"
    # One continuation of every opening of default.txt, up to 256 tokens each (a few end
    # early, at the model's end-of-text).
    openings = [p.strip("\n")[:12] for p in default.text.split("\n\n") if len(p.strip()) > 40]
    assert len(sampled) == len(openings) and sum(map(len, sampled)) > 2 * len(default.text)
    # (the chat turn's special tokens are dropped from the continuation: skip_special_tokens)
    starts = [t[:12] for t in sampled]
    assert [a for a, b in zip(starts, openings, strict=True) if a != b] == ["user\nCan you"]
    # Sampled text is calibration too: nothing of it may be scored by validation.
    for name, text in {**default_texts(), **per_language_texts()}.items():
        assert not any(s[i:i + 80] in text for s in sampled for i in range(0, len(s) - 80, 40)), name


def test_unknown_shipped_file_is_refused_naming_the_shipped_ones() -> None:
    with pytest.raises(CalibrationError) as err:
        calibration.load(shipped=("default.txt", "wiki.txt"))
    assert "'wiki.txt'" in err.value.message and "sampled.jsonl" in err.value.hint
