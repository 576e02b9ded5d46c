"""Runs one streams worker process: encoder, catalogue replica, embeddings follower, faust app.

    run_worker(StreamsConfig) blocks until SIGINT/SIGTERM, then shuts everything down.
"""

from __future__ import annotations

import logging
from collections import Counter

from index.candidates import PopularityTracker
from index.covisitation import Covisitation
from index.encoders import build_encoder
from index.item_index import IndexConfig
from index.replica import CatalogReplica, embedding_follower
from runtime.kafka import create_topics, tail_consumer
from runtime.logs import logging_config
from runtime.metrics import WorkerMetrics, serve_metrics
from runtime.tail import TopicTail
from schemas.topics import ITEM_EMBEDDINGS, RETRIEVER_MODELS, RETRIEVER_VECTORS
from streams.app import build_app
from streams.config import StreamsConfig
from streams.handlers import StreamsContext

log = logging.getLogger(__name__)

READY_LINE = "[^Worker]: Ready"  # faust logs this once partitions are assigned and tables recovered


def build_context(cfg: StreamsConfig) -> tuple[StreamsContext, list[TopicTail]]:
    """The handlers' context and the follower threads that keep its replicas current (not started)."""
    encoder = build_encoder(cfg.encoder)
    text_encoder = None
    if cfg.text_encoder == "minilm":
        from index.text_encoder import TextEncoder

        text_encoder = TextEncoder()
    # image vectors and text vectors live in one index each; content neighbours search both
    extra = (IndexConfig(dim=text_encoder.dim),) if text_encoder is not None and text_encoder.dim != encoder.dim else ()
    replica = CatalogReplica(IndexConfig(dim=encoder.dim), fresh_max_age_s=cfg.fresh_max_age_s, extra_indexes=extra)
    followers = [embedding_follower(lambda: tail_consumer(cfg.kafka), cfg.topics.name(ITEM_EMBEDDINGS), replica)]
    retriever = None
    if cfg.retriever:
        from index.retriever import SequentialRetriever, retriever_followers

        retriever = SequentialRetriever(signing_key=cfg.signing_key)
        if cfg.signing_key is None:
            log.warning("no signing key (VIP5_ADAPTER_SIGNING_KEY): retriever models are accepted unverified")
        followers += retriever_followers(lambda: tail_consumer(cfg.kafka), cfg.topics.name(RETRIEVER_VECTORS),
                                         cfg.topics.name(RETRIEVER_MODELS), retriever)
    popularity = PopularityTracker(half_life_s=cfg.popularity_half_life_s)
    context = StreamsContext(encoder=encoder, replica=replica, popularity=popularity, stats=Counter(),
                             covisitation=Covisitation(cfg.covisitation), text_encoder=text_encoder,
                             metrics=WorkerMetrics("streams"), retriever=retriever)
    return context, followers


def run_worker(cfg: StreamsConfig, *, loglevel: str = "info", log_format: str = "text",
               metrics_port: int | None = None, metrics_host: str = "127.0.0.1") -> None:
    import faust

    from index.faiss_backend import set_threads

    set_threads(cfg.faiss_threads)
    create_topics(cfg.kafka, cfg.topics)
    ctx, followers = build_context(cfg)
    for follower in followers:
        follower.start()
        ctx.metrics.require(f"{follower.topic} follower", follower.healthy)  # stopped: /healthz and /readyz red
    for follower in followers:
        if not follower.wait_caught_up(cfg.replica_wait_s):
            log.warning("%s replica not caught up after %.0fs; starting anyway", follower.topic, cfg.replica_wait_s)
    log.info("catalogue replica holds %d items (encoder %s, dim %d)", len(ctx.replica), ctx.encoder.encoder_id,
             ctx.encoder.dim)
    app = build_app(cfg, ctx)
    http = serve_metrics(ctx.metrics, host=metrics_host, port=metrics_port) if metrics_port else None
    ctx.metrics.alive.set()
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False,
                          logging_config=logging_config(log_format, verbose=loglevel == "debug"))
    try:
        worker.execute_from_commandline()  # returns/raises SystemExit on SIGINT/SIGTERM
    finally:
        ctx.metrics.alive.clear()
        for follower in followers:
            follower.stop()
        if http is not None:
            http.shutdown()
        log.info("streams worker stopped: %s", dict(ctx.stats))
