"""The topic registry: every topic's name, key, record, partitions and cleanup policy, once.

    TopicConfig(prefix="vip5.", partitions=6).name(INTERACTIONS)  -> "vip5.interactions"

Item embeddings live on a compacted topic keyed by item id, so any worker rebuilds its index by
reading it from the start. Adapter updates use one partition so every follower sees versions in
order. Scale-out is by partitions: interactions, rerank requests, recommendations and explanations
are keyed by user.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from schemas.records import (
    AdapterUpdate,
    DeadLetter,
    Explanation,
    Interaction,
    ItemEmbedding,
    ItemUpsert,
    Recommendation,
    Record,
    RerankRequest,
    RetrieverModel,
)


@dataclass(frozen=True)
class TopicSpec:
    base_name: str
    record: type[Record]
    key: str  # what the message key holds
    cleanup_policy: str = "delete"  # "delete" | "compact"
    partitions: int | None = None  # None: TopicConfig.partitions
    description: str = ""


INTERACTIONS = TopicSpec("interactions", Interaction, key="user_id",
                         description="user interactions with items")
ITEMS = TopicSpec("items", ItemUpsert, key="item_id", description="new and changed products with images")
ITEM_EMBEDDINGS = TopicSpec("item-embeddings", ItemEmbedding, key="item_id", cleanup_policy="compact",
                            description="visual vector per item; the source every index replica rebuilds from")
RETRIEVER_VECTORS = TopicSpec("retriever-vectors", ItemEmbedding, key="item_id", cleanup_policy="compact",
                              description="the learned retriever's vector per item (encoder_id = its version)")
RETRIEVER_MODELS = TopicSpec("retriever-models", RetrieverModel, key="retriever name", cleanup_policy="compact",
                             partitions=1, description="the learned retriever's query network, newest version")
RERANK_REQUESTS = TopicSpec("rerank-requests", RerankRequest, key="user_id",
                            description="user history plus retrieved candidates, for the model worker")
RECOMMENDATIONS = TopicSpec("recommendations", Recommendation, key="user_id",
                            description="ranked items per user: what subscribers consume")
EXPLANATIONS = TopicSpec("explanations", Explanation, key="user_id",
                         description="a generated explanation of a recommendation's top item, after it")
ADAPTER_UPDATES = TopicSpec("adapter-updates", AdapterUpdate, key="adapter", partitions=1,
                            description="accepted adapter versions, in order")
DEAD_LETTER = TopicSpec("dead-letter", DeadLetter, key="source topic",
                        description="records that could not be processed, with the reason and raw bytes")

ALL_TOPICS: tuple[TopicSpec, ...] = (
    INTERACTIONS, ITEMS, ITEM_EMBEDDINGS, RETRIEVER_VECTORS, RETRIEVER_MODELS, RERANK_REQUESTS, RECOMMENDATIONS,
    EXPLANATIONS, ADAPTER_UPDATES, DEAD_LETTER,
)

_LEGAL_NAME = re.compile(r"[A-Za-z0-9._-]*")


@dataclass(frozen=True)
class TopicConfig:
    """Naming and sizing of the topics for one deployment."""

    prefix: str = "vip5."
    partitions: int = 6
    replication_factor: int = 1

    def __post_init__(self) -> None:
        if not _LEGAL_NAME.fullmatch(self.prefix) or len(self.prefix) > 200:
            raise ValueError(f"prefix: {self.prefix!r} must use only letters, digits, '.', '_', '-'")
        if not 1 <= self.partitions <= 10_000:
            raise ValueError(f"partitions: {self.partitions} must be in [1, 10000]")
        if self.replication_factor < 1:
            raise ValueError(f"replication_factor: {self.replication_factor} must be >= 1")

    def name(self, spec: TopicSpec) -> str:
        return f"{self.prefix}{spec.base_name}"

    def partitions_of(self, spec: TopicSpec) -> int:
        return spec.partitions or self.partitions

    def topic_configs(self, spec: TopicSpec) -> dict[str, str]:
        return {"cleanup.policy": spec.cleanup_policy}

    def replace(self, **changes) -> TopicConfig:
        return dataclasses.replace(self, **changes)
