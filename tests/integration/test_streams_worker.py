"""The streams worker against the embedded broker: items become embeddings, interactions become
re-rank requests, bad input becomes dead letters, user histories survive a restart, and users
evicted by the history bound stay evicted after one (and are counted in the worker's metrics)."""

import pytest

from runtime.kafka import create_topics
from schemas.records import DeadLetter, ItemEmbedding, ItemUpsert, RerankRequest
from schemas.topics import DEAD_LETTER, ITEM_EMBEDDINGS, RERANK_REQUESTS
from streams.worker import READY_LINE
from tests.integration.pipeline import (
    click,
    fashion_items,
    publish,
    records_on,
    wait_for,
    worker_args,
    worker_env,
)
from tests.runtime.test_metrics import get
from vip5.broker import free_port
from vip5.processes import WorkerProcess

pytestmark = pytest.mark.integration


def scrape(port: int) -> str:
    return get(f"http://127.0.0.1:{port}/metrics")[1].decode()


def start_streams(kafka_cfg, topics, tmp_path, name, *extra):
    args = worker_args("streams", kafka_cfg, topics, "--data-dir", str(tmp_path / "faust"), "--image-size", "96",
                       "--candidates", "20", *extra)
    worker = WorkerProcess(args, log_path=tmp_path / f"{name}.log", env=worker_env(kafka_cfg)).start()
    assert worker.wait_for_log(READY_LINE, 120), (tmp_path / f"{name}.log").read_text()[-3000:]
    return worker


def test_streams_worker_end_to_end_with_restart(broker, kafka_cfg, topics, tmp_path):
    create_topics(kafka_cfg, topics)
    items = fashion_items(24)
    corrupt = ItemUpsert(item_id="broken", title="Broken image", image_bytes=b"\xff\xd8 not a jpeg",
                         event_time_ms=items[0].event_time_ms)
    publish(kafka_cfg, topics, [*items, corrupt], raw=[("items", b"\x93garbage"), ("interactions", b"")])

    # one event at a time (coalescing has its own test below): one request per event
    worker = start_streams(kafka_cfg, topics, tmp_path, "first", "--coalesce-ms", "0")
    try:
        embeddings = records_on(kafka_cfg, topics, ITEM_EMBEDDINGS, count=len(items))
        assert {e.item_id for e in embeddings} == {i.item_id for i in items}
        assert all(isinstance(e, ItemEmbedding) and e.vector.shape == (1280,) for e in embeddings)

        letters = records_on(kafka_cfg, topics, DEAD_LETTER, count=3)
        assert all(isinstance(d, DeadLetter) for d in letters)
        reasons = {d.stage: d.reason for d in letters}
        assert "image" in reasons["embed"] and "msgpack" in reasons["decode"]
        assert {d.source_topic for d in letters} == {topics.prefix + "items", topics.prefix + "interactions"}

        catalogue = {i.item_id for i in items}
        first = [click(f"e{n}", f"u{n % 3}", items[n].item_id) for n in range(6)]
        publish(kafka_cfg, topics, first)
        requests = records_on(kafka_cfg, topics, RERANK_REQUESTS, count=6)
        assert len(requests) == 6 and all(isinstance(r, RerankRequest) for r in requests)
        for request in requests:
            candidates = [c.item_id for c in request.candidates]
            assert set(candidates) <= catalogue and not set(candidates) & set(request.history)
        assert len({r.request_id for r in requests}) == 6  # one id per event
    finally:
        assert worker.stop() == 0

    worker = start_streams(kafka_cfg, topics, tmp_path, "second", "--coalesce-ms", "0")
    try:
        new_item = fashion_items(30)[-1]
        publish(kafka_cfg, topics, [new_item])
        records_on(kafka_cfg, topics, ITEM_EMBEDDINGS, count=len(items) + 1)
        publish(kafka_cfg, topics, [click("e6", "u0", items[6].item_id), click("e0", "u0", items[0].item_id)])
        requests = records_on(kafka_cfg, topics, RERANK_REQUESTS, count=8)
        fresh_request = next(r for r in requests if r.event_ids == ("e6",))
        # u0 clicked items 0 and 3 before the restart: the recovered table still has them.
        assert fresh_request.history == (items[0].item_id, items[3].item_id, items[6].item_id)
        assert new_item.item_id in {c.item_id for c in fresh_request.candidates}
        # A redelivered event keeps the history unchanged and reuses its request id.
        original, repeat = [r for r in requests if r.event_ids == ("e0",)]
        assert repeat.request_id == original.request_id
        assert repeat.history == fresh_request.history
    finally:
        assert worker.stop() == 0


def test_a_user_evicted_by_the_history_bound_is_not_restored_after_a_restart(broker, kafka_cfg, topics, tmp_path):
    create_topics(kafka_cfg, topics)
    items = fashion_items(6)
    publish(kafka_cfg, topics, items)
    port = free_port()
    worker = start_streams(kafka_cfg, topics, tmp_path, "bounded", "--max-users", "2", "--text-encoder", "none",
                           "--metrics-port", str(port))
    try:
        records_on(kafka_cfg, topics, ITEM_EMBEDDINGS, count=len(items))
        for n in range(3):  # one at a time, so u0 is the least recently active when u2 arrives
            publish(kafka_cfg, topics, [click(f"e{n}", f"u{n}", items[n].item_id)])
            records_on(kafka_cfg, topics, RERANK_REQUESTS, count=n + 1)
        # the eviction is counted, and the input partitions report their lag (all read: 0)
        lag = [f'vip5_consumer_lag{{partition="{p}",topic="{topics.prefix}interactions"}} 0.0' for p in range(3)]
        wait_for(lambda: all(line in scrape(port) for line in lag), 30, "the lag of every interactions partition")
        assert "vip5_users_evicted_total 1.0" in scrape(port)
    finally:
        assert worker.stop() == 0

    # a larger bound after the restart: only the changelog's tombstone can keep u0 out of the table
    worker = start_streams(kafka_cfg, topics, tmp_path, "restarted", "--max-users", "3", "--text-encoder", "none")
    try:
        publish(kafka_cfg, topics, [click("e3", "u0", items[3].item_id), click("e4", "u1", items[4].item_id)])
        requests = {r.event_ids: r for r in records_on(kafka_cfg, topics, RERANK_REQUESTS, count=5)}
        assert requests[("e3",)].history == (items[3].item_id,)  # u0 starts over
        assert requests[("e4",)].history == (items[1].item_id, items[4].item_id)  # u1 was kept
    finally:
        assert worker.stop() == 0


def test_a_burst_from_one_user_is_coalesced_and_every_interaction_reflected(broker, kafka_cfg, topics, tmp_path):
    create_topics(kafka_cfg, topics)
    items = fashion_items(8)
    publish(kafka_cfg, topics, items)
    args = worker_args("streams", kafka_cfg, topics, "--data-dir", str(tmp_path / "faust"), "--image-size", "96",
                       "--candidates", "5", "--coalesce-ms", "1500")
    with WorkerProcess(args, log_path=tmp_path / "streams.log", env=worker_env(kafka_cfg)) as worker:
        assert worker.wait_for_log(READY_LINE, 120)
        records_on(kafka_cfg, topics, ITEM_EMBEDDINGS, count=len(items))
        burst = [click(f"b{n}", "u1", items[n].item_id) for n in range(6)]
        publish(kafka_cfg, topics, burst)
        requests = records_on(kafka_cfg, topics, RERANK_REQUESTS, count=6, timeout_s=20)
    assert 1 <= len(requests) < len(burst)
    assert sorted(e for r in requests for e in r.event_ids) == sorted(c.event_id for c in burst)
    assert requests[-1].history == tuple(i.item_id for i in items[:6]), [(r.event_ids, r.history) for r in requests]
