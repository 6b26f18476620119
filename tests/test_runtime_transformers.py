from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from runtimes.base import GenerationOptions, Runtime
from runtimes.transformers_backend import TransformersRuntime


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def runtime(request: pytest.FixtureRequest) -> TransformersRuntime:
    return TransformersRuntime.load(request.getfixturevalue(f"tiny_{request.param}"), threads=1)


def test_logits_match_a_plain_forward_pass(runtime: TransformersRuntime) -> None:
    import torch

    ids = runtime.encode("def add(a, b):\n    return a + b")
    logits = runtime.logits(ids)
    assert logits.shape == (len(ids), runtime.model.config.vocab_size)
    assert logits.dtype == np.float32
    with torch.inference_mode():
        expected = runtime.model(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=0)


def test_greedy_is_deterministic_and_follows_logits(runtime: TransformersRuntime) -> None:
    prompt = runtime.encode("The quick brown fox")
    options = GenerationOptions(max_new_tokens=12)
    first = list(runtime.stream_ids(prompt, options))
    assert first == list(runtime.stream_ids(prompt, options))
    assert len(first) >= 1
    # Each greedy token is the argmax of the logits over the sequence so far.
    seq = list(prompt)
    for token in first:
        assert int(np.argmax(runtime.logits(seq)[-1])) == token
        seq.append(token)


def test_sampling_depends_on_seed(runtime: TransformersRuntime) -> None:
    prompt = runtime.encode("Qwen is")
    sample = lambda seed: list(runtime.stream_ids(  # noqa: E731
        prompt, GenerationOptions(max_new_tokens=16, temperature=5.0, seed=seed)))
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_chat_uses_the_models_template(runtime: TransformersRuntime) -> None:
    prompt = runtime.render_chat([{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "hi"}])
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert runtime.encode("<|im_start|>") == [1]
    reply = runtime.chat([{"role": "user", "content": "hi"}], GenerationOptions(max_new_tokens=8))
    ids = list(runtime.stream_ids(runtime.encode(runtime.render_chat(
        [{"role": "user", "content": "hi"}])), GenerationOptions(max_new_tokens=8)))
    assert reply == runtime.decode(ids)
    assert runtime.info()["threads"] == 1 and runtime.info()["backend"] == "transformers"


def test_refuses_remote_code(tmp_path: Path) -> None:
    from edgeqwen.errors import SourceError

    (tmp_path / "config.json").write_text('{"model_type": "qwen2", "auto_map": {}}')
    with pytest.raises(SourceError, match="trust_remote_code"):
        TransformersRuntime.load(tmp_path)


class ScriptedRuntime(Runtime):
    """Emits a fixed text one character per token, to test the shared text layer."""

    name = "scripted"

    def __init__(self, script: str) -> None:
        self.script = script

    @classmethod
    def load(cls, path: Path, *, threads: int | None = None) -> Runtime:  # pragma: no cover
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def render_chat(self, messages, *, add_generation_prompt=True, **kw) -> str:
        return ""

    def stream_ids(self, prompt_ids, options) -> Iterator[int]:
        yield from self.encode(self.script)[: options.max_new_tokens]

    def logits(self, token_ids) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def info(self) -> dict:
        return {}


@pytest.mark.parametrize(("script", "stop", "expected"), [
    ("hello<|im_end|>more", ["<|im_end|>"], "hello"),
    ("abc STOP def", ["STOP", "c S"], "ab"),
    ("no stop here", ["<|x|>"], "no stop here"),
    ("ends with partial <|", ["<|im_end|>"], "ends with partial <|"),
])
def test_stop_strings_cut_streamed_text(script: str, stop: list[str], expected: str) -> None:
    rt = ScriptedRuntime(script)
    pieces = list(rt.stream("", GenerationOptions(max_new_tokens=100, stop=stop)))
    assert "".join(pieces) == expected
    assert not any(s in "".join(pieces) for s in stop)


def test_generation_options_are_checked() -> None:
    with pytest.raises(ValueError):
        GenerationOptions(max_new_tokens=0)
    with pytest.raises(ValueError):
        GenerationOptions(top_p=0)
