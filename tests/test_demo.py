"""The README's first command works: a small `vip5 demo` runs end to end and reports its summary."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_small_demo_runs_end_to_end_and_reflects_every_interaction(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vip5.cli", "demo", "--json", "--work-dir", str(tmp_path), "--users", "4",
         "--events", "12", "--rate", "6", "--pretrain-steps", "3", "--adapt-steps", "2"],
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
