"""The serving loop's contract with in-memory Kafka doubles: one recommendation per request, dead
letters for what cannot be served, no repeats, commits only after the outputs are flushed."""

from types import SimpleNamespace

import numpy as np

from model_worker.serve import ModelServer, ServeConfig
from schemas.codec import decode_any, encode
from schemas.records import Candidate, DeadLetter, Recommendation, RerankRequest
from schemas.topics import TopicConfig


class FakeConsumer:
    def __init__(self, batches):
        self.batches, self.log = list(batches), []

    def poll(self, timeout_ms, max_records):
        return {"tp": self.batches.pop(0)} if self.batches else {}

    def assignment(self):
        return set()

    def commit(self):
        self.log.append("commit")

    def close(self):
        self.log.append("close")


class FakeProducer:
    def __init__(self, consumer_log):
        self.sent, self.log = [], consumer_log

    def send(self, topic, key, value):
        self.sent.append((topic, decode_any(value)))

    def flush(self):
        self.log.append("flush")

    def close(self):
        pass


class ByRetrievalScore:
    """A stand-in ranker: orders candidates by their retrieval score; fails on a chosen user."""

    model_version, adapter_version = "test-model", "v1"

    def __init__(self, *, fail_user=None, fail_explain=False):
        self.fail_user, self.fail_explain, self.calls = fail_user, fail_explain, 0

    def rank(self, requests, features):
        self.calls += 1
        if any(r.user_id == self.fail_user for r in requests):
            raise RuntimeError("cannot score this user")
        return [sorted(((c.item_id, c.score) for c in r.candidates), key=lambda p: -p[1]) for r in requests]

    def explain(self, pairs, features):
        if self.fail_explain:
            raise RuntimeError("no words")
        return [f"{user} likes {item}" for user, item in pairs]


def request(n: int, user: str = "u1") -> RerankRequest:
    return RerankRequest(request_id=f"r{n}", user_id=user, history=["a"],
                         candidates=[Candidate(item_id=f"i{k}", score=float(k), source="visual") for k in range(4)],
                         event_ids=[f"e{n}"], event_time_ms=1, request_time_ms=2)


def message(value: bytes, offset: int):
    return SimpleNamespace(value=value, key=b"u1", topic="t.rerank-requests", partition=0, offset=offset)


def server_for(batches, ranker, **cfg):
    consumer = FakeConsumer([[message(v, n) for n, v in enumerate(b)] for b in batches])
    producer = FakeProducer(consumer.log)
    replica = SimpleNamespace(features=lambda ids: {i: np.zeros(4, np.float32) for i in ids})
    return ModelServer(ServeConfig(topics=TopicConfig(prefix="t."), top_n=2, **cfg), ranker, replica,
                       consumer=consumer, producer=producer), consumer, producer


def test_each_request_gets_one_recommendation_and_commit_follows_flush():
    server, consumer, producer = server_for([[encode(request(1)), encode(request(2))]], ByRetrievalScore())
    assert server.step() == 2
    recs = [r for _, r in producer.sent]
    assert [r.request_id for r in recs] == ["r1", "r2"] and all(isinstance(r, Recommendation) for r in recs)
    assert [i.item_id for i in recs[0].items] == ["i3", "i2"]
    assert recs[0].adapter_version == "v1" and recs[0].event_ids == ("e1",)
    assert consumer.log == ["flush", "commit"]


def test_undecodable_requests_become_dead_letters_and_the_rest_is_served():
    server, _, producer = server_for([[b"\x00garbage", encode(request(1))]], ByRetrievalScore())
    server.step()
    kinds = [(topic, type(r).__name__) for topic, r in producer.sent]
    assert kinds == [("t.dead-letter", "DeadLetter"), ("t.recommendations", "Recommendation")]
    letter = producer.sent[0][1]
    assert isinstance(letter, DeadLetter) and letter.raw == b"\x00garbage" and letter.stage == "decode"


def test_a_request_id_served_before_is_not_scored_again():
    server, _, producer = server_for([[encode(request(1))], [encode(request(1)), encode(request(2))]],
                                     ByRetrievalScore())
    server.step()
    server.step()
    assert [r.request_id for _, r in producer.sent] == ["r1", "r2"]
    assert server.stats["repeated_requests"] == 1


def test_a_request_that_breaks_the_model_is_dead_lettered_alone():
    ranker = ByRetrievalScore(fail_user="bad")
    server, _, producer = server_for([[encode(request(1)), encode(request(2, user="bad"))]], ranker)
    server.step()
    outputs = {type(r).__name__: r for _, r in producer.sent}
    assert outputs["Recommendation"].request_id == "r1"
    assert outputs["DeadLetter"].stage == "rank" and "cannot score this user" in outputs["DeadLetter"].reason


def test_explanations_go_on_the_top_item_and_their_failure_costs_nothing():
    server, _, producer = server_for([[encode(request(1))]], ByRetrievalScore(), explain_top=True)
    server.step()
    rec = producer.sent[0][1]
    assert rec.items[0].explanation == "u1 likes i3" and rec.items[1].explanation is None
    server, _, producer = server_for([[encode(request(1))]], ByRetrievalScore(fail_explain=True), explain_top=True)
    server.step()
    assert producer.sent[0][1].items[0].explanation is None


def test_a_swapped_ranker_serves_from_the_next_batch():
    server, _, producer = server_for([[encode(request(1))], [encode(request(2))]], ByRetrievalScore())
    server.step()
    newer = ByRetrievalScore()
    newer.adapter_version = "v2"
    server.swap_ranker(newer)
    server.step()
    assert [r.adapter_version for _, r in producer.sent] == ["v1", "v2"]
