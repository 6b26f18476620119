"""Recipes: declarative, versioned build plans, validated by a typed schema.

A recipe says *what* to build (format, precision, algorithm options, target, gates); the
engine it names says *how*. Algorithm options are checked again by the engine, which
knows which option names its tool version really reads.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeqwen.errors import RecipeError

SCHEMA_VERSION = 1
ONNX_PRECISIONS = ("int4", "int8", "fp16", "fp32")
# llama.cpp file types that make sense for small dense models.
GGUF_PRECISIONS = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q4_K_M",
    "Q4_K_S", "Q4_0", "Q4_1", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "IQ4_NL", "IQ4_XS",
)
# ExecuTorch: 8-bit dynamic activations + 4-bit grouped weights (torchao), or no quantization.
PTE_PRECISIONS = ("8da4w", "fp32")
# OpenVINO IR: NNCF's weight compression (int4 groups / int8 per channel) or fp16 weights.
OPENVINO_PRECISIONS = ("int4", "int8", "fp16")
# QNN (Snapdragon NPU): 16-bit activations with 8- or 4-bit weights, static QDQ.
QNN_PRECISIONS = ("a16w8", "a16w4")
PRECISIONS: dict[str, tuple[str, ...]] = {"onnx": ONNX_PRECISIONS, "gguf": GGUF_PRECISIONS,
                                          "pte": PTE_PRECISIONS, "openvino": OPENVINO_PRECISIONS,
                                          "qnn": QNN_PRECISIONS}
DEFAULT_ENGINE: dict[str, str] = {"onnx": "onnxruntime-genai", "gguf": "llama-cpp", "pte": "executorch",
                                  "openvino": "optimum-intel", "qnn": "onnxruntime-qnn"}
DEVICES = ("cpu", "npu-qnn", "npu-openvino", "mobile")
PROFILES = ("desktop", "mobile", "tiny", "phone")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gates(_Strict):
    """Validation gates; a gate left out is not checked."""

    max_ppl_increase_pct: float | None = Field(default=None, ge=0)
    max_kl: float | None = Field(default=None, ge=0)
    min_top1: float | None = Field(default=None, ge=0, le=1)


class Target(_Strict):
    device: Literal["cpu", "npu-qnn", "npu-openvino", "mobile"] = "cpu"
    profile: Literal["desktop", "mobile", "tiny", "phone"] = "desktop"


class RuntimeSettings(_Strict):
    """How the target should run the artifact; recorded in the manifest and applied by the
    runtime backend when it loads the artifact (explicit arguments and `bench` profiles win).
    A setting left out is the backend's default."""

    threads: int | None = Field(default=None, ge=1, le=256)
    # Prompt tokens per forward pass (llama.cpp n_batch = n_ubatch): smaller batches shrink
    # the compute buffers and slow long prompts a little.
    batch_size: int | None = Field(default=None, ge=16, le=8192)
    mmap: bool | None = None  # map the weights from the file instead of reading them in
    kv_cache_type: Literal["f16", "q8_0"] | None = None  # q8_0 halves the KV cache (llama.cpp)
    # Intel NPU (OpenVINO): the NPU compiles the model for static shapes, prompts of up to
    # max_prompt_len tokens and at least min_response_len reply tokens (openvino-genai's
    # MAX_PROMPT_LEN / MIN_RESPONSE_LEN); CPU and GPU ignore them.
    max_prompt_len: int | None = Field(default=None, ge=16, le=131072)
    min_response_len: int | None = Field(default=None, ge=1, le=131072)


# Settings only one runtime reads: format -> (that runtime, the settings).
FORMAT_ONLY_RUNTIME_SETTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gguf": ("llama.cpp", ("batch_size", "mmap", "kv_cache_type")),
    "openvino": ("OpenVINO", ("max_prompt_len", "min_response_len")),
}


class Recipe(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = Field(min_length=1)
    format: Literal["onnx", "gguf", "pte", "openvino", "qnn"]
    engine: str | None = None
    precision: str
    algorithm: dict[str, Any] = Field(default_factory=dict)
    target: Target = Field(default_factory=Target)
    context_length: int = Field(default=4096, ge=128, le=131072)
    validation: Gates = Field(default_factory=Gates)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    model: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise_precision(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("precision"), str):
            p = data["precision"]
            data = {**data, "precision": p.upper() if data.get("format") == "gguf" else p.lower()}
        return data

    @field_validator("precision")
    @classmethod
    def _check_precision(cls, precision: str, info: ValidationInfo) -> str:
        fmt = info.data.get("format")  # absent when the format itself was invalid
        if fmt in PRECISIONS and precision not in PRECISIONS[fmt]:
            raise ValueError(f"{precision!r} is not allowed for format {fmt!r}; "
                             f"allowed: {', '.join(PRECISIONS[fmt])}")
        return precision

    @model_validator(mode="after")
    def _check_runtime_settings(self) -> Recipe:
        for fmt, (runtime, names) in FORMAT_ONLY_RUNTIME_SETTINGS.items():
            unread = [k for k in names if getattr(self.runtime, k) is not None]
            if self.format != fmt and unread:
                raise ValueError(f"runtime settings {', '.join(unread)} are read by the {runtime} runtime "
                                 f"only (format {fmt}); this {self.format} recipe's artifact would "
                                 "ignore them")
        return self

    @property
    def engine_name(self) -> str:
        return self.engine or DEFAULT_ENGINE[self.format]


def _describe(err: ValidationError, origin: str) -> str:
    lines = [f"{origin} is not a valid recipe:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(recipe)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field; allowed fields here: {_allowed_fields(e['loc'])}"
        elif e["type"] == "literal_error":
            msg = f"{e['input']!r} is not allowed; {msg[0].lower()}{msg[1:]}"
        lines.append(f"  field {field!r}: {msg}")
    return "\n".join(lines)


def _allowed_fields(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        ann = model.model_fields[str(part)].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    return ", ".join(model.model_fields)


def parse_recipe(data: Any, origin: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{origin} is not a valid recipe: the top level must be a mapping")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_describe(err, origin),
                          hint="see the README section 'Recipes' for the format") from None


def load_recipe(ref: str | Path) -> Recipe:
    """Load a recipe from a YAML path, or a shipped recipe by name (`onnx-cpu-int4`)."""
    path = Path(ref)
    if not path.is_file():
        shipped = shipped_recipes()
        if str(ref) in shipped:
            path = shipped[str(ref)]
        else:
            raise RecipeError(
                f"recipe {str(ref)!r} is neither a file nor a shipped recipe",
                hint=f"shipped recipes: {', '.join(sorted(shipped)) or 'none'}; "
                "or pass the path of a .yaml file",
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"{path} is not valid YAML: {err}") from None
    return parse_recipe(data, str(path))


def shipped_recipes() -> dict[str, Path]:
    """Shipped recipe name -> file (the `recipes/` folder of the source tree or wheel)."""
    folder = resources.files("edgeqwen.recipes_data")
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".yaml"):
            found[entry.name.removesuffix(".yaml")] = Path(str(entry))
    return dict(sorted(found.items()))
