"""Shared fixtures: one embedded broker per test session, Kafka settings tuned for it."""

from __future__ import annotations

import uuid

import pytest

from runtime.kafka import KafkaConfig
from schemas.topics import TopicConfig
from vip5.broker import BrokerConfig, EmbeddedBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A real Kafka-protocol broker (Tansu) on a free 127.0.0.1 port, stopped at session end."""
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(BrokerConfig(port=0, log_path=str(log_path))) as running:
        yield running


@pytest.fixture()
def kafka_cfg(broker) -> KafkaConfig:
    # Tansu joins a group in about session/2: a short session keeps tests fast.
    return KafkaConfig(bootstrap_servers=broker.bootstrap, session_timeout_ms=3000, heartbeat_interval_ms=500)


@pytest.fixture()
def topics() -> TopicConfig:
    """A fresh topic namespace per test, so tests never see each other's records."""
    return TopicConfig(prefix=f"t{uuid.uuid4().hex[:8]}.", partitions=3)
