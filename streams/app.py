"""The faust app: agents for items and interactions, the user-history table, dead-lettering.

    items (ItemUpsert)         ──► embed images in micro-batches ──► item-embeddings (ItemEmbedding)
    interactions (Interaction) ──► history table, candidates     ──► rerank-requests (RerankRequest)
                                   (at most max_users users, none idle past user_idle_s: streams.retention)
    anything undecodable or failing                              ──► dead-letter (DeadLetter)

Agents are thin: a few lines of `async for` that hand each batch of events to a handler
(streams.handlers: ItemsHandler, InteractionsHandler), which a unit test drives without faust.
Values travel as raw bytes and are decoded by the handlers, so a bad record becomes a dead letter instead of an exception in
faust's deserializer. Processing is at-least-once: faust commits an offset only after the agent
has handled the event, and sends from an agent are flushed before the commit. Records faust skips
after a crash are read back directly (streams.gaps) and handled before the message that follows.
A timer reports the input partitions' `vip5_consumer_lag` every `lag_interval_s`.
"""

from __future__ import annotations

import faust
from aiokafka.errors import IllegalStateError
from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP

from runtime.kafka import faust_credentials
from schemas.topics import DEAD_LETTER, INTERACTIONS, ITEM_EMBEDDINGS, ITEMS, RERANK_REQUESTS, TopicSpec
from streams.config import StreamsConfig
from streams.gaps import GapFiller
from streams.handlers import Intake, InteractionsHandler, ItemsHandler, StreamsContext
from streams.transport import fetch_wait_transport


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the producer's default partitioner (murmur2) gives `key`, as faust's does."""
    return DefaultPartitioner()(key, list(range(partitions)), [])


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
    # before anything asks for app.transport (app.topic does): faust's own hard-codes a 1.5 s fetch wait
    app.transport = fetch_wait_transport(cfg.kafka.fetch_max_wait_ms)(app.conf.broker_consumer, app)
    topic = {spec: app.topic(cfg.topics.name(spec), key_type=bytes, value_type=bytes,
                             partitions=cfg.topics.partitions_of(spec))
             for spec in (ITEMS, INTERACTIONS, ITEM_EMBEDDINGS, RERANK_REQUESTS, DEAD_LETTER)}
    # Keys are the raw user-id bytes, placed by the producer's default (murmur2) partitioner: the
    # same partition as the interaction with that key, so the table stays co-partitioned with its
    # source even when a coalesced batch is written outside faust's per-event context.
    history = app.Table("user-history", default=dict, partitions=cfg.topics.partitions_of(INTERACTIONS),
                        key_type=bytes, value_type=None, use_partitioner=True)  # values: JSON

    async def send(spec: TopicSpec, key: bytes, value: bytes) -> None:
        await topic[spec].send(key=key, value=value)

    gaps = GapFiller(cfg.kafka, cfg.app_id,
                     committed=lambda t, p: app.consumer._committed_offset.get(TP(t, p)))  # no public getter
    intake = Intake(ctx, send, gaps=gaps)
    items = ItemsHandler(cfg, ctx, intake, send)
    interactions = InteractionsHandler(cfg, ctx, intake, send, history)

    @history.on_recover
    async def bound_restored_history() -> None:
        # faust calls this after every rebalance, once the table holds what it restored. Its memory
        # store keeps the keys this worker wrote for partitions it has since lost: they leave memory
        # here without a tombstone (their new owner keeps them), so the bound counts this worker's
        # users only and never deletes another worker's.
        source = cfg.topics.name(INTERACTIONS)
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == source}
        store, partitions = history.data, cfg.topics.partitions_of(INTERACTIONS)
        for key in [k for k in store if key_partition(k, partitions) not in owned]:
            del store[key]
        interactions.restore_retention()

    @app.on_partitions_revoked.connect
    async def forget_revoked(sender, revoked, **kwargs) -> None:
        gaps.forget(revoked)

    @app.agent(topic[ITEMS], name="items")
    async def items_agent(stream):
        async for events in stream.take_events(cfg.image_batch_size, within=cfg.image_batch_wait_ms / 1000):
            await items.handle(events)

    @app.agent(topic[INTERACTIONS], name="interactions")
    async def interactions_agent(stream):
        if cfg.coalesce_ms > 0:
            async for events in stream.take_events(cfg.coalesce_max, within=cfg.coalesce_ms / 1000):
                await interactions.handle(events)
        else:
            async for event in stream.events():
                await interactions.handle([event])

    @app.task
    async def on_started() -> None:  # runs once the worker has started its agents
        ctx.metrics.ready.set()

    sources = {cfg.topics.name(spec) for spec in (ITEMS, INTERACTIONS)}

    @app.timer(interval=cfg.lag_interval_s)
    async def report_lag() -> None:  # vip5_consumer_lag of the input partitions this worker owns
        for tp in app.consumer.assignment():
            if tp.topic not in sources:
                continue
            try:
                ctx.metrics.set_lag(tp.topic, tp.partition, app.consumer.highwater(tp), await app.consumer.position(tp))
            except (AssertionError, IllegalStateError):  # revoked while we looked: the next round has it right
                continue

    app.history_table = history
    return app
