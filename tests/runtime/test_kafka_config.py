"""One KafkaConfig reaches every client: security and reconnection settings pass through unchanged."""

import pytest

from runtime.kafka import KafkaConfig, consumer, tail_consumer


def test_security_settings_pass_through_to_every_client():
    cfg = KafkaConfig(bootstrap_servers="b1:9093,b2:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="svc", sasl_password="secret", ssl_cafile="/etc/ca.pem")
    common = cfg.common()
    assert common["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert common["security_protocol"] == "SASL_SSL"
    assert common["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (common["sasl_plain_username"], common["sasl_plain_password"]) == ("svc", "secret")
    assert common["ssl_cafile"] == "/etc/ca.pem"
    assert "ssl_certfile" not in common  # unset settings are left to the client's defaults


def test_reconnection_backs_off_between_the_configured_bounds():
    common = KafkaConfig(reconnect_backoff_ms=100, reconnect_backoff_max_ms=2000).common()
    assert (common["reconnect_backoff_ms"], common["reconnect_backoff_max_ms"]) == (100, 2000)


def test_environment_variables_configure_the_clients():
    cfg = KafkaConfig.from_env({"VIP5_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "VIP5_KAFKA_SESSION_TIMEOUT_MS": "9000",
                                "VIP5_KAFKA_IDEMPOTENT_PRODUCER": "true", "VIP5_KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert cfg.bootstrap_servers == "kafka:9092"
    assert cfg.session_timeout_ms == 9000
    assert cfg.idempotent_producer is True
    assert cfg.security_protocol == "SSL"


def test_explicit_values_override_the_environment():
    cfg = KafkaConfig.from_env({"VIP5_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}, bootstrap_servers="127.0.0.1:19092")
    assert cfg.bootstrap_servers == "127.0.0.1:19092"


@pytest.mark.parametrize("env, field", [
    ({"VIP5_KAFKA_IDEMPOTENT_PRODUCER": "maybe"}, "VIP5_KAFKA_IDEMPOTENT_PRODUCER"),
    ({"VIP5_KAFKA_SECURITY_PROTOCOL": "TLS"}, "security_protocol"),
    ({"VIP5_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "sasl_mechanism"),
    ({"VIP5_KAFKA_RECONNECT_BACKOFF_MS": "500", "VIP5_KAFKA_RECONNECT_BACKOFF_MAX_MS": "100"},
     "reconnect_backoff_max_ms"),
    ({"VIP5_KAFKA_DELIVERY_TIMEOUT_MS": "1000"}, "delivery_timeout_ms"),
])
def test_bad_settings_are_refused_with_the_setting_named(env, field):
    with pytest.raises(ValueError, match=field):
        KafkaConfig.from_env(env)


def test_producers_are_not_idempotent_by_default():
    """Tansu answers a retried batch 'duplicate' after a crash although it never stored it."""
    assert KafkaConfig().idempotent_producer is False


def test_fetch_wait_comes_from_the_environment_and_stays_short_by_default():
    """Tansu answers a waiting fetch only when the wait expires: each hop costs up to this much."""
    cfg = KafkaConfig.from_env({"VIP5_KAFKA_FETCH_MAX_WAIT_MS": "15"})
    assert cfg.fetch_max_wait_ms == 15
    assert KafkaConfig().fetch_max_wait_ms <= 20


def test_fetch_wait_must_stay_below_the_request_timeout():
    with pytest.raises(ValueError, match="fetch_max_wait_ms"):
        KafkaConfig(fetch_max_wait_ms=30_000, request_timeout_ms=30_000)


def test_replica_tails_wait_longer_than_the_hot_path_so_idle_tails_cost_next_to_nothing(monkeypatch):
    """Each idle consumer costs one fetch per wait: 100 a second at 10 ms."""
    import kafka

    made = []
    monkeypatch.setattr(kafka, "KafkaConsumer", lambda **settings: made.append(settings) or object())
    cfg = KafkaConfig.from_env({"VIP5_KAFKA_REPLICA_FETCH_MAX_WAIT_MS": "300"})
    tail_consumer(cfg)
    consumer(cfg, "group")
    assert (made[0]["group_id"], made[0]["fetch_max_wait_ms"]) == (None, 300)
    assert made[1]["fetch_max_wait_ms"] == cfg.fetch_max_wait_ms
    assert KafkaConfig().replica_fetch_max_wait_ms >= 10 * KafkaConfig().fetch_max_wait_ms
    with pytest.raises(ValueError, match="replica_fetch_max_wait_ms"):
        KafkaConfig(replica_fetch_max_wait_ms=-1)
