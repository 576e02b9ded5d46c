"""Worker metrics and health endpoints: Prometheus text, liveness and readiness on loopback."""

import json
import urllib.error
import urllib.request

import pytest

from runtime.metrics import WorkerMetrics, serve_metrics
from vip5.broker import free_port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture()
def served():
    metrics, port = WorkerMetrics("model-worker"), free_port()
    server = serve_metrics(metrics, port=port)
    yield metrics, f"http://127.0.0.1:{port}"
    server.shutdown()


def test_metrics_endpoint_exposes_counters_histograms_and_adapter_version(served):
    metrics, url = served
    metrics.dead_letters.labels(stage="decode").inc(2)
    metrics.freshness_seconds.observe(0.2)
    metrics.set_adapter("v2")
    status, body = get(f"{url}/metrics")
    text = body.decode()
    assert status == 200
    assert 'vip5_dead_letters_total{stage="decode"} 2.0' in text
    assert "vip5_freshness_seconds_count 1.0" in text
    assert 'vip5_adapter_version_info{version="v2"} 1.0' in text


def test_health_and_readiness_follow_the_worker_state(served):
    metrics, url = served
    assert get(f"{url}/healthz")[0] == 503 and get(f"{url}/readyz")[0] == 503
    metrics.alive.set()
    metrics.ready.set()
    status, body = get(f"{url}/readyz")
    assert status == 200 and json.loads(body) == {"worker": "model-worker", "ok": True, "failing": []}
    assert get(f"{url}/healthz")[0] == 200


def test_a_required_part_that_stops_turns_health_and_readiness_red(served):
    metrics, url = served
    metrics.alive.set()
    metrics.ready.set()
    running = {"item-embeddings follower": True}
    metrics.require("item-embeddings follower", lambda: running["item-embeddings follower"])
    assert get(f"{url}/healthz")[0] == 200
    running["item-embeddings follower"] = False
    for path in ("/healthz", "/readyz"):
        status, body = get(f"{url}{path}")
        assert status == 503 and json.loads(body)["failing"] == ["item-embeddings follower"]


def test_metrics_server_listens_on_loopback_by_default(served):
    _, url = served
    assert url.startswith("http://127.0.0.1:")
    assert get(f"{url}/nope")[0] == 404


def test_consumer_lag_is_recomputed_at_most_once_a_second_however_often_the_loop_polls():
    from collections import namedtuple

    from runtime.metrics import LAG_EVERY_S

    tp = namedtuple("TP", "topic partition")("rerank-requests", 0)

    class Consumer:
        highwater_calls = 0
        end = 10

        def assignment(self):
            return {tp}

        def highwater(self, _):
            self.highwater_calls += 1
            return self.end

        def position(self, _):
            return 4

    metrics, consumer = WorkerMetrics("model-worker"), Consumer()
    lag = metrics.consumer_lag.labels(topic="rerank-requests", partition="0")
    metrics.update_lag(consumer, now_s=100.0)
    consumer.end = 12
    metrics.update_lag(consumer, now_s=100.0 + LAG_EVERY_S / 2)
    assert (consumer.highwater_calls, lag._value.get()) == (1, 6)
    metrics.update_lag(consumer, now_s=100.0 + LAG_EVERY_S)
    assert (consumer.highwater_calls, lag._value.get()) == (2, 8)
