"""The CLI and the production compose file have the shape the README promises."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_vip5_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "vip5.cli", "--help"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    for command in ("broker", "topics", "bench"):
        assert command in out


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_kafka_in_kraft_mode_and_every_worker():
    services = _compose()["services"]
    assert {"kafka", "topics-init", "streams", "model-worker", "model-worker-cpu", "trainer"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]


def test_compose_workers_are_configured_by_environment_and_share_artifacts():
    services = _compose()["services"]
    for name in ("streams", "model-worker", "model-worker-cpu", "trainer"):
        env = services[name]["environment"]
        assert env["VIP5_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert "VIP5_TOPIC_PREFIX" in env
        assert any(v.startswith("artifacts:") for v in services[name]["volumes"])


def test_compose_reserves_a_gpu_for_the_model_worker_with_a_cpu_fallback_profile():
    services = _compose()["services"]
    devices = services["model-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["model-worker-cpu"]["profiles"] == ["cpu"]


def test_compose_publishes_ports_on_loopback_only():
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
