"""Calibration text: the shipped file, user files (.txt / .jsonl), and errors that name the fix."""

import json

import pytest

from edgeqwen import calibration
from edgeqwen.calibration import CalibrationError
from edgeqwen.hashing import sha256_file
from edgeqwen.validation import default_texts


def test_shipped_text_is_separate_from_the_validation_texts() -> None:
    shipped = calibration.load()
    assert shipped.shipped and shipped.path == calibration.SHIPPED
    assert shipped.sha256 == sha256_file(calibration.SHIPPED)
    # Validation must not score the model on what GPTQ was calibrated with.
    assert "calibration" not in default_texts() and "default" not in default_texts()
    paragraphs = [p for p in shipped.text.split("\n\n") if len(p) > 80]
    for name, text in default_texts().items():
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
