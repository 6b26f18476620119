"""Shared fixtures: tiny random Qwen2 and Qwen3 checkpoints built in the test session.

They are real checkpoints (config.json, safetensors, a trained byte-level BPE tokenizer
with Qwen's special tokens, and the real Qwen2.5 or Qwen3 chat template), so they take the
same code paths as the real models, only in milliseconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgeqwen import paths

FIXTURES = Path(__file__).parent / "fixtures"
# The user's edgeqwen cache, read before any test points EDGEQWEN_HOME elsewhere: slow tests,
# fetched tools and the extracted Qwen tokenizer live there, once per machine.
REAL_HOME = paths.home()
REAL_TOOLS = paths.tools_dir()
QWEN_VOCAB_SIZE, QWEN_ENDOFTEXT, QWEN_IM_END = 151936, 151643, 151645
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. ",
    "def add(a, b):\n    return a + b\n",
    "import numpy as np\nprint(np.arange(10))\n",
    "Qwen is a family of language models. Small models run on phones and laptops. ",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    "Hej verden! Hallo Welt! Bonjour le monde! Привет, мир! 你好，世界！",
]


def chat_template_for(model_type: str) -> str:
    """The real chat template of the family: Qwen3's has the `enable_thinking` switch."""
    name = "qwen3_chat_template.jinja" if model_type == "qwen3" else "qwen2.5_chat_template.jinja"
    return (FIXTURES / name).read_text(encoding="utf-8")


def _tokenizer(folder: Path, template: str) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>")
    hf.chat_template = template
    hf.save_pretrained(folder)
    return len(hf)


def make_tiny_model(folder: Path, model_type: str, seed: int = 0, tied: bool = True,
                    tokenizer: Path | None = None, head_dim: int = 16) -> Path:
    """A tiny random checkpoint (4 heads of `head_dim`); with `tokenizer` (a folder), Qwen's real
    tokenizer and vocabulary size instead of the trained 384-token one (llama.cpp's converter
    accepts only known ones)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config, Qwen3Config

    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        vocab, pad, eos = _tokenizer(folder, chat_template_for(model_type)), 0, 2
    else:
        for f in tokenizer.iterdir():
            shutil.copy(f, folder / f.name)
        (folder / "chat_template.jinja").write_text(chat_template_for(model_type), encoding="utf-8")
        vocab, pad, eos = QWEN_VOCAB_SIZE, QWEN_ENDOFTEXT, QWEN_IM_END
    common = dict(vocab_size=vocab, hidden_size=4 * head_dim, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=tied, rope_theta=1_000_000.0, bos_token_id=pad,
                  eos_token_id=eos, pad_token_id=pad)
    config = (Qwen2Config(**common) if model_type == "qwen2"
              else Qwen3Config(head_dim=head_dim, **common))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3", "qwen3")


@pytest.fixture(params=["qwen2", "qwen3"])
def tiny_model(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def qwen_tokenizer() -> Path:
    """Qwen2.5's real tokenizer files, read from the offline sample GGUF's metadata (no weights
    are dequantized) and cached in the user's edgeqwen cache."""
    import os
    import tempfile

    from transformers import AutoTokenizer

    from edgeqwen import sample

    target = REAL_HOME / "test-cache" / f"qwen-tokenizer-{sample.SAMPLE_SHA256[:16]}"
    if not (target / "tokenizer.json").is_file():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EDGEQWEN_HOME", str(REAL_HOME))
            gguf = sample.assemble()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent))
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(staging)
        os.replace(staging, target)
    return target


@pytest.fixture(scope="session")
def tiny_qwen2_real_vocab(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer: Path) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2-rv", "qwen2", tokenizer=qwen_tokenizer)


@pytest.fixture(scope="session")
def tiny_qwen3_real_vocab(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer: Path) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3-rv", "qwen3", tokenizer=qwen_tokenizer)


@pytest.fixture(scope="module")
def module_dir(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder for one test module's sample artifacts, deleted when the module is done: a
    sample build takes up to gigabytes and CI's disk must still hold the next module's build
    (pytest would keep them all until the session ends)."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_home(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fast test gets its own EDGEQWEN_HOME. Slow tests share the user's cache, so the
    sample is reassembled and dequantized once per machine, not once per test. Fetched
    tools (llama.cpp's converter) are shared by all tests."""
    monkeypatch.setenv("EDGEQWEN_TOOLS_DIR", str(REAL_TOOLS))
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("EDGEQWEN_HOME", str(tmp_path / "edgeqwen-home"))


def mean_kl(ref: np.ndarray, other: np.ndarray) -> float:
    """Mean KL(ref || other) over positions, computed here independently of edgeqwen.validation."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(ref), log_softmax(other)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def copy_checkpoint(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# Foundry Local's SDK pins onnxruntime 1.31.0 (edgeqwen uses 1.32.0), so it lives in its own
# virtual environment under the edgeqwen test cache, made once per machine from PyPI.
SDK = "foundry-local-sdk==2.2.1"
CHAT = Path(__file__).parent / "foundry_local_chat.py"


@pytest.fixture(scope="session")
def foundry_python() -> Path:
    env = REAL_HOME / "test-cache" / SDK.replace("==", "-")
    python = env / "bin" / "python"
    if not (env / ".complete").is_file():
        venv.create(env, with_pip=True, clear=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", SDK],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"installing {SDK} from PyPI failed:\n{done.stderr[-2000:]}"
        (env / ".complete").touch()
    return python


def run_foundry(python: Path, **args: object) -> tuple[dict, str]:
    done = subprocess.run([str(python), str(CHAT), json.dumps(args)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(result[len("RESULT "):]), done.stdout + done.stderr
