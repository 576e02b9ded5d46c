"""The model worker's serving loop: re-rank requests in micro-batches, publish recommendations.

    rerank-requests (RerankRequest) ──► decode ──► Ranker (VIP5) ──► recommendations (Recommendation)
    undecodable or failing records  ──► dead-letter (DeadLetter)

A kafka-python consumer group on the request topic; each poll returns at most `max_batch`
records and waits at most `max_wait_ms`, so a batch closes on size or time. Offsets are committed
only after the batch's recommendations are acknowledged by the broker (at-least-once). A request
id served recently is not scored again (redelivery after a restart may still repeat it: the
request id makes that recognisable downstream). On stop, the current batch finishes, its offsets
are committed, and the clients close.

The image features come from the worker's own catalogue replica (index.replica), fed by the
compacted item-embeddings topic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from schemas.codec import decode, encode
from schemas.errors import SchemaError
from schemas.records import DeadLetter, RankedItem, Recommendation, RerankRequest
from schemas.topics import DEAD_LETTER, RECOMMENDATIONS, TopicConfig
from vip5.kafka import KafkaConfig
from vip5.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class Ranker(Protocol):
    """What the serving loop needs from a model (model_worker.ranker.VIP5Ranker implements it)."""

    model_version: str
    adapter_version: str

    def rank(self, requests: Sequence[RerankRequest],
             features: Mapping[str, np.ndarray]) -> list[list[tuple[str, float]]]:
        """Per request, (item_id, score) for every candidate, best first."""

    def explain(self, pairs: Sequence[tuple[str, str]], features: Mapping[str, np.ndarray]) -> list[str]:
        """A short generated explanation per (user_id, item_id): why the item suits the user."""


@dataclass(frozen=True)
class ServeConfig:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicConfig = field(default_factory=TopicConfig)
    group_id: str = "vip5-model-worker"
    max_batch: int = 16  # requests scored together
    max_wait_ms: int = 50  # longest wait for a batch to fill
    top_n: int = 10  # items per recommendation
    explain_top: bool = False  # attach a generated explanation to the top item
    served_ids_kept: int = 100_000  # recent request ids remembered to skip repeats

    def __post_init__(self) -> None:
        for name in ("max_batch", "top_n", "served_ids_kept"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms: must be >= 0, got {self.max_wait_ms}")


def now_ms() -> int:
    return int(time.time() * 1000)


def recommendation_for(request: RerankRequest, ranked: list[tuple[str, float]], *, top_n: int,
                       model_version: str, adapter_version: str, explanation: str | None = None) -> Recommendation:
    items = [RankedItem(item_id=item, score=score, explanation=explanation if rank == 0 else None)
             for rank, (item, score) in enumerate(ranked[:top_n])]
    return Recommendation(request_id=request.request_id, user_id=request.user_id, items=items,
                          model_version=model_version, adapter_version=adapter_version,
                          event_ids=request.event_ids, event_time_ms=request.event_time_ms,
                          request_time_ms=request.request_time_ms, publish_time_ms=now_ms())


def items_of(requests: Sequence[RerankRequest]) -> list[str]:
    """Every item a batch mentions (histories and candidates), once."""
    seen: dict[str, None] = {}
    for request in requests:
        seen.update(dict.fromkeys(request.history))
        seen.update(dict.fromkeys(c.item_id for c in request.candidates))
    return list(seen)


class ModelServer:
    """One serving loop; `ranker` may be swapped between batches with `swap_ranker`."""

    def __init__(self, cfg: ServeConfig, ranker: Ranker, replica, *, consumer, producer,
                 metrics: WorkerMetrics | None = None):
        self.cfg, self.replica = cfg, replica
        self.metrics = metrics or WorkerMetrics("model-worker")
        self.metrics.set_adapter(ranker.adapter_version)
        self._ranker = ranker
        self._pending_ranker: Ranker | None = None
        self._swap_lock = threading.Lock()
        self.consumer, self.producer = consumer, producer
        self.stats: Counter = Counter()
        self._served: OrderedDict[str, None] = OrderedDict()

    @property
    def ranker(self) -> Ranker:
        return self._ranker

    def swap_ranker(self, ranker: Ranker) -> None:
        """Install `ranker` before the next batch; the batch in flight finishes on the old one."""
        with self._swap_lock:
            self._pending_ranker = ranker

    def run(self, stop: threading.Event) -> None:
        self.metrics.alive.set()
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.metrics.alive.clear()
            self.close()

    def step_swap(self) -> None:
        """Install a pending ranker (called between batches)."""
        with self._swap_lock:
            if self._pending_ranker is not None:
                self._ranker, self._pending_ranker = self._pending_ranker, None
                self.stats["swaps"] += 1
                self.metrics.adapter_swaps.inc()
                self.metrics.set_adapter(self._ranker.adapter_version)
                log.info("now serving adapter %s", self._ranker.adapter_version)

    def step(self) -> int:
        """Poll one batch, serve it, publish, commit. Returns how many records it handled."""
        self.step_swap()
        polled = self.consumer.poll(timeout_ms=self.cfg.max_wait_ms, max_records=self.cfg.max_batch)
        messages = [m for records in polled.values() for m in records]
        self.metrics.update_lag(self.consumer)
        if not messages:
            return 0
        self.metrics.records_in.labels(topic=messages[0].topic).inc(len(messages))
        self.metrics.batch_size.labels(stage="rerank").observe(len(messages))
        pairs = self._decode(messages)
        if pairs:
            with self.metrics.stage_seconds.labels(stage="rerank").time():
                self._serve(pairs)
        self.producer.flush()
        self.consumer.commit()
        self.stats["batches"] += 1
        return len(messages)

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

    def _serve(self, pairs: list[tuple[object, RerankRequest]]) -> None:
        ranker = self._ranker
        requests = [request for _, request in pairs]
        features = self.replica.features(items_of(requests))
        try:
            ranked_lists = ranker.rank(requests, features)
        except Exception:  # one bad request must not fail the batch: retry one by one
            log.exception("batch of %d failed to rank; retrying each request alone", len(requests))
            ranked_lists = [self._rank_alone(ranker, message, request, features) for message, request in pairs]
        topic = self.cfg.topics.name(RECOMMENDATIONS)
        served = [(request, ranked) for request, ranked in zip(requests, ranked_lists, strict=True) if ranked is not None]
        explanations = self._explanations(ranker, served, features)
        for (request, ranked), explanation in zip(served, explanations, strict=True):
            rec = recommendation_for(request, ranked, top_n=self.cfg.top_n, model_version=ranker.model_version,
                                     adapter_version=ranker.adapter_version, explanation=explanation)
            self.producer.send(topic, key=request.user_id.encode(), value=encode(rec))
            self.metrics.records_out.labels(topic=topic).inc()
            self.metrics.freshness_seconds.observe((rec.publish_time_ms - rec.event_time_ms) / 1000)
            self._remember(request.request_id)
        self.stats["requests"] += len(requests)

    def _explanations(self, ranker: Ranker, served: list, features) -> list[str | None]:
        """One batched explanation call for the top items of a batch; None where off or failing."""
        wanted = [(request.user_id, ranked[0][0]) for request, ranked in served if ranked]
        if not self.cfg.explain_top or not wanted:
            return [None] * len(served)
        try:
            texts = iter(ranker.explain(wanted, features))
        except Exception:  # an explanation is optional: never let it cost a recommendation
            log.exception("explanations failed for a batch of %d", len(wanted))
            return [None] * len(served)
        return [next(texts) if ranked else None for _, ranked in served]

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
        letter = DeadLetter.of(source_topic=message.topic, partition=message.partition, offset=message.offset,
                               raw=message.value, raw_key=message.key, reason=reason, stage=stage, now_ms=now_ms())
        self.producer.send(self.cfg.topics.name(DEAD_LETTER), key=message.topic.encode(), value=encode(letter))
        self.stats["dead_letters"] += 1
        self.metrics.dead_letters.labels(stage=stage).inc()
        log.warning("dead letter from %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)

    def close(self) -> None:
        try:
            self.producer.flush()
            self.consumer.commit()
        finally:
            self.consumer.close()
            self.producer.close()
        log.info("model worker stopped: %s", dict(self.stats))
