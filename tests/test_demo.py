"""The README's first command works: a small `vip5 demo` runs end to end, reports its summary and
writes its HTML report with every plot drawn."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration


def test_small_demo_runs_end_to_end_and_reflects_every_interaction(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vip5.cli", "demo", "--json", "--work-dir", str(tmp_path), "--users", "4",
         "--events", "12", "--rate", "6", "--pretrain-steps", "3", "--adapt-steps", "2",
         "--report", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["interactions_in"] == 12 and summary["products_in"] == 240
    assert summary["interactions_reflected"] == 12
    assert summary["recommendations_out"] >= 1
    assert summary["dead_letters"] == summary["invalid_records_in"] == 3
    assert summary["events_in"] == 12 + 240 + 3
    assert 0 < summary["freshness_p50_ms"] <= summary["freshness_p99_ms"]
    assert (tmp_path / "model" / "vip5_config.json").exists()
    assert Path(summary["report"]) == (tmp_path / "report" / "index.html").resolve()
    assert f"report: {summary['report']}" in result.stderr  # --json: the demo's lines go to stderr
    page = Path(summary["report"]).read_text()
    for name in ("freshness", "freshness_histogram", "adapter_versions", "quality", "stage_latency",
                 "recommendations"):
        png = tmp_path / "report" / f"{name}.png"
        assert f'src="{name}.png"' in page and png.stat().st_size > 4_000, name
        with Image.open(png) as image:
            assert np.asarray(image.convert("L"), dtype=np.float32).std() > 5, name
