"""Hostile input on every input topic: each record that does not decode lands in the dead-letter
topic with its reason and raw bytes, and the workers keep serving valid traffic afterwards."""

import json

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas.codec import decode_any, encode
from schemas.errors import SchemaError
from schemas.records import DeadLetter, ItemEmbedding, Recommendation
from schemas.topics import DEAD_LETTER, INTERACTIONS, ITEM_EMBEDDINGS, ITEMS, RECOMMENDATIONS, RERANK_REQUESTS
from tests.integration.pipeline import click, fashion_items, records_on, records_reflecting
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


def decoding_bombs() -> list:
    """Records that once cost memory, time or log lines to decode: 2 million nested empty arrays
    (~150 MB unbounded), ids carrying line breaks and escapes, a 30,000-character unknown field."""
    interaction = msgpack.unpackb(encode(EXAMPLES[1]))
    nested = (b"\x83" + msgpack.packb("schema") + msgpack.packb("interaction") + msgpack.packb("v") + msgpack.packb(1)
              + msgpack.packb("event_id") + b"\xdc\x00\x02" + (b"\xdc\x03\xe8" + (b"\xdc\x03\xe8" + b"\x90" * 1000) * 1000) * 2)
    request = msgpack.unpackb(encode(EXAMPLES[5]))
    return [(INTERACTIONS, nested),
            (INTERACTIONS, msgpack.packb({**interaction, "user_id": "u0\n2025-01-01 INFO forged"})),
            (RERANK_REQUESTS, msgpack.packb({**request, "user_id": "u0\x1b[2J"})),
            (RERANK_REQUESTS, msgpack.packb({**request, "k" * 30_000: 1}))]


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
        for spec, payload in decoding_bombs():
            stack.send(spec, b"hostile", payload)
            sent.append((spec, payload))
        stack.flush()
        invalid = [(spec, p) for spec, p in sent if not is_valid(p, spec)]

        letters = [d for d in records_on(stack.kafka, stack.topics, DEAD_LETTER, count=len(invalid), timeout_s=120)
                   if isinstance(d, DeadLetter)]
        good = [click(f"ok{n}", f"u{n % 2}", items[n].item_id) for n in range(4)]
        for event in good:
            stack.send(INTERACTIONS, event.user_id, encode(event))
        stack.flush()
        recs = [r for r in records_reflecting(stack.kafka, stack.topics, RECOMMENDATIONS, [e.event_id for e in good],
                                              timeout_s=60) if isinstance(r, Recommendation)]
        alive = {name: worker.alive() for name, worker in stack.workers.items()}

    assert sorted(d.raw for d in letters) == sorted(p for _, p in invalid)  # every invalid one, nothing else
    assert all(d.reason and d.source_topic.startswith("hostile.") for d in letters)
    assert all(len(d.reason) < 1000 and "\n" not in d.reason for d in letters)  # fit for one log line
    assert {e for r in recs for e in r.event_ids} >= {e.event_id for e in good}
    assert all(alive.values()), alive


def _rss_peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _reset_rss_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current RSS, so the next peak is this test's alone
    except OSError:
        pass  # then the peak since start bounds the growth from above


def _png(size: tuple[int, int]) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hostile_image_sources_are_dead_letters_cost_bounded_memory_and_spare_their_batch(tmp_path):
    """Row by row: paths outside the image directory, /dev/zero, a FIFO, a symlink out, a directory,
    a 300-character name and a 40000x1000 PNG each become a dead letter whose reason names no path;
    valid items in the same micro-batch are embedded; the worker's memory stays bounded; it serves on."""
    import os

    items = fashion_items(12)
    model_dir = build_bench_model(tmp_path / "model", preset="tiny", item_ids=[i.item_id for i in items],
                                  user_ids=["u0", "u1"], feature_dim=1280)
    image_dir = tmp_path / "images"
    (image_dir / "shoes").mkdir(parents=True)
    (image_dir / "shoes" / "a.jpg").write_bytes(items[0].image_bytes)
    secret = tmp_path / "secret.jpg"  # a perfectly good JPEG the worker must never publish
    secret.write_bytes(items[1].image_bytes)
    (image_dir / "link.jpg").symlink_to(secret)
    (image_dir / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(image_dir / "pipe.jpg")
    hostile_uris = {"abs": str(secret), "dotdot": "../secret.jpg", "localhost": f"file://localhost{secret}",
                    "devzero": "/dev/zero", "devzero-link": "zero.jpg", "fifo": "pipe.jpg", "symlink": "link.jpg",
                    "directory": "shoes", "long-name": "x" * 300 + ".jpg", "remote": "file://evil.example/x.jpg",
                    "nul": "shoes/a.jpg\x00.png"}
    valid_uris = {"rel": "shoes/a.jpg", "uri": f"file://{image_dir}/shoes/a.jpg"}
    cfg = StackConfig(work_dir=tmp_path, model_dir=model_dir, topic_prefix="hostimg.", partitions=2, image_size=96,
                      candidates=6, streams_args=("--image-dir", str(image_dir)))
    template = items[0]
    with LocalStack(cfg) as stack:
        for item in items:
            stack.send(ITEMS, item.item_id, encode(item))
        stack.flush()
        records_on(stack.kafka, stack.topics, ITEM_EMBEDDINGS, count=len(items))
        pid = stack.workers["streams"].process.pid
        _reset_rss_peak(pid)
        before_mb = _rss_peak_mb(pid)
        batch = [template.__class__(item_id=f"bad-{name}", title="t", image_uri=uri, event_time_ms=1)
                 for name, uri in hostile_uris.items()]
        batch.append(template.__class__(item_id="bad-strip", title="t", image_bytes=_png((40_000, 1000)),
                                        event_time_ms=1))
        batch += [template.__class__(item_id=f"ok-{name}", title="t", image_uri=uri, event_time_ms=1)
                  for name, uri in valid_uris.items()]
        for upsert in sorted(batch, key=lambda u: u.item_id[::-1]):  # valid ones among the hostile ones
            stack.send(ITEMS, b"same-partition", encode(upsert))
        stack.flush()
        bad = [u for u in batch if u.item_id.startswith("bad-")]
        letters = [d for d in records_on(stack.kafka, stack.topics, DEAD_LETTER, count=len(bad), timeout_s=120)
                   if isinstance(d, DeadLetter)]
        embeddings = records_on(stack.kafka, stack.topics, ITEM_EMBEDDINGS, count=len(items) + 2, timeout_s=60)
        growth_mb = _rss_peak_mb(pid) - before_mb
        good = [click(f"img{n}", f"u{n % 2}", items[n].item_id) for n in range(3)]
        for event in good:
            stack.send(INTERACTIONS, event.user_id, encode(event))
        stack.flush()
        recs = [r for r in records_reflecting(stack.kafka, stack.topics, RECOMMENDATIONS, [e.event_id for e in good],
                                              timeout_s=60) if isinstance(r, Recommendation)]
        alive = {name: worker.alive() for name, worker in stack.workers.items()}

    lettered = {decode_any(d.raw).item_id: d for d in letters}
    assert set(lettered) == {u.item_id for u in bad}
    assert all(d.stage == "embed" for d in lettered.values())
    for d in lettered.values():  # nothing about what exists where on the worker's disk
        assert str(tmp_path) not in d.reason and "secret" not in d.reason and "/dev" not in d.reason, d.reason
    assert lettered["bad-strip"].reason.startswith("image: bad_aspect_ratio: 40000x1000")
    embedded = {e.item_id for e in embeddings if isinstance(e, ItemEmbedding)}
    assert {"ok-rel", "ok-uri"} <= embedded and not any(i.startswith("bad-") for i in embedded)
    print(f"streams worker peak RSS growth: {growth_mb:.0f} MB")
    assert growth_mb < 500, f"streams worker grew by {growth_mb:.0f} MB"
    assert {e for r in recs for e in r.event_ids} >= {e.event_id for e in good}
    assert all(alive.values()), alive


def test_hostile_adapter_updates_are_rejected_by_model_worker_and_trainer_which_keep_going(tmp_path):
    """A topic writer without the signing key announces: validly built weights outside the store
    (with their true sha256), the same through a symlink inside the store, a store version with
    another version name, and an unsigned update. The model worker rejects and counts each and keeps
    serving v1; the trainer skips them when it next looks at the topic and neither exits."""
    import os
    import time

    from model_worker.artifacts import ArtifactStore
    from model_worker.vip5model.config import VIP5Config
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer
    from schemas.records import AdapterUpdate
    from schemas.topics import ADAPTER_UPDATES

    items = fashion_items(12)
    model = VIP5Model.build(VIP5Config(backbone="tiny"), build_template_tokenizer(), seed=0)
    model.save_pretrained(tmp_path / "model")
    model.set_stage("adapt")
    attacker = ArtifactStore(tmp_path / "elsewhere", signing_key=os.urandom(32))  # not the stack's key
    cfg = StackConfig(work_dir=tmp_path, model_dir=tmp_path / "model", topic_prefix="hostad.", partitions=2,
                      image_size=96, candidates=6,
                      trainer_args=("--artifacts-dir", str(tmp_path / "artifacts"), "--every-events", "8",
                                    "--min-events", "4", "--steps", "1", "--max-regression", "-10"))
    with LocalStack(cfg) as stack:
        for item in items:
            stack.send(ITEMS, item.item_id, encode(item))
        stack.flush()
        records_on(stack.kafka, stack.topics, ITEM_EMBEDDINGS, count=len(items))
        store = ArtifactStore(tmp_path / "artifacts")
        v1 = next(u for u in records_on(stack.kafka, stack.topics, ADAPTER_UPDATES, count=1)
                  if isinstance(u, AdapterUpdate))
        outside = attacker.publish(model, version="v2", parent_version="v1", metrics={}, backbone_id=v1.backbone_id)
        (store.root / "v3").symlink_to(attacker.root / "v2")
        now = int(time.time() * 1000)
        hostile = [outside,
                   AdapterUpdate(**{**outside.__dict__, "version": "v3", "artifact_uri": store.uri("v3")}),
                   AdapterUpdate(**{**v1.__dict__, "version": "v4", "artifact_uri": store.uri("v1"),
                                    "created_time_ms": now}),
                   AdapterUpdate(**{**v1.__dict__, "signature": None, "created_time_ms": now}),
                   AdapterUpdate(**{**v1.__dict__, "version": "v5", "artifact_uri": f"{store.root}/../elsewhere/v2"})]
        for update in hostile:
            stack.send(ADAPTER_UPDATES, "adapter", encode(update))
        stack.flush()
        serve_log, trainer_log = (stack.workers[n].log_path for n in ("model-worker", "trainer"))
        good = [click(f"ad{n}", f"u{n % 3}", items[n % len(items)].item_id) for n in range(12)]
        for event in good:  # enough for a trainer round, which first reads the newest update
            stack.send(INTERACTIONS, event.user_id, encode(event))
        stack.flush()
        recs = [r for r in records_reflecting(stack.kafka, stack.topics, RECOMMENDATIONS, [e.event_id for e in good])
                if isinstance(r, Recommendation)]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "rejected adapter v5" not in trainer_log.read_text():
            time.sleep(1)
        alive = {name: worker.alive() for name, worker in stack.workers.items()}
        serve_text, trainer_text = serve_log.read_text(), trainer_log.read_text()

    assert "rejected adapter v5 (path)" in trainer_text  # the newest update, read at the round
    assert "rejected adapter" in serve_text and not any(f"adapter v{n} ready" in serve_text for n in range(2, 6))
    assert {r.adapter_version for r in recs} == {"v1"}
    assert {e for r in recs for e in r.event_ids} >= {e.event_id for e in good}
    assert all(alive.values()), alive


def _raw_embedding(item_id: str, vector) -> bytes:
    """An ItemEmbedding as a hostile producer writes it: no validation on the way out."""
    import numpy as np

    body = msgpack.unpackb(encode(EXAMPLES[4]))
    body.update(item_id=item_id, vector=np.asarray(vector, "<f4").tobytes())
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the broken follower's
def test_degenerate_embeddings_on_the_compacted_topic_leave_followers_running_and_health_tells(kafka_cfg, topics):
    """Zero, denormal and huge vectors are skipped record by record (the topic is replayed from the
    start by every worker, so a follower that died here would freeze every catalogue); a follower
    that does stop turns /healthz and /readyz red."""
    import numpy as np

    from index.item_index import IndexConfig
    from index.replica import CatalogReplica, embedding_follower
    from runtime.kafka import consumer, create_topics, producer
    from runtime.metrics import WorkerMetrics, serve_metrics
    from runtime.tail import TopicTail
    from tests.runtime.test_metrics import get
    from vip5.broker import free_port

    create_topics(kafka_cfg, topics)
    name = topics.name(ITEM_EMBEDDINGS)
    out = producer(kafka_cfg)
    ok = np.arange(1, 9, dtype=np.float32)
    for item_id, vector in [("zero", np.zeros(8)), ("tiny", np.full(8, 1e-30)), ("huge", np.full(8, 3e38)),
                            ("a", ok), ("b", -ok), ("c", ok[::-1])]:
        out.send(name, key=item_id.encode(), value=_raw_embedding(item_id, vector), partition=0)
    out.flush()
    out.close()

    replica = CatalogReplica(IndexConfig(dim=8, kind="flat"))
    follower = embedding_follower(lambda: consumer(kafka_cfg, None), name, replica)
    broken = TopicTail(lambda: consumer(kafka_cfg, None), name, lambda messages: 1 / 0)  # a handler bug
    metrics, port = WorkerMetrics("streams"), free_port()
    http = serve_metrics(metrics, port=port)
    try:
        follower.start()
        metrics.require("item-embeddings follower", follower.healthy)
        metrics.alive.set()
        metrics.ready.set()
        assert follower.wait_caught_up(60)
        assert sorted(replica.index.ids()) == ["a", "b", "c"] and replica.decode_errors == 3
        assert follower.healthy() and get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        broken.start()
        metrics.require("a broken follower", broken.healthy)
        broken.join(60)
        health, ready = get(f"http://127.0.0.1:{port}/healthz"), get(f"http://127.0.0.1:{port}/readyz")
    finally:
        follower.stop()
        broken.stop()
        http.shutdown()
    assert not broken.healthy() and isinstance(broken.failed, ZeroDivisionError)
    assert health[0] == ready[0] == 503 and json.loads(health[1])["failing"] == ["a broken follower"]
