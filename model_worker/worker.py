"""Runs one model worker process: catalogue replica, VIP5 ranker, serving loop.

    run_model_worker(ServeConfig, RankerConfig) blocks until SIGINT/SIGTERM; the batch in flight
    finishes, its offsets are committed, the clients close.
"""

from __future__ import annotations

import logging
import signal
import threading

from index.item_index import IndexConfig
from index.replica import CatalogReplica, EmbeddingFollower
from model_worker.ranker import RankerConfig, VIP5Ranker
from model_worker.serve import ModelServer, ServeConfig
from schemas.topics import ITEM_EMBEDDINGS, RERANK_REQUESTS
from vip5.kafka import consumer, create_topics, producer

log = logging.getLogger(__name__)

READY_LINE = "model worker ready"


def build_server(cfg: ServeConfig, ranker: VIP5Ranker) -> tuple[ModelServer, EmbeddingFollower]:
    feature_dim = ranker.model.config.image_feature_dim
    replica = CatalogReplica(IndexConfig(dim=feature_dim, kind="flat"))
    follower = EmbeddingFollower(lambda: consumer(cfg.kafka, None), cfg.topics.name(ITEM_EMBEDDINGS), replica)
    requests = consumer(cfg.kafka, cfg.group_id, [cfg.topics.name(RERANK_REQUESTS)],
                        max_poll_records=cfg.max_batch)
    server = ModelServer(cfg, ranker, replica, consumer=requests, producer=producer(cfg.kafka))
    return server, follower


def run_model_worker(cfg: ServeConfig, ranker_cfg: RankerConfig, *, replica_wait_s: float = 30.0) -> dict:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    create_topics(cfg.kafka, cfg.topics)
    ranker = VIP5Ranker.load(ranker_cfg)
    server, follower = build_server(cfg, ranker)
    follower.start()
    if not follower.wait_caught_up(replica_wait_s):
        log.warning("feature replica not caught up after %.0fs; serving anyway", replica_wait_s)
    log.info("%s: %s, adapter %s, %d item features", READY_LINE, ranker.model_version, ranker.adapter_version,
             len(server.replica))
    try:
        server.run(stop)
    finally:
        follower.stop()
    return dict(server.stats)
