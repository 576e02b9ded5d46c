"""The streams agents' handlers driven in process: no broker, no faust."""

import asyncio
from collections import Counter
from types import SimpleNamespace

import numpy as np

from index.candidates import PopularityTracker, RetrievedItem
from runtime.metrics import WorkerMetrics
from schemas.codec import decode, encode
from schemas.records import DeadLetter, Interaction, ItemEmbedding, ItemUpsert, RerankRequest
from schemas.topics import DEAD_LETTER, ITEM_EMBEDDINGS, RERANK_REQUESTS, TopicConfig
from streams.config import StreamsConfig
from streams.handlers import Intake, InteractionsHandler, ItemsHandler, StreamsContext


class Outbox:
    def __init__(self):
        self.sent = []

    async def __call__(self, spec, key, value):
        self.sent.append((spec, key, value))

    def on(self, spec, record_type):
        return [decode(value, record_type) for s, _, value in self.sent if s is spec]


class FakeEncoder:
    encoder_id, dim = "fake", 4

    def embed(self, sources):
        vectors = np.ones((len(sources), 4), np.float32) / 2
        errors = tuple("cannot decode" if s == b"broken" else None for s in sources)
        return SimpleNamespace(vectors=vectors, errors=errors)


class FixedCandidates:
    def __init__(self, items):
        self.items = items

    def candidates(self, history, popularity, config, *, now_s, covisitation=None):
        return [RetrievedItem(i, 1.0, "visual") for i in self.items if i not in history]


def event(record_or_bytes, offset: int, topic: str = "t.interactions"):
    value = record_or_bytes if isinstance(record_or_bytes, bytes) else encode(record_or_bytes)
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=0, offset=offset), key=b"k", value=value)


def context(items=("a", "b", "c")) -> StreamsContext:
    return StreamsContext(encoder=FakeEncoder(), replica=FixedCandidates(items), popularity=PopularityTracker(),
                          stats=Counter(), metrics=WorkerMetrics("streams-test"))


def click(n: int, user: str, item: str) -> Interaction:
    return Interaction(event_id=f"e{n}", user_id=user, item_id=item, kind="click", event_time_ms=1000 + n)


def handlers(ctx):
    cfg = StreamsConfig(topics=TopicConfig(prefix="t."))
    out = Outbox()
    intake = Intake(ctx, out)
    return ItemsHandler(cfg, ctx, intake, out), InteractionsHandler(cfg, ctx, intake, out, history={}), out


def test_interactions_become_one_request_per_user_and_bad_bytes_a_dead_letter():
    ctx = context()
    _, interactions, out = handlers(ctx)
    events = [event(click(1, "u1", "a"), 0), event(click(2, "u2", "b"), 1), event(b"\xc1junk", 2),
              event(click(3, "u1", "b"), 3)]
    asyncio.run(interactions.handle(events))
    requests = out.on(RERANK_REQUESTS, RerankRequest)
    assert sorted((r.user_id, r.event_ids) for r in requests) == [("u1", ("e1", "e3")), ("u2", ("e2",))]
    assert [c.item_id for c in next(r for r in requests if r.user_id == "u1").candidates] == ["c"]
    assert interactions.history[b"u1"]["items"] == ["a", "b"]
    (letter,) = out.on(DEAD_LETTER, DeadLetter)
    assert letter.stage == "decode" and letter.offset == 2 and ctx.stats["dead_letters"] == 1


def test_a_redelivered_interaction_repeats_the_same_request_id():
    ctx = context()
    _, interactions, out = handlers(ctx)
    asyncio.run(interactions.handle([event(click(1, "u1", "a"), 0)]))
    asyncio.run(interactions.handle([event(click(1, "u1", "a"), 0)]))
    first, again = out.on(RERANK_REQUESTS, RerankRequest)
    assert first.request_id == again.request_id and ctx.stats["duplicates"] == 1


def test_items_are_embedded_in_one_call_and_an_undecodable_image_is_dead_lettered():
    ctx = context()
    items, _, out = handlers(ctx)
    upserts = [ItemUpsert(item_id="i1", title="t", category="c", image_bytes=b"png", event_time_ms=1),
               ItemUpsert(item_id="i2", title="t", category="c", image_bytes=b"broken", event_time_ms=1),
               ItemUpsert(item_id="i3", title="t", category="c", event_time_ms=1)]
    asyncio.run(items.handle([event(u, n, topic="t.items") for n, u in enumerate(upserts)]))
    assert [e.item_id for e in out.on(ITEM_EMBEDDINGS, ItemEmbedding)] == ["i1"]
    (letter,) = out.on(DEAD_LETTER, DeadLetter)
    assert letter.stage == "embed" and "cannot decode" in letter.reason
    assert ctx.stats["items_without_image"] == 1 and ctx.stats["items_embedded"] == 1
