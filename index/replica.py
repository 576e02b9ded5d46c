"""A worker's own replica of the item catalogue, fed from the compacted item-embeddings topic.

    item-embeddings (ItemEmbedding, key item_id) ──► CatalogReplica: ItemIndex + freshness + features

Every streams worker and every model worker runs one `EmbeddingFollower`: a consumer outside any
group, assigned every partition, reading from the beginning. So any number of workers, on any
number of machines, converge on the same catalogue, and a new one rebuilds by reading the topic.
Records that fail to decode are counted and skipped here; the producer of the topic dead-letters
its own bad input. A tombstone (value None) removes the item.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence

import numpy as np

from index.candidates import Candidate, CandidateConfig, FreshnessTracker, PopularityTracker, generate_candidates
from index.item_index import IndexConfig, ItemIndex
from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.records import ItemEmbedding

log = logging.getLogger(__name__)


class CatalogReplica:
    """The item index plus the freshness of each item, safe to update from the follower thread."""

    def __init__(self, index_config: IndexConfig, *, fresh_max_age_s: float = 7 * 86400.0):
        self.index = ItemIndex(index_config)
        self.freshness = FreshnessTracker(max_age_s=fresh_max_age_s)
        self._lock = threading.Lock()  # guards freshness; the index has its own lock
        self.encoder_ids: set[str] = set()
        self.updates = 0

    def apply(self, records: Sequence[ItemEmbedding]) -> int:
        """Upsert records; those of another dimension than the index are skipped. Returns how many applied."""
        dim = self.index.config.dim
        wrong = [r.item_id for r in records if r.vector.shape[0] != dim]
        if wrong:
            log.error("skipping %d embeddings whose dimension is not the index's %d (e.g. %s)", len(wrong), dim, wrong[0])
            records = [r for r in records if r.vector.shape[0] == dim]
        if not records:
            return 0
        self.index.upsert([r.item_id for r in records], np.stack([r.vector for r in records]))
        with self._lock:
            for r in records:
                self.freshness.add(r.item_id, r.event_time_ms / 1000.0)
                self.encoder_ids.add(r.encoder_id)
            self.updates += len(records)
        return len(records)

    def remove(self, item_ids: Collection[str]) -> None:
        self.index.remove(item_ids)
        with self._lock:
            for item in item_ids:
                self.freshness.discard(item)

    def features(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """item id -> (D,) image feature, for the items the replica knows."""
        return self.index.get_vectors(item_ids)

    def candidates(self, history: Sequence[str], popularity: PopularityTracker, config: CandidateConfig,
                   *, now_s: float) -> list[Candidate]:
        with self._lock:
            return generate_candidates(history, self.index, popularity, self.freshness, config, now_s=now_s)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.index

    def __len__(self) -> int:
        return len(self.index)


class EmbeddingFollower(threading.Thread):
    """Tails the embeddings topic from the beginning into a CatalogReplica until `stop()`."""

    def __init__(self, consumer_factory: Callable[[], object], topic: str, replica: CatalogReplica,
                 *, poll_ms: int = 200):
        super().__init__(name=f"embedding-follower[{topic}]", daemon=True)
        self._consumer_factory = consumer_factory
        self.topic = topic
        self.replica = replica
        self.poll_ms = poll_ms
        self.decode_errors = 0
        self._stop_event = threading.Event()
        self._caught_up = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def wait_caught_up(self, timeout_s: float) -> bool:
        """True once the follower has read up to the high watermark seen at its start."""
        return self._caught_up.wait(timeout_s)

    def run(self) -> None:
        from kafka import TopicPartition

        consumer = self._consumer_factory()
        try:
            partitions = self._wait_for_partitions(consumer)
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop_event.is_set():
                batch = consumer.poll(timeout_ms=self.poll_ms, max_records=2000)
                self._apply(batch)
                if not self._caught_up.is_set() and self._at_high_watermark(consumer, tps):
                    self._caught_up.set()
        except Exception:
            log.exception("embedding follower for %s stopped", self.topic)
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

    @staticmethod
    def _at_high_watermark(consumer, tps) -> bool:
        # The fetch high watermark is exact on every broker (ListOffsets LATEST is not, on Tansu).
        for tp in tps:
            high = consumer.highwater(tp)
            if high is None or consumer.position(tp) < high:
                return False
        return True

    def _apply(self, batch: dict) -> None:
        upserts: dict[str, ItemEmbedding] = {}
        removed: list[str] = []
        for records in batch.values():
            for message in records:
                if message.value is None:
                    key = (message.key or b"").decode("utf-8", "replace")
                    upserts.pop(key, None)
                    removed.append(key)
                    continue
                try:
                    record = decode(message.value, ItemEmbedding)
                except SchemaError as err:
                    self.decode_errors += 1
                    log.warning("skipping bad embedding at %s[%d]@%d: %s",
                                message.topic, message.partition, message.offset, err)
                    continue
                upserts[record.item_id] = record
        if removed:
            self.replica.remove(removed)
        self.replica.apply(list(upserts.values()))
