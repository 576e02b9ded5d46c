"""The faust app: agents for items and interactions, the user-history table, dead-lettering.

    items (ItemUpsert)         ──► embed images in micro-batches ──► item-embeddings (ItemEmbedding)
    interactions (Interaction) ──► history table, candidates     ──► rerank-requests (RerankRequest)
    anything undecodable or failing                              ──► dead-letter (DeadLetter)

Agents are thin: decode, call a plain function (streams.logic, index.*), send. Values travel as
raw bytes and are decoded here, so a bad record becomes a dead letter instead of an exception in
faust's deserializer. Processing is at-least-once: faust commits an offset only after the agent
has handled the event, and sends from an agent are flushed before the commit. Records faust skips
after a crash are read back directly (streams.gaps) and handled before the message that follows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace

import faust
from faust.types import TP

from index.candidates import PopularityTracker
from index.covisitation import Covisitation
from index.encoders import VisualEncoder
from index.replica import CatalogReplica
from runtime.kafka import faust_credentials
from runtime.metrics import WorkerMetrics
from schemas.codec import decode, encode
from schemas.errors import SchemaError
from schemas.records import DeadLetter, Interaction, ItemEmbedding, ItemUpsert
from schemas.topics import DEAD_LETTER, INTERACTIONS, ITEM_EMBEDDINGS, ITEMS, RERANK_REQUESTS
from streams.config import StreamsConfig
from streams.gaps import GapFiller
from streams.logic import apply_interactions, build_request, record_covisitation

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class StreamsContext:
    """What the agents share: built once per worker process and passed in explicitly."""

    encoder: VisualEncoder
    replica: CatalogReplica
    popularity: PopularityTracker
    stats: dict
    metrics: WorkerMetrics
    # Learned from the interactions this worker handles (its partitions' users), in memory only:
    # after a restart it starts empty and rebuilds from the interactions that follow.
    covisitation: Covisitation = field(default_factory=Covisitation)


def build_app(cfg: StreamsConfig, ctx: StreamsContext) -> faust.App:
    app = faust.App(
        cfg.app_id,
        broker=cfg.kafka.faust_broker_url(),
        broker_credentials=faust_credentials(cfg.kafka),
        store="memory://",
        datadir=cfg.data_dir,
        topic_partitions=cfg.topics.partitions,
        topic_replication_factor=cfg.topics.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        broker_session_timeout=cfg.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=cfg.kafka.heartbeat_interval_ms / 1000,
        producer_max_batch_size=1 if cfg.one_record_per_batch else 16384,
        producer_max_request_size=cfg.kafka.max_message_bytes,
        consumer_max_fetch_size=cfg.kafka.max_message_bytes,
        stream_buffer_maxsize=cfg.stream_buffer_maxsize,
        web_enabled=False,
        web_bind="127.0.0.1",
        topic_allow_declare=True,
    )
    topic = {spec: app.topic(cfg.topics.name(spec), key_type=bytes, value_type=bytes,
                             partitions=cfg.topics.partitions_of(spec))
             for spec in (ITEMS, INTERACTIONS, ITEM_EMBEDDINGS, RERANK_REQUESTS, DEAD_LETTER)}
    # Keys are the raw user-id bytes, placed by the producer's default (murmur2) partitioner: the
    # same partition as the interaction with that key, so the table stays co-partitioned with its
    # source even when a coalesced batch is written outside faust's per-event context.
    history = app.Table("user-history", default=dict, partitions=cfg.topics.partitions_of(INTERACTIONS),
                        key_type=bytes, value_type=None, use_partitioner=True)  # values: JSON

    async def dead_letter(event, reason: str, stage: str) -> None:
        message = event.message
        letter = DeadLetter.of(source_topic=message.topic, partition=message.partition, offset=message.offset,
                               raw=event.value, raw_key=event.key, reason=reason, stage=stage, now_ms=now_ms())
        ctx.stats["dead_letters"] += 1
        ctx.metrics.dead_letters.labels(stage=stage).inc()
        log.warning("dead letter from %s[%d]@%d (%s): %s", message.topic, message.partition, message.offset,
                    stage, reason)
        await topic[DEAD_LETTER].send(key=message.topic.encode(), value=encode(letter))

    gaps = GapFiller(cfg.kafka, cfg.app_id,
                     committed=lambda t, p: app.consumer._committed_offset.get(TP(t, p)))  # no public getter

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender, revoked, **kwargs) -> None:
        gaps.forget(revoked)

    async def with_skipped(events) -> list:
        """`events`, each preceded by the records faust skipped before it on its partition."""
        out = []
        for event in events:
            for record in await gaps.missing_before(event.message):
                out.append(SimpleNamespace(message=record, value=record.value, key=record.key))
                ctx.stats["offset_gap_records"] += 1
            out.append(event)
        return out

    async def decoded(events, record_type):
        good = []
        for event in await with_skipped(events):
            try:
                good.append((event, decode(event.value, record_type)))
            except SchemaError as err:
                await dead_letter(event, str(err), "decode")
        return good

    @app.agent(topic[ITEMS], name="items")
    async def items_agent(stream):
        async for events in stream.take_events(cfg.image_batch_size, within=cfg.image_batch_wait_ms / 1000):
            ctx.metrics.records_in.labels(topic=topic[ITEMS].get_topic_name()).inc(len(events))
            ctx.metrics.batch_size.labels(stage="embed").observe(len(events))
            with ctx.metrics.stage_seconds.labels(stage="embed").time():
                await _embed_items(await decoded(events, ItemUpsert))

    async def _embed_items(upserts) -> None:
        with_image = [(e, u) for e, u in upserts if u.image_bytes is not None or u.image_uri is not None]
        ctx.stats["items_without_image"] += len(upserts) - len(with_image)
        if not with_image:
            return
        sources = [u.image_bytes if u.image_bytes is not None else u.image_uri for _, u in with_image]
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, ctx.encoder.embed, sources)  # CPU/GPU work off the loop
        for (event, upsert), vector, error in zip(with_image, result.vectors, result.errors, strict=True):
            if error is not None:
                await dead_letter(event, f"image: {error}", "embed")
                continue
            record = ItemEmbedding(item_id=upsert.item_id, vector=vector, encoder_id=ctx.encoder.encoder_id,
                                   event_time_ms=upsert.event_time_ms, embedded_time_ms=now_ms())
            await topic[ITEM_EMBEDDINGS].send(key=upsert.item_id.encode(), value=encode(record))
            ctx.stats["items_embedded"] += 1
            ctx.metrics.records_out.labels(topic=topic[ITEM_EMBEDDINGS].get_topic_name()).inc()

    @app.agent(topic[INTERACTIONS], name="interactions")
    async def interactions_agent(stream):
        if cfg.coalesce_ms > 0:
            async for events in stream.take_events(cfg.coalesce_max, within=cfg.coalesce_ms / 1000):
                await _handle_interactions(await decoded(events, Interaction))
        else:
            async for event in stream.events():
                await _handle_interactions(await decoded([event], Interaction))

    @app.task
    async def on_started() -> None:  # runs once the worker has started its agents
        ctx.metrics.ready.set()

    async def _handle_interactions(pairs) -> None:
        by_user = defaultdict(list)
        for event, interaction in pairs:
            by_user[interaction.user_id].append((event, interaction))
        for user_id, user_pairs in by_user.items():
            await _handle_user(user_id, user_pairs)

    async def _handle_user(user_id: str, pairs) -> None:
        interactions = [i for _, i in pairs]
        key = user_id.encode()
        state, fresh = apply_interactions(history.get(key), interactions, history_len=cfg.history_len,
                                          dedupe_window=cfg.dedupe_window)
        history[key] = state
        ctx.stats["interactions"] += len(interactions)
        ctx.stats["duplicates"] += len(interactions) - len(fresh)
        for interaction in fresh:
            ctx.popularity.record(interaction.item_id, interaction.event_time_ms / 1000.0)
        record_covisitation(ctx.covisitation, state, fresh)  # before the candidates: they see this event
        # All duplicates: publish again under the same request id. The first attempt may have been
        # lost in a crash between the table update and the send; consumers drop repeated ids.
        reflected = fresh or interactions
        candidates = ctx.replica.candidates(state["items"], ctx.popularity, cfg.candidates, now_s=time.time(),
                                            covisitation=ctx.covisitation)
        if not candidates:
            ctx.stats["requests_without_candidates"] += 1
            log.warning("no candidates for user %s yet (empty catalogue?)", user_id)
            return
        try:
            request = build_request(user_id, state, reflected, candidates, now_ms=now_ms())
        except SchemaError as err:
            for event, _ in pairs:
                await dead_letter(event, f"request: {err}", "request")
            return
        await topic[RERANK_REQUESTS].send(key=user_id.encode(), value=encode(request))
        ctx.stats["requests"] += 1
        ctx.metrics.records_out.labels(topic=topic[RERANK_REQUESTS].get_topic_name()).inc()

    app.history_table = history
    return app
