"""Hostile input on every input topic: each record that does not decode lands in the dead-letter
topic with its reason and raw bytes, and the workers keep serving valid traffic afterwards."""

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas.codec import decode_any, encode
from schemas.errors import SchemaError
from schemas.records import DeadLetter, Recommendation
from schemas.topics import DEAD_LETTER, INTERACTIONS, ITEM_EMBEDDINGS, ITEMS, RECOMMENDATIONS, RERANK_REQUESTS
from tests.integration.pipeline import click, fashion_items, records_on
from tests.schemas.test_records import EXAMPLES
from vip5.bench_pipeline import build_bench_model
from vip5.stack import LocalStack, StackConfig

pytestmark = pytest.mark.integration

wire = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
                    | st.binary(max_size=60),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=10)


@st.composite
def hostile(draw):
    """Random bytes, truncated records, records with a field replaced, or maps under a real schema name."""
    record = draw(st.sampled_from(EXAMPLES))
    body = msgpack.unpackb(encode(record))
    kind = draw(st.sampled_from(["bytes", "truncated", "field", "schema-map"]))
    if kind == "bytes":
        return draw(st.binary(min_size=0, max_size=200))
    if kind == "truncated":
        payload = encode(record)
        return payload[: draw(st.integers(0, len(payload) - 1))]
    if kind == "field":
        body[draw(st.sampled_from(sorted(k for k in body if k not in ("schema", "v"))))] = draw(wire)
        return msgpack.packb(body, use_bin_type=True)
    return msgpack.packb({**draw(st.dictionaries(st.text(max_size=8), wire, max_size=5)), "schema": body["schema"],
                          "v": 1}, use_bin_type=True)


def is_valid(payload: bytes, spec) -> bool:
    try:
        return isinstance(decode_any(payload), spec.record)
    except SchemaError:
        return False


@settings(max_examples=1, phases=[Phase.generate], deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads=st.lists(hostile(), min_size=40, max_size=40))
def test_hostile_records_become_dead_letters_and_workers_keep_serving(payloads, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("hostile")
    items = fashion_items(12)
    model_dir = build_bench_model(tmp_path / "model", preset="tiny", item_ids=[i.item_id for i in items],
                                  user_ids=["u0", "u1"], feature_dim=1280)
    cfg = StackConfig(work_dir=tmp_path, model_dir=model_dir, topic_prefix="hostile.", partitions=2, image_size=96,
                      candidates=6)
    oversized_image = fashion_items(1)[0].__class__(item_id="huge", title="huge", image_bytes=b"\xff" * 100,
                                                    event_time_ms=1)
    with LocalStack(cfg) as stack:
        for item in items:
            stack.send(ITEMS, item.item_id, encode(item))
        stack.flush()
        records_on(stack.kafka, stack.topics, ITEM_EMBEDDINGS, count=len(items))
        sent = []
        for n, payload in enumerate(payloads):
            spec = (INTERACTIONS, ITEMS, RERANK_REQUESTS)[n % 3]
            stack.send(spec, b"hostile", payload)
            sent.append((spec, payload))
        body = msgpack.unpackb(encode(oversized_image))
        body["image_bytes"] = b"\xff" * (5 * 1024 * 1024 + 1)  # over the image limit, under the message limit
        stack.send(ITEMS, b"hostile", msgpack.packb(body, use_bin_type=True))
        sent.append((ITEMS, msgpack.packb(body, use_bin_type=True)))
        stack.flush()
        invalid = [(spec, p) for spec, p in sent if not is_valid(p, spec)]

        letters = [d for d in records_on(stack.kafka, stack.topics, DEAD_LETTER, count=len(invalid), timeout_s=120)
                   if isinstance(d, DeadLetter)]
        good = [click(f"ok{n}", f"u{n % 2}", items[n].item_id) for n in range(4)]
        for event in good:
            stack.send(INTERACTIONS, event.user_id, encode(event))
        stack.flush()
        recs = [r for r in records_on(stack.kafka, stack.topics, RECOMMENDATIONS, count=100, timeout_s=60)
                if isinstance(r, Recommendation)]
        alive = {name: worker.alive() for name, worker in stack.workers.items()}

    assert sorted(d.raw for d in letters) == sorted(p for _, p in invalid)  # every invalid one, nothing else
    assert all(d.reason and d.source_topic.startswith("hostile.") for d in letters)
    assert {e for r in recs for e in r.event_ids} >= {e.event_id for e in good}
    assert all(alive.values()), alive
