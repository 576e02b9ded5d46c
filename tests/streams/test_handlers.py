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
from streams import handlers as handlers_module
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
        self.applied = []  # embeddings the worker gave its own replica

    def apply(self, records):
        self.applied += records
        return len(records)

    def candidates(self, history, popularity, config, *, now_s, covisitation=None, retriever=None):
        return [RetrievedItem(i, 1.0, "visual") for i in self.items if i not in history]


def event(record_or_bytes, offset: int, topic: str = "t.interactions"):
    value = record_or_bytes if isinstance(record_or_bytes, bytes) else encode(record_or_bytes)
    return SimpleNamespace(message=SimpleNamespace(topic=topic, partition=0, offset=offset), key=b"k", value=value)


def context(items=("a", "b", "c")) -> StreamsContext:
    return StreamsContext(encoder=FakeEncoder(), replica=FixedCandidates(items), popularity=PopularityTracker(),
                          stats=Counter(), metrics=WorkerMetrics("streams-test"))


def click(n: int, user: str, item: str) -> Interaction:
    return Interaction(event_id=f"e{n}", user_id=user, item_id=item, kind="click", event_time_ms=1000 + n)


def handlers(ctx, history=None, **config):
    cfg = StreamsConfig(topics=TopicConfig(prefix="t."), **config)
    out = Outbox()
    intake = Intake(ctx, out)
    history = {} if history is None else history
    return ItemsHandler(cfg, ctx, intake, out), InteractionsHandler(cfg, ctx, intake, out, history=history), out


class Clock:
    """Stands in for streams.handlers.now_ms: wall-clock milliseconds the test sets."""

    def __init__(self, ms: int = 1_700_000_000_000):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


class Changelogged(dict):
    """A history table that records deletes: on faust's table each one is a changelog tombstone."""

    def __init__(self, *args):
        super().__init__(*args)
        self.tombstones = []

    def __delitem__(self, key):
        self.tombstones.append(key)
        super().__delitem__(key)


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
    assert ctx.metrics.records_in.labels(topic="t.interactions")._value.get() == 4  # bad bytes count as in


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
    assert [e.item_id for e in ctx.replica.applied] == ["i1"]  # searchable here before the topic comes back
    (letter,) = out.on(DEAD_LETTER, DeadLetter)
    assert letter.stage == "embed" and "cannot decode" in letter.reason
    assert ctx.stats["items_without_image"] == 1 and ctx.stats["items_embedded"] == 1


def test_the_history_table_holds_at_most_max_users_and_evicts_the_least_recently_active_first():
    ctx = context()
    history = Changelogged()
    _, interactions, _ = handlers(ctx, history, max_users=3)
    for n, user in enumerate(["u1", "u2", "u3", "u1", "u4"]):  # u1 is active again before u4 arrives
        asyncio.run(interactions.handle([event(click(n, user, "a"), n)]))
    assert set(history) == {b"u1", b"u3", b"u4"} and history.tombstones == [b"u2"]
    for n in range(100):  # a producer inventing users: the table stays at the bound
        asyncio.run(interactions.handle([event(click(10 + n, f"x{n}", "a"), 10 + n)]))
        assert len(history) == 3
    assert ctx.stats["users_evicted"] == 101


def test_an_evicted_user_starts_over_with_an_empty_history():
    ctx = context(items=("a", "b", "c", "d"))
    _, interactions, out = handlers(ctx, max_users=1)
    for n, (user, item) in enumerate([("u1", "a"), ("u2", "b"), ("u1", "c")]):
        asyncio.run(interactions.handle([event(click(n, user, item), n)]))
    last = out.on(RERANK_REQUESTS, RerankRequest)[-1]
    assert last.user_id == "u1" and last.history == ("c",)


def test_a_user_idle_for_longer_than_user_idle_s_is_dropped_and_active_users_are_kept(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(handlers_module, "now_ms", clock)
    ctx = context()
    history = Changelogged()
    _, interactions, _ = handlers(ctx, history, user_idle_s=60)
    start = clock.ms
    for n, (at_s, user) in enumerate([(0, "u1"), (30, "u2"), (59, "u1"), (100, "u3")]):
        clock.ms = start + at_s * 1000
        asyncio.run(interactions.handle([event(click(n, user, "a"), n)]))
    # at 100 s: u2 (last seen at 30 s) has been idle 70 s, u1 (59 s) only 41 s
    assert set(history) == {b"u1", b"u3"} and history.tombstones == [b"u2"]
    assert history[b"u1"]["active_ms"] == start + 59_000


def test_a_restored_table_is_cut_to_the_bound_oldest_users_first_and_rows_without_a_time_count_as_new(
        monkeypatch):
    clock = Clock()
    monkeypatch.setattr(handlers_module, "now_ms", clock)
    state = {"items": ["a"], "events": ["e1"]}
    history = Changelogged({b"old": {**state, "active_ms": clock.ms - 3000},
                            b"legacy": dict(state),  # written before the bound existed
                            b"mid": {**state, "active_ms": clock.ms - 2000},
                            b"new": {**state, "active_ms": clock.ms - 1000}})
    _, interactions, _ = handlers(context(), history, max_users=2)
    interactions.restore_retention()  # what streams.app runs once faust has restored the table
    assert history.tombstones == [b"old", b"mid"] and set(history) == {b"new", b"legacy"}
