"""Helpers shared by the pipeline integration tests: real records from the vendored data."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from runtime.kafka import KafkaConfig, producer, read_topic
from schemas.codec import decode_any, encode
from schemas.errors import SchemaError
from schemas.records import Interaction, ItemUpsert
from schemas.topics import INTERACTIONS, ITEMS, TopicConfig

FASHION = Path(__file__).resolve().parents[1] / "data" / "fashion"


def fashion_items(n: int) -> list[ItemUpsert]:
    with open(FASHION / "products.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    now = int(time.time() * 1000)
    return [ItemUpsert(item_id=f"p{r['product_id']}", title=r["title"], category=r["article_type"],
                       image_bytes=(FASHION / r["image"]).read_bytes(), event_time_ms=now) for r in rows]


def click(event_id: str, user: str, item: str) -> Interaction:
    return Interaction(event_id=event_id, user_id=user, item_id=item, kind="click",
                       event_time_ms=int(time.time() * 1000))


def publish(cfg: KafkaConfig, topics: TopicConfig, records, *, raw: list[tuple[str, bytes]] = ()) -> None:
    """Send records to their topics (items or interactions), plus raw (topic base name, bytes) pairs."""
    client = producer(cfg)
    for record in records:
        spec, key = (ITEMS, record.item_id) if isinstance(record, ItemUpsert) else (INTERACTIONS, record.user_id)
        client.send(topics.name(spec), key=key.encode(), value=encode(record))
    for base, payload in raw:
        client.send(f"{topics.prefix}{base}", key=b"bad", value=payload)
    client.flush()
    client.close()


def records_on(cfg: KafkaConfig, topics: TopicConfig, spec, *, count: int, timeout_s: float = 120.0) -> list:
    """Decoded records of a topic once at least `count` messages arrived (or at timeout);
    messages that do not decode (deliberately bad input) are left out."""
    return _decoded(read_topic(cfg, topics.name(spec), until=lambda ms: len(ms) >= count, timeout_s=timeout_s))


def records_reflecting(cfg: KafkaConfig, topics: TopicConfig, spec, event_ids, *, timeout_s: float = 120.0) -> list:
    """Decoded records of a topic once their `event_ids` cover `event_ids` (or at timeout): the
    streams worker may fold several events of a user into one request (its coalescing window), so
    the number of records to expect is not known in advance."""
    wanted = set(event_ids)

    def covered(messages) -> bool:
        return wanted <= {e for record in _decoded(messages) for e in getattr(record, "event_ids", ())}

    return _decoded(read_topic(cfg, topics.name(spec), until=covered, timeout_s=timeout_s))


def _decoded(messages) -> list:
    decoded = []
    for message in messages:
        try:
            decoded.append(decode_any(message.value))
        except SchemaError:
            pass
    return decoded


def worker_args(command: str, cfg: KafkaConfig, topics: TopicConfig, *extra: str) -> list[str]:
    return [command, "--bootstrap", cfg.bootstrap_servers, "--topic-prefix", topics.prefix,
            "--partitions", str(topics.partitions), *extra]


def worker_env(cfg: KafkaConfig) -> dict[str, str]:
    return {"VIP5_KAFKA_SESSION_TIMEOUT_MS": str(cfg.session_timeout_ms),
            "VIP5_KAFKA_HEARTBEAT_INTERVAL_MS": str(cfg.heartbeat_interval_ms)}


def wait_for(predicate, timeout_s: float, what: str):
    """predicate()'s first truthy value, polled every second; AssertionError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")
