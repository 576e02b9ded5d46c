"""Decoding bounds what one hostile message costs, keeps ids and error texts fit for logs, and
rejects vectors no index can use."""

import time
import tracemalloc

import msgpack
import numpy as np
import pytest

from schemas.codec import decode, decode_any, encode
from schemas.errors import SchemaError
from schemas.limits import LIMITS
from schemas.records import (
    Candidate,
    Explanation,
    Interaction,
    ItemEmbedding,
    RankedItem,
    Recommendation,
    RerankRequest,
)
from tests.schemas.test_records import EXAMPLES, T


def _array16(n: int, body: bytes) -> bytes:
    return b"\xdc" + n.to_bytes(2, "big") + body


def test_nested_empty_arrays_cannot_make_a_message_cost_memory_or_time():
    inner = _array16(1000, b"\x90" * 1000)  # 1000 empty arrays: one byte each on the wire
    payload = (b"\x83" + msgpack.packb("schema") + msgpack.packb("interaction") + msgpack.packb("v")
               + msgpack.packb(1) + msgpack.packb("event_id") + _array16(2, _array16(1000, inner * 1000)))
    assert len(payload) < LIMITS.max_message_bytes  # 2 MB: 2 million empty lists, ~150 MB unbounded
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(SchemaError, match=r"^<payload>: more than 8192 map and array entries"):
            decode_any(payload)
        elapsed_s, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20 and elapsed_s < 0.5, (peak, elapsed_s)


@pytest.mark.parametrize(("value", "limit"), [("x" * (4 * 8192 + 1), "max_str_len"),
                                              ([0] * 1001, "max_array_len"),
                                              ({str(i): 0.0 for i in range(81)}, "max_map_len")])
def test_msgpack_containers_and_strings_over_the_record_limits_are_refused_while_decoding(value, limit):
    body = {**msgpack.unpackb(encode(EXAMPLES[1])), "review_text": value}
    with pytest.raises(SchemaError, match=f"^<payload>: not valid msgpack .*{limit}"):
        decode(msgpack.packb(body), Interaction)


def test_records_at_their_limits_still_decode():
    n_hist, n_cand = LIMITS.max_history_len, LIMITS.max_candidates
    request = RerankRequest(request_id="r" * 128, user_id="u", history=[f"i{n}" for n in range(n_hist)],
                            candidates=[Candidate(item_id=f"c{n}", score=0.5, source="visual") for n in range(n_cand)],
                            event_ids=[f"e{n}" for n in range(n_hist)], event_time_ms=T, request_time_ms=T)
    recommendation = Recommendation(request_id="r", user_id="u", model_version="m", adapter_version="v1",
                                    items=[RankedItem(item_id=f"c{n}", score=1.0) for n in range(n_cand)],
                                    event_ids=["e"] * n_hist, event_time_ms=T, request_time_ms=T, publish_time_ms=T)
    long_text = Interaction(event_id="e", user_id="u", item_id="i", kind="review", review_text="€" * 8192,
                            event_time_ms=T)
    long_explanation = Explanation(request_id="r" * 128, user_id="u" * 128, item_id="i" * 128, text="€" * 8192,
                                   model_version="m" * 512, adapter_version="v" * 512, event_time_ms=T,
                                   publish_time_ms=T)
    for record in (request, recommendation, long_text, long_explanation):
        assert decode_any(encode(record)) == record


@pytest.mark.parametrize("bad_id", ["u1\nINFO forged log line", "u1\r", "tab\there", "nul\x00", "esc\x1b[31m",
                                    "line\u2028sep", "bidi\u202e"])
def test_ids_must_be_printable(bad_id):
    body = {**msgpack.unpackb(encode(EXAMPLES[1])), "user_id": bad_id}
    with pytest.raises(SchemaError, match="^user_id: must be printable"):
        decode(msgpack.packb(body), Interaction)
    assert decode(msgpack.packb({**body, "user_id": "Zoë O'Neil #7"}), Interaction).user_id == "Zoë O'Neil #7"


@pytest.mark.parametrize("key", ["k" * 30_000, "k\n" * 10_000])
def test_an_unknown_field_error_stays_short_and_on_one_line(key):
    body = {**msgpack.unpackb(encode(EXAMPLES[1])), key: 1}
    with pytest.raises(SchemaError, match="unknown field") as info:
        decode(msgpack.packb(body), Interaction)
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)


def test_schema_errors_are_cut_to_a_bounded_length():
    err = SchemaError("f" * 10_000, "r" * 1_000_000)
    assert len(str(err)) < 700 and str(err).endswith("more]")


@pytest.mark.parametrize("vector", [np.zeros(8), np.full(8, 1e-30), np.full(8, 1e-9),
                                    np.array([1e-45] + [0.0] * 7), np.full(8, 3e38)])
def test_degenerate_embedding_vectors_are_rejected_at_decode(vector):
    body = {**msgpack.unpackb(encode(EXAMPLES[4])), "vector": vector.astype("<f4").tobytes()}
    with pytest.raises(SchemaError, match=r"^vector: norm .* outside \[1e-06, 1e\+06\]"):
        decode(msgpack.packb(body), ItemEmbedding)


def test_unnormalised_but_usable_embedding_vectors_decode():
    for scale in (1e-5, 1e5):
        body = {**msgpack.unpackb(encode(EXAMPLES[4])), "vector": np.full(8, scale, "<f4").tobytes()}
        assert decode(msgpack.packb(body), ItemEmbedding).vector.shape == (8,)
