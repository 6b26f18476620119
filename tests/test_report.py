"""`edgeqwen report`: tables and plot built from what validate/bench recorded in manifests."""

import base64
import re

from engines_for_tests import CopyEngine

from edgeqwen import registry
from edgeqwen.artifacts import load_manifest
from edgeqwen.cli import main
from edgeqwen.pipeline import build
from edgeqwen.recipes import parse_recipe
from edgeqwen.validation import validate_artifact


def copy_artifact(model, out, scale):
    recipe = parse_recipe({"name": f"copy-{scale}", "description": "t", "format": "onnx", "precision": "fp32",
                           "engine": "copy-test", "algorithm": {"scale": scale},
                           "validation": {"max_kl": 0.01}})
    registry.engines.register("copy-test", CopyEngine)
    try:
        return build(recipe, str(model), out).path
    finally:
        registry.engines.unregister("copy-test")


def test_report_tables_and_plot_come_from_the_manifests(tiny_qwen2, tmp_path, capsys) -> None:
    good = copy_artifact(tiny_qwen2, tmp_path / "good", 1.0)
    bad = copy_artifact(tiny_qwen2, tmp_path / "bad", 3.0)
    for art, decode in ((good, 10.0), (bad, 25.0)):
        validate_artifact(art, threads=1, max_tokens=64)
        manifest = load_manifest(art)
        manifest.benchmarks = {"desktop": {"decode_tok_s": decode, "prefill_long_tok_s": 100.0,
                                           "ttft_s": 0.1, "peak_rss_mb": 500.0}}
        manifest.write(art)
    bad_ppl = load_manifest(bad).validation["overall"]["ppl_increase_pct"]

    md_file = tmp_path / "r.md"
    assert main(["report", str(good), str(bad), "--out", str(md_file), "--baseline", "good"]) == 0
    md = md_file.read_text()
    good_row = r"\| good \| onnx \| fp32 \| [0-9.]+ \| \+0\.00 \| 0\.0000 \| 100\.0% \| 100% \| pass \|"
    assert re.search(good_row, md)
    assert "| bad | onnx | fp32 |" in md and f"{bad_ppl:+.2f}" in md and "FAIL" in md
    assert "| bad | desktop | 0.100 | 100 | 25.0 | 500 | 2.50× | 1.00× |" in md

    html_file = tmp_path / "r.html"
    assert main(["report", str(good), str(bad), "--out", str(html_file)]) == 0
    page = html_file.read_text()
    png = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)", page).group(1))
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert "<td>good</td>" in page and "<td>bad</td>" in page

    assert main(["report", str(good), "--baseline", "nope", "--out", str(md_file)]) == 1
    assert "not one of the artifacts" in capsys.readouterr().err
