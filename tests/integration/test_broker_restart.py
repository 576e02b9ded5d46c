"""A broker crash mid-stream loses nothing that was acknowledged, and clients reconnect by themselves.

The broker is Tansu on durable storage: its topics, offsets and groups live in an S3-compatible
object store (moto, in this process), which outlives the broker process. The broker is killed
(SIGKILL) or stopped (SIGTERM) while a producer is sending and a consumer group is reading; the
same client objects carry on once it is back.
"""

from __future__ import annotations

import threading
import time

import pytest
from kafka import OffsetAndMetadata

from runtime.kafka import KafkaConfig, consumer, create_topics, producer, read_topic
from schemas.topics import INTERACTIONS, TopicConfig
from vip5.broker import BrokerConfig, EmbeddedBroker
from vip5.object_store import LocalObjectStore

pytestmark = pytest.mark.integration


@pytest.fixture()
def durable_broker(tmp_path):
    with LocalObjectStore() as store:
        config = BrokerConfig(port=0, storage_url=store.storage_url, storage_env=store.env,
                              log_path=str(tmp_path / "tansu.log"))
        with EmbeddedBroker(config) as broker:
            yield broker


class SteadyProducer(threading.Thread):
    """Sends numbered records every few milliseconds; remembers which ones the broker acknowledged."""

    def __init__(self, cfg: KafkaConfig, topic: str):
        super().__init__(daemon=True)
        self.client, self.topic = producer(cfg), topic
        self.acked: dict[int, tuple[int, int]] = {}  # record -> (partition, offset) the broker gave it
        self.failed: list[str] = []
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            n, self.sent = self.sent, self.sent + 1
            future = self.client.send(self.topic, key=f"user{n % 7}".encode(), value=str(n).encode())
            future.add_callback(lambda meta, n=n: self.acked.__setitem__(n, (meta.partition, meta.offset)))
            future.add_errback(lambda err: self.failed.append(repr(err)))
            time.sleep(0.005)
        self.client.flush()
        self.client.close()


def values(messages) -> list[int]:
    return [int(m.value) for m in messages]


@pytest.mark.parametrize("crash", [True, False], ids=["sigkill", "sigterm"])
def test_a_broker_restart_loses_no_acknowledged_record_and_clients_reconnect(durable_broker, crash):
    # A longer fetch wait than the low-latency default: every fetch reaches the object store here, and
    # 10 ms waits from several idle consumers keep the local S3 server saturated.
    cfg = KafkaConfig(bootstrap_servers=durable_broker.bootstrap, session_timeout_ms=3000, heartbeat_interval_ms=500,
                      fetch_max_wait_ms=500)
    topics = TopicConfig(prefix="durable.", partitions=3)
    create_topics(cfg, topics, (INTERACTIONS,))
    topic = topics.name(INTERACTIONS)
    steady = SteadyProducer(cfg, topic)
    steady.start()
    reader = consumer(cfg, "durable-readers", [topic])
    read_before: list[int] = []
    deadline = time.monotonic() + 60
    while len(read_before) < 100 and time.monotonic() < deadline:
        for records in reader.poll(timeout_ms=500).values():
            read_before.extend(values(records))
    assert len(read_before) >= 100, "the consumer read nothing from the durable broker within 60 s"
    offsets = {tp: OffsetAndMetadata(reader.position(tp), "", -1) for tp in reader.assignment()}
    reader.commit(offsets)

    durable_broker.restart(kill=crash, down_s=1.5)  # mid-stream, down for 1.5 s
    acked_at_restart = len(steady.acked)
    time.sleep(3.0)
    steady.stop.set()
    steady.join(timeout=60)

    # The producer came back by itself, and every acknowledged record is stored where the broker said.
    assert len(steady.acked) > acked_at_restart, "the producer did not reconnect after the broker restart"
    stored = read_topic(cfg, topic, timeout_s=60, idle_s=5)
    at = {(m.partition, m.offset): int(m.value) for m in stored}
    misplaced = {n: where for n, where in steady.acked.items() if at.get(where) != n}
    assert not misplaced, f"acknowledged but not stored: {sorted(misplaced.items())[:5]}"

    # The group's committed offsets survived: the consumer resumes where it committed and reads on.
    read_after: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not set(steady.acked) <= set(read_before) | set(read_after):
        for records in reader.poll(timeout_ms=500).values():
            read_after.extend(values(records))
    reader.close()
    assert set(steady.acked) <= set(read_before) | set(read_after)
    resumed = consumer(cfg, "durable-readers")
    try:
        for tp, meta in offsets.items():
            assert resumed.committed(tp) == meta.offset
    finally:
        resumed.close()
    assert not steady.failed, steady.failed[:3]
