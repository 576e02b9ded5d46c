"""Runs one model worker process: item-feature replica, VIP5 ranker, serving loop.

    run_model_worker(ServeConfig, RankerConfig) blocks until SIGINT/SIGTERM; the batch in flight
    finishes, its offsets are committed, buffered records are left to the next owner, the clients
    close.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from model_worker.ranker import RankerConfig, VIP5Ranker
from model_worker.serve import ModelServer, ServeConfig
from runtime.features import ItemFeatures, feature_follower
from runtime.kafka import consumer, create_topics, producer, tail_consumer
from runtime.metrics import serve_metrics
from runtime.tail import TopicTail
from schemas.topics import ADAPTER_UPDATES, ITEM_EMBEDDINGS

log = logging.getLogger(__name__)

READY_LINE = "model worker ready"


def build_server(cfg: ServeConfig, ranker: VIP5Ranker) -> tuple[ModelServer, TopicTail]:
    feature_dim = ranker.model.config.image_feature_dim
    item_features = ItemFeatures(feature_dim)
    follower = feature_follower(lambda: tail_consumer(cfg.kafka), cfg.topics.name(ITEM_EMBEDDINGS), item_features)
    requests = consumer(cfg.kafka, cfg.group_id)  # the server subscribes it, with its rebalance listener
    server = ModelServer(cfg, ranker, item_features, consumer=requests, producer=producer(cfg.kafka))
    return server, follower


def run_model_worker(cfg: ServeConfig, ranker_cfg: RankerConfig, *, replica_wait_s: float = 30.0,
                     metrics_port: int | None = None, metrics_host: str = "127.0.0.1") -> dict:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    create_topics(cfg.kafka, cfg.topics)
    ranker = VIP5Ranker.load(ranker_cfg)
    server, follower = build_server(cfg, ranker)
    adapters = TopicTail(lambda: tail_consumer(cfg.kafka), cfg.topics.name(ADAPTER_UPDATES), adapter_handler(server))
    for tail in (follower, adapters):
        tail.start()
        server.metrics.require(f"{tail.topic} follower", tail.healthy)  # stopped: /healthz and /readyz red
    if not follower.wait_caught_up(replica_wait_s):
        log.warning("feature replica not caught up after %.0fs; serving anyway", replica_wait_s)
    if not adapters.wait_caught_up(replica_wait_s):
        log.warning("adapter updates not caught up after %.0fs; serving anyway", replica_wait_s)
    server.step_swap()  # an adapter found while catching up serves from the first batch
    http = serve_metrics(server.metrics, host=metrics_host, port=metrics_port) if metrics_port else None
    server.metrics.ready.set()
    log.info("%s: %s, adapter %s, %d item features", READY_LINE, ranker.model_version, server.ranker.adapter_version,
             len(server.item_features))
    try:
        server.run(stop)
    finally:
        follower.stop()
        adapters.stop()
        if http is not None:
            http.shutdown()
    return dict(server.stats)


def adapter_handler(server: ModelServer):
    """Handle a poll's worth of adapter-updates: verify the newest and swap it in between batches.

    Any failure (an artifact outside the store, a missing or wrong signature, missing or corrupt
    files, checksum or backbone mismatch) is logged and counted (`adapter_rejections`); the current
    adapter keeps serving.
    """
    from model_worker.artifacts import ArtifactError, ArtifactStore, load_verified
    from schemas.codec import decode
    from schemas.errors import SchemaError
    from schemas.records import AdapterUpdate

    store = ArtifactStore(server.cfg.artifacts_dir, signing_key=server.cfg.adapter_signing_key)
    if store.signing_key is None:
        log.warning("no adapter signing key (VIP5_ADAPTER_SIGNING_KEY[_FILE]): every adapter update will be rejected")

    def handle(messages: list) -> None:
        updates = []
        for message in messages:
            try:
                updates.append(decode(message.value, AdapterUpdate))
            except SchemaError as err:
                server.stats["adapter_rejections"] += 1
                server.metrics.adapter_rejections.inc()
                log.error("rejected adapter update at offset %d: %s", message.offset, err)
        if not updates or updates[-1].version == server.ranker.adapter_version:
            return
        update, started = updates[-1], time.perf_counter()
        try:
            artifact = load_verified(update, backbone_id=server.ranker.backbone_id, store=store)
            server.ranker.stage(artifact, update.version)  # a standby slot; the active one keeps serving
        except Exception as err:  # any bad artifact: keep serving the current one
            kind = err.kind if isinstance(err, ArtifactError) else "unreadable"
            server.stats["adapter_rejections"] += 1
            server.stats[f"adapter_rejections_{kind}"] += 1
            server.metrics.adapter_rejections.inc()
            log.error("rejected adapter %s: %s; still serving %s", update.version, err, server.ranker.adapter_version)
            return
        server.swap_adapter(update.version)
        server.stats["last_swap_prepare_ms"] = round((time.perf_counter() - started) * 1000, 1)
        log.info("adapter %s ready (prepared in %.1f ms); swapping before the next batch", update.version,
                 server.stats["last_swap_prepare_ms"])

    return handle
