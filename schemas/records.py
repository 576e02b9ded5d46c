"""The records that flow between producers and workers: one definition each.

Every record is a frozen dataclass that validates itself on construction (so a producer cannot
publish what a consumer would reject) and names its schema (`SCHEMA`, `VERSION`), which travels
with it on the wire. Times are epoch milliseconds (`*_time_ms`). Encoding: `schemas.codec`.

    Interaction     interactions topic, key user_id       a user touched an item
    ItemUpsert      items topic, key item_id              a new or changed product, with its image
    ItemEmbedding   item-embeddings (compacted), key item_id   the item's visual vector
    RerankRequest   rerank-requests, key user_id          history + retrieved candidates to re-rank
    Recommendation  recommendations, key user_id          the ranked items and who produced them
    Explanation     explanations, key user_id             why the top item suits the user; follows its
                                                          Recommendation (same request_id)
    AdapterUpdate   adapter-updates, key "adapter"        a new adapter version to load
    RetrieverModel  retriever-models (compacted), key "sequential"   the learned retriever's query
                                                          network; its item vectors are ItemEmbeddings
                                                          on retriever-vectors (encoder_id = version)
    DeadLetter      dead-letter, key source topic         what could not be processed, and why
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from schemas import fields as F
from schemas.errors import SchemaError
from schemas.limits import LIMITS

ID = F.Id(max_len=LIMITS.max_id_len)
TIME_MS = F.Int(lo=LIMITS.min_time_ms, hi=LIMITS.max_time_ms)
SCORE = F.Float()
INTERACTION_KINDS = ("view", "click", "add_to_cart", "purchase", "rating", "review")
CANDIDATE_SOURCES = ("covisit", "visual", "popular", "fresh", "history", "other", "sequential")

REGISTRY: dict[str, type[Record]] = {}


class Part:
    """Base of records and their nested parts: validation on construction, field-wise equality."""

    def __post_init__(self) -> None:
        F.validate_fields(self)
        self.check()

    def check(self) -> None:
        """Cross-field rules; override where a record has them."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_equal(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self))

    __hash__ = None  # records may hold arrays; compare, don't hash


class Record(Part):
    """A top-level record: it has a schema identity that travels on the wire."""

    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int]

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        """The wire fields of an older `version`, made fit for this one before validation.

        Fields added since are optional and need nothing; a record that removed a field drops it here.
        `fields` is untrusted: anything of an unexpected type is left for validation to reject.
        """
        return fields


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


def record(schema: str, version: int):
    """Class decorator: a frozen, keyword-only dataclass registered under its schema name."""

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True, eq=False, kw_only=True)(cls)
        cls.SCHEMA, cls.VERSION = schema, version
        REGISTRY[schema] = cls
        return cls

    return wrap


def _part(cls):
    """A nested part of a record (no schema identity of its own)."""
    return dataclasses.dataclass(frozen=True, eq=False, kw_only=True)(cls)


@record("interaction", 1)
class Interaction(Record):
    event_id: str = F.field(ID)
    user_id: str = F.field(ID)
    item_id: str = F.field(ID)
    kind: str = F.field(F.Choice(choices=INTERACTION_KINDS))
    event_time_ms: int = F.field(TIME_MS)
    rating: float | None = F.field(F.Float(lo=0.0, hi=5.0, optional=True))
    review_text: str | None = F.field(F.Str(max_len=LIMITS.max_text_len, min_len=0, optional=True))

    def check(self) -> None:
        if self.kind == "rating" and self.rating is None:
            raise SchemaError("rating", "is required when kind is 'rating'")


@record("item_upsert", 1)
class ItemUpsert(Record):
    item_id: str = F.field(ID)
    title: str = F.field(F.Str(max_len=LIMITS.max_title_len))
    event_time_ms: int = F.field(TIME_MS)
    category: str = F.field(F.Str(max_len=LIMITS.max_title_len, min_len=0), default="")
    image_bytes: bytes | None = F.field(F.Bytes(max_len=LIMITS.max_image_bytes, optional=True))
    image_uri: str | None = F.field(F.Str(max_len=LIMITS.max_uri_len, optional=True))

    def check(self) -> None:
        if self.image_bytes is not None and self.image_uri is not None:
            raise SchemaError("image_uri", "give image_bytes or image_uri, not both")


@record("item_embedding", 1)
class ItemEmbedding(Record):
    item_id: str = F.field(ID)
    vector: np.ndarray = F.field(F.Vector(max_dim=LIMITS.max_vector_dim))
    encoder_id: str = F.field(F.Str(max_len=LIMITS.max_title_len))
    event_time_ms: int = F.field(TIME_MS)
    embedded_time_ms: int = F.field(TIME_MS)

    def check(self) -> None:
        # a degenerate vector would pass here and then fail in every replica's index (forever, on a
        # compacted topic); float64 so that squares of tiny or huge float32 values neither underflow
        # nor overflow
        norm = float(np.linalg.norm(self.vector.astype(np.float64)))
        if not LIMITS.min_vector_norm <= norm <= LIMITS.max_vector_norm:
            raise SchemaError("vector", f"norm {norm:.3g} outside [{LIMITS.min_vector_norm:g}, {LIMITS.max_vector_norm:g}]")


@_part
class Candidate(Part):
    item_id: str = F.field(ID)
    score: float = F.field(SCORE)  # the proposing source's own score: comparable within that source only
    source: str = F.field(F.Choice(choices=CANDIDATE_SOURCES))
    # The learned retriever's score of the item for this user, whichever source proposed it
    # (comparable across the request's candidates); None without a retriever or a vector for the item.
    affinity: float | None = F.field(F.Float(optional=True))

OPTIONAL_TIME_MS = F.Int(lo=LIMITS.min_time_ms, hi=LIMITS.max_time_ms, optional=True)


# v2: streams_received_time_ms; v3: Candidate.affinity (older records decode with None)
@record("rerank_request", 3)
class RerankRequest(Record):
    request_id: str = F.field(ID)
    user_id: str = F.field(ID)
    history: tuple[str, ...] = F.field(F.List(item=ID, max_items=LIMITS.max_history_len))
    candidates: tuple[Candidate, ...] = F.field(
        F.List(item=F.Nested(factory=Candidate), max_items=LIMITS.max_candidates, min_items=1))
    event_ids: tuple[str, ...] = F.field(F.List(item=ID, max_items=LIMITS.max_history_len, min_items=1))
    event_time_ms: int = F.field(TIME_MS)
    request_time_ms: int = F.field(TIME_MS)  # the streams worker built the request
    streams_received_time_ms: int | None = F.field(OPTIONAL_TIME_MS)  # the streams worker got the events


@_part
class RankedItem(Part):
    item_id: str = F.field(ID)
    score: float = F.field(SCORE)


# v2: the stage times (vip5.latency reads them); v1 records decode with None.
# v3: no explanation on the top item (it follows in its own Explanation record); v1/v2 records drop it.
@record("recommendation", 3)
class Recommendation(Record):
    request_id: str = F.field(ID)
    user_id: str = F.field(ID)
    items: tuple[RankedItem, ...] = F.field(
        F.List(item=F.Nested(factory=RankedItem), max_items=LIMITS.max_candidates))
    model_version: str = F.field(F.Str(max_len=LIMITS.max_title_len))
    adapter_version: str = F.field(F.Str(max_len=LIMITS.max_title_len))
    event_ids: tuple[str, ...] = F.field(F.List(item=ID, max_items=LIMITS.max_history_len, min_items=1))
    event_time_ms: int = F.field(TIME_MS)
    request_time_ms: int = F.field(TIME_MS)
    publish_time_ms: int = F.field(TIME_MS)
    # Where the time went, stage by stage (epoch ms, from the clocks of the workers that stamped them)
    streams_received_time_ms: int | None = F.field(OPTIONAL_TIME_MS)  # copied from the request
    model_received_time_ms: int | None = F.field(OPTIONAL_TIME_MS)  # the model worker's poll returned it
    batch_start_time_ms: int | None = F.field(OPTIONAL_TIME_MS)  # its batch began scoring
    scored_time_ms: int | None = F.field(OPTIONAL_TIME_MS)  # its batch's ranking finished

    @classmethod
    def upgrade(cls, fields: dict, version: int) -> dict:
        items = fields.get("items")
        if version < 3 and isinstance(items, list):
            fields["items"] = [{k: v for k, v in item.items() if k != "explanation"} if isinstance(item, dict)
                               else item for item in items]
        return fields


@record("explanation", 1)
class Explanation(Record):
    """A generated explanation of a recommendation's top item, published after the recommendation
    so that generating it never delays the ranked list."""

    request_id: str = F.field(ID)  # the Recommendation it explains
    user_id: str = F.field(ID)
    item_id: str = F.field(ID)  # that recommendation's top item
    text: str = F.field(F.Str(max_len=LIMITS.max_text_len, min_len=0))  # empty if generation stopped at once
    model_version: str = F.field(F.Str(max_len=LIMITS.max_title_len))
    adapter_version: str = F.field(F.Str(max_len=LIMITS.max_title_len))
    event_time_ms: int = F.field(TIME_MS)  # as in the Recommendation (from its request)
    publish_time_ms: int = F.field(TIME_MS)


@record("adapter_update", 2)  # v2: signature
class AdapterUpdate(Record):
    version: str = F.field(ID)
    artifact_uri: str = F.field(F.Str(max_len=LIMITS.max_uri_len))
    sha256: str = F.field(F.Str(max_len=64, min_len=64, pattern="[0-9a-f]{64}"))
    backbone_id: str = F.field(F.Str(max_len=LIMITS.max_title_len))
    created_time_ms: int = F.field(TIME_MS)
    parent_version: str | None = F.field(F.Str(max_len=LIMITS.max_id_len, optional=True))
    metrics: dict[str, float] | None = F.field(F.Map(max_items=LIMITS.max_metrics, optional=True))
    # hex HMAC-SHA256 of the artifact's manifest.json under the trainer's key (model_worker.artifacts)
    signature: str | None = F.field(F.Str(max_len=64, min_len=64, pattern="[0-9a-f]{64}", optional=True))


@record("retriever_model", 2)  # v2: vectors_digest, signature (v1 records decode with None)
class RetrieverModel(Record):
    """A SASRec query network without its item table (`index.retriever`): safetensors `weights`
    (plain tensors, never pickle), the shape they must have, how many item vectors this version
    published on retriever-vectors and their digest, signed with the deployment's key."""

    version: str = F.field(ID)
    hidden: int = F.field(F.Int(lo=1, hi=LIMITS.max_vector_dim))
    n_blocks: int = F.field(F.Int(lo=1, hi=16))
    n_heads: int = F.field(F.Int(lo=1, hi=64))
    max_len: int = F.field(F.Int(lo=1, hi=LIMITS.max_history_len))
    loss: str = F.field(F.Choice(choices=("ce", "bce")))  # "bce" scales item vectors by sqrt(hidden)
    weights: bytes = F.field(F.Bytes(max_len=LIMITS.max_message_bytes - 64 * 1024))
    n_items: int = F.field(F.Int(lo=1))
    created_time_ms: int = F.field(TIME_MS)
    # independent SASRecs side by side, hidden / towers wide each (index.sasrec.SASRecTowers)
    towers: int = F.field(F.Int(lo=1, hi=16), default=1)
    # sha256 of the version's item vectors (index.retriever.vectors_digest)
    vectors_digest: str | None = F.field(F.Str(max_len=64, min_len=64, pattern="[0-9a-f]{64}", optional=True))
    # hex HMAC-SHA256 of index.retriever.signed_body(record) under the deployment's key (runtime.signing)
    signature: str | None = F.field(F.Str(max_len=64, min_len=64, pattern="[0-9a-f]{64}", optional=True))

    def check(self) -> None:
        if self.hidden % (self.towers * self.n_heads):
            raise SchemaError("n_heads", f"hidden {self.hidden} is not divisible by towers x n_heads "
                              f"({self.towers} x {self.n_heads})")


@record("dead_letter", 1)
class DeadLetter(Record):
    source_topic: str = F.field(F.Str(max_len=249))
    partition: int = F.field(F.Int(lo=0, hi=2**31 - 1))
    offset: int = F.field(F.Int(lo=0))
    reason: str = F.field(F.Str(max_len=LIMITS.max_reason_len))
    raw: bytes = F.field(F.Bytes(max_len=LIMITS.max_message_bytes, min_len=0))
    failed_time_ms: int = F.field(TIME_MS)
    stage: str = F.field(F.Str(max_len=LIMITS.max_id_len), default="decode")
    raw_key: bytes | None = F.field(F.Bytes(max_len=LIMITS.max_message_bytes, min_len=0, optional=True))

    @classmethod
    def of(cls, *, source_topic: str, partition: int, offset: int, raw: bytes | None, reason: str,
           stage: str, raw_key: bytes | None = None, now_ms: int) -> DeadLetter:
        """A dead letter for any failure; reason and bytes are cut to the limits so it always encodes."""
        cap = LIMITS.max_message_bytes - LIMITS.max_reason_len - 1024
        return cls(source_topic=source_topic, partition=partition, offset=offset,
                   reason=(reason or "unknown")[: LIMITS.max_reason_len], raw=bytes(raw or b"")[:cap],
                   raw_key=None if raw_key is None else bytes(raw_key)[:1024], stage=stage[: LIMITS.max_id_len],
                   failed_time_ms=now_ms)
