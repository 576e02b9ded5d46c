"""Against the embedded broker over TCP: topics, 10k records, group commit and exact resume."""

import time

import pytest

from runtime.kafka import admin, consumer, create_topics, producer
from schemas.codec import decode, encode
from schemas.records import Interaction
from schemas.topics import ADAPTER_UPDATES, ALL_TOPICS, INTERACTIONS, ITEM_EMBEDDINGS

pytestmark = pytest.mark.integration

N = 10_000


def test_create_topics_is_idempotent_and_applies_the_registry(kafka_cfg, topics):
    first = create_topics(kafka_cfg, topics)
    second = create_topics(kafka_cfg, topics)
    assert set(first.values()) == {"created"} and set(second.values()) == {"exists"}
    client = admin(kafka_cfg)
    try:
        described = {t["name"]: t for t in client.describe_topics([topics.name(s) for s in ALL_TOPICS])}
    finally:
        client.close()
    assert len(described[topics.name(INTERACTIONS)]["partitions"]) == topics.partitions
    assert len(described[topics.name(ITEM_EMBEDDINGS)]["partitions"]) == topics.partitions
    assert len(described[topics.name(ADAPTER_UPDATES)]["partitions"]) == 1


def _produce(kafka_cfg, topic: str) -> None:
    client = producer(kafka_cfg)
    for i in range(N):
        event = Interaction(event_id=f"e{i}", user_id=f"u{i % 97}", item_id=f"i{i}", kind="click",
                            event_time_ms=1_700_000_000_000 + i)
        client.send(topic, key=event.user_id.encode(), value=encode(event))
    client.flush()
    client.close()


def _consume(kafka_cfg, topic, group, *, until, idle_s=4.0, deadline_s=60.0):
    """Poll until `until(seen)` holds or nothing arrives for idle_s; returns [(partition, offset, id)]."""
    client = consumer(kafka_cfg, group, [topic])
    seen, last_data, start = [], time.monotonic(), time.monotonic()
    try:
        while not until(seen) and time.monotonic() - start < deadline_s:
            batch = client.poll(timeout_ms=500, max_records=500)
            for records in batch.values():
                seen += [(r.partition, r.offset, decode(r.value, Interaction).event_id) for r in records]
            if batch:
                last_data = time.monotonic()
            elif seen and time.monotonic() - last_data > idle_s:
                break
        client.commit()
        committed = {tp.partition: client.committed(tp) for tp in client.assignment()}
    finally:
        client.close()
    return seen, committed


def test_group_resumes_exactly_after_its_commit(kafka_cfg, topics):
    create_topics(kafka_cfg, topics)
    topic = topics.name(INTERACTIONS)
    _produce(kafka_cfg, topic)

    first, committed = _consume(kafka_cfg, topic, "g", until=lambda seen: len(seen) >= N // 2)
    second, _ = _consume(kafka_cfg, topic, "g", until=lambda seen: len(first) + len(seen) >= N)

    ids = [event_id for *_, event_id in first + second]
    assert len(ids) == N and len(set(ids)) == N  # nothing lost, nothing read twice
    resumed_at = {}
    for partition, offset, _ in second:
        resumed_at.setdefault(partition, offset)
    for partition, offset in resumed_at.items():
        assert offset == committed.get(partition, 0)
