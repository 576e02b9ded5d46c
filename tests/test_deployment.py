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


def _with_compose_defaults(value) -> str:
    """What compose makes of `${VAR:-default}` when VAR is unset."""
    import re

    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def test_compose_environment_with_nothing_set_is_a_valid_worker_configuration():
    from vip5.kafka import KafkaConfig

    env = {k: _with_compose_defaults(v) for k, v in _compose()["services"]["streams"]["environment"].items()}
    cfg = KafkaConfig.from_env(env)
    assert cfg.bootstrap_servers == "kafka:9092"
    assert cfg.security_protocol == "PLAINTEXT" and cfg.sasl_mechanism is None and cfg.ssl_cafile is None
    assert cfg.idempotent_producer is True  # Apache Kafka keeps producer sequences with the records
    assert env["VIP5_LOG_FORMAT"] == "json"


def test_compose_workers_have_health_checks_and_time_to_finish_their_batch():
    services = _compose()["services"]
    for name in ("streams", "model-worker", "model-worker-cpu"):
        assert "/healthz" in " ".join(services[name]["healthcheck"]["test"])
        assert "--metrics-port" in services[name]["command"]
        assert services[name]["stop_grace_period"]
