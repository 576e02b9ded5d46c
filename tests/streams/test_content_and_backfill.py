"""Items without an image get a text content vector; backfill interactions update history only."""

import asyncio

import numpy as np

from index.candidates import CandidateConfig, PopularityTracker
from index.item_index import IndexConfig
from index.replica import CatalogReplica
from schemas.headers import BACKFILL, backfill_headers, is_backfill
from schemas.records import ItemEmbedding, ItemUpsert, RerankRequest
from schemas.topics import ITEM_EMBEDDINGS, RERANK_REQUESTS
from tests.streams.test_handlers import click, context, event, handlers


class FakeTextEncoder:
    encoder_id, dim = "text:fake", 3

    def encode(self, texts):
        return np.asarray([[1.0, len(t), 0.0] for t in texts], np.float32)


def test_an_item_without_an_image_is_published_with_a_text_vector_of_its_title_and_category():
    ctx = context()
    ctx.text_encoder = FakeTextEncoder()
    items, _, out = handlers(ctx)
    upsert = ItemUpsert(item_id="i1", title="Rose  lip balm", category="Beauty", event_time_ms=5)
    asyncio.run(items.handle([event(upsert, 0, "t.items")]))
    (record,) = out.on(ITEM_EMBEDDINGS, ItemEmbedding)
    assert record.item_id == "i1" and record.encoder_id == "text:fake"
    assert record.vector.tolist() == [1.0, len("Rose lip balm. Beauty"), 0.0]


def test_without_a_text_encoder_an_item_without_an_image_gets_no_vector():
    ctx = context()
    items, _, out = handlers(ctx)
    asyncio.run(items.handle([event(ItemUpsert(item_id="i1", title="t", event_time_ms=5), 0, "t.items")]))
    assert out.on(ITEM_EMBEDDINGS, ItemEmbedding) == [] and ctx.stats["items_without_image"] == 1


def test_backfill_interactions_extend_the_history_without_a_request_and_a_live_one_after_them_gets_one():
    ctx = context()
    _, interactions, out = handlers(ctx)
    backfill = [event(click(n, "u1", item), n) for n, item in enumerate(["a", "b"])][:1]
    for e in backfill:
        e.headers = {BACKFILL: b"1"}
    asyncio.run(interactions.handle(backfill))
    assert out.on(RERANK_REQUESTS, RerankRequest) == [] and interactions.history[b"u1"]["items"] == ["a"]
    assert ctx.stats["backfill_interactions"] == 1 and ctx.popularity.top(5, now_s=1.0)
    asyncio.run(interactions.handle([event(click(7, "u1", "b"), 7)]))
    (request,) = out.on(RERANK_REQUESTS, RerankRequest)
    assert request.history == ("a", "b") and request.event_ids == ("e7",)


def test_backfill_is_recognised_in_faust_and_kafka_python_header_forms_only_with_value_1():
    assert is_backfill({BACKFILL: b"1"}) and is_backfill(backfill_headers())
    assert not is_backfill(None) and not is_backfill([]) and not is_backfill({BACKFILL: b"0"})


def embedding(item_id: str, vector) -> ItemEmbedding:
    return ItemEmbedding(item_id=item_id, vector=np.asarray(vector, np.float32), encoder_id="e", event_time_ms=1,
                         embedded_time_ms=2)


def test_the_replica_keeps_image_and_text_vectors_apart_and_retrieves_neighbours_from_both():
    replica = CatalogReplica(IndexConfig(dim=4, kind="flat"), extra_indexes=(IndexConfig(dim=3, kind="flat"),))
    replica.apply([embedding("img1", [1, 0, 0, 0]), embedding("img2", [1, 0.1, 0, 0]),
                   embedding("txt1", [0, 1, 0]), embedding("txt2", [0, 1, 0.1]), embedding("odd", [1, 1])])
    assert len(replica) == 4 and "txt1" in replica and "odd" not in replica
    assert replica.features(["img1", "txt1"])["txt1"].shape == (3,)
    config = CandidateConfig(k=4, covisit_k=0, sequential_k=0, popular_k=0, fresh_k=0)
    got = replica.candidates(["img1", "txt1"], PopularityTracker(), config, now_s=1.0)
    assert {c.item_id for c in got} == {"img2", "txt2"} and {c.source for c in got} == {"visual"}
    replica.apply([embedding("txt1", [1, 0, 0, 0])])  # an image arrives for a text-only item
    assert replica.features(["txt1"])["txt1"].shape == (4,) and len(replica) == 4
