"""Prometheus metrics and health endpoints for a worker process, on 127.0.0.1 unless configured.

    GET /metrics   Prometheus text format (this process's registry)
    GET /healthz   200 while the worker's main loop and every part it `require`s (followers) run, else 503
    GET /readyz    200 once the worker serves (replicas caught up, model loaded) and is healthy, else 503

Each worker builds one `WorkerMetrics` and passes it to its loop; nothing here is global.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LAG_EVERY_S = 1.0  # consumer lag is recomputed at most this often (it walks every assigned partition)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    def __init__(self, worker: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.worker = worker
        self.records_in = Counter("vip5_records_in", "records consumed", ["topic"], registry=r)
        self.records_out = Counter("vip5_records_out", "records produced", ["topic"], registry=r)
        self.dead_letters = Counter("vip5_dead_letters", "records sent to the dead-letter topic", ["stage"],
                                    registry=r)
        self.batch_size = Histogram("vip5_batch_size", "records per micro-batch", ["stage"], registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.stage_seconds = Histogram("vip5_stage_seconds", "time per batch in a processing stage", ["stage"],
                                       registry=r, buckets=LATENCY_BUCKETS_S)
        self.freshness_seconds = Histogram("vip5_freshness_seconds", "event time to publish time of outputs",
                                           registry=r, buckets=LATENCY_BUCKETS_S)
        self.consumer_lag = Gauge("vip5_consumer_lag", "high watermark minus position", ["topic", "partition"],
                                  registry=r)
        self.buffered_records = Gauge("vip5_buffered_records",
                                      "records polled and not yet committed (buffered or being processed)",
                                      registry=r)
        self.partition_pauses = Counter("vip5_partition_pauses",
                                        "times the assigned partitions were paused because the buffer was full",
                                        registry=r)
        self.adapter_version = Gauge("vip5_adapter_version_info", "1 for the adapter version in use", ["version"],
                                     registry=r)
        self.adapter_swaps = Counter("vip5_adapter_swaps", "adapter versions swapped in", registry=r)
        self.adapter_rejections = Counter("vip5_adapter_rejections", "adapter updates rejected", registry=r)
        self.trainer_rounds = Counter("vip5_trainer_rounds", "adapter training rounds by outcome (published, rejected)",
                                      ["outcome"], registry=r)
        self.users_evicted = Counter("vip5_users_evicted", "user histories dropped by the history bound "
                                     "(max users or idle age)", registry=r)
        self.alive = threading.Event()
        self.ready = threading.Event()
        self._checks: dict[str, Callable[[], bool]] = {}  # background parts the worker needs (followers)
        self._lag_updated_s = float("-inf")

    def require(self, name: str, healthy: Callable[[], bool]) -> None:
        """Make /healthz and /readyz fail while `healthy()` is False (e.g. a replica follower stopped)."""
        self._checks[name] = healthy

    def failing(self) -> list[str]:
        return [name for name, healthy in self._checks.items() if not healthy()]

    def is_healthy(self) -> bool:
        return self.alive.is_set() and not self.failing()

    def is_ready(self) -> bool:
        return self.ready.is_set() and self.is_healthy()

    def set_adapter(self, version: str) -> None:
        self.adapter_version.clear()
        self.adapter_version.labels(version=version).set(1)

    def update_lag(self, consumer, *, now_s: float | None = None) -> None:
        """Lag from the fetch high watermark (exact on every broker, unlike ListOffsets), at most once
        per `LAG_EVERY_S`: the worker loop calls this on every poll, a scrape reads it every few seconds."""
        now_s = time.monotonic() if now_s is None else now_s
        if now_s - self._lag_updated_s < LAG_EVERY_S:
            return
        self._lag_updated_s = now_s
        for tp in consumer.assignment():
            self.set_lag(tp.topic, tp.partition, consumer.highwater(tp), consumer.position(tp))

    def set_lag(self, topic: str, partition: int, highwater: int | None, position: int | None) -> None:
        """One partition's lag; nothing while either offset is unknown (before the first fetch)."""
        if highwater is not None and position is not None:
            self.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(0, highwater - position))


def serve_metrics(metrics: WorkerMetrics, *, host: str = "127.0.0.1", port: int) -> ThreadingHTTPServer:
    """Start the metrics/health server in a daemon thread; returns it (call .shutdown() to stop)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                ok = metrics.is_healthy() if self.path == "/healthz" else metrics.is_ready()
                body = json.dumps({"worker": metrics.worker, "ok": ok, "failing": metrics.failing()}).encode()
                self._reply(200 if ok else 503, body, "application/json")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # keep scrapes out of the worker's log
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
