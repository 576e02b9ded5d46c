"""Backpressure and hand-over against the embedded broker: a model that needs longer per batch than
max_poll_interval_ms keeps its group membership (the loop polls while a batch is scored and pauses
its partitions when the buffer is full), and a worker joining mid-stream takes partitions over from
the committed offsets; either way every request gets exactly one recommendation."""

import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from kafka.structs import TopicPartition

from model_worker.serve import ModelServer, ServeConfig
from runtime.kafka import consumer, create_topics, producer, read_topic
from schemas.codec import decode, encode
from schemas.records import Candidate, Recommendation, RerankRequest
from schemas.topics import RECOMMENDATIONS, RERANK_REQUESTS

pytestmark = pytest.mark.integration

REQUESTS, MAX_BATCH, MAX_BUFFERED = 200, 50, 100
MAX_POLL_INTERVAL_MS = 3000
SECONDS_PER_REQUEST = 0.08  # a full batch takes 4 s: longer than the poll interval allows


class SlowRanker:
    """Keeps the candidates' order and takes `seconds_per_request` per request to do it."""

    model_version, adapter_version = "slow-test", "v1"

    def __init__(self, seconds_per_request: float = SECONDS_PER_REQUEST):
        self.seconds_per_request = seconds_per_request

    def rank(self, requests, features):
        time.sleep(self.seconds_per_request * len(requests))
        return [[(c.item_id, c.score) for c in r.candidates] for r in requests]

    def explain(self, pairs, features):
        return ["" for _ in pairs]


def publish_requests(cfg, topic: str, n: int) -> list[str]:
    client = producer(cfg)
    ids = []
    for k in range(n):
        request = RerankRequest(request_id=f"r{k}", user_id=f"u{k % 17}", history=["a"],
                                candidates=[Candidate(item_id=f"i{j}", score=float(j), source="visual")
                                            for j in range(3)],
                                event_ids=[f"e{k}"], event_time_ms=1, request_time_ms=2)
        client.send(topic, key=request.user_id.encode(), value=encode(request))
        ids.append(request.request_id)
    client.flush()
    client.close()
    return ids


def start(cfg: ServeConfig, ranker) -> tuple[ModelServer, threading.Event, threading.Thread]:
    server = ModelServer(cfg, ranker, SimpleNamespace(features=lambda ids: {}),
                         consumer=consumer(cfg.kafka, cfg.group_id), producer=producer(cfg.kafka))
    stop = threading.Event()
    runner = threading.Thread(target=server.run, args=(stop,), name="model-server", daemon=True)
    runner.start()
    return server, stop, runner


def wait_for_recommendations(cfg, topic: str, count: int) -> None:
    read_topic(cfg, topic, until=lambda ms: len(ms) >= count, timeout_s=60)


def stop_all(*running) -> None:
    for _, stop, _ in running:
        stop.set()
    for _, _, runner in running:
        runner.join(30)
        assert not runner.is_alive()


def recommended_ids(cfg, topic: str) -> list[str]:
    messages = read_topic(cfg, topic, timeout_s=10, idle_s=1.0)
    return sorted(decode(m.value, Recommendation).request_id for m in messages)


def committed_total(cfg, group_id: str, topic: str, partitions: int) -> int:
    client = consumer(cfg, group_id)
    try:
        return sum(client.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        client.close()


def test_a_model_slower_than_the_poll_interval_keeps_its_partitions_and_serves_each_request_once(kafka_cfg,
                                                                                                   topics):
    create_topics(kafka_cfg, topics)
    kafka = kafka_cfg.replace(max_poll_interval_ms=MAX_POLL_INTERVAL_MS)
    cfg = ServeConfig(kafka=kafka, topics=topics, group_id=f"{topics.prefix}model-worker",
                      max_batch=MAX_BATCH, max_buffered=MAX_BUFFERED)
    sent = publish_requests(kafka, topics.name(RERANK_REQUESTS), REQUESTS)
    started = time.monotonic()
    worker = start(cfg, SlowRanker())
    server = worker[0]
    try:
        wait_for_recommendations(kafka, topics.name(RECOMMENDATIONS), REQUESTS)
        during = Counter(server.stats)  # before the stop: closing revokes the partitions
        elapsed_s = time.monotonic() - started
    finally:
        stop_all(worker)

    assert recommended_ids(kafka, topics.name(RECOMMENDATIONS)) == sorted(sent)  # exactly one each
    assert elapsed_s > 2 * MAX_POLL_INTERVAL_MS / 1000  # slow enough to matter
    assert during["assigned"] == 1 and during["revoked"] == during["lost"] == 0  # no rebalance
    assert during["commit_failures"] == 0
    assert MAX_BATCH < during["held_peak"] <= MAX_BUFFERED and during["pauses"] >= 1
    assert server.metrics.registry.get_sample_value("vip5_partition_pauses_total") == during["pauses"]
    assert committed_total(kafka, cfg.group_id, topics.name(RERANK_REQUESTS), topics.partitions) == REQUESTS


def test_a_worker_joining_mid_stream_takes_over_from_the_committed_offsets(kafka_cfg, topics):
    create_topics(kafka_cfg, topics)
    cfg = ServeConfig(kafka=kafka_cfg, topics=topics, group_id=f"{topics.prefix}model-worker", max_batch=20,
                      max_buffered=60)
    sent = publish_requests(kafka_cfg, topics.name(RERANK_REQUESTS), 300)
    first = start(cfg, SlowRanker(seconds_per_request=0.02))
    try:
        wait_for_recommendations(kafka_cfg, topics.name(RECOMMENDATIONS), 40)
        second = start(cfg, SlowRanker(seconds_per_request=0.02))
        try:
            wait_for_recommendations(kafka_cfg, topics.name(RECOMMENDATIONS), len(sent))
            stats = [Counter(server.stats) for server, _, _ in (first, second)]
        finally:
            stop_all(second)
    finally:
        stop_all(first)

    assert recommended_ids(kafka_cfg, topics.name(RECOMMENDATIONS)) == sorted(sent)  # none lost, none twice
    assert stats[0]["revoked"] >= 1 and stats[0]["assigned"] >= 2 and stats[1]["requests"] > 0
    assert stats[0]["commit_failures"] == stats[1]["commit_failures"] == 0
