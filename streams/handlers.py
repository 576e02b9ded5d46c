"""The streams worker's handlers: what each faust agent does with a batch of events, without faust.

    ItemsHandler         ItemUpsert events        ──► embed images, or title + category when an
                                                      item has no image (off the loop) ──► item-embeddings
                                                      and this worker's catalogue replica
    InteractionsHandler  Interaction events        ──► history table, candidates   ──► rerank-requests
                         (a record with the `vip5-backfill` header updates the history only: no request)
    Intake               raw events of any topic   ──► (event, record) pairs; undecodable ──► dead-letter

An event is anything with `.message` (topic, partition, offset), `.key` and `.value` (raw bytes):
faust's events in the app, plain namespaces in tests. Outputs go through `send(spec, key, value)`,
an async callable the app binds to its faust topics; the history table is any mutable mapping
(faust's Table in the app, a dict in tests), bounded by streams.retention: InteractionsHandler
deletes the users past `max_users` or idle past `user_idle_s`. So a unit test drives a handler in
process:

    handler = InteractionsHandler(cfg, ctx, Intake(ctx, send), send, history={})
    await handler.handle(events)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from types import SimpleNamespace

from index.candidates import PopularityTracker
from index.covisitation import Covisitation
from index.encoders import VisualEncoder
from index.replica import CatalogReplica
from runtime.metrics import WorkerMetrics
from schemas.codec import decode, encode
from schemas.errors import SchemaError
from schemas.headers import is_backfill
from schemas.records import DeadLetter, Interaction, ItemEmbedding, ItemUpsert
from schemas.topics import DEAD_LETTER, INTERACTIONS, ITEM_EMBEDDINGS, ITEMS, RERANK_REQUESTS, TopicSpec
from streams.config import StreamsConfig
from streams.logic import apply_interactions, build_request, record_covisitation
from streams.retention import UserRetention

log = logging.getLogger(__name__)

Send = Callable[[TopicSpec, bytes, bytes], Awaitable[None]]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class StreamsContext:
    """What the handlers share: built once per worker process and passed in explicitly."""

    encoder: VisualEncoder
    replica: CatalogReplica
    popularity: PopularityTracker
    stats: dict
    metrics: WorkerMetrics
    # Learned from the interactions this worker handles (its partitions' users), in memory only:
    # after a restart it starts empty and rebuilds from the interactions that follow.
    covisitation: Covisitation = field(default_factory=Covisitation)
    # Items without an image get a vector of their title and category from this encoder
    # (index.text_encoder.TextEncoder: encode(texts) -> (N, D), encoder_id); None: they get none.
    text_encoder: object | None = None
    # The learned sequential retriever's replica (index.retriever), fed by its own follower threads;
    # None: no such candidates.
    retriever: object | None = None


class Intake:
    """Decoding and dead-lettering for every agent; with `gaps` (streams.gaps.GapFiller), each event
    is preceded by the records faust skipped before it on its partition."""

    def __init__(self, ctx: StreamsContext, send: Send, *, gaps=None):
        self.ctx, self.send, self.gaps = ctx, send, gaps

    async def dead_letter(self, event, reason: str, stage: str) -> None:
        message = event.message
        letter = DeadLetter.of(source_topic=message.topic, partition=message.partition, offset=message.offset,
                               raw=event.value, raw_key=event.key, reason=reason, stage=stage, now_ms=now_ms())
        self.ctx.stats["dead_letters"] += 1
        self.ctx.metrics.dead_letters.labels(stage=stage).inc()
        log.warning("dead letter from %s[%d]@%d (%s): %s", message.topic, message.partition, message.offset,
                    stage, reason)
        await self.send(DEAD_LETTER, message.topic.encode(), encode(letter))

    async def with_skipped(self, events) -> list:
        if self.gaps is None:
            return list(events)
        out = []
        for event in events:
            for record in await self.gaps.missing_before(event.message):
                out.append(SimpleNamespace(message=record, value=record.value, key=record.key,
                                           headers=getattr(record, "headers", None)))
                self.ctx.stats["offset_gap_records"] += 1
            out.append(event)
        return out

    async def decoded(self, events, record_type) -> list[tuple[object, object]]:
        good = []
        for event in await self.with_skipped(events):
            try:
                good.append((event, decode(event.value, record_type)))
            except SchemaError as err:
                await self.dead_letter(event, str(err), "decode")
        return good


class ItemsHandler:
    """A batch of item events: embed the images in one encoder call, publish one ItemEmbedding each."""

    def __init__(self, cfg: StreamsConfig, ctx: StreamsContext, intake: Intake, send: Send):
        self.cfg, self.ctx, self.intake, self.send = cfg, ctx, intake, send

    async def handle(self, events) -> None:
        metrics = self.ctx.metrics
        metrics.records_in.labels(topic=self.cfg.topics.name(ITEMS)).inc(len(events))
        metrics.batch_size.labels(stage="embed").observe(len(events))
        with metrics.stage_seconds.labels(stage="embed").time():
            await self.embed(await self.intake.decoded(events, ItemUpsert))

    async def embed(self, upserts: list[tuple[object, ItemUpsert]]) -> None:
        ctx = self.ctx
        with_image = [(e, u) for e, u in upserts if u.image_bytes is not None or u.image_uri is not None]
        without_image = [(e, u) for e, u in upserts if u.image_bytes is None and u.image_uri is None]
        ctx.stats["items_without_image"] += len(without_image)
        if without_image and ctx.text_encoder is not None:
            await self.embed_texts(without_image)
        if not with_image:
            return
        sources = [u.image_bytes if u.image_bytes is not None else u.image_uri for _, u in with_image]
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, ctx.encoder.embed, sources)  # CPU/GPU work off the loop
        for (event, upsert), vector, error in zip(with_image, result.vectors, result.errors, strict=True):
            if error is not None:
                await self.intake.dead_letter(event, f"image: {error}", "embed")
                continue
            await self.publish(upsert, vector, ctx.encoder.encoder_id)

    async def embed_texts(self, upserts: list[tuple[object, ItemUpsert]]) -> None:
        """Items without an image: a content vector of `item_text(title, category)`, so they can be
        retrieved (content neighbours) and scored by models trained on the same text vectors."""
        from index.text_encoder import item_text

        encoder = self.ctx.text_encoder
        texts = [item_text(u.title, u.category) for _, u in upserts]
        vectors = await asyncio.get_running_loop().run_in_executor(None, encoder.encode, texts)  # (N, D)
        for (_, upsert), vector in zip(upserts, vectors, strict=True):
            await self.publish(upsert, vector, encoder.encoder_id)
            self.ctx.stats["items_embedded_from_text"] += 1

    async def publish(self, upsert: ItemUpsert, vector, encoder_id: str) -> None:
        record = ItemEmbedding(item_id=upsert.item_id, vector=vector, encoder_id=encoder_id,
                               event_time_ms=upsert.event_time_ms, embedded_time_ms=now_ms())
        await self.send(ITEM_EMBEDDINGS, upsert.item_id.encode(), encode(record))
        # This worker's own replica takes the item now; the tail of item-embeddings brings the same
        # record (and every other worker's items) a fetch wait later.
        self.ctx.replica.apply([record])
        self.ctx.stats["items_embedded"] += 1
        self.ctx.metrics.records_out.labels(topic=self.cfg.topics.name(ITEM_EMBEDDINGS)).inc()


class InteractionsHandler:
    """A batch of interaction events: per user, update the history, then publish one RerankRequest."""

    def __init__(self, cfg: StreamsConfig, ctx: StreamsContext, intake: Intake, send: Send,
                 history: MutableMapping[bytes, dict]):
        self.cfg, self.ctx, self.intake, self.send, self.history = cfg, ctx, intake, send, history
        self.retention = UserRetention(max_users=cfg.max_users, user_idle_s=cfg.user_idle_s)

    async def handle(self, events) -> None:
        received_ms = now_ms()  # the stage "streams received" of the latency budget
        self.ctx.metrics.records_in.labels(topic=self.cfg.topics.name(INTERACTIONS)).inc(len(events))
        self.ctx.metrics.batch_size.labels(stage="interactions").observe(len(events))
        by_user = defaultdict(list)
        for event, interaction in await self.intake.decoded(events, Interaction):
            by_user[interaction.user_id].append((event, interaction))
        for user_id, user_pairs in by_user.items():
            await self.handle_user(user_id, user_pairs, received_ms=received_ms)

    async def handle_user(self, user_id: str, pairs: list[tuple[object, Interaction]], *,
                          received_ms: int | None = None) -> None:
        """Update the user's history; publish a request reflecting the events not marked backfill."""
        cfg, ctx = self.cfg, self.ctx
        active_ms = received_ms if received_ms is not None else now_ms()
        interactions = [i for _, i in pairs]
        key = user_id.encode()
        state, fresh = apply_interactions(self.history.get(key), interactions, history_len=cfg.history_len,
                                          dedupe_window=cfg.dedupe_window)
        state["active_ms"] = active_ms  # kept in the table, so the order survives a restart
        self.history[key] = state
        self.retention.touch(key, active_ms)
        self.evict(active_ms)
        ctx.stats["interactions"] += len(interactions)
        ctx.stats["duplicates"] += len(interactions) - len(fresh)
        for interaction in fresh:
            ctx.popularity.record(interaction.item_id, interaction.event_time_ms / 1000.0)
        record_covisitation(ctx.covisitation, state, fresh)  # before the candidates: they see this event
        live = [(e, i) for e, i in pairs if not is_backfill(getattr(e, "headers", None))]
        if not live:  # history only (schemas.headers.BACKFILL): nobody waits for a recommendation
            ctx.stats["backfill_interactions"] += len(pairs)
            return
        pairs, fresh_ids = live, {i.event_id for i in fresh}
        # All duplicates: publish again under the same request id. The first attempt may have been
        # lost in a crash between the table update and the send; consumers drop repeated ids.
        reflected = [i for _, i in live if i.event_id in fresh_ids] or [i for _, i in live]
        candidates = ctx.replica.candidates(state["items"], ctx.popularity, cfg.candidates, now_s=time.time(),
                                            covisitation=ctx.covisitation, retriever=ctx.retriever)
        if not candidates:
            ctx.stats["requests_without_candidates"] += 1
            log.warning("no candidates for user %s yet (empty catalogue?)", user_id)
            return
        try:
            request = build_request(user_id, state, reflected, candidates, now_ms=now_ms(),
                                    received_ms=received_ms)
        except SchemaError as err:
            for event, _ in pairs:
                await self.intake.dead_letter(event, f"request: {err}", "request")
            return
        await self.send(RERANK_REQUESTS, key, encode(request))
        ctx.stats["requests"] += 1
        ctx.metrics.records_out.labels(topic=cfg.topics.name(RERANK_REQUESTS)).inc()

    def evict(self, at_ms: int) -> None:
        """Delete the users past the bound from the table (on faust's: a changelog tombstone each)."""
        for key in self.retention.evictions(at_ms):
            if key in self.history:  # not .pop: faust's table answers a missing key with its default
                del self.history[key]
            self.ctx.stats["users_evicted"] += 1
            self.ctx.metrics.users_evicted.inc()

    def restore_retention(self) -> None:
        """Once the table holds what it restored (a start or a rebalance): rebuild the order from the
        stored "active_ms" and evict what is past the bound now (e.g. after max_users was lowered)."""
        now, evicted = now_ms(), self.ctx.stats["users_evicted"]
        self.retention.restore(self.history.items(), now_ms=now)
        self.evict(now)
        log.info("user histories restored: %d kept, %d evicted (max_users %d, user_idle_s %.0f)",
                 len(self.retention), self.ctx.stats["users_evicted"] - evicted, self.cfg.max_users,
                 self.cfg.user_idle_s)
