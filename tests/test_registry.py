from importlib.metadata import EntryPoint

import pytest

from edgeqwen import registry
from edgeqwen.errors import RegistryError
from runtimes.base import Runtime
from runtimes.transformers_backend import TransformersRuntime

# Every shipped backend and engine must be exercised by a test module named here; a new
# entry point without tests fails this file (as optimum's tiny-model map does).
TESTED_RUNTIMES = {
    "transformers": "tests/test_runtime_transformers.py",
    "onnxruntime-genai": "tests/test_engine_onnx_genai.py",
    "llama-cpp": "tests/test_engine_llama_cpp.py",
    "executorch": "tests/test_engine_executorch.py",
    "openvino": "tests/test_engine_openvino.py",
    "qnn": "tests/test_engine_qnn.py",
}
TESTED_ENGINES = {"onnxruntime-genai": "tests/test_engine_onnx_genai.py",
                  "llama-cpp": "tests/test_engine_llama_cpp.py",
                  "executorch": "tests/test_engine_executorch.py",
                  "optimum-intel": "tests/test_engine_openvino.py",
                  "onnxruntime-qnn": "tests/test_engine_qnn.py"}


def test_every_shipped_runtime_is_tested_and_implements_the_interface() -> None:
    shipped = set(registry.runtimes.describe())
    assert shipped == set(TESTED_RUNTIMES), "add a test for each shipped runtime backend"
    for name in shipped:
        cls = registry.runtimes.get(name)
        assert issubclass(cls, Runtime) and cls.name == name


def test_every_shipped_engine_is_tested() -> None:
    assert set(registry.engines.describe()) == set(TESTED_ENGINES)


def test_entry_point_is_loaded_lazily_by_name() -> None:
    assert registry.runtimes.describe()["transformers"] == (
        "runtimes.transformers_backend:TransformersRuntime")
    assert registry.runtimes.get("transformers") is TransformersRuntime


def test_in_process_registration_wins_and_can_be_removed() -> None:
    class Fake:
        pass

    registry.runtimes.register("transformers", Fake)
    try:
        assert registry.runtimes.get("transformers") is Fake
        assert registry.runtimes.describe()["transformers"] == "in-process"
    finally:
        registry.runtimes.unregister("transformers")
    assert registry.runtimes.get("transformers") is TransformersRuntime


def test_unknown_and_broken_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RegistryError, match="(?s)no runtime backend named 'mlc'.*transformers"):
        registry.runtimes.get("mlc")
    reg = registry.Registry("edgeqwen.test", "runtime backend")
    broken = EntryPoint(name="broken", value="no_such_module_xyz:Backend", group="edgeqwen.test")
    monkeypatch.setattr(reg, "_entry_points", lambda: {"broken": broken})
    with pytest.raises(RegistryError, match="could not be imported.*no_such_module_xyz"):
        reg.get("broken")
