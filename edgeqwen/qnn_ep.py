"""ONNX Runtime sessions on Qualcomm's QNN HTP backend (the `onnxruntime-qnn` plugin EP).

`onnxruntime-qnn` is an execution-provider library for onnxruntime: registered once per
process, then added to a session for its devices. On x86-64 Linux its HTP backend emulates
the Hexagon NPU, which is how the build compiles context binaries and how the `qnn` runtime
validates artifacts on a machine without a Snapdragon. CPU fallback is always disabled: a
node the HTP cannot run fails the session instead of silently running on the CPU.
"""

from __future__ import annotations

from typing import Any

from edgeqwen.errors import EngineError

INSTALL_HINT = 'pip install -c constraints.txt "edgeqwen[qnn]"'
_registered = False


def _plugin() -> Any:
    try:
        import onnxruntime_qnn
    except ImportError:
        raise EngineError("QNN needs the `onnxruntime-qnn` package (ONNX Runtime's QNN execution "
                          "provider), which is not installed", hint=INSTALL_HINT) from None
    return onnxruntime_qnn


def versions() -> dict[str, str]:
    """The QNN SDK inside the plugin, for manifests and `info()`."""
    import importlib.metadata

    return {"onnxruntime-qnn": importlib.metadata.version("onnxruntime-qnn")}


def session_options(provider_options: dict[str, str] | None = None) -> Any:
    """SessionOptions that put the whole graph on the QNN HTP backend (no CPU fallback)."""
    import onnxruntime as ort

    global _registered
    qnn = _plugin()
    if not _registered:
        ort.register_execution_provider_library(qnn.get_ep_name(), qnn.get_library_path())
        _registered = True
    devices = [d for d in ort.get_ep_devices() if d.ep_name == qnn.get_ep_name()]
    if not devices:
        raise EngineError("onnxruntime-qnn is installed but offers no device",
                          hint="check that the onnxruntime and onnxruntime-qnn versions match")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.log_severity_level = 3  # the plugin warns about Windows-only features on every load
    options.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path(),
                                               **(provider_options or {})})
    return options
