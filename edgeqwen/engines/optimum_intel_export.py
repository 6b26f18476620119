"""The OpenVINO export child: `python -m edgeqwen.engines.optimum_intel_export CONFIG.json`.

Runs with the pinned optimum-intel first on PYTHONPATH (see `edgeqwen.optimum_intel_tools`)
and does what `optimum-cli export openvino` does (export to a scratch folder, then NNCF's
weight compression, then move into the output), through optimum-intel's Python entry points:
the CLI takes calibration data only as a hub dataset name, and edgeqwen calibrates on local
text. Imports nothing of edgeqwen, so edgeqwen's own dependencies never load next to the
older transformers.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

TASK = "text-generation-with-past"


def export(config: dict[str, Any]) -> None:
    from optimum.exporters.openvino.__main__ import _main_quantize, main_export
    from optimum.intel import OVConfig

    source, out, scratch = config["source"], Path(config["output"]), Path(config["scratch"])
    quantization = config.get("quantization")
    if quantization and config.get("calibration"):
        # edgeqwen cut the text into seq_len-token windows; optimum-intel tokenizes each as one sample
        quantization = {**quantization, "num_samples": None, "dataset": config["calibration"]}
    if quantization:
        ov_config = OVConfig(quantization_config=quantization)
    else:
        ov_config = OVConfig(dtype=config["dtype"])
    main_export(model_name_or_path=source, output=scratch, task=TASK, ov_config=ov_config,
                stateful=True, convert_tokenizer=True, library_name="transformers")
    if quantization:
        _main_quantize(model_name_or_path=source, task=TASK, library_name="transformers",
                       quantization_config=quantization, output=scratch, cache_dir=str(scratch / ".cache"))
    shutil.rmtree(scratch / ".cache", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    for item in scratch.iterdir():
        shutil.move(str(item), str(out / item.name))


if __name__ == "__main__":
    export(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
