"""Tail a topic from its beginning, outside any consumer group, in a background thread.

    TopicTail(consumer_factory, topic, handle)   handle(list of ConsumerRecord) per poll
    decode_each(messages, Record, store, what)   (message, record or None for a tombstone) per message

Every worker that keeps a replica of a topic (item embeddings, adapter updates) reads all its
partitions this way, so each instance sees everything. `wait_caught_up` returns once the tail has
reached the high watermark it saw at start (the fetch high watermark: exact on every broker).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from schemas.codec import decode
from schemas.errors import SchemaError

log = logging.getLogger(__name__)


class TopicTail(threading.Thread):
    def __init__(self, consumer_factory: Callable[[], object], topic: str, handle: Callable[[list], None],
                 *, poll_ms: int = 200, max_records: int = 2000):
        super().__init__(name=f"tail[{topic}]", daemon=True)
        self._consumer_factory, self.topic, self._handle = consumer_factory, topic, handle
        self.poll_ms, self.max_records = poll_ms, max_records
        self._stop_event, self._caught_up = threading.Event(), threading.Event()
        self.failed: BaseException | None = None

    def stop(self) -> None:
        self._stop_event.set()

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self._caught_up.wait(timeout_s)

    def healthy(self) -> bool:
        """False once the thread has stopped on an error (or ended without being asked to)."""
        return self.failed is None and (self.is_alive() or self._stop_event.is_set())

    def run(self) -> None:
        from kafka import TopicPartition

        consumer = self._consumer_factory()
        try:
            partitions = self._wait_for_partitions(consumer)
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop_event.is_set():
                batch = consumer.poll(timeout_ms=self.poll_ms, max_records=self.max_records)
                messages = [m for records in batch.values() for m in records]
                if messages:
                    self._handle(messages)
                if not self._caught_up.is_set() and _at_high_watermark(consumer, tps):
                    self._caught_up.set()
        except BaseException as err:
            self.failed = err
            log.exception("tail of %s stopped", self.topic)
            raise
        finally:
            consumer.close()

    def _wait_for_partitions(self, consumer) -> list[int]:
        while not self._stop_event.is_set():
            partitions = consumer.partitions_for_topic(self.topic)
            if partitions:
                return sorted(partitions)
            time.sleep(0.5)
        return []


def _at_high_watermark(consumer, tps) -> bool:
    for tp in tps:
        high = consumer.highwater(tp)
        if high is None or consumer.position(tp) < high:
            return False
    return True


def decode_each(messages: list, record_type: type, store, what: str) -> Iterator[tuple[object, object | None]]:
    """(message, decoded record) per message, None for a tombstone; a message that fails to decode
    is counted in `store.decode_errors`, logged and skipped, so one bad record never stops a tail."""
    for message in messages:
        if message.value is None:
            yield message, None
            continue
        try:
            yield message, decode(message.value, record_type)
        except SchemaError as err:
            store.decode_errors += 1
            log.warning("skipping bad %s at %s[%d]@%d: %s", what, message.topic, message.partition, message.offset,
                        err)
