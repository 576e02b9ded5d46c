"""Every record survives encode/decode unchanged; invalid values name the field."""

import msgpack
import numpy as np
import pytest

from schemas.codec import decode, decode_any, encode
from schemas.errors import SchemaError
from schemas.records import (
    REGISTRY,
    AdapterUpdate,
    Candidate,
    DeadLetter,
    Explanation,
    Interaction,
    ItemEmbedding,
    ItemUpsert,
    RankedItem,
    Recommendation,
    RerankRequest,
    RetrieverModel,
)

T = 1_764_000_000_000

EXAMPLES = [
    Interaction(event_id="e1", user_id="u1", item_id="i1", kind="rating", rating=4.5,
                review_text="Great shade, lasts all day.", event_time_ms=T),
    Interaction(event_id="e2", user_id="u1", item_id="i2", kind="view", event_time_ms=T),
    ItemUpsert(item_id="i1", title="Red lipstick", category="Beauty", image_bytes=b"\xff\xd8jpeg", event_time_ms=T),
    ItemUpsert(item_id="i2", title="Sneaker", image_uri="file:///data/2.jpg", event_time_ms=T),
    ItemEmbedding(item_id="i1", vector=np.arange(8, dtype=np.float32) / 7, encoder_id="lite0",
                  event_time_ms=T, embedded_time_ms=T + 5),
    RerankRequest(request_id="r1", user_id="u1", history=["i1", "i2"],
                  candidates=[Candidate(item_id="i3", score=0.9, source="visual", affinity=2.5),
                              Candidate(item_id="i4", score=0.1, source="popular")],
                  event_ids=["e1", "e2"], event_time_ms=T, request_time_ms=T + 3),
    Recommendation(request_id="r1", user_id="u1",
                   items=[RankedItem(item_id="i3", score=-1.5), RankedItem(item_id="i4", score=-2.0)],
                   model_version="vip5-tiny", adapter_version="v1", event_ids=["e1"],
                   event_time_ms=T, request_time_ms=T + 3, publish_time_ms=T + 40),
    AdapterUpdate(version="v2", parent_version="v1", artifact_uri="file:///artifacts/v2",
                  sha256="a" * 64, metrics={"ndcg@10": 0.21}, backbone_id="tiny-abc", created_time_ms=T,
                  signature="b" * 64),
    DeadLetter(source_topic="vip5.interactions", partition=2, offset=17, reason="rating: is required",
               raw=b"\x81\xa1x\x01", failed_time_ms=T),
    Explanation(request_id="r1", user_id="u1", item_id="i3", text="Matches your lipsticks.",
                model_version="vip5-tiny", adapter_version="v1", event_time_ms=T, publish_time_ms=T + 90),
    RetrieverModel(version="sasrec-0123", hidden=64, n_blocks=2, n_heads=1, max_len=50, loss="ce",
                   weights=b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", n_items=12101, created_time_ms=T),
]


def test_a_retriever_model_whose_heads_and_towers_do_not_divide_its_width_is_refused():
    with pytest.raises(SchemaError, match="n_heads"):
        RetrieverModel(version="v", hidden=64, n_blocks=2, n_heads=3, max_len=50, loss="ce", weights=b"x",
                       n_items=1, created_time_ms=T)
    with pytest.raises(SchemaError, match="towers x n_heads"):
        RetrieverModel(version="v", hidden=64, n_blocks=2, n_heads=2, max_len=50, loss="ce", weights=b"x",
                       n_items=1, created_time_ms=T, towers=3)


def test_a_retriever_model_published_without_towers_is_one_tower():
    record = next(r for r in EXAMPLES if isinstance(r, RetrieverModel))
    body = msgpack.unpackb(encode(record), raw=False)
    del body["towers"]  # as records published before towers existed
    assert decode(msgpack.packb(body, use_bin_type=True), RetrieverModel).towers == 1


def test_examples_cover_every_record():
    assert {type(r) for r in EXAMPLES} == set(REGISTRY.values())


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: r.SCHEMA)
def test_record_round_trips_through_msgpack(record):
    payload = encode(record)
    assert decode(payload, type(record)) == record
    assert decode_any(payload) == record


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: r.SCHEMA)
def test_every_record_carries_its_schema_name_and_version(record):
    body = msgpack.unpackb(encode(record))
    assert (body["schema"], body["v"]) == (record.SCHEMA, record.VERSION)


def test_vectors_travel_as_float32_bytes():
    body = msgpack.unpackb(encode(EXAMPLES[4]))
    assert isinstance(body["vector"], bytes) and len(body["vector"]) == 8 * 4


def test_decoding_as_another_record_type_is_reported():
    with pytest.raises(SchemaError, match="expected interaction, got item_upsert"):
        decode(encode(EXAMPLES[2]), Interaction)


def test_newer_schema_version_is_reported_not_guessed():
    body = msgpack.unpackb(encode(EXAMPLES[0]))
    body["v"] = 2
    with pytest.raises(SchemaError, match="version 2 is newer than supported 1"):
        decode(msgpack.packb(body), Interaction)


def test_unknown_schema_is_reported():
    with pytest.raises(SchemaError, match="unknown schema 'basket'"):
        decode_any(msgpack.packb({"schema": "basket", "v": 1}))


def test_unknown_field_is_rejected_by_name():
    body = msgpack.unpackb(encode(EXAMPLES[1]))
    body["colour"] = "red"
    with pytest.raises(SchemaError, match="^colour: unknown field"):
        decode(msgpack.packb(body), Interaction)


@pytest.mark.parametrize(("change", "message"), [
    ({"user_id": ""}, "^user_id: length 0"),
    ({"user_id": "u" * 129}, "^user_id: length 129"),
    ({"kind": "teleport"}, "^kind: expected one of"),
    ({"rating": 7.0}, "^rating: 7.0 outside"),
    ({"rating": float("nan")}, "^rating: must be finite"),
    ({"event_time_ms": -1}, "^event_time_ms: -1 outside"),
    ({"event_time_ms": "yesterday"}, "^event_time_ms: expected an integer"),
    ({"kind": "rating", "rating": None}, "^rating: is required when kind is 'rating'"),
])
def test_invalid_interaction_names_the_field(change, message):
    body = {**msgpack.unpackb(encode(EXAMPLES[1])), **change}
    with pytest.raises(SchemaError, match=message):
        decode(msgpack.packb(body), Interaction)


def test_invalid_nested_candidate_names_its_path():
    body = msgpack.unpackb(encode(EXAMPLES[5]))
    body["candidates"][1]["source"] = "magic"
    with pytest.raises(SchemaError, match=r"^candidates\[1\]\.source: expected one of"):
        decode(msgpack.packb(body), RerankRequest)


def test_limits_bound_history_image_and_vector_sizes():
    with pytest.raises(SchemaError, match="^history: 513 items"):
        RerankRequest(request_id="r", user_id="u", history=["i"] * 513, candidates=[EXAMPLES[5].candidates[0]],
                      event_ids=["e"], event_time_ms=T, request_time_ms=T)
    with pytest.raises(SchemaError, match="^image_bytes: size"):
        ItemUpsert(item_id="i", title="t", image_bytes=b"x" * (5 * 1024 * 1024 + 1), event_time_ms=T)
    with pytest.raises(SchemaError, match="^vector: shape"):
        ItemEmbedding(item_id="i", vector=np.zeros(4097), encoder_id="e", event_time_ms=T, embedded_time_ms=T)


def test_vector_bytes_must_be_whole_float32_and_finite():
    body = msgpack.unpackb(encode(EXAMPLES[4]))
    with pytest.raises(SchemaError, match="^vector: 7 bytes"):
        decode(msgpack.packb({**body, "vector": b"\x00" * 7}), ItemEmbedding)
    with pytest.raises(SchemaError, match="^vector: contains NaN"):
        decode(msgpack.packb({**body, "vector": np.array([np.nan], "<f4").tobytes()}), ItemEmbedding)


def test_image_bytes_and_uri_are_exclusive():
    with pytest.raises(SchemaError, match="^image_uri: give image_bytes or image_uri"):
        ItemUpsert(item_id="i", title="t", image_bytes=b"x", image_uri="file:///x", event_time_ms=T)


def test_sha256_must_be_lowercase_hex():
    with pytest.raises(SchemaError, match="^sha256:"):
        AdapterUpdate(version="v", artifact_uri="file:///a", sha256="Z" * 64, backbone_id="b", created_time_ms=T)


@pytest.mark.parametrize("cls", [RerankRequest, Recommendation])
def test_version_1_records_without_stage_times_still_decode(cls):
    """v2 added optional stage times; a v1 payload (written before them) decodes with None."""
    record = next(r for r in EXAMPLES if isinstance(r, cls))
    body = msgpack.unpackb(encode(record))
    body = {k: v for k, v in body.items() if not k.endswith("received_time_ms")
            and k not in ("batch_start_time_ms", "scored_time_ms")}
    body["v"] = 1
    decoded = decode(msgpack.packb(body), cls)
    assert decoded.streams_received_time_ms is None and decoded.request_id == record.request_id


def test_version_2_rerank_requests_decode_with_no_candidate_affinity():
    """v3 added the retriever's affinity to each candidate; a v2 request decodes with None."""
    record = next(r for r in EXAMPLES if isinstance(r, RerankRequest))
    body = msgpack.unpackb(encode(record))
    for candidate in body["candidates"]:
        candidate.pop("affinity", None)
    body["v"] = 2
    assert all(c.affinity is None for c in decode(msgpack.packb(body), RerankRequest).candidates)


def test_a_candidate_affinity_must_be_finite():
    with pytest.raises(SchemaError, match="affinity: must be finite"):
        Candidate(item_id="i1", score=0.5, source="sequential", affinity=float("nan"))


def test_a_ranked_item_has_no_explanation_any_more():
    body = msgpack.unpackb(encode(EXAMPLES[6]))
    assert set(body["items"][0]) == {"item_id", "score"}
    body["items"][0]["explanation"] = "Matches your lipsticks."
    with pytest.raises(SchemaError, match=r"^items\[0\]\.explanation: unknown field"):
        decode(msgpack.packb(body), Recommendation)


@pytest.mark.parametrize("version", [1, 2])
def test_older_recommendations_with_an_explanation_on_the_top_item_still_decode_without_it(version):
    """Before v3 the top item carried its explanation; it now travels as its own Explanation record."""
    record = EXAMPLES[6]
    body = msgpack.unpackb(encode(record))
    body["items"][0]["explanation"] = "Matches your lipsticks."
    body["v"] = version
    assert decode(msgpack.packb(body), Recommendation) == record


def test_an_explanation_may_be_empty_but_not_longer_than_the_text_limit():
    explanation = next(r for r in EXAMPLES if isinstance(r, Explanation))
    body = msgpack.unpackb(encode(explanation))
    assert decode(msgpack.packb({**body, "text": ""}), Explanation).text == ""
    with pytest.raises(SchemaError, match=r"^text: length 8193"):
        decode(msgpack.packb({**body, "text": "x" * 8193}), Explanation)
    with pytest.raises(SchemaError, match="^item_id: is required"):
        decode(msgpack.packb({k: v for k, v in body.items() if k != "item_id"}), Explanation)
