"""The serving loop's contract with in-memory Kafka doubles: one recommendation per request, dead
letters for what cannot be served, no repeats, a bounded buffer that pauses the partitions when
full, commits that cover only flushed outputs, and a clean hand-over when partitions move."""

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from kafka.future import Future as KafkaFuture
from kafka.structs import TopicPartition

from model_worker.serve import Backlog, ModelServer, PublishError, ServeConfig
from schemas.codec import decode_any, encode
from schemas.records import Candidate, DeadLetter, Explanation, Recommendation, RerankRequest
from schemas.topics import TopicConfig

TOPIC = "t.rerank-requests"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def drive(coroutine) -> None:
    """Run a rebalance hook to completion; the doubles resolve every await at once."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("a rebalance hook awaited something that never completes")


class FakeConsumer:
    """One group member over in-memory partition logs, as kafka-python 3 behaves towards its caller:
    poll returns at most max_records from unpaused partitions; commits take explicit offsets; a
    rebalance runs inside poll through the subscribed listener (revoke every partition, then assign
    the new set). A partition in both the old and the new assignment keeps its position and paused
    flag; any other starts unpaused at its committed offset, and so does every partition after an
    eviction."""

    def __init__(self, logs: dict[TopicPartition, list]):
        self.logs = logs
        self.positions = {tp: 0 for tp in logs}
        self.assigned, self.paused_set = set(logs), set()
        self.committed: dict[TopicPartition, int] = {}
        self.log, self.listener, self.rebalance_next = [], None, None
        self.check_commit = lambda offsets: None
        self.before_rebalance = lambda: None
        self.on_pause_change = lambda what: None

    def append(self, tp: TopicPartition, value: bytes) -> None:
        self.logs[tp].append(message(value, len(self.logs[tp]), tp.partition))

    def subscribe(self, topics, listener):
        assert topics == [TOPIC]
        self.listener = listener

    def assignment(self):
        return set(self.assigned)

    def paused(self):
        return set(self.paused_set)

    def pause(self, *partitions):
        self.paused_set |= set(partitions)
        self.log.append("pause")
        self.on_pause_change("pause")

    def resume(self, *partitions):
        self.paused_set -= set(partitions)
        self.log.append("resume")
        self.on_pause_change("resume")

    def seek(self, tp, offset):
        assert tp in self.assigned
        self.positions[tp] = offset

    def highwater(self, tp):
        return len(self.logs[tp])

    def position(self, tp):
        return self.positions[tp]

    def poll(self, timeout_ms, max_records):
        if self.rebalance_next is not None:
            self._rebalance(*self.rebalance_next)
        polled = {}
        for tp in sorted(self.assigned - self.paused_set):
            records = self.logs[tp][self.positions[tp]:self.positions[tp] + max_records - sum(map(len, polled.values()))]
            if records:
                polled[tp] = records
                self.positions[tp] += len(records)
        if not polled:
            time.sleep(min(timeout_ms, 2) / 1000)
        return polled

    def _rebalance(self, assignment, lost):
        self.rebalance_next = None
        self.before_rebalance()
        hook = self.listener.on_partitions_lost if lost else self.listener.on_partitions_revoked
        drive(hook(set(self.assigned)))
        kept = set() if lost else self.assigned & assignment
        for tp in assignment - kept:
            self.positions[tp] = self.committed.get(tp, 0)
        self.assigned, self.paused_set = set(assignment), self.paused_set & kept
        drive(self.listener.on_partitions_assigned(set(assignment)))

    def commit(self, offsets=None):
        assert offsets is not None, "a bare commit() commits the fetch position, past buffered records"
        self._commit(offsets)

    def commit_async(self, offsets):
        self._commit(offsets)
        return KafkaFuture().success(None)

    def _commit(self, offsets):
        assert set(offsets) <= self.assigned, "committed a partition it does not own"
        self.check_commit(offsets)
        self.committed.update({tp: meta.offset for tp, meta in offsets.items()})
        self.log.append("commit")

    def close(self):
        self.log.append("close")


class Ack:
    """What kafka-python's send returns, as seen after a flush."""

    def __init__(self, exception=None):
        self.exception = exception

    def failed(self) -> bool:
        return self.exception is not None


class FakeProducer:
    def __init__(self, consumer_log):
        self.sent, self.flushed, self.log = [], [], consumer_log
        self.delivery_error = None  # set: every send is reported failed after the flush

    def send(self, topic, key, value):
        self.sent.append((topic, decode_any(value)))
        return Ack(self.delivery_error)

    def flush(self):
        self.flushed = list(self.sent)
        self.log.append("flush")

    def close(self):
        pass


class ByRetrievalScore:
    """A stand-in ranker: orders candidates by their retrieval score; fails on a chosen user."""

    model_version, adapter_version = "test-model", "v1"

    def __init__(self, *, fail_user=None, fail_explain=False):
        self.fail_user, self.fail_explain, self.calls = fail_user, fail_explain, 0

    def activate(self, version):
        self.adapter_version = version

    def rank(self, requests, features):
        self.calls += 1
        if any(r.user_id == self.fail_user for r in requests):
            raise RuntimeError("cannot score this user")
        return [sorted(((c.item_id, c.score) for c in r.candidates), key=lambda p: -p[1]) for r in requests]

    def explain(self, pairs, features):
        if self.fail_explain:
            raise RuntimeError("no words")
        return [f"{user} likes {item}" for user, item in pairs]


class Gated(ByRetrievalScore):
    """Scores a batch only when the test opens the gate for it: a model as slow as the test wants."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Semaphore(0)

    def rank(self, requests, features):
        assert self.gate.acquire(timeout=10), "the test never let this batch through"
        return super().rank(requests, features)


def request(n: int, user: str = "u1", *, partition: int = 0) -> RerankRequest:
    return RerankRequest(request_id=f"p{partition}-r{n}", user_id=user, history=["a"],
                         candidates=[Candidate(item_id=f"i{k}", score=float(k), source="visual") for k in range(4)],
                         event_ids=[f"e{n}"], event_time_ms=1, request_time_ms=2)


def message(value: bytes, offset: int, partition: int = 0):
    return SimpleNamespace(value=value, key=b"u1", topic=TOPIC, partition=partition, offset=offset, leader_epoch=0)


def requests_on(partition: int, n: int) -> list:
    return [message(encode(request(k, partition=partition)), k, partition) for k in range(n)]


def server_for(values, ranker, **cfg):
    """A server over one partition holding `values` (more records can be appended later)."""
    return server_over({P0: [message(v, n) for n, v in enumerate(values)]}, ranker, **cfg)


def server_over(logs, ranker, **cfg):
    consumer = FakeConsumer(logs)
    producer = FakeProducer(consumer.log)
    replica = SimpleNamespace(features=lambda ids: {i: np.zeros(4, np.float32) for i in ids})
    cfg = {"top_n": 2, "max_wait_ms": 0, **cfg}
    return ModelServer(ServeConfig(topics=TopicConfig(prefix="t."), **cfg), ranker, replica,
                       consumer=consumer, producer=producer), consumer, producer


def run_until(server, done, *, timeout_s: float = 10.0, each_turn=lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the loop did not get there"
        server.step()
        each_turn()


def serve_all(server, consumer, **kwargs) -> None:
    """Turn the loop until every record of every assigned partition is committed."""
    run_until(server, lambda: all(consumer.committed.get(tp, 0) == len(consumer.logs[tp]) for tp in consumer.assigned),
              **kwargs)


def recommendations(producer) -> list[str]:
    return [r.request_id for _, r in producer.sent if isinstance(r, Recommendation)]


def test_each_request_gets_one_recommendation_and_commit_follows_flush():
    server, consumer, producer = server_for([encode(request(1)), encode(request(2))], ByRetrievalScore())
    serve_all(server, consumer)
    recs = [r for _, r in producer.sent]
    assert [r.request_id for r in recs] == ["p0-r1", "p0-r2"] and all(isinstance(r, Recommendation) for r in recs)
    assert [i.item_id for i in recs[0].items] == ["i3", "i2"]
    assert recs[0].adapter_version == "v1" and recs[0].event_ids == ("e1",)
    assert consumer.log == ["flush", "commit"] and consumer.committed == {P0: 2}


def test_undecodable_requests_become_dead_letters_and_the_rest_is_served():
    server, consumer, producer = server_for([b"\x00garbage", encode(request(1))], ByRetrievalScore())
    serve_all(server, consumer)
    kinds = [(topic, type(r).__name__) for topic, r in producer.sent]
    assert kinds == [("t.dead-letter", "DeadLetter"), ("t.recommendations", "Recommendation")]
    letter = producer.sent[0][1]
    assert isinstance(letter, DeadLetter) and letter.raw == b"\x00garbage" and letter.stage == "decode"


def test_a_request_id_served_before_is_not_scored_again():
    server, consumer, producer = server_for([encode(request(1)), encode(request(1)), encode(request(2))],
                                            ByRetrievalScore(), max_batch=1)
    serve_all(server, consumer)
    assert recommendations(producer) == ["p0-r1", "p0-r2"]
    assert server.stats["repeated_requests"] == 1 and server.stats["batches"] == 3


def test_a_request_that_breaks_the_model_is_dead_lettered_alone():
    ranker = ByRetrievalScore(fail_user="bad")
    server, consumer, producer = server_for([encode(request(1)), encode(request(2, user="bad"))], ranker)
    serve_all(server, consumer)
    outputs = {type(r).__name__: r for _, r in producer.sent}
    assert outputs["Recommendation"].request_id == "p0-r1"
    assert outputs["DeadLetter"].stage == "rank" and "cannot score this user" in outputs["DeadLetter"].reason


class FlushLogged(ByRetrievalScore):
    """Records, when asked to explain, what the producer had flushed by then."""

    def __init__(self, producer_of, **kwargs):
        super().__init__(**kwargs)
        self.producer_of, self.flushed_before_explain = producer_of, None

    def explain(self, pairs, features):
        self.flushed_before_explain = list(self.producer_of().flushed)
        return super().explain(pairs, features)


def test_the_recommendation_is_flushed_before_its_explanation_which_names_the_top_item():
    ranker = FlushLogged(lambda: producer)
    server, consumer, producer = server_for([encode(request(1)), encode(request(2, user="u2"))], ranker,
                                            explain_top=True)
    serve_all(server, consumer)
    assert [type(r).__name__ for _, r in ranker.flushed_before_explain] == ["Recommendation"] * 2
    kinds = [(topic, type(r).__name__) for topic, r in producer.sent]
    assert kinds == [("t.recommendations", "Recommendation")] * 2 + [("t.explanations", "Explanation")] * 2
    recs = {r.request_id: r for _, r in producer.sent if isinstance(r, Recommendation)}
    explanations = [r for _, r in producer.sent if isinstance(r, Explanation)]
    for explanation in explanations:
        rec = recs[explanation.request_id]
        assert explanation.item_id == rec.items[0].item_id == "i3" and explanation.user_id == rec.user_id
        assert explanation.text == f"{rec.user_id} likes i3"
        assert (explanation.model_version, explanation.adapter_version) == (rec.model_version, rec.adapter_version)
        assert explanation.event_time_ms == rec.event_time_ms and explanation.publish_time_ms >= rec.publish_time_ms
    assert consumer.log == ["flush", "flush", "commit"] and consumer.committed == {P0: 2}
    assert server.stats["explanations"] == 2


def test_a_failed_explanation_costs_nothing_the_recommendation_is_out_and_the_batch_committed():
    server, consumer, producer = server_for([encode(request(1))], ByRetrievalScore(fail_explain=True),
                                            explain_top=True)
    serve_all(server, consumer)
    assert [type(r).__name__ for _, r in producer.sent] == ["Recommendation"]
    assert consumer.committed == {P0: 1} and server.stats["explanation_failures"] == 1


def test_without_explain_top_nothing_is_generated_and_one_flush_covers_the_batch():
    ranker = ByRetrievalScore(fail_explain=True)  # would raise if asked
    server, consumer, producer = server_for([encode(request(1))], ranker)
    serve_all(server, consumer)
    assert [type(r).__name__ for _, r in producer.sent] == ["Recommendation"]
    assert consumer.log == ["flush", "commit"] and server.stats["explanation_failures"] == 0


def test_an_explanation_the_broker_did_not_acknowledge_leaves_the_batch_uncommitted():
    server, consumer, producer = server_for([encode(request(1))], ByRetrievalScore(), explain_top=True)
    send = producer.send

    def refuse_explanations(topic, key, value):
        ack = send(topic, key, value)
        return Ack(TimeoutError("explanation not delivered")) if topic == "t.explanations" else ack

    producer.send = refuse_explanations
    with pytest.raises(PublishError, match="1 of 1 outputs"):
        run_until(server, lambda: False)
    server.close()
    assert consumer.committed == {} and recommendations(producer) == ["p0-r1"]


def test_a_swapped_adapter_serves_from_the_next_batch():
    server, consumer, producer = server_for([encode(request(1))], ByRetrievalScore())
    serve_all(server, consumer)
    server.swap_adapter("v2")
    consumer.append(P0, encode(request(2)))
    serve_all(server, consumer)
    assert [r.adapter_version for _, r in producer.sent] == ["v1", "v2"]


def test_a_batch_closes_on_size_or_when_its_oldest_record_waited_max_wait():
    backlog = Backlog()
    backlog.add(requests_on(0, 2), now_s=10.0)
    assert not backlog.ready(10.05, max_batch=4, max_wait_s=0.1)
    assert backlog.ready(10.1, max_batch=4, max_wait_s=0.1)
    backlog.add(requests_on(1, 2), now_s=10.05)
    assert backlog.ready(10.05, max_batch=4, max_wait_s=0.1)
    assert [m.partition for m in backlog.take(3)] == [0, 0, 1] and len(backlog) == 1


def test_max_buffered_defaults_to_four_batches_and_must_hold_a_whole_batch():
    assert ServeConfig(max_batch=8).max_buffered == 32 and ServeConfig(max_batch=8).resume_at == 16
    with pytest.raises(ValueError, match="max_buffered"):
        ServeConfig(max_batch=8, max_buffered=4)


def test_a_full_buffer_pauses_the_partitions_and_they_resume_when_it_drains_to_half():
    ranker = Gated()
    server, consumer, producer = server_over({P0: requests_on(0, 30), P1: requests_on(1, 30)}, ranker,
                                             max_batch=4, max_buffered=10)
    held, changes = [], []
    consumer.on_pause_change = lambda what: changes.append((what, server.held))
    run_until(server, lambda: len(held) >= 50, each_turn=lambda: held.append(server.held))  # the model is stuck
    assert max(held) == 10 and consumer.paused() == {P0, P1}
    assert consumer.positions[P0] + consumer.positions[P1] == 10  # nothing polled past the bound
    for _ in range(60):
        ranker.gate.release()
    serve_all(server, consumer, each_turn=lambda: held.append(server.held))
    assert max(held) == 10 and server.stats["held_peak"] == 10
    assert all(n == 10 for what, n in changes if what == "pause")
    assert all(n <= 5 for what, n in changes if what == "resume") and consumer.paused() == set()
    assert sorted(recommendations(producer)) == sorted(f"p{p}-r{k}" for p in (0, 1) for k in range(30))
    pauses = server.metrics.registry.get_sample_value("vip5_partition_pauses_total")
    assert pauses == server.stats["pauses"] == sum(what == "pause" for what, _ in changes) >= 2
    assert server.metrics.registry.get_sample_value("vip5_buffered_records") == 0


def test_commits_never_cover_records_whose_outputs_are_not_flushed():
    ranker = Gated()
    logs = {P0: requests_on(0, 12), P1: requests_on(1, 12)}
    logs[P0][3] = message(b"\x00garbage", 3, 0)
    logs[P1][5] = message(encode(request(2, partition=1)), 5, 1)  # a repeat of p1-r2
    server, consumer, producer = server_over(logs, ranker, max_batch=4, max_buffered=8)

    def outputs_flushed_below(offsets):
        flushed = {r.request_id for _, r in producer.flushed if isinstance(r, Recommendation)}
        letters = {(r.partition, r.offset) for _, r in producer.flushed if isinstance(r, DeadLetter)}
        for tp, meta in offsets.items():
            for m in consumer.logs[tp][:meta.offset]:
                handled = (tp.partition, m.offset) in letters or decode_any(m.value).request_id in flushed
                assert handled, f"commit {meta.offset} on {tp} covers offset {m.offset}, not yet flushed"

    consumer.check_commit = outputs_flushed_below
    ranker.gate.release()
    run_until(server, lambda: bool(consumer.committed))
    run_until(server, lambda: server.held == 8)  # a batch in flight, a full buffer behind it
    assert sum(consumer.committed.values()) == 4 < sum(consumer.positions.values()) == 12
    for _ in range(10):
        ranker.gate.release()
    serve_all(server, consumer)
    assert len(recommendations(producer)) == len(set(recommendations(producer))) == 22


def test_a_revoke_commits_the_batch_in_flight_and_drops_buffered_records_of_revoked_partitions():
    ranker = Gated()
    server, consumer, producer = server_over({P0: requests_on(0, 10), P1: requests_on(1, 10)}, ranker,
                                             max_batch=4, max_buffered=12)
    run_until(server, lambda: server.held == 12 and consumer.paused())  # p0 0-3 scored, p0 4-9 and p1 0-1 wait
    assert consumer.positions == {P0: 10, P1: 2} and consumer.committed == {}
    consumer.before_rebalance = ranker.gate.release  # the batch finishes while the hand-over waits for it
    consumer.rebalance_next = ({P1}, False)  # p0 moves to another member
    server.step()
    assert consumer.committed == {P0: 4} and recommendations(producer) == [f"p0-r{k}" for k in range(4)]
    assert server.held <= 1 and consumer.positions[P1] == server.held  # p1 is read again from its offset 0
    for _ in range(10):
        ranker.gate.release()
    serve_all(server, consumer)
    assert sorted(recommendations(producer)) == sorted([f"p0-r{k}" for k in range(4)] +  # p0 4-9: the next owner's
                                                       [f"p1-r{k}" for k in range(10)])
    assert consumer.committed == {P0: 4, P1: 10} and server.stats["revoked"] == 1


def test_partitions_assigned_back_resume_unpaused_at_the_first_dropped_record():
    ranker = Gated()
    server, consumer, producer = server_over({P0: requests_on(0, 10), P1: requests_on(1, 10)}, ranker,
                                             max_batch=4, max_buffered=12)
    run_until(server, lambda: server.held == 12 and consumer.paused())
    consumer.before_rebalance = ranker.gate.release
    consumer.rebalance_next = ({P0, P1}, False)  # a member joined and left again: the same partitions back
    server.step()
    assert consumer.committed == {P0: 4} and consumer.positions[P1] <= 1 and consumer.paused() == set()
    for _ in range(10):
        ranker.gate.release()
    serve_all(server, consumer)
    assert sorted(recommendations(producer)) == sorted(f"p{p}-r{k}" for p in (0, 1) for k in range(10))
    assert server.stats["repeated_requests"] == 0


def test_lost_partitions_are_dropped_without_a_commit():
    ranker = Gated()
    server, consumer, producer = server_over({P0: requests_on(0, 10)}, ranker, max_batch=4, max_buffered=8)
    ranker.gate.release()
    run_until(server, lambda: consumer.committed == {P0: 4} and server.held == 6)  # 4-7 scored, 8-9 wait
    consumer.before_rebalance = ranker.gate.release
    consumer.rebalance_next = ({P0}, True)  # evicted, then given p0 again
    server.step()
    assert consumer.committed == {P0: 4}  # the group moved on: 4-7 are published but not committed
    assert server.stats["lost"] == 1 and server.stats["assigned"] == 1
    for _ in range(10):
        ranker.gate.release()
    serve_all(server, consumer)
    assert sorted(recommendations(producer)) == sorted(f"p0-r{k}" for k in range(10))


def test_stop_finishes_and_commits_the_batch_in_flight_and_leaves_the_buffer_uncommitted():
    ranker = Gated()
    server, consumer, producer = server_over({P0: requests_on(0, 10)}, ranker, max_batch=4, max_buffered=8)
    stop = threading.Event()
    runner = threading.Thread(target=server.run, args=(stop,))
    runner.start()
    deadline = time.monotonic() + 10
    while not consumer.paused() and time.monotonic() < deadline:  # 0-3 scored, 4-7 buffered
        time.sleep(0.01)
    stop.set()
    ranker.gate.release()
    runner.join(10)
    assert not runner.is_alive()
    assert recommendations(producer) == [f"p0-r{k}" for k in range(4)]
    assert consumer.committed == {P0: 4} and consumer.log[-3:] == ["flush", "commit", "close"]


def test_a_batch_that_fails_to_publish_stops_the_loop_and_is_not_committed():
    server, consumer, producer = server_for([encode(request(1)), encode(request(2))], ByRetrievalScore())

    def refuse(topic, key, value):
        raise RuntimeError("broker refused the record")

    producer.send = refuse
    with pytest.raises(RuntimeError, match="broker refused"):
        run_until(server, lambda: False)
    server.close()
    assert consumer.committed == {} and consumer.log[-1] == "close"


def test_a_batch_whose_outputs_the_broker_did_not_acknowledge_is_not_committed():
    server, consumer, producer = server_for([encode(request(1)), encode(request(2))], ByRetrievalScore())
    producer.delivery_error = TimeoutError("delivery timed out while the broker was away")
    with pytest.raises(PublishError, match="2 of 2 outputs"):
        run_until(server, lambda: False)
    server.close()
    assert consumer.committed == {}


def test_each_recommendation_carries_its_stage_times_in_order():
    before_ms = int(time.time() * 1000)
    stamped = RerankRequest(**{**request(1).__dict__, "streams_received_time_ms": 1})
    server, consumer, producer = server_for([encode(stamped)], ByRetrievalScore())
    serve_all(server, consumer)
    (_, rec), = producer.sent
    assert rec.streams_received_time_ms == 1  # copied from the request
    times = [rec.model_received_time_ms, rec.batch_start_time_ms, rec.scored_time_ms, rec.publish_time_ms]
    assert before_ms <= times[0] and times == sorted(times)


def test_an_idle_worker_starts_a_batch_without_waiting_by_default():
    assert ServeConfig().max_wait_ms == 0
