"""Item features for workers that look items up but never search them: item id -> vector.

    item-embeddings (ItemEmbedding, key item_id) ──► ItemFeatures: {item_id: (D,) float32}

The model worker and the adapter trainer only need each item's image feature for their prompts,
so they keep a plain dict instead of a search index (index.replica's CatalogReplica, which the
streams worker needs for candidate generation). Memory: items x D x 4 bytes plus the dict.

`feature_follower` tails the compacted topic from the beginning outside any group, like every
replica: a record that fails to decode, or whose dimension is not D, is counted and skipped; a
tombstone (value None) removes the item; the last record of an item wins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence

import numpy as np

from runtime.tail import TopicTail, decode_each
from schemas.records import ItemEmbedding

log = logging.getLogger(__name__)


class ItemFeatures:
    """item id -> (D,) float32 vector, safe to update from the follower thread while read."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"dim: must be >= 1, got {dim}")
        self.dim = dim
        self._vectors: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.updates = 0
        self.decode_errors = 0
        self.rejected = 0  # records of another dimension (counted, skipped)

    def apply(self, records: Sequence[ItemEmbedding]) -> int:
        """Upsert records; those of another dimension are skipped. Returns how many applied."""
        good = [r for r in records if r.vector.shape == (self.dim,)]
        if len(good) < len(records):
            self.rejected += len(records) - len(good)
            bad = next(r for r in records if r.vector.shape != (self.dim,))
            log.error("skipping %d embeddings whose dimension is not %d (e.g. %s)", len(records) - len(good),
                      self.dim, bad.item_id)
        with self._lock:
            for record in good:
                self._vectors[record.item_id] = np.asarray(record.vector, dtype=np.float32)
            self.updates += len(good)
        return len(good)

    def remove(self, item_ids: Collection[str]) -> None:
        with self._lock:
            for item in item_ids:
                self._vectors.pop(item, None)

    def features(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """item id -> (D,) vector, for the items known (the others are left out)."""
        with self._lock:
            return {i: self._vectors[i] for i in item_ids if i in self._vectors}

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._vectors)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._vectors

    def __len__(self) -> int:
        return len(self._vectors)


def feature_handler(store) -> Callable[[list], None]:
    """Apply a poll's worth of item-embeddings messages to `store` (last record per item wins): an
    `ItemFeatures` here, or any store with `apply(records)`, `remove(item_ids)` and a
    `decode_errors` count (the streams worker's FAISS catalogue replica uses the same handler)."""

    def handle(messages: list) -> None:
        upserts: dict[str, ItemEmbedding] = {}
        removed: list[str] = []
        for message, record in decode_each(messages, ItemEmbedding, store, "embedding"):
            if record is None:  # tombstone: the item is gone
                key = (message.key or b"").decode("utf-8", "replace")
                upserts.pop(key, None)
                removed.append(key)
                continue
            upserts[record.item_id] = record
        if removed:
            store.remove(removed)
        store.apply(list(upserts.values()))

    return handle


def feature_follower(consumer_factory: Callable[[], object], topic: str, store: ItemFeatures) -> TopicTail:
    """The thread that keeps `store` in step with the item-embeddings topic."""
    return TopicTail(consumer_factory, topic, feature_handler(store))
