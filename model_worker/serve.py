"""The model worker's serving loop: re-rank requests in micro-batches, publish recommendations.

    rerank-requests (RerankRequest) ──► poll ──► buffer ──► batch ──► decode ──► Ranker.rank (VIP5)
                                        (main thread)       (scoring thread)         │
    recommendations (Recommendation) ◄── send, flush ◄───────────────────────────────┘
        then, with explain_top: Ranker.explain (top items) ──► explanations (Explanation), flush
    commit {partition: last offset + 1} ◄── every output of the batch acknowledged
    undecodable or failing records ──► dead-letter (DeadLetter)

Two threads share the work; only the main thread touches the KafkaConsumer (it is not
thread-safe). The main thread polls into a bounded in-memory buffer and hands one micro-batch at a
time to a single scoring thread; it keeps polling while that batch is scored, so a slow model never
stretches the time between polls past `max_poll_interval_ms` (no leave, no rebalance). A batch
closes when it holds `max_batch` records or its oldest record has waited `max_wait_ms` (default 0:
a batch starts as soon as the scoring thread is free; requests that arrive while it scores form the
next batch, so batches still grow with load and an idle worker adds no wait).

Backpressure: records held = buffered + being scored. Each poll asks for at most
`max_buffered - held` records, so held never exceeds `max_buffered`. At `max_buffered` every
assigned partition is paused; polls go on (they return nothing from paused partitions and keep the
member in its group) and the partitions resume once held drops to `max_buffered // 2`, so a slow
model does not flap pause/resume on every batch.

Explanations stay off the hot path: a batch's recommendations are sent and flushed before anything
is generated. Then, with `explain_top`, one batched `Ranker.explain` call covers the top item of
each recommendation, and each explanation goes out as its own `Explanation` record (same
request_id), flushed before the commit. A generation failure is logged and counted
(`stats["explanation_failures"]`) and costs nothing: the recommendations are already out. An
explanation the broker does not acknowledge stops the batch uncommitted, like any output. The
scoring thread generates them, so they still delay the next batch (not this one's recommendations).

Offsets: once a batch's outputs are sent and `producer.flush()` returned, the main thread commits,
per partition, the offset after the batch's last record. Never the fetch position, which runs
ahead of the buffer (at-least-once). A request id served recently is not scored again
(redelivery after a restart may still repeat it: the request id makes that recognisable).

Rebalance (`Handover`): before partitions are revoked, the batch in flight finishes and is
committed, and buffered records of those partitions are dropped: the next owner reads them from the
committed offset (a partition assigned back to this member resumes at its first dropped record).
Lost partitions (the member was evicted) are dropped without a commit. A new assignment starts
unpaused; the next turn pauses it again if the buffer is still full. On stop, the batch in flight
finishes and is committed, buffered records are left to the next owner, the clients close.

The image features come from the worker's own item-feature replica (runtime.features), fed by the
compacted item-embeddings topic.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from kafka import AsyncConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from runtime.kafka import KafkaConfig
from runtime.metrics import WorkerMetrics
from schemas.codec import decode, encode
from schemas.errors import SchemaError, shorten
from schemas.records import DeadLetter, Explanation, RankedItem, Recommendation, RerankRequest
from schemas.topics import DEAD_LETTER, EXPLANATIONS, RECOMMENDATIONS, RERANK_REQUESTS, TopicConfig

log = logging.getLogger(__name__)

IN_FLIGHT_POLL_MS = 5  # poll timeout while a batch is scored: how soon the next batch can start
IDLE_POLL_MS = 100  # poll timeout with nothing buffered; a poll returns as soon as records arrive

Offsets = dict[TopicPartition, OffsetAndMetadata]
Ranked = list[tuple[str, float]]  # (item_id, score) for every candidate, best first


class Ranker(Protocol):
    """What the serving loop needs from a model (model_worker.ranker.VIP5Ranker implements it)."""

    model_version: str
    adapter_version: str  # the adapter set serving now

    def activate(self, version: str) -> None:
        """Serve adapter `version` (staged before) from the next batch on; called between batches."""

    def rank(self, requests: Sequence[RerankRequest],
             features: Mapping[str, np.ndarray]) -> list[list[tuple[str, float]]]:
        """Per request, (item_id, score) for every candidate, best first."""

    def explain(self, pairs: Sequence[tuple[str, str]], features: Mapping[str, np.ndarray]) -> list[str]:
        """A short generated explanation per (user_id, item_id), in order: why the item suits the user."""


@dataclass(frozen=True)
class ServeConfig:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicConfig = field(default_factory=TopicConfig)
    group_id: str = "vip5-model-worker"
    max_batch: int = 16  # requests scored together
    # Longest wait for a batch to fill. 0: never wait while the scorer is free (a 50 ms window
    # cost every request up to 50 ms at low load and bought nothing at high load, where requests
    # queue behind the batch being scored anyway).
    max_wait_ms: int = 0
    top_n: int = 10  # items per recommendation
    # after a batch's recommendations are out, publish a generated explanation of each one's top item
    explain_top: bool = False
    served_ids_kept: int = 100_000  # recent request ids remembered to skip repeats
    # Records held in memory (buffered + being scored); at this many the partitions pause, and
    # they resume at half. None: 4 * max_batch.
    max_buffered: int | None = None
    artifacts_dir: str = "artifacts"  # the adapter store: updates load only from <artifacts_dir>/<version>
    # verifies each update's signature (model_worker.artifacts); None: every update is rejected
    adapter_signing_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("max_batch", "top_n", "served_ids_kept"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms: must be >= 0, got {self.max_wait_ms}")
        if self.max_buffered is None:
            object.__setattr__(self, "max_buffered", 4 * self.max_batch)
        if self.max_buffered < self.max_batch:
            raise ValueError(f"max_buffered: must hold a whole batch (>= max_batch {self.max_batch}), "
                             f"got {self.max_buffered}")

    @property
    def resume_at(self) -> int:
        """Paused partitions resume once the records held drop to this many."""
        return self.max_buffered // 2


class PublishError(RuntimeError):
    """The broker did not acknowledge a batch's outputs (after the producer's delivery timeout)."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class StageTimes:
    """When the model worker got a request, began its batch and finished ranking it (epoch ms)."""

    model_received_ms: int | None = None
    batch_start_ms: int | None = None
    scored_ms: int | None = None


def recommendation_for(request: RerankRequest, ranked: Ranked, *, top_n: int, model_version: str,
                       adapter_version: str, times: StageTimes = StageTimes()) -> Recommendation:
    items = [RankedItem(item_id=item, score=score) for item, score in ranked[:top_n]]
    return Recommendation(request_id=request.request_id, user_id=request.user_id, items=items,
                          model_version=model_version, adapter_version=adapter_version,
                          event_ids=request.event_ids, event_time_ms=request.event_time_ms,
                          request_time_ms=request.request_time_ms, publish_time_ms=now_ms(),
                          streams_received_time_ms=request.streams_received_time_ms,
                          model_received_time_ms=times.model_received_ms, batch_start_time_ms=times.batch_start_ms,
                          scored_time_ms=times.scored_ms)


def explanation_for(request: RerankRequest, item_id: str, text: str, *, model_version: str,
                    adapter_version: str) -> Explanation:
    return Explanation(request_id=request.request_id, user_id=request.user_id, item_id=item_id, text=text,
                       model_version=model_version, adapter_version=adapter_version,
                       event_time_ms=request.event_time_ms, publish_time_ms=now_ms())


def items_of(requests: Sequence[RerankRequest]) -> list[str]:
    """Every item a batch mentions (histories and candidates), once."""
    seen: dict[str, None] = {}
    for request in requests:
        seen.update(dict.fromkeys(request.history))
        seen.update(dict.fromkeys(c.item_id for c in request.candidates))
    return list(seen)


def names(partitions: Collection[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)


def offsets_after(messages: Sequence) -> Offsets:
    """The commit that covers `messages`: per partition, the offset after its last record."""
    last: dict[TopicPartition, object] = {}
    for message in messages:
        tp = TopicPartition(message.topic, message.partition)
        if tp not in last or message.offset > last[tp].offset:
            last[tp] = message
    return {tp: OffsetAndMetadata(m.offset + 1, "", m.leader_epoch if m.leader_epoch is not None else -1)
            for tp, m in last.items()}


class Backlog:
    """Polled records waiting for a batch, oldest first, each with the time its poll returned
    (monotonic seconds for the batch window; epoch ms for the latency budget)."""

    def __init__(self) -> None:
        self._records: deque[tuple[float, object]] = deque()
        self._received_ms: dict[int, int] = {}  # id(message) -> epoch ms its poll returned

    def __len__(self) -> int:
        return len(self._records)

    def add(self, messages: Sequence, now_s: float, *, received_ms: int | None = None) -> None:
        self._records.extend((now_s, m) for m in messages)
        if received_ms is not None:
            self._received_ms.update((id(m), received_ms) for m in messages)

    def due_in_s(self, now_s: float, max_wait_s: float) -> float:
        """Seconds until the oldest record's batch closes on time (max_wait_s when empty)."""
        if not self._records:
            return max_wait_s
        return max(0.0, self._records[0][0] + max_wait_s - now_s)

    def ready(self, now_s: float, *, max_batch: int, max_wait_s: float) -> bool:
        """A batch closes on size (max_batch records) or time (its oldest waited max_wait_s)."""
        return len(self._records) >= max_batch or (bool(self._records) and self.due_in_s(now_s, max_wait_s) == 0)

    def take(self, n: int) -> list:
        return self.take_timed(n)[0]

    def take_timed(self, n: int) -> tuple[list, list[int | None]]:
        """The oldest `n` records, with the epoch ms their poll returned (None where not given)."""
        messages = [self._records.popleft()[1] for _ in range(min(n, len(self._records)))]
        return messages, [self._received_ms.pop(id(m), None) for m in messages]

    def drop(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Forget the records of `partitions`. Returns, per partition, the first offset dropped: every
        record before it was handed to a batch, so its next owner resumes there."""
        kept: deque[tuple[float, object]] = deque()
        first: dict[TopicPartition, int] = {}
        for polled_at, message in self._records:
            tp = TopicPartition(message.topic, message.partition)
            if tp not in partitions:
                kept.append((polled_at, message))
            elif tp not in first or message.offset < first[tp]:
                first[tp] = message.offset
        self._records = kept
        kept_ids = {id(m) for _, m in kept}
        self._received_ms = {k: v for k, v in self._received_ms.items() if k in kept_ids}
        return first


@dataclass
class RequestBatch:
    """A micro-batch of polled request records handed to the scoring thread; `future` resolves to
    the offsets it covers."""

    messages: list
    future: Future


class Handover(AsyncConsumerRebalanceListener):
    """Rebalance hooks: finish and commit the batch in flight before partitions move.

    kafka-python runs these hooks on its IO thread (the main thread waits inside poll meanwhile),
    where a blocking `commit()` is refused; as coroutines they await `commit_async` instead, so the
    commit lands before the group moves on.
    """

    def __init__(self, server: ModelServer):
        self.server = server

    async def on_partitions_revoked(self, revoked):
        offsets = self.server.release(revoked, reason="revoked")
        if not offsets:
            return
        try:
            await self.server.consumer.commit_async(offsets)
        except KafkaError as err:  # the batch is published: its records are served again by the next owner
            self.server.stats["commit_failures"] += 1
            log.warning("commit before hand-over failed (%s); the next owner serves those records again", err)

    async def on_partitions_lost(self, lost):
        self.server.release(lost, reason="lost")  # evicted: the group moved on, nothing can be committed

    async def on_partitions_assigned(self, assigned):
        self.server.assigned(assigned)


class ModelServer:
    """One serving loop; the ranker's adapter version may be switched between batches with `swap_adapter`.

    Subscribes `consumer` to the request topic with its `Handover` listener.
    """

    def __init__(self, cfg: ServeConfig, ranker: Ranker, item_features, *, consumer, producer,
                 metrics: WorkerMetrics | None = None):
        self.cfg, self.item_features = cfg, item_features  # item_features: runtime.features.ItemFeatures
        self.metrics = metrics or WorkerMetrics("model-worker")
        self.metrics.set_adapter(ranker.adapter_version)
        self._ranker = ranker
        self._pending_version: str | None = None
        self._swap_lock = threading.Lock()
        self.consumer, self.producer = consumer, producer
        self.stats: Counter = Counter()
        self._served: OrderedDict[str, None] = OrderedDict()  # touched by the scoring thread only
        self._sends: list = []  # the batch's producer futures (scoring thread only)
        self._backlog = Backlog()
        self._in_flight: RequestBatch | None = None
        self._rewind: dict[TopicPartition, int] = {}  # first dropped offset per released partition
        self._state_lock = threading.Lock()  # backlog and in-flight batch: the rebalance hooks run on another thread
        self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vip5-scorer")
        consumer.subscribe([cfg.topics.name(RERANK_REQUESTS)], listener=Handover(self))

    @property
    def ranker(self) -> Ranker:
        return self._ranker

    @property
    def held(self) -> int:
        """Records polled and not yet committed: buffered plus being scored."""
        in_flight = self._in_flight
        return len(self._backlog) + (len(in_flight.messages) if in_flight is not None else 0)

    def swap_adapter(self, version: str) -> None:
        """Activate the staged adapter `version` before the next batch; the batch in flight finishes
        on the current one."""
        with self._swap_lock:
            self._pending_version = version

    def run(self, stop: threading.Event) -> None:
        self.metrics.alive.set()
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.metrics.alive.clear()
            self.close()

    def step_swap(self) -> None:
        """Activate a pending adapter version (called between batches, no batch in flight)."""
        with self._swap_lock:
            if self._pending_version is not None:
                self._ranker.activate(self._pending_version)
                self._pending_version = None
                self.stats["swaps"] += 1
                self.metrics.adapter_swaps.inc()
                self.metrics.set_adapter(self._ranker.adapter_version)
                log.info("now serving adapter %s", self._ranker.adapter_version)

    def step(self) -> int:
        """One turn of the loop: commit a finished batch, start the next, apply backpressure, poll.

        Returns how many records this turn committed. Raises what a batch raised (that batch is
        not committed).
        """
        committed = self._collect()
        self._start_batch()
        self._apply_backpressure()
        self._poll()
        return committed

    def _collect(self) -> int:
        with self._state_lock:
            batch = self._in_flight
            if batch is None or not batch.future.done():
                return 0
            self._in_flight = None
        self._commit(batch.future.result())
        return len(batch.messages)

    def _start_batch(self) -> None:
        with self._state_lock:
            if self._in_flight is not None:
                return
            self.step_swap()
            if not self._backlog.ready(time.monotonic(), max_batch=self.cfg.max_batch,
                                       max_wait_s=self.cfg.max_wait_ms / 1000):
                return
            messages, received_ms = self._backlog.take_timed(self.cfg.max_batch)
            self._in_flight = RequestBatch(messages, self._scorer.submit(self._handle, messages, received_ms))

    def _apply_backpressure(self) -> None:
        """Pause every assigned partition at max_buffered records held; resume at resume_at."""
        held, paused = self._note_held(), self.consumer.paused()
        if held >= self.cfg.max_buffered:
            unpaused = self.consumer.assignment() - paused
            if unpaused:
                self.consumer.pause(*unpaused)
                self.stats["pauses"] += 1
                self.metrics.partition_pauses.inc()
        elif paused and held <= self.cfg.resume_at:
            self.consumer.resume(*paused)
            self.stats["resumes"] += 1

    def _poll(self) -> None:
        free = self.cfg.max_buffered - self.held  # paused when 0: the poll then returns nothing
        polled = self.consumer.poll(timeout_ms=self._poll_timeout_ms(), max_records=max(free, 1))
        messages = [m for records in polled.values() for m in records]
        if messages:
            with self._state_lock:
                self._backlog.add(messages, time.monotonic(), received_ms=now_ms())
            self._note_held()
        self.metrics.update_lag(self.consumer)

    def _poll_timeout_ms(self) -> int:
        if self._in_flight is not None:
            return IN_FLIGHT_POLL_MS
        if not len(self._backlog):
            return IDLE_POLL_MS
        return round(self._backlog.due_in_s(time.monotonic(), self.cfg.max_wait_ms / 1000) * 1000)

    def _note_held(self) -> int:
        held = self.held
        self.metrics.buffered_records.set(held)
        self.stats["held_peak"] = max(self.stats["held_peak"], held)
        return held

    def _commit(self, offsets: Offsets) -> None:
        """Commit offsets of partitions still assigned (a partition that moved is its new owner's)."""
        assigned = self.consumer.assignment()
        owned = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not owned:
            return
        try:
            self.consumer.commit(owned)
        except CommitFailedError as err:  # evicted meanwhile: the outputs are out, the next owner repeats them
            self.stats["commit_failures"] += 1
            log.warning("commit failed (%s); the next owner serves those records again", err)

    def release(self, partitions: Collection[TopicPartition], *, reason: str) -> Offsets:
        """Before `partitions` move: wait for the batch in flight and drop their buffered records.

        Returns the finished batch's offsets, for the caller to commit while it still owns them.
        """
        if not partitions:
            return {}
        with self._state_lock:
            batch, self._in_flight = self._in_flight, None
            dropped = self._backlog.drop(set(partitions))
            self._rewind.update(dropped)
        offsets = batch.future.result() if batch is not None else {}
        self.stats[reason] += 1
        self._note_held()
        log.info("partitions %s: %s; finished a batch of %d, dropped buffered records from %s", reason,
                 names(partitions), len(batch.messages) if batch is not None else 0,
                 {f"{tp.topic}[{tp.partition}]": offset for tp, offset in dropped.items()})
        return offsets

    def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Start a new assignment unpaused, each partition at its first record not yet handed to a batch.

        kafka-python keeps the fetch position and paused flag of a partition that is revoked and
        assigned again in one rebalance; without the seek, the records dropped on revoke would be
        skipped. The next turn pauses the partitions again if the buffer is still full.
        """
        with self._state_lock:
            rewind, self._rewind = self._rewind, {}
        for tp in set(partitions) & set(rewind):
            self.consumer.seek(tp, rewind[tp])
        paused = self.consumer.paused() & set(partitions)
        if paused:
            self.consumer.resume(*paused)
        self.stats["assigned"] += 1
        log.info("partitions assigned: %s", names(partitions))

    def _handle(self, messages: list, received_ms: Sequence[int | None] = ()) -> Offsets:
        """Score one batch, publish and flush its recommendations, then (explain_top) its
        explanations (scoring thread). Returns the offsets it covers.

        Raises PublishError if the broker did not acknowledge every output (the batch is then not
        committed, and its requests are not remembered as served)."""
        self.metrics.records_in.labels(topic=messages[0].topic).inc(len(messages))
        self.metrics.batch_size.labels(stage="rerank").observe(len(messages))
        self._sends = []
        served: list[tuple[RerankRequest, Ranked]] = []
        batch_start_ms = now_ms()
        pairs = self._decode(messages)
        if pairs:
            polled = dict(zip(map(id, messages), received_ms, strict=False))
            times = {request.request_id: StageTimes(model_received_ms=polled.get(id(message)),
                                                    batch_start_ms=batch_start_ms)
                     for message, request in pairs}
            with self.metrics.stage_seconds.labels(stage="rerank").time():
                served = self._serve(pairs, times)
        self._publish()  # the ranked lists are out before any explanation is generated
        if self.cfg.explain_top and served:
            with self.metrics.stage_seconds.labels(stage="explain").time():
                self._explain(served)
            self._publish()
        for request, _ in served:
            self._remember(request.request_id)
        self.stats["batches"] += 1
        return offsets_after(messages)

    def _publish(self) -> None:
        """Flush; every send so far acknowledged, or PublishError."""
        self.producer.flush()
        self._confirm_sends()

    def _send(self, topic: str, key: bytes, value: bytes) -> None:
        self._sends.append(self.producer.send(topic, key=key, value=value))

    def _confirm_sends(self) -> None:
        """After a flush: every send of the batch acknowledged, or PublishError."""
        failed = [future.exception for future in self._sends if future.failed()]
        total, self._sends = len(self._sends), []
        if failed:
            raise PublishError(f"{len(failed)} of {total} outputs of the batch were not acknowledged "
                               f"(first: {failed[0]!r}); the batch is not committed")

    def _decode(self, messages) -> list[tuple[object, RerankRequest]]:
        requests: dict[str, tuple[object, RerankRequest]] = {}
        for message in messages:
            try:
                request = decode(message.value, RerankRequest)
            except SchemaError as err:
                self._dead_letter(message, str(err), "decode")
                continue
            if request.request_id in self._served or request.request_id in requests:
                self.stats["repeated_requests"] += 1
                continue
            requests[request.request_id] = (message, request)
        return list(requests.values())

    def _serve(self, pairs: list[tuple[object, RerankRequest]],
               times: Mapping[str, StageTimes] | None = None) -> list[tuple[RerankRequest, Ranked]]:
        """Rank and send the recommendations; returns the requests it sent one for, with their ranking."""
        ranker = self._ranker
        requests = [request for _, request in pairs]
        features = self.item_features.features(items_of(requests))
        try:
            ranked_lists = ranker.rank(requests, features)
        except Exception:  # one bad request must not fail the batch: retry one by one
            log.exception("batch of %d failed to rank; retrying each request alone", len(requests))
            ranked_lists = [self._rank_alone(ranker, message, request, features) for message, request in pairs]
        topic = self.cfg.topics.name(RECOMMENDATIONS)
        served = [(request, ranked) for request, ranked in zip(requests, ranked_lists, strict=True) if ranked is not None]
        scored_ms = now_ms()
        for request, ranked in served:
            stamped = (times or {}).get(request.request_id, StageTimes())
            rec = recommendation_for(request, ranked, top_n=self.cfg.top_n, model_version=ranker.model_version,
                                     adapter_version=ranker.adapter_version,
                                     times=dataclasses.replace(stamped, scored_ms=scored_ms))
            self._send(topic, request.user_id.encode(), encode(rec))
            self.metrics.records_out.labels(topic=topic).inc()
            self.metrics.freshness_seconds.observe((rec.publish_time_ms - rec.event_time_ms) / 1000)
        self.stats["requests"] += len(requests)
        return served

    def _explain(self, served: list[tuple[RerankRequest, Ranked]]) -> None:
        """One batched explanation call for the top items of a batch (its recommendations are out);
        each explanation sent as its own record. A failure is logged and counted, nothing more."""
        ranker = self._ranker
        tops = [(request, ranked[0][0]) for request, ranked in served if ranked]
        if not tops:
            return
        try:
            features = self.item_features.features([item for _, item in tops])
            texts = ranker.explain([(request.user_id, item) for request, item in tops], features)
            explanations = [explanation_for(request, item, text, model_version=ranker.model_version,
                                            adapter_version=ranker.adapter_version)
                            for (request, item), text in zip(tops, texts, strict=True)]
        except Exception:  # an explanation is optional: its failure must cost no recommendation
            self.stats["explanation_failures"] += 1
            log.exception("explanations failed for a batch of %d", len(tops))
            return
        topic = self.cfg.topics.name(EXPLANATIONS)
        for explanation in explanations:
            self._send(topic, explanation.user_id.encode(), encode(explanation))
            self.metrics.records_out.labels(topic=topic).inc()
        self.stats["explanations"] += len(explanations)

    def _rank_alone(self, ranker: Ranker, message, request: RerankRequest, features) -> list | None:
        try:
            return ranker.rank([request], features)[0]
        except Exception as err:
            self._dead_letter(message, f"ranking failed: {type(err).__name__}: {err}", "rank")
            return None

    def _remember(self, request_id: str) -> None:
        self._served[request_id] = None
        while len(self._served) > self.cfg.served_ids_kept:
            self._served.popitem(last=False)

    def _dead_letter(self, message, reason: str, stage: str) -> None:
        reason = shorten(reason, 1000)  # exception texts can carry a whole hostile value
        letter = DeadLetter.of(source_topic=message.topic, partition=message.partition, offset=message.offset,
                               raw=message.value, raw_key=message.key, reason=reason, stage=stage, now_ms=now_ms())
        self._send(self.cfg.topics.name(DEAD_LETTER), message.topic.encode(), encode(letter))
        self.stats["dead_letters"] += 1
        self.metrics.dead_letters.labels(stage=stage).inc()
        log.warning("dead letter from %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)

    def close(self) -> None:
        """Finish and commit the batch in flight, then close; buffered records stay uncommitted."""
        try:
            with self._state_lock:
                batch, self._in_flight = self._in_flight, None
            if batch is not None:
                self._commit(batch.future.result())
        finally:
            self._scorer.shutdown(wait=True)
            self.consumer.close()
            self.producer.close()
        log.info("model worker stopped: %s", dict(self.stats))
