"""A worker's own replica of the item catalogue, fed from the compacted item-embeddings topic.

    item-embeddings (ItemEmbedding, key item_id) ──► CatalogReplica: ItemIndex + freshness + features

Every streams worker and every model worker runs one `EmbeddingFollower`: a consumer outside any
group, assigned every partition, reading from the beginning. So any number of workers, on any
number of machines, converge on the same catalogue, and a new one rebuilds by reading the topic.
Every record is handled on its own: one that fails to decode (degenerate vectors are refused by
the schema) or that the index refuses is counted and skipped, never stopping the follower; the
producer of the topic dead-letters its own bad input. A tombstone (value None) removes the item.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

import numpy as np

from index.candidates import (
    CandidateConfig,
    FreshnessTracker,
    PopularityTracker,
    RetrievedItem,
    generate_candidates,
)
from index.covisitation import Covisitation
from index.item_index import IndexConfig, ItemIndex
from runtime.features import feature_handler
from runtime.tail import TopicTail
from schemas.records import ItemEmbedding

if TYPE_CHECKING:
    from index.retriever import SequentialRetriever

log = logging.getLogger(__name__)


class CatalogReplica:
    """The item index plus the freshness of each item, safe to update from the follower thread.

    `index` holds the vectors of `index_config.dim` (the image encoder's); each of `extra_indexes`
    holds the vectors of another dimension (the text encoder's, for items without an image). A
    record goes to the index of its dimension; content neighbours search every index."""

    def __init__(self, index_config: IndexConfig, *, fresh_max_age_s: float = 7 * 86400.0,
                 extra_indexes: Sequence[IndexConfig] = ()):
        self.index = ItemIndex(index_config)
        self.by_dim = {index_config.dim: self.index}
        for config in extra_indexes:
            if config.dim in self.by_dim:
                raise ValueError(f"extra_indexes: a second index of dimension {config.dim}")
            self.by_dim[config.dim] = ItemIndex(config)
        self.freshness = FreshnessTracker(max_age_s=fresh_max_age_s)
        self._lock = threading.Lock()  # guards freshness; the index has its own lock
        self.encoder_ids: set[str] = set()
        self.updates = 0
        self.decode_errors = 0
        self.rejected = 0  # records the index refused (counted, skipped)

    def apply(self, records: Sequence[ItemEmbedding]) -> int:
        """Upsert records; those of a dimension no index has are skipped. Returns how many applied.
        An item that changes dimension (an image arrives for a text-only item) leaves the other index."""
        wrong = [r.item_id for r in records if r.vector.shape[0] not in self.by_dim]
        if wrong:
            log.error("skipping %d embeddings whose dimension is none of the indexes' %s (e.g. %s)", len(wrong),
                      sorted(self.by_dim), wrong[0])
            records = [r for r in records if r.vector.shape[0] in self.by_dim]
        applied = []
        for dim, index in self.by_dim.items():
            group = [r for r in records if r.vector.shape[0] == dim]
            if not group:
                continue
            for other_dim, other in self.by_dim.items():
                if other_dim != dim and len(other):
                    other.remove([r.item_id for r in group])
            try:
                index.upsert([r.item_id for r in group], np.stack([r.vector for r in group]))
            except ValueError:  # one bad vector fails the whole call: apply each on its own
                group = [r for r in group if self._upsert_one(index, r)]
            applied += group
        records = applied
        if not records:
            return 0
        with self._lock:
            for r in records:
                self.freshness.add(r.item_id, r.event_time_ms / 1000.0)
                self.encoder_ids.add(r.encoder_id)
            self.updates += len(records)
        return len(records)

    def _upsert_one(self, index: ItemIndex, record: ItemEmbedding) -> bool:
        try:
            index.upsert([record.item_id], record.vector[None, :])
            return True
        except ValueError as err:
            self.rejected += 1
            log.error("skipping embedding of %s the index refuses: %s", record.item_id, err)
            return False

    def remove(self, item_ids: Collection[str]) -> None:
        for index in self.by_dim.values():
            index.remove(item_ids)
        with self._lock:
            for item in item_ids:
                self.freshness.discard(item)

    def features(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """item id -> (D,) content feature (image, else text), for the items the replica knows."""
        out = {}
        for index in reversed(self.by_dim.values()):  # the image index last: its vector wins
            out.update(index.get_vectors(item_ids))
        return out

    def candidates(self, history: Sequence[str], popularity: PopularityTracker, config: CandidateConfig,
                   *, now_s: float, covisitation: Covisitation | None = None,
                   retriever: SequentialRetriever | None = None) -> list[RetrievedItem]:
        with self._lock:
            indexes = [index for index in self.by_dim.values() if len(index)] or [self.index]
            return generate_candidates(history, indexes, popularity, self.freshness, config, now_s=now_s,
                                       covisitation=covisitation, retriever=retriever)

    def __contains__(self, item_id: str) -> bool:
        return any(item_id in index for index in self.by_dim.values())

    def __len__(self) -> int:
        return sum(len(index) for index in self.by_dim.values())


def embedding_follower(consumer_factory: Callable[[], object], topic: str, replica: CatalogReplica) -> TopicTail:
    """The thread that keeps `replica` in step with the item-embeddings topic."""
    return TopicTail(consumer_factory, topic, feature_handler(replica))
