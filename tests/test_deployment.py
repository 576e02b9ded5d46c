"""The CLI and the production compose file have the shape the README promises."""

import re
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
    mounts = {name: [v for v in services[name]["volumes"] if v.startswith("artifacts:")]
              for name in ("streams", "model-worker", "model-worker-cpu", "trainer")}
    assert mounts == {"streams": [], "model-worker": ["artifacts:/artifacts:ro"],
                      "model-worker-cpu": ["artifacts:/artifacts:ro"], "trainer": ["artifacts:/artifacts"]}


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
    """What compose makes of `${VAR:-default}` when VAR is unset (and of a required `${VAR:?...}`, set)."""
    value = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))
    return re.sub(r"\$\{([A-Z0-9_]+):\?[^}]*\}", r"<\1>", value)


def test_compose_environment_with_nothing_set_is_a_valid_worker_configuration():
    from runtime.kafka import KafkaConfig

    env = {k: _with_compose_defaults(v) for k, v in _compose()["services"]["streams"]["environment"].items()}
    cfg = KafkaConfig.from_env(env)
    assert cfg.bootstrap_servers == "kafka:9092"
    assert (cfg.security_protocol, cfg.sasl_mechanism, cfg.ssl_cafile) == ("SASL_PLAINTEXT", "SCRAM-SHA-512", None)
    assert (cfg.sasl_username, cfg.sasl_password) == ("streams", "<VIP5_KAFKA_STREAMS_PASSWORD>")
    assert cfg.idempotent_producer is True  # Apache Kafka keeps producer sequences with the records
    assert env["VIP5_LOG_FORMAT"] == "json"


def test_compose_workers_have_health_checks_and_time_to_finish_their_batch():
    services = _compose()["services"]
    for name in ("streams", "model-worker", "model-worker-cpu"):
        assert "/healthz" in " ".join(services[name]["healthcheck"]["test"])
        assert "--metrics-port" in services[name]["command"]
        assert services[name]["stop_grace_period"]


def test_compose_kafka_takes_scram_on_every_client_listener_and_authorizes_with_acls():
    env = _compose()["services"]["kafka"]["environment"]
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert protocols == {"INTERNAL": "SASL_PLAINTEXT", "CONTROLLER": "PLAINTEXT", "EXTERNAL": "SASL_PLAINTEXT"}
    assert "CONTROLLER://localhost:9093" in env["KAFKA_LISTENERS"].split(",")  # plaintext on loopback only
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert set(env["KAFKA_SUPER_USERS"].split(";")) == {"User:admin", "User:ANONYMOUS"}


def _acl_grants() -> dict[str, dict[str, set[str]]]:
    """principal -> {"read"/"write"/"group"/"all" -> names} from the acls-init script."""
    script = _compose()["services"]["acls-init"]["command"][0]
    grants: dict[str, dict[str, set[str]]] = {}
    for line in script.splitlines():
        words = line.split()
        if words and words[0] in ("read_topics", "write_topics", "group"):
            grants.setdefault(words[1], {}).setdefault(words[0].split("_")[0], set()).update(words[2:])
        elif words[:2] == ["acl", "--allow-principal"]:
            assert "prefixed" in line and "streams-" in line, f"only faust's internal topics get All: {line}"
            grants.setdefault(words[2].split(":")[1], {}).setdefault("all", set()).add(words[6])
    return grants


def test_compose_acls_let_only_the_trainer_write_adapter_updates_and_only_streams_write_embeddings_and_requests():
    grants = _acl_grants()
    writers = {topic: {who for who, g in grants.items() if topic in g.get("write", ())}
               for topic in ("adapter-updates", "item-embeddings", "rerank-requests", "recommendations",
                             "explanations", "items", "retriever-vectors", "retriever-models")}
    assert writers == {"adapter-updates": {"trainer"}, "item-embeddings": {"streams"}, "rerank-requests": {"streams"},
                       "recommendations": {"model-worker"}, "explanations": {"model-worker"}, "items": {"app"},
                       "retriever-vectors": {"trainer"}, "retriever-models": {"trainer"}}
    assert {"retriever-vectors", "retriever-models"} <= grants["streams"]["read"]  # the retriever replica
    assert {"recommendations", "explanations"} <= grants["app"]["read"]
    assert set(grants) == {"streams", "model-worker", "trainer", "app"}
    assert grants["streams"]["all"] == {'"$${P}streams-"'}


def test_compose_holds_no_credentials_and_requires_them_from_the_environment():
    text = (ROOT / "docker-compose.yml").read_text()
    for match in re.finditer(r"(?i)(password[\w-]*|signing_key[\w-]*)[ \t]*[:=][ \t]*\"?([^\s\";,]+)", text):
        value = match.group(2)
        assert value.startswith(("${", "$$", "%s", "/run/secrets/", "VIP5_ADAPTER_SIGNING_KEY")), match.group(0)
    services = _compose()["services"]
    for name, user in [("streams", "streams"), ("model-worker", "model-worker"), ("trainer", "trainer"),
                       ("topics-init", "admin")]:
        env = services[name]["environment"]
        assert env["VIP5_KAFKA_SASL_USERNAME"] == user
        assert re.fullmatch(r"\$\{VIP5_KAFKA_[A-Z_]+_PASSWORD:\?[^}]+\}", env["VIP5_KAFKA_SASL_PASSWORD"])
    storage = services["kafka-storage"]
    assert storage["command"][0].count("--add-scram") == 5


def test_compose_gives_the_signing_key_to_trainer_model_and_streams_workers_only():
    compose = _compose()
    assert compose["secrets"]["adapter_signing_key"] == {"environment": "VIP5_ADAPTER_SIGNING_KEY"}
    holders = {name for name, s in compose["services"].items() if "adapter_signing_key" in s.get("secrets", [])}
    assert holders == {"trainer", "model-worker", "model-worker-cpu", "streams"}
    for name in holders:
        assert compose["services"][name]["environment"]["VIP5_ADAPTER_SIGNING_KEY_FILE"] == "/run/secrets/adapter_signing_key"


def test_compose_publishes_only_kafka_and_grafana_and_takes_grafanas_password_from_the_environment():
    services = _compose()["services"]
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert published == {"kafka": ["127.0.0.1:9094:9094"], "grafana": ["127.0.0.1:3000:3000"]}
    env = services["grafana"]["environment"]
    assert re.fullmatch(r"\$\{VIP5_GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"])
    assert (env["GF_AUTH_ANONYMOUS_ENABLED"], env["GF_USERS_ALLOW_SIGN_UP"]) == ("false", "false")


def test_compose_pins_every_third_party_image_to_a_version():
    for name, service in _compose()["services"].items():
        image = service["image"]
        if image != "vip5-streaming:latest":  # built here from this repository
            assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)+", image), f"{name} runs {image}, not a pinned version"


def test_prometheus_scrapes_every_worker_service_of_the_compose_file():
    services = _compose()["services"]
    workers = {name: s for name, s in services.items()
               if s["image"] == "vip5-streaming:latest" and s.get("restart") == "unless-stopped"}
    assert {"streams", "model-worker", "trainer"} <= set(workers)
    expected = set()
    for name, worker in workers.items():
        command = worker["command"]
        assert command[command.index("--metrics-host") + 1] == "0.0.0.0", f"{name}: metrics unreachable"
        expected.add(f"{name}:{command[command.index('--metrics-port') + 1]}")
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for static in job["static_configs"] for t in static["targets"]]
    assert sorted(targets) == sorted(expected)
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
